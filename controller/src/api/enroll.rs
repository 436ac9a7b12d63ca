//! `POST /v1/enroll`: a device joins the group whose enrollment token it presents.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{now_ms, Api, ApiError, JsonBytes};
use crate::inventory::store::Enrollment;
use crate::protocol::{DeviceId, EnrollRequest, EnrollResponse};

pub(super) async fn enroll(
    State(api): State<Arc<Api>>,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    let refuse = |e: ApiError| {
        api.metrics.enrollments_refused.inc();
        e
    };
    let request: EnrollRequest = serde_json::from_slice(&body)
        .map_err(|e| refuse(ApiError::BadRequest(format!("invalid enrollment body: {e}"))))?;
    if let Err(e) = DeviceId::check(&request.device_id) {
        return Err(refuse(ApiError::BadRequest(format!("invalid device id {:?}: {e}", request.device_id))));
    }
    match BASE64.decode(request.public_key.trim()) {
        Ok(key) if key.len() == 32 => {}
        _ => {
            return Err(refuse(ApiError::BadRequest("publicKey must be a base64 ed25519 public key".into())))
        }
    }
    let token_hash = hex::encode(Sha256::digest(request.token.as_bytes()));
    let group = api.tokens.read().expect("token lock").get(&token_hash).cloned();
    let Some(group) = group else {
        return Err(refuse(ApiError::Unauthorized("unknown enrollment token".into())));
    };
    // A device that already has a key keeps it (a token must not let anyone take over a
    // known device), and a declared device keeps its group. The store decides in one
    // conditional write, so concurrent enrollments cannot both win.
    let record = match api.store.enroll(&request.device_id, &group, &request.public_key, now_ms()).await? {
        Enrollment::Enrolled(record) => record,
        Enrollment::OtherKey(_) => {
            return Err(refuse(ApiError::Conflict(format!(
                "device {:?} already has a different key; remove it from the inventory to re-enroll",
                request.device_id
            ))))
        }
        Enrollment::OtherGroup(existing) => {
            return Err(refuse(ApiError::Conflict(format!(
                "device {:?} is declared in group {:?}, not in the token's group {:?}",
                request.device_id, existing.group, group
            ))))
        }
    };
    api.keys.write().expect("key lock").insert(record.id.clone(), request.public_key.clone());
    api.unknown.write().expect("unknown lock").remove(&record.id);
    api.metrics.enrollments.inc();
    Ok((StatusCode::CREATED, Json(EnrollResponse { device_id: record.id, group: record.group })))
}
