//! The agent's side of the device API: enrollment and signed reports.

use anyhow::{bail, Context};
use reqwest::StatusCode;
use url::Url;

use super::join;
use crate::protocol::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::protocol::{DeviceKey, EnrollRequest, ReportBody};

/// `POST /v1/enroll`. A repeated enrollment with the same key is accepted by the server;
/// a conflict (another key, another group) is an error naming the server's reason.
pub(super) async fn enroll(
    http: &reqwest::Client,
    server: &Url,
    device_id: &str,
    token: &str,
    key: &DeviceKey,
) -> anyhow::Result<()> {
    let request =
        EnrollRequest { device_id: device_id.into(), token: token.into(), public_key: key.public_key_b64() };
    let url = join(server, "v1/enroll");
    let response =
        http.post(url.clone()).json(&request).send().await.with_context(|| format!("POST {url}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let reason = error_message(response).await;
    match status {
        StatusCode::CONFLICT => bail!("enrollment of {device_id:?} refused (conflict): {reason}"),
        _ => bail!("enrollment of {device_id:?} refused (HTTP {status}): {reason}"),
    }
}

/// `POST /v1/devices/{id}/reports`, signed with the device key at `timestamp_ms`.
pub(super) async fn report(
    http: &reqwest::Client,
    server: &Url,
    device_id: &str,
    key: &DeviceKey,
    timestamp_ms: i64,
    body: &ReportBody,
) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(body).expect("a report serialises");
    let url = join(server, &format!("v1/devices/{device_id}/reports"));
    let response = http
        .post(url.clone())
        .header(TIMESTAMP_HEADER, timestamp_ms.to_string())
        .header(SIGNATURE_HEADER, key.sign_report(device_id, timestamp_ms, &bytes))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    bail!("report of {device_id:?} refused (HTTP {status}): {}", error_message(response).await)
}

/// The `error.message` of the API's JSON error, or the body as text.
async fn error_message(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text)
}
