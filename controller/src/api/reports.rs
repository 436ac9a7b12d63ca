//! `POST /v1/devices/{id}/reports`: authenticated device reports, written in batches.

use std::sync::{Arc, Weak};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use tokio::sync::{mpsc, oneshot};

use super::{now_ms, Api, ApiError, JsonBytes};
use crate::inventory::store::{IncomingReport, ReportOutcome};
use crate::inventory::DeviceReport;
use crate::protocol::signature::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::protocol::ReportBody;

/// Longest detail kept per report.
const MAX_DETAIL: usize = 4096;
/// Longest release name accepted (a release is named by a DNS-1123 label in the fleet).
const MAX_RELEASE: usize = 253;

/// A verified report waiting for the writer, and where to say what became of it.
#[derive(Debug)]
pub(super) struct Pending {
    report: IncomingReport,
    done: oneshot::Sender<Result<ReportOutcome, ApiError>>,
}

pub(super) async fn report(
    State(api): State<Arc<Api>>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let refuse = |reason: &'static str, error: ApiError| {
        api.metrics.refuse(reason);
        error
    };
    let parsed: ReportBody = serde_json::from_slice(&body)
        .map_err(|e| refuse("malformed", ApiError::BadRequest(format!("invalid report body: {e}"))))?;
    if let Some(release) = &parsed.release {
        if release.is_empty() || release.len() > MAX_RELEASE || release.chars().any(char::is_control) {
            return Err(refuse(
                "malformed",
                ApiError::BadRequest(format!(
                    "invalid report body: release {release:?} must be 1 to {MAX_RELEASE} bytes without control characters"
                )),
            ));
        }
    }
    if let Some(commit) = &parsed.commit {
        if !(4..=64).contains(&commit.len()) || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse(
                "malformed",
                ApiError::BadRequest(format!(
                    "invalid report body: commit {commit:?} must be a commit id of 4 to 64 hex digits"
                )),
            ));
        }
    }
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
    signature::verify(&public_key, &device_id, timestamp, &body, signature).map_err(|e| {
        refuse("bad_signature", ApiError::Unauthorized(format!("report of {device_id:?} refused: {e}")))
    })?;
    let now = now_ms();
    let window = api.config.replay_window.as_millis() as i64;
    let skew = api.config.max_clock_skew.as_millis() as i64;
    if now - timestamp > window {
        return Err(refuse(
            "stale_timestamp",
            ApiError::Unauthorized(format!(
                "report of {device_id:?} refused: its timestamp is {}s behind the server's clock (window {}s)",
                (now - timestamp) / 1000,
                window / 1000
            )),
        ));
    }
    // Refused before it is stored, so that it cannot hold the device's honest reports back.
    if timestamp - now > skew {
        return Err(refuse(
            "future_timestamp",
            ApiError::Unauthorized(format!(
                "report of {device_id:?} refused: its timestamp is {}s ahead of the server's clock (at most {}s)",
                (timestamp - now) / 1000,
                skew / 1000
            )),
        ));
    }

    let mut detail = parsed.detail;
    if let Some(d) = &mut detail {
        if d.len() > MAX_DETAIL {
            let cut = (0..=MAX_DETAIL).rev().find(|&i| d.is_char_boundary(i)).unwrap_or(0);
            d.truncate(cut);
        }
        // Free-form text is kept, but a NUL cannot be stored (PostgreSQL text refuses it).
        if d.contains('\0') {
            *d = d.replace('\0', "\u{fffd}");
        }
    }
    let report = IncomingReport {
        device_id,
        report: DeviceReport {
            release: parsed.release,
            version: parsed.version,
            state: parsed.state,
            healthy: parsed.healthy,
            failure: parsed.failure,
            last_seen: None,
        },
        detail,
        commit: parsed.commit,
        reported_at: timestamp,
        received_at: now,
    };
    let device_id = report.device_id.clone();
    let (done, stored) = oneshot::channel();
    api.writer
        .send(Pending { report, done })
        .await
        .map_err(|_| ApiError::Internal("the report writer stopped".into()))?;
    let outcome = stored.await.map_err(|_| ApiError::Internal("the report writer stopped".into()))??;
    match outcome {
        ReportOutcome::Stored => Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"stored": true})))),
        ReportOutcome::NotNewer { latest } => Err(refuse(
            "replay",
            ApiError::Unauthorized(format!(
                "report of {device_id:?} refused: replayed (timestamp {timestamp} is not newer than {latest}, \
                 the device's latest stored report)"
            )),
        )),
        ReportOutcome::UnknownDevice => Err(refuse(
            "unknown_device",
            ApiError::Unauthorized(format!("unknown device {device_id:?}")),
        )),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
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
            Ok(outcomes) => {
                for (p, outcome) in batch.into_iter().zip(outcomes) {
                    if outcome == ReportOutcome::Stored {
                        api.metrics.reports_stored.inc();
                    }
                    let _ = p.done.send(Ok(outcome));
                }
            }
            // One report the database refuses must not fail the others: store them one by
            // one. Not when the database is unreachable: every one would fail the same way.
            Err(batch_error) if batch.len() > 1 && !batch_error.is_unavailable() => {
                tracing::warn!(error = %batch_error, "report batch failed; storing reports one by one");
                for p in batch {
                    let result = api.store.record_reports(std::slice::from_ref(&p.report)).await;
                    let result = result.map(|outcomes| outcomes[0]).map_err(ApiError::from);
                    if matches!(result, Ok(ReportOutcome::Stored)) {
                        api.metrics.reports_stored.inc();
                    }
                    let _ = p.done.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, reports = batch.len(), "storing reports failed");
                for p in batch {
                    let _ = p.done.send(Err(ApiError::from(&e)));
                }
            }
        }
    }
}
