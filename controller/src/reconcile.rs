//! The standalone controller behind `waveguide run` and `waveguide demo`: the whole loop
//! in one process.
//!
//! ```text
//! GitSource ──► compile ──► sync declared devices ──► Engine::step ──► TUF repository
//!     ▲            (a commit that does not compile is refused;       (served under /tuf/
//!     │             the last good one stays in force)                 with the device API)
//!  poll / notify / webhook / operator action
//! ```
//!
//! Everything lives under one data directory: `keys/` (created on first start when no key
//! directory is given), `tuf/` (the repository, sized for the fleet at its first commit),
//! `inventory.sqlite` (unless a database URL is given), `source/` (the Git mirror) and
//! `admin-token` (the operators' bearer token).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::{watch, Notify};

use crate::api::admin::{self, AdminConfig};
use crate::api::{Api, ApiConfig, EnrollmentTokens};
use crate::compile::{Compiler, DeviceDocuments, Documents, Severity};
use crate::inventory::store::{DeclaredDevice, Store};

use crate::publish::{BinLayout, Expiries, KeyDir, RepoConfig, Repository};
use crate::rollout::engine::{Desired, Engine, EngineConfig, EngineError, Event, StepReport};
use crate::source::{GitReference, GitSource, LocalWatcher, Poll, SourceSpec};

/// How to run the standalone controller.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The fleet repository: a local path or a Git URL.
    pub repo: String,
    /// The reference to follow.
    pub reference: GitReference,
    /// The fleet path inside the repository.
    pub path: String,
    /// The data directory.
    pub data: PathBuf,
    /// Where the device API, the TUF files and the operators' API listen.
    pub listen: SocketAddr,
    /// The inventory database URL; default `<data>/inventory.sqlite`.
    pub database: Option<String>,
    /// The TUF key directory; default `<data>/keys`, created when missing.
    pub keys: Option<PathBuf>,
    /// How often the Git source is polled when nothing wakes it.
    pub poll_interval: Duration,
    /// How often the engine makes a pass when nothing wakes it.
    pub step_interval: Duration,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// Expiries of new TUF metadata.
    pub expiries: Expiries,
    /// Secret of the Git webhook (`POST /v1/hooks/git`); no webhook without it.
    pub webhook_secret: Option<String>,
    /// The source in full (credentials, signature verification); overrides `repo`,
    /// `reference`, `path` and `poll_interval` when given.
    pub source: Option<SourceSpec>,
    /// Snapshots the daily TUF prune keeps, the published one included; 0 never prunes.
    pub tuf_keep_snapshots: u64,
}

impl RunConfig {
    /// Defaults for a repository and a data directory.
    pub fn new(repo: impl Into<String>, data: impl Into<PathBuf>) -> RunConfig {
        RunConfig {
            repo: repo.into(),
            reference: GitReference::Branch("main".into()),
            path: String::new(),
            data: data.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: None,
            keys: None,
            poll_interval: Duration::from_secs(30),
            step_interval: Duration::from_secs(2),
            engine: EngineConfig::default(),
            expiries: Expiries::default(),
            webhook_secret: None,
            source: None,
            tuf_keep_snapshots: 10,
        }
    }

    /// The key directory in use.
    pub fn keys_dir(&self) -> PathBuf {
        self.keys.clone().unwrap_or_else(|| self.data.join("keys"))
    }

    /// The TUF repository directory.
    pub fn tuf_dir(&self) -> PathBuf {
        self.data.join("tuf")
    }

    /// The inventory database URL in use.
    pub fn database_url(&self) -> String {
        self.database.clone().unwrap_or_else(|| self.data.join("inventory.sqlite").display().to_string())
    }
}

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

fn err(context: &str) -> impl Fn(&dyn std::fmt::Display) -> RunError + '_ {
    move |e| RunError(format!("{context}: {e}"))
}

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
}

/// Most recent engine events kept in the status.
const EVENTS_KEPT: usize = 200;

/// What the controller shows of itself while it runs.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// Passes made so far.
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
    /// The last engine error, if the last pass failed.
    pub error: Option<String>,
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

