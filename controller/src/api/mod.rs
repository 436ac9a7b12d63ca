//! The device API (axum): enrollment, authenticated reports, health, metrics, and the
//! TUF repository's files.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/enroll` | a device presents a group's enrollment token and its public key |
//! | `POST /v1/devices/{id}/reports` | a signed report (see [`crate::protocol::signature`]) |
//! | `GET /healthz` | liveness: the controller loop completes passes; the database answers |
//! | `GET /metrics` | Prometheus metrics |
//! | `GET /tuf/...` | the TUF repository's files (see [`tuf_files`]) |
//!
//! Every error is JSON (see [`ApiError`]). Malformed requests get 400; a body that is not
//! JSON 415; an unknown device, a bad signature or a replay 401, and nothing is stored; an
//! unreachable database 503 with `Retry-After`. Reports are written in batches by one
//! writer task: whatever arrived while the previous batch was being written goes into the
//! next one, so the database sees few large transactions under load and no delay when
//! idle.

pub mod admin;
mod enroll;
mod error;
mod metrics;
mod reports;
pub mod tuf_files;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::mpsc;

pub use error::{json_errors, require_json, ApiError, JsonBytes, RETRY_AFTER_SECS};
pub use metrics::Metrics;

use crate::inventory::store::Store;
use crate::standalone::LoopHealth;

/// Most unknown device ids remembered at once.
const MAX_UNKNOWN: usize = 100_000;
/// Largest request body the device API reads: a report is a few hundred bytes, its
/// `detail` at most a few KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest total size of a request's header names and values.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Settings of the device API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How old a report's timestamp may be, by the server's clock.
    pub replay_window: Duration,
    /// How far ahead of the server's clock a report's timestamp may be. Small: a report
    /// accepted from the future holds the device's later reports back (each must be
    /// newer) until the clock catches up.
    pub max_clock_skew: Duration,
    /// The TUF repository served under `/tuf/`, if any.
    pub tuf_dir: Option<PathBuf>,
    /// Most reports written in one transaction.
    pub max_batch: usize,
    /// The health of the controller loop this API serves beside, if any: `/healthz`
    /// answers from it, and `/metrics` adds its counters.
    pub loop_health: Option<Arc<LoopHealth>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            replay_window: Duration::from_secs(300),
            max_clock_skew: Duration::from_secs(30),
            tuf_dir: None,
            max_batch: 2000,
            loop_health: None,
        }
    }
}

/// Enrollment tokens of the fleet: hex SHA-256 of a token → the group it enrolls into.
/// Set by the controller from each compiled fleet.
pub type EnrollmentTokens = HashMap<String, String>;

/// Shared state of the device API.
#[derive(Debug)]
pub struct Api {
    store: Store,
    config: ApiConfig,
    metrics: Metrics,
    writer: mpsc::Sender<reports::Pending>,
    tokens: RwLock<Arc<EnrollmentTokens>>,
    /// Public keys by device id, filled from the inventory on first use.
    keys: RwLock<HashMap<String, String>>,
    /// Device ids the inventory does not know (or that have no key), so a flood of
    /// reports from unknown devices costs no database reads. Cleared with the keys.
    unknown: RwLock<std::collections::HashSet<String>>,
}

impl Api {
    /// The API over `store`, with its batch writer running on the current tokio runtime.
    pub fn new(store: Store, config: ApiConfig) -> Arc<Api> {
        let (tx, rx) = mpsc::channel(config.max_batch * 4);
        let api = Arc::new(Api {
            store,
            config,
            metrics: Metrics::default(),
            writer: tx,
            tokens: RwLock::default(),
            keys: RwLock::default(),
            unknown: RwLock::default(),
        });
        tokio::spawn(reports::run_writer(Arc::downgrade(&api), rx));
        api
    }

    /// Replaces the enrollment tokens (after a new fleet commit is compiled).
    pub fn set_enrollment_tokens(&self, tokens: EnrollmentTokens) {
        *self.tokens.write().expect("token lock") = Arc::new(tokens);
    }

