//! `POST /v1/devices/{id}/reports`: authenticated device reports, written in batches.

use std::sync::{Arc, Weak};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::auth::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::{now_ms, Api, ApiError};
use crate::inventory::store::IncomingReport;
use crate::inventory::{DeviceReport, UpdateState};

/// The JSON body of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportBody {
    /// The release the device runs, if it runs one Waveguide published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The version it runs.
    pub version: semver::Version,
    /// Update progress.
    pub state: UpdateState,
    /// Whether its health checks pass.
    pub healthy: bool,
    /// Free-form detail, e.g. an installer's error output (at most 4 KiB is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Longest detail kept per report.
const MAX_DETAIL: usize = 4096;

/// A verified report waiting for the writer, and where to say it was stored.
#[derive(Debug)]
pub(super) struct Pending {
    report: IncomingReport,
    done: oneshot::Sender<Result<(), String>>,
}

pub(super) async fn report(
    State(api): State<Arc<Api>>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let refuse = |reason: &'static str, error: ApiError| {
        api.metrics.refuse(reason);
        error
    };
    let parsed: ReportBody = serde_json::from_slice(&body)
        .map_err(|e| refuse("malformed", ApiError::BadRequest(format!("invalid report body: {e}"))))?;
    let timestamp =
        header(&headers, TIMESTAMP_HEADER).and_then(|v| v.parse::<i64>().ok()).ok_or_else(|| {
            refuse(
                "malformed",
                ApiError::Unauthorized(format!("missing or invalid {TIMESTAMP_HEADER} header")),
            )
        })?;
    let signature = header(&headers, SIGNATURE_HEADER).ok_or_else(|| {
        refuse("malformed", ApiError::Unauthorized(format!("missing {SIGNATURE_HEADER} header")))
    })?;
    let Some(public_key) = api.public_key(&device_id).await? else {
        return Err(refuse(
            "unknown_device",
            ApiError::Unauthorized(format!("unknown device {device_id:?}")),
        ));
    };
    auth::verify(&public_key, &device_id, timestamp, &body, signature).map_err(|e| {
        refuse("bad_signature", ApiError::Unauthorized(format!("report of {device_id:?} refused: {e}")))
    })?;
    let now = now_ms();
    let window = api.config.replay_window.as_millis() as i64;
    if (now - timestamp).abs() > window {
        return Err(refuse(
            "stale_timestamp",
            ApiError::Unauthorized(format!(
                "report of {device_id:?} refused: its timestamp is {}s away from the server's clock (window {}s)",
                (now - timestamp) / 1000,
                window / 1000
            )),
        ));
    }
    accept_newer(&api, &device_id, timestamp).map_err(|e| refuse("replay", e))?;

    let mut detail = parsed.detail;
    if let Some(d) = &mut detail {
        if d.len() > MAX_DETAIL {
            let cut = (0..=MAX_DETAIL).rev().find(|&i| d.is_char_boundary(i)).unwrap_or(0);
            d.truncate(cut);
        }
    }
    let report = IncomingReport {
        device_id,
        report: DeviceReport {
            release: parsed.release,
            version: parsed.version,
            state: parsed.state,
            healthy: parsed.healthy,
            last_seen: None,
        },
        detail,
        reported_at: timestamp,
        received_at: now,
    };
    let (done, stored) = oneshot::channel();
    api.writer
        .send(Pending { report, done })
        .await
        .map_err(|_| ApiError::Internal("the report writer stopped".into()))?;
    match stored.await {
        Ok(Ok(())) => Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"stored": true})))),
        Ok(Err(e)) => Err(ApiError::Internal(e)),
        Err(_) => Err(ApiError::Internal("the report writer stopped".into())),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Records `timestamp` as the device's newest, refusing it when it is not newer than
/// one already accepted (a replay, or a report reordered behind a newer one).
fn accept_newer(api: &Api, device_id: &str, timestamp: i64) -> Result<(), ApiError> {
    let mut last = api.last_seen.lock().expect("last-seen lock");
    match last.get_mut(device_id) {
        Some(seen) if *seen >= timestamp => Err(ApiError::Unauthorized(format!(
            "report of {device_id:?} refused: replayed (timestamp {timestamp} is not newer than {seen})"
        ))),
        Some(seen) => {
            *seen = timestamp;
            Ok(())
        }
        None => {
            last.insert(device_id.to_string(), timestamp);
            Ok(())
        }
    }
}

/// The one writer: takes whatever reports are waiting (up to `max_batch`), stores them
/// in one transaction, and answers each request. Stops when the API is dropped.
pub(super) async fn run_writer(api: Weak<Api>, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let Some(api) = api.upgrade() else { return };
        let mut batch = vec![first];
        while batch.len() < api.config.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // The receive time is the time of the write: one writer makes it grow with commit
        // order, which lets the engine read only what changed since its last pass.
        let written_at = super::now_ms();
        let reports: Vec<IncomingReport> =
            batch.iter().map(|p| IncomingReport { received_at: written_at, ..p.report.clone() }).collect();
        api.metrics.report_batch_size.observe(reports.len() as f64);
        match api.store.record_reports(&reports).await {
            Ok(()) => {
                api.metrics.reports_stored.inc_by(reports.len() as u64);
                for p in batch {
                    let _ = p.done.send(Ok(()));
                }
            }
            // One bad report (e.g. a device removed meanwhile) must not fail the others:
            // fall back to storing them one by one.
            Err(batch_error) if batch.len() > 1 => {
                tracing::warn!(error = %batch_error, "report batch failed; storing reports one by one");
                for p in batch {
                    let result = api.store.record_reports(std::slice::from_ref(&p.report)).await;
                    if result.is_ok() {
                        api.metrics.reports_stored.inc();
                    }
                    let _ = p.done.send(result.map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.done.send(Err(e.to_string()));
                }
            }
        }
    }
}