/// Starts the controller: opens the data directory, binds `listen`, and spawns the loop
/// and the server on the current runtime. They stop when `shutdown` completes.
pub async fn start(
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Controller, tokio::task::JoinHandle<Result<(), RunError>>), RunError> {
    std::fs::create_dir_all(&config.data).map_err(|e| err("cannot create the data directory")(&e))?;
    let keys_dir = config.keys_dir();
    let keys = if keys_dir.join("roots").is_dir() {
        KeyDir::open(&keys_dir).map_err(|e| err("cannot open the TUF keys")(&e))?
    } else {
        tracing::warn!(
            dir = %keys_dir.display(),
            "creating TUF keys with the root key next to the online key; for production, create the \
             root keys offline with `waveguide keys init` and pass --keys"
        );
        KeyDir::init(&keys_dir, 1, 1, SignedDuration::from_hours(24 * 365))
            .map_err(|e| err("cannot create TUF keys")(&e))?
            .0
    };
    let store =
        Store::open(&config.database_url()).await.map_err(|e| err("cannot open the inventory")(&e))?;
    let admin_token = admin_token(&config.data)?;

    let wake = Arc::new(Notify::new());
    let api = Api::new(store.clone(), ApiConfig { tuf_dir: Some(config.tuf_dir()), ..ApiConfig::default() });
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
            .map_err(|e| err("invalid webhook settings")(&e))?;
        router = router.merge(hook.router());
    }
    let (status_tx, status) = watch::channel(RunStatus::default());
    router = router.merge(operator_routes(&admin_token, status.clone(), wake.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| err(&format!("cannot listen on {}", config.listen))(&e))?;
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
        let result = run_loop(config, keys, store, api, wake, status_tx, stop_rx).await;
        let _ = server.await;
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
    write_private(&path, token.as_bytes()).map_err(|e| err("cannot write the admin token")(&e))?;
    Ok(token)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(bytes)
}

/// Where one [`Reconciler::sync_source`] spent its time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncTimings {
    /// Fetching and resolving the reference (and reading the fleet files).
    pub fetch: Duration,
    /// Compiling the fleet.
    pub compile: Duration,
    /// Recording the declared devices in the inventory.
    pub declare: Duration,
}

/// A digest of the declared devices (ids, groups, keys), in declaration order.
fn declared_digest(declared: &[DeclaredDevice]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for d in declared {
        hash.update(d.id.as_bytes());
        hash.update([0]);
        hash.update(d.group.as_bytes());
        hash.update([0]);
        hash.update(d.public_key.as_deref().unwrap_or("").as_bytes());
        hash.update([1]);
    }
    hash.finalize().into()
}

/// What syncing the source found.
#[derive(Debug)]
pub enum SourceOutcome {
    /// A new commit compiled and is now in force.
    Applied {
        /// The commit.
        commit: String,
        /// Devices it declares.
        devices: usize,
    },
    /// A new commit does not compile; the last good one stays in force.
    Refused {
        /// The commit.
        commit: String,
        /// Its errors, each naming file and line.
        errors: Vec<String>,
    },
    /// Nothing new.
    Unchanged,
    /// The source could not be read (fetch, signature); the last good commit stays.
    Failed(String),
}

/// The engine of one fleet: its source, the fleet in force, the inventory and the TUF
/// repository. `waveguide run` drives it from a loop; the Kubernetes controller from its
/// reconciler. Each call does one level-based step and can be repeated safely.
pub struct Reconciler {
    timings: SyncTimings,
    /// A digest of the declared devices last recorded: a commit that leaves them as
    /// they were (a policy change, say) skips the comparison with the inventory.
    declared_digest: Option<[u8; 32]>,
    /// The documents the declared devices were last read from: when a commit leaves them
    /// all in place, even the digest is skipped.
    declared_from: Option<DeviceDocuments>,
    /// Keeps the parsed files of the last commit, so the next one parses only what changed.
    compiler: Compiler,
    config: RunConfig,
    keys: KeyDir,
    store: Store,
    api: Option<Arc<Api>>,
    source: Option<GitSource>,
    engine: Option<Engine>,
    desired: Option<Desired>,
    /// When [`Reconciler::maintain_repository`] next re-signs expiring TUF roles.
    next_refresh: Instant,
    /// When it next prunes the TUF repository.
    next_prune: Instant,
}

