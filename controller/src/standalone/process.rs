//! `waveguide run` and `waveguide demo`: one [`Engine`] driven by a loop, with the
//! device API, the TUF files and the operators' API served beside it.
//!
//! The loop survives every error of a pass: the failure is logged, shown in
//! `GET /v1/status` and counted in `/metrics` (see [`super::health`]), and the next pass
//! comes after a backoff. When asked to stop it finishes the pass under way (or abandons
//! it after [`SHUTDOWN_GRACE`]: a pass is safe to interrupt at any point, see
//! [`crate::engine`]), then lets the server answer the requests it accepted.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{watch, Notify};

use super::health::{LoopHealth, PassFailure, Stage};
use super::{startup, RunConfig, RunError};
use crate::api::admin::{self, AdminConfig};
use crate::api::{Api, ApiConfig};
use crate::engine::{Engine, Event, SourceOutcome};
use crate::files::{write_private, FileError};
use crate::inventory::store::Store;
use crate::publish::{KeyDir, KeySpec};
use crate::source::{backoff, GitSource, LocalWatcher, Retry};

/// How long a stop waits for the pass under way, and then for the server's open requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Longest wait between passes after failed ones.
const MAX_PASS_BACKOFF: Duration = Duration::from_secs(30);

/// The source as operators see it (`GET /v1/status`).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    /// The repository followed.
    pub url: String,
    /// The commit in force.
    pub last_applied: Option<String>,
    /// The latest commit tried, good or not.
    pub last_attempted: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// When the next poll is due (a commit notification or `waveguide reconcile` brings it
    /// forward).
    pub next_attempt: Option<Timestamp>,
    /// Polls (fetches) made since the start.
    pub polls: u64,
}

/// Most recent engine events kept in the status.
const EVENTS_KEPT: usize = 200;

/// What the controller shows of itself while it runs.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// Passes made so far, failed or not.
    pub passes: u64,
    /// The source.
    pub source: SourceView,
    /// The address it listens on.
    pub listening: Option<SocketAddr>,
    /// The commit in force.
    pub commit: Option<String>,
    /// The last refused commit and why.
    pub refused: Option<(String, String)>,
    /// Devices in the fleet in force.
    pub devices: usize,
    /// The most recent events of the engine, in order.
    pub events: Vec<Event>,
    /// Why the last pass failed (`<stage>: <error>`), if it did.
    pub error: Option<String>,
    /// The same, in parts: the stage, the error, since when and how many passes in a row.
    pub failure: Option<PassFailure>,
    /// When the last pass completed.
    pub last_pass: Option<Timestamp>,
}

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    /// Its status, updated after every pass.
    pub status: watch::Receiver<RunStatus>,
    /// The operators' bearer token.
    pub admin_token: String,
    /// The inventory.
    pub store: Store,
    /// Wakes the loop (an operator's action, a test).
    pub wake: Arc<Notify>,
}

