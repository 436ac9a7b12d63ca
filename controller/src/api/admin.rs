//! The operators' HTTP API: rollouts, their progress, and pause, resume, approve, abort,
//! retry, accept and rollback. Every request carries `Authorization: Bearer <token>`.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/rollouts` | every rollout with per-wave progress |
//! | `GET /v1/rollouts/{id}` | one rollout |
//! | `POST /v1/rollouts/{id}/pause` | stop publishing |
//! | `POST /v1/rollouts/{id}/resume` | go on |
//! | `POST /v1/rollouts/{id}/approve` | approve the wave `{"wave": <index from 0>}` |
//! | `POST /v1/rollouts/{id}/abort` | give the rollout up |
//! | `POST /v1/rollouts/{id}/retry` | publish the failed devices' instructions again |
//! | `POST /v1/rollouts/{id}/accept` | count the current failures as accepted |
//! | `POST /v1/rollouts/{id}/rollback` | return its devices to their previous release |
//!
//! Each action names what it acts on and is idempotent: sent twice, it answers the same
//! and changes nothing more (approving a wave twice does not approve the next one). It is
//! applied with a compare-and-swap on the rollout's revision, so a pass of the engine
//! running at the same moment cannot undo it (see [`control::act`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{require_json, ApiError};
use crate::inventory::store::Store;
use crate::rollout::control::{self, Action, ControlError, RolloutStatus};

/// Settings of the operators' API.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The bearer token operators present.
    pub token: String,
    /// The engine's stale timeout, for progress figures.
    pub stale_after: SignedDuration,
    /// Woken after every action, so the engine acts on it at once.
    pub wake: Arc<Notify>,
}

#[derive(Debug)]
struct Admin {
    store: Store,
    bearer: Bearer,
    stale_after: SignedDuration,
    wake: Arc<Notify>,
}

/// Checks the operators' bearer token. Compares hashes, so the comparison takes the same
/// time whatever the token presented.
#[derive(Debug, Clone)]
pub struct Bearer {
    token_sha256: [u8; 32],
}

impl Bearer {
    /// A check for `token`.
    pub fn new(token: &str) -> Bearer {
        Bearer { token_sha256: Sha256::digest(token.as_bytes()).into() }
    }

    /// `Ok` when the request carries `Authorization: Bearer <token>`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let hash: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let same = hash.iter().zip(&self.token_sha256).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("wrong bearer token".into()))
        }
    }
}

/// The router of the operators' API.
pub fn router(store: Store, config: AdminConfig) -> Router {
    let admin = Arc::new(Admin {
        store,
        bearer: Bearer::new(&config.token),
        stale_after: config.stale_after,
        wake: config.wake,
    });
    Router::new()
        .route("/v1/rollouts", get(list))
        .route("/v1/rollouts/{id}", get(show))
        .route("/v1/rollouts/{id}/{action}", post(act))
        .layer(axum::extract::DefaultBodyLimit::max(super::MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(super::json_errors))
        .with_state(admin)
}

impl Admin {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.bearer.check(headers)
    }
}

async fn list(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
) -> Result<Json<Vec<RolloutStatus>>, ApiError> {
    admin.authorize(&headers)?;
    Ok(Json(control::list(&admin.store, admin.stale_after, Timestamp::now()).await?))
}

async fn show(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RolloutStatus>, ApiError> {
    admin.authorize(&headers)?;
    control::status(&admin.store, &id, admin.stale_after, Timestamp::now())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// The wave's index, from 0.
    wave: u32,
}

async fn act(
    State(admin): State<Arc<Admin>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<RolloutStatus>, ApiError> {
    admin.authorize(&headers)?;
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "abort" => Action::Abort,
        "retry" => Action::Retry,
        "accept" => Action::Accept,
        "rollback" => Action::Rollback,
        "approve" => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(ApiError::BadRequest(
                    "name the wave to approve: {\"wave\": <index from 0>}".into(),
                ));
            }
            require_json(&headers)?;
            let body: ApproveBody = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("invalid approval body: {e}")))?;
            Action::Approve(body.wave)
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "no action {other:?}: use pause, resume, approve, abort, retry, accept or rollback"
            )))
        }
    };
    control::act(&admin.store, &id, action, Timestamp::now()).await.map_err(|e| match e {
        ControlError::NotFound(_) => ApiError::NotFound(e.to_string()),
        ControlError::Conflict(_) => ApiError::Conflict(e.to_string()),
        ControlError::Contended(_) => ApiError::Unavailable(e.to_string()),
        ControlError::Store(e) => e.into(),
    })?;
    admin.wake.notify_one();
    tracing::info!(rollout = %id, ?action, "operator action");
    control::status(&admin.store, &id, admin.stale_after, Timestamp::now())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id:?}")))
}