/// How often the controllers re-sign what expires within [`REFRESH_MARGIN`].
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
const REFRESH_MARGIN: SignedDuration = SignedDuration::from_hours(24);
/// How often they prune the TUF repository (the first time one period after start).
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);
const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(3600);

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler").field("repo", &self.config.repo).finish_non_exhaustive()
    }
}

impl Reconciler {
    /// A reconciler for `config`, over `keys` and `store`. `api`, when given, learns the
    /// fleet's enrollment tokens and device keys at every applied commit.
    pub fn new(
        config: RunConfig,
        keys: KeyDir,
        store: Store,
        api: Option<Arc<Api>>,
    ) -> Result<Reconciler, RunError> {
        let spec = config.source.clone().unwrap_or_else(|| {
            let mut spec = SourceSpec::new(config.repo.clone(), config.reference.clone());
            spec.path = config.path.clone();
            spec.interval = config.poll_interval;
            spec.jitter = Duration::ZERO;
            spec
        });
        Reconciler::with_source(config, spec, keys, store, api)
    }

    /// Like [`Reconciler::new`], with the source described in full (credentials, signature
    /// verification) rather than by `config`'s repository, reference, path and interval.
    pub fn with_source(
        config: RunConfig,
        spec: SourceSpec,
        keys: KeyDir,
        store: Store,
        api: Option<Arc<Api>>,
    ) -> Result<Reconciler, RunError> {
        let source =
            GitSource::new(spec, &config.data.join("source")).map_err(|e| err("invalid source")(&e))?;
        Ok(Reconciler {
            timings: SyncTimings::default(),
            declared_digest: None,
            declared_from: None,
            compiler: Compiler::default(),
            config,
            keys,
            store,
            api,
            source: Some(source),
            engine: None,
            desired: None,
            next_refresh: Instant::now(),
            next_prune: Instant::now() + FIRST_PRUNE_AFTER,
        })
    }

    /// The source's state: last applied and attempted commits, failures, next poll.
    pub fn source(&self) -> &GitSource {
        self.source.as_ref().expect("the source is only moved out during a poll")
    }

    /// The fleet in force, if any commit was applied.
    pub fn desired(&self) -> Option<&Desired> {
        self.desired.as_ref()
    }

    /// The inventory.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where the last [`Reconciler::sync_source`] spent its time.
    pub fn sync_timings(&self) -> SyncTimings {
        self.timings
    }

    /// Polls the source and, when its fleet changed, compiles it; a fleet that compiles
    /// is applied: its devices are recorded in the inventory and the engine takes it.
    pub async fn sync_source(&mut self) -> Result<SourceOutcome, RunError> {
        self.timings = SyncTimings::default();
        let started = Instant::now();
        let mut source = self.source.take().expect("the source is only moved out during a poll");
        let (polled, source) = tokio::task::spawn_blocking(move || (source.poll(), source))
            .await
            .map_err(|e| err("the source task failed")(&e))?;
        self.source = Some(source);
        self.timings.fetch = started.elapsed();
        let update = match polled {
            Poll::Changed(update) => update,
            Poll::Unchanged(_) => return Ok(SourceOutcome::Unchanged),
            Poll::Failed(e) => return Ok(SourceOutcome::Failed(e.to_string())),
        };
        let commit = update.revision.commit.to_string();
        let files = update.files;
        let compiling = Instant::now();
        let mut compiler = std::mem::take(&mut self.compiler);
        let (compilation, compiler) =
            tokio::task::spawn_blocking(move || (compiler.compile(&files), compiler))
                .await
                .map_err(|e| err("the compiler failed")(&e))?;
        self.compiler = compiler;
        self.timings.compile = compiling.elapsed();
        let source = self.source.as_mut().expect("source");
        let Some(fleet) = compilation.fleet else {
            let errors: Vec<String> = compilation
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .map(|d| {
                    format!(
                        "{}:{}:{}: {} {}",
                        d.location.file, d.location.line, d.location.column, d.code, d.message
                    )
                })
                .collect();
            let summary =
                format!("{} errors, first: {}", errors.len(), errors.first().map_or("", String::as_str));
            tracing::error!(%commit, "commit refused: {summary}");
            source.rejected(&update.revision, &summary);
            return Ok(SourceOutcome::Refused { commit, errors });
        };
        let declaring = Instant::now();
        let declared_from = DeviceDocuments::of(&compilation.documents);
        if self.declared_from.as_ref() != Some(&declared_from) {
            let declared = declared_devices(&compilation.documents);
            let digest = declared_digest(&declared);
            if self.declared_digest != Some(digest) {
                self.store
                    .sync_declared(&declared, Timestamp::now().as_millisecond())
                    .await
                    .map_err(|e| err("cannot record the declared devices")(&e))?;
                self.declared_digest = Some(digest);
            }
            self.declared_from = Some(declared_from);
        }
        self.timings.declare = declaring.elapsed();
        if let Some(api) = &self.api {
            api.forget_keys();
            api.set_enrollment_tokens(enrollment_tokens(&compilation.documents));
        }
        if self.engine.is_none() {
            let repo = open_repository(&self.config, &self.keys, fleet.devices().len())?;
            self.engine = Some(Engine::new(self.store.clone(), repo, self.config.engine));
        }
        let devices = fleet.devices().len();
        tracing::info!(%commit, devices, "commit applied");
        source.applied(&update.revision);
        self.desired = Some(Desired { fleet: Arc::new(fleet), commit: Some(commit.clone()) });
        Ok(SourceOutcome::Applied { commit, devices })
    }