/// Starts the controller: opens the data directory, checks that the inventory matches
/// the published TUF repository, binds `listen`, and spawns the loop and the server on
/// the current runtime. They stop when `shutdown` completes; the returned task ends once
/// both have.
pub async fn start(
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Controller, tokio::task::JoinHandle<Result<(), RunError>>), RunError> {
    std::fs::create_dir_all(&config.data).map_err(FileError::on("create", &config.data))?;
    let keys_dir = config.keys_dir();
    let keys = if keys_dir.join("roots").is_dir() {
        KeyDir::open(&keys_dir).map_err(|source| RunError::Keys {
            action: "open",
            dir: keys_dir,
            source: Box::new(source),
        })?
    } else {
        tracing::warn!(
            dir = %keys_dir.display(),
            "creating TUF keys with the root key next to the online key; for production, create the \
             root keys offline with `waveguide keys init` and pass --keys"
        );
        KeyDir::init(&keys_dir, &KeySpec::without_release_keys())
            .map_err(|source| RunError::Keys { action: "create", dir: keys_dir, source: Box::new(source) })?
            .0
    };
    let store = Store::open(&config.database_url()).await?;
    startup::check(&config, &store).await?;
    let admin_token = admin_token(&config.data)?;

    let wake = Arc::new(Notify::new());
    let health = Arc::new(LoopHealth::new(config.stuck_after));
    let api = Api::new(
        store.clone(),
        ApiConfig {
            tuf_dir: Some(config.tuf_dir()),
            loop_health: Some(health.clone()),
            ..ApiConfig::default()
        },
    );
    let mut router = api.router().merge(admin::router(
        store.clone(),
        AdminConfig {
            token: admin_token.clone(),
            stale_after: config.engine.stale_after,
            wake: wake.clone(),
        },
    ));
    if let Some(secret) = &config.webhook_secret {
        let hook = crate::source::webhook::Webhook::new(secret.as_bytes().to_vec(), wake.clone())
            .map_err(|e| RunError::Source(Box::new(e)))?;
        router = router.merge(hook.router());
    }
    let (status_tx, status) = watch::channel(RunStatus::default());
    router = router.merge(operator_routes(&admin_token, status.clone(), wake.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen { addr: config.listen, source })?;
    let listening = listener.local_addr().ok();
    status_tx.send_modify(|s| s.listening = listening);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server_stop = stop_rx.clone();
    // Every error answer is JSON, whichever of the merged routers made it.
    let router = router.layer(axum::middleware::map_response(crate::api::json_errors));
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = crate::api::serve(listener, router, stopped).await {
            tracing::error!("the HTTP server stopped: {e}");
        }
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let controller = Controller { status, admin_token, store: store.clone(), wake: wake.clone() };
    let loop_task = tokio::spawn(async move {
        let step_interval = config.step_interval;
        let engine = Engine::new(config.setup(), config.source_spec(), keys, store, Some(api));
        let result = match engine {
            Ok(engine) => run_loop(engine, step_interval, wake, health, status_tx, stop_rx).await,
            Err(e) => Err(e.into()),
        };
        // Requests already accepted (reports waiting for the writer, say) are answered;
        // a client that keeps its connection open does not hold the stop up for long.
        if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
            tracing::warn!("stopping with HTTP requests still open after {SHUTDOWN_GRACE:?}");
        }
        result
    });
    Ok((controller, loop_task))
}

/// `GET /v1/status` (the controller's status) and `POST /v1/reconcile` (a pass now),
/// behind the operators' token.
fn operator_routes(token: &str, status: watch::Receiver<RunStatus>, wake: Arc<Notify>) -> axum::Router {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    let bearer = admin::Bearer::new(token);
    let check = bearer.clone();
    axum::Router::new()
        .route(
            "/v1/status",
            get(move |headers: HeaderMap| {
                let status = status.borrow().clone();
                async move {
                    bearer.check(&headers)?;
                    Ok::<_, crate::api::ApiError>(axum::Json(status))
                }
            }),
        )
        .route(
            "/v1/reconcile",
            post(move |headers: HeaderMap| {
                let result = check.check(&headers).map(|()| wake.notify_one());
                async move { result.map(|()| StatusCode::ACCEPTED) }
            }),
        )
}

/// Reads or creates `<data>/admin-token`.
fn admin_token(data: &Path) -> Result<String, RunError> {
    let path = data.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_string());
    }
    let token = hex::encode(rand::random::<[u8; 24]>());
    write_private(&path, token.as_bytes()).map_err(FileError::on("write", &path))?;
    Ok(token)
}

/// What one pass of the loop did.
#[derive(Default)]
struct Pass {
    failed: Vec<(Stage, String)>,
    events: Vec<Event>,
}