    /// Drops cached device keys, so the next request reads them from the inventory again
    /// (after the declared devices were synced).
    pub fn forget_keys(&self) {
        self.keys.write().expect("key lock").clear();
        self.unknown.write().expect("unknown lock").clear();
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The inventory.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The router serving every route of the device API. Every error it answers is JSON,
    /// including 404 for a route it does not have.
    pub fn router(self: &Arc<Api>) -> Router {
        Router::new()
            .route("/v1/enroll", post(enroll::enroll))
            .route("/v1/devices/{id}/reports", post(reports::report))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics_text))
            .route("/tuf/{*path}", get(tuf_files::tuf_file))
            .fallback(|request: Request| async move {
                ApiError::NotFound(format!("no route {} {}", request.method(), request.uri().path()))
            })
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(middleware::from_fn(limit_headers))
            .layer(middleware::map_response(json_errors))
            .with_state(self.clone())
    }

    /// A device's public key, from the cache or the inventory.
    async fn public_key(&self, device_id: &str) -> Result<Option<String>, ApiError> {
        if let Some(key) = self.keys.read().expect("key lock").get(device_id) {
            return Ok(Some(key.clone()));
        }
        if self.unknown.read().expect("unknown lock").contains(device_id) {
            return Ok(None);
        }
        let key = self.store.device(device_id).await?.and_then(|record| record.public_key);
        let Some(key) = key else {
            let mut unknown = self.unknown.write().expect("unknown lock");
            if unknown.len() >= MAX_UNKNOWN {
                unknown.clear();
            }
            unknown.insert(device_id.to_string());
            return Ok(None);
        };
        self.keys.write().expect("key lock").insert(device_id.to_string(), key.clone());
        Ok(Some(key))
    }
}

/// Refuses requests whose headers are larger than [`MAX_HEADER_BYTES`] with 431. (The HTTP
/// layer itself refuses more than 100 headers, or about 400 KB of them, before any route.)
async fn limit_headers(request: Request, next: Next) -> Response {
    let size: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if size > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(format!(
            "the request's headers are {size} bytes; at most {MAX_HEADER_BYTES} are accepted"
        ))
        .into_response();
    }
    next.run(request).await
}

/// Serves `router` on `listener` until `shutdown` completes, with `TCP_NODELAY` on every
/// connection: without it, a keep-alive client's second request waits for the delayed
/// ACK of the first answer (about 40 ms on Linux) whenever an answer is written in two
/// parts. Both controllers serve through here.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on a connection: {e}");
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// How long `/healthz` waits for the database: a probe must answer promptly even when the
/// database hangs (a PostgreSQL server that stopped answering, a pool waiting for a
/// connection).
const HEALTH_PROBE: Duration = Duration::from_millis(800);

/// `GET /healthz`. Beside a controller loop it is unhealthy (503) only when the loop is
/// stuck: a database outage fails passes, but restarting would not end it, so it is
/// reported in the body (and `/v1/status`, `/metrics`) while the answer stays 200. The
/// device API alone is unhealthy when its database does not answer.
async fn healthz(State(api): State<Arc<Api>>) -> axum::response::Response {
    use axum::http::StatusCode;
    let database = match tokio::time::timeout(HEALTH_PROBE, api.store.devices_count()).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {HEALTH_PROBE:?}")),
    };
    let (healthy, controller) = match &api.config.loop_health {
        Some(health) => {
            let verdict = health.verdict(std::time::Instant::now());
            (!verdict.stuck, Some(verdict))
        }
        None => (database.is_none(), None),
    };
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "database": database.as_deref().unwrap_or("ok"),
        "controller": controller,
    });
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

async fn metrics_text(State(api): State<Arc<Api>>) -> impl IntoResponse {
    let mut text = api.metrics.encode();
    if let Some(health) = &api.config.loop_health {
        health.encode_metrics(&mut text);
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