    /// One engine pass over the fleet in force (nothing before the first applied commit).
    pub async fn step(&mut self, now: Timestamp) -> Result<StepReport, EngineError> {
        match (self.engine.as_mut(), self.desired.as_ref()) {
            (Some(engine), Some(desired)) => engine.step(desired, now).await,
            _ => Ok(StepReport::default()),
        }
    }

    /// Upkeep of the published TUF repository, for the controllers to call after each
    /// pass: what expires within a day is re-signed (hourly, or every quarter of the
    /// timestamp's period when shorter, so that an idle fleet's timestamp never runs out),
    /// and what the last `tuf_keep_snapshots` snapshots no longer name is pruned (an hour
    /// after start, then daily; never when it is 0). Nothing before a repository exists.
    /// Failures are logged, and tried again when next due.
    pub fn maintain_repository(&mut self) {
        let now = Instant::now();
        // A repository published before this process started is kept signed even while no
        // commit is applied yet (a suspended Kubernetes Fleet after a restart).
        if self.engine.is_none() && self.config.tuf_dir().join("waveguide-tuf.json").exists() {
            match open_repository(&self.config, &self.keys, 0) {
                Ok(repo) => self.engine = Some(Engine::new(self.store.clone(), repo, self.config.engine)),
                Err(e) => tracing::error!(tuf = %self.config.tuf_dir().display(), "{e}"),
            }
        }
        if now >= self.next_refresh {
            if let Err(e) = self.with_repository(|repo| repo.refresh(REFRESH_MARGIN).map(drop)) {
                tracing::error!(tuf = %self.config.tuf_dir().display(), "refreshing TUF expiries failed: {e}");
            }
            // Hourly, or four times per timestamp period when that is shorter, so that a
            // short-lived timestamp never runs out between two refreshes.
            let quarter = Duration::try_from(self.config.expiries.timestamp / 4).unwrap_or(REFRESH_EVERY);
            self.next_refresh = now + REFRESH_EVERY.min(quarter).max(Duration::from_secs(1));
        }
        let keep = self.config.tuf_keep_snapshots;
        if keep > 0 && now >= self.next_prune {
            if let Err(e) = self.with_repository(|repo| repo.prune(keep).map(drop)) {
                tracing::error!(tuf = %self.config.tuf_dir().display(), "pruning the TUF repository failed: {e}");
            }
            self.next_prune = now + PRUNE_EVERY;
        }
    }

    /// Runs `work` on the engine's TUF repository, off the async threads.
    fn with_repository(
        &mut self,
        work: impl FnOnce(&mut crate::publish::Repository) -> Result<(), crate::publish::PublishError>,
    ) -> Result<(), crate::publish::PublishError> {
        match self.engine.as_mut() {
            Some(engine) => {
                let repo = engine.repository();
                tokio::task::block_in_place(|| work(repo))
            }
            None => Ok(()),
        }
    }
}