async fn run_loop(
    mut engine: Engine,
    step_interval: Duration,
    wake: Arc<Notify>,
    health: Arc<LoopHealth>,
    status: watch::Sender<RunStatus>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let _watcher = match engine.source().local_path() {
        Some(path) => LocalWatcher::new(&path, wake.clone())
            .map_err(|e| tracing::warn!("cannot watch {}: {e}; polling only", path.display()))
            .ok(),
        None => None,
    };
    let mut next_poll = Instant::now();
    let mut woken = true;
    // A commit that could not be applied (the database was down) is retried as soon as a
    // pass shows the database answering again, rather than at the source's next backoff.
    let (mut apply_failed, mut step_ok) = (false, true);
    loop {
        let poll = woken || (apply_failed && step_ok) || Instant::now() >= next_poll;
        let pass = one_pass(&mut engine, poll, &status);
        let mut stopping = stop.clone();
        let pass = tokio::select! {
            pass = pass => pass,
            () = async {
                let _ = stopping.wait_for(|s| *s).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("abandoning the pass under way after {SHUTDOWN_GRACE:?}; the next start repeats it");
                return Ok(());
            }
        };
        let failed = |stage| pass.failed.iter().any(|(s, _)| *s == stage);
        step_ok = !failed(Stage::Rollout);
        if poll {
            apply_failed = failed(Stage::Apply);
            next_poll = Instant::now() + engine.source().status().wait(std::time::SystemTime::now());
            let view = source_view(engine.source());
            status.send_modify(|s| s.source = view);
        }
        let failure = health.pass_completed(&pass.failed, Timestamp::now());
        if let (Some(previous), None) = (&status.borrow().failure, &failure) {
            tracing::info!(
                "passes succeed again, after {} failed ones since {}",
                previous.consecutive,
                previous.since
            );
        }
        status.send_modify(|s| {
            s.passes += 1;
            s.last_pass = Some(Timestamp::now());
            s.events.extend(pass.events);
            let over = s.events.len().saturating_sub(EVENTS_KEPT);
            s.events.drain(..over);
            s.error = failure.as_ref().map(|f| format!("{}: {}", f.stage.as_str(), f.error));
            s.failure = failure.clone();
        });
        // A fetch failure backs the source off on its own (`next_poll`); a failure of the
        // pass itself backs the passes off, so an outage is not hammered every step.
        let wait = match &failure {
            Some(f) => backoff(
                Retry { initial: step_interval.max(Duration::from_millis(100)), max: MAX_PASS_BACKOFF },
                f.consecutive,
            ),
            None => step_interval,
        };
        let until_poll = next_poll.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(wait.min(until_poll)) => woken = false,
            _ = wake.notified() => woken = true,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// One pass of the engine; the source is polled when `poll`. Every error is logged and
/// returned with its stage; nothing here ends the loop.
async fn one_pass(engine: &mut Engine, poll: bool, status: &watch::Sender<RunStatus>) -> Pass {
    let mut pass = Pass::default();
    let report = engine.pass(poll, || true).await;
    match report.source {
        Some(Ok(SourceOutcome::Applied { commit, devices })) => status.send_modify(|s| {
            s.commit = Some(commit);
            s.devices = devices;
        }),
        Some(Ok(SourceOutcome::Refused { commit, errors })) => {
            status.send_modify(|s| s.refused = Some((commit, errors.join("\n"))))
        }
        Some(Ok(SourceOutcome::Unchanged)) | None => {}
        Some(Ok(SourceOutcome::Failed(e))) => {
            tracing::warn!("fleet source: {e}");
            pass.failed.push((Stage::Source, e));
        }
        Some(Err(e)) => {
            tracing::error!("applying the fleet commit failed: {e}; retrying after a backoff");
            pass.failed.push((Stage::Apply, e.to_string()));
        }
    }
    match report.step {
        Some(Ok(report)) => {
            for event in &report.events {
                tracing::info!(event = %serde_json::to_string(event).unwrap_or_default(), "rollout");
            }
            pass.events = report.events;
        }
        Some(Err(e)) => {
            tracing::error!("reconcile pass failed: {e}; retrying after a backoff");
            pass.failed.push((Stage::Rollout, e.to_string()));
        }
        None => {}
    }
    pass
}

fn source_view(source: &GitSource) -> SourceView {
    let status = source.status();
    SourceView {
        url: source.spec().url.clone(),
        last_applied: status.last_applied.as_ref().map(ToString::to_string),
        last_attempted: status.last_attempted.as_ref().map(ToString::to_string),
        last_error: status.last_error.clone(),
        consecutive_failures: status.consecutive_failures,
        next_attempt: Timestamp::try_from(status.next_attempt).ok(),
        polls: status.polls,
    }
}