async fn run_loop(
    config: RunConfig,
    keys: KeyDir,
    store: Store,
    api: Arc<Api>,
    wake: Arc<Notify>,
    status: watch::Sender<RunStatus>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let step_interval = config.step_interval;
    let mut reconciler = Reconciler::new(config, keys, store, Some(api))?;
    let _watcher = match reconciler.source().local_path() {
        Some(path) => LocalWatcher::new(&path, wake.clone())
            .map_err(|e| tracing::warn!("cannot watch {}: {e}; polling only", path.display()))
            .ok(),
        None => None,
    };
    let mut next_poll = Instant::now();
    let mut woken = true;
    loop {
        if woken || Instant::now() >= next_poll {
            match reconciler.sync_source().await? {
                SourceOutcome::Applied { commit, devices } => status.send_modify(|s| {
                    s.commit = Some(commit);
                    s.devices = devices;
                }),
                SourceOutcome::Refused { commit, errors } => {
                    status.send_modify(|s| s.refused = Some((commit, errors.join("\n"))))
                }
                SourceOutcome::Unchanged => {}
                SourceOutcome::Failed(e) => tracing::warn!("fleet source: {e}"),
            }
            next_poll = Instant::now() + reconciler.source().status().wait(std::time::SystemTime::now());
            let view = source_view(reconciler.source());
            status.send_modify(|s| s.source = view);
        }
        match reconciler.step(Timestamp::now()).await {
            Ok(report) => {
                for event in &report.events {
                    tracing::info!(event = %serde_json::to_string(event).unwrap_or_default(), "rollout");
                }
                status.send_modify(|s| {
                    s.passes += 1;
                    s.events.extend(report.events);
                    let over = s.events.len().saturating_sub(EVENTS_KEPT);
                    s.events.drain(..over);
                    s.error = None;
                });
            }
            Err(e) => {
                tracing::error!("reconcile pass failed: {e}");
                status.send_modify(|s| {
                    s.passes += 1;
                    s.error = Some(e.to_string());
                });
            }
        }
        reconciler.maintain_repository();
        let until_poll = next_poll.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(step_interval.min(until_poll)) => woken = false,
            _ = wake.notified() => woken = true,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
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
    }
}

fn open_repository(config: &RunConfig, keys: &KeyDir, devices: usize) -> Result<Repository, RunError> {
    let dir = config.tuf_dir();
    let mut repo = if dir.join("waveguide-tuf.json").exists() {
        Repository::open(&dir, keys).map_err(|e| err("cannot open the TUF repository")(&e))?
    } else {
        // Sized for the fleet at its first commit, with room to grow.
        let layout = BinLayout::for_fleet(devices as u64 * 2);
        Repository::create(&dir, keys, RepoConfig { layout, expiries: config.expiries })
            .map_err(|e| err("cannot create the TUF repository")(&e))?
    };
    repo.set_expiries(config.expiries);
    Ok(repo)
}

/// The devices a fleet declares, with their keys, for the inventory.
pub fn declared_devices(documents: &Documents) -> Vec<DeclaredDevice> {
    let mut out = Vec::new();
    for d in &documents.devices {
        let spec = &d.value.spec;
        out.push(DeclaredDevice {
            id: spec.id.clone().unwrap_or_else(|| d.value.metadata.name.clone()),
            group: spec.group.clone(),
            public_key: spec.public_key.clone(),
        });
    }
    for set in &documents.device_sets {
        let spec = &set.value.spec;
        for entry in &spec.devices {
            out.push(DeclaredDevice {
                id: entry.id.clone(),
                group: spec.group.clone(),
                public_key: entry.public_key.clone(),
            });
        }
        if let Some(range) = &spec.range {
            out.extend(range.ids().map(|id| DeclaredDevice {
                id,
                group: spec.group.clone(),
                public_key: None,
            }));
        }
    }
    out
}

/// The groups' enrollment tokens (their SHA-256), for the device API.
pub fn enrollment_tokens(documents: &Documents) -> EnrollmentTokens {
    documents
        .groups
        .iter()
        .filter_map(|g| {
            let enrollment = g.value.spec.enrollment.as_ref()?;
            Some((enrollment.token_sha256.clone(), g.value.metadata.name.clone()))
        })
        .collect()
}
