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
//!
//! [`Reconciler`] (here) is one fleet's engine, which the Kubernetes controller drives too;
//! [`standalone`] runs it in a loop that survives its errors, [`health`] is what that loop
//! reports of itself, and [`startup`] refuses an inventory that does not match the TUF
//! repository.

mod health;
mod standalone;
mod startup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use crate::api::{Api, EnrollmentTokens};
use crate::compile::{Compiler, DeviceDocuments, Documents, Severity};
use crate::inventory::store::{DeclaredDevice, Store, StoreError};
use crate::publish::{BinLayout, Expiries, KeyDir, PublishError, RepoConfig, Repository};
use crate::rollout::engine::{Desired, Engine, EngineConfig, EngineError, StepReport};
use crate::source::{GitReference, GitSource, Poll, SourceError, SourceSpec};

pub use health::{LoopHealth, LoopVerdict, PassFailure, Stage};
pub use standalone::{start, Controller, RunStatus, SourceView};
pub use startup::{check_inventory_matches, Mismatch};

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
    /// How long the loop may go without completing a pass before `/healthz` calls it stuck.
    pub stuck_after: Duration,
    /// Start even when the inventory does not match what the TUF repository published
    /// (see [`check_inventory_matches`]).
    pub allow_inventory_mismatch: bool,
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
            stuck_after: Duration::from_secs(600),
            allow_inventory_mismatch: false,
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

/// Why the controller could not start, or why one step of its loop failed. The large
/// errors are boxed: the Kubernetes controller carries this one in its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A file or directory of the data directory could not be created or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TUF keys could not be opened or created.
    #[error("cannot {action} the TUF keys in {dir}: {source}")]
    Keys {
        action: &'static str,
        dir: PathBuf,
        #[source]
        source: Box<PublishError>,
    },
    /// The TUF repository could not be opened or created.
    #[error("cannot {action} the TUF repository {dir}: {source}")]
    Repository {
        action: &'static str,
        dir: PathBuf,
        #[source]
        source: Box<PublishError>,
    },
    /// The inventory database could not be opened or used.
    #[error(transparent)]
    Inventory(Box<StoreError>),
    /// The inventory does not match the published TUF repository.
    #[error("{0}")]
    Mismatch(Box<Mismatch>),
    /// The source settings (or the webhook's) cannot be used.
    #[error("invalid source settings: {0}")]
    Source(#[source] Box<SourceError>),
    /// The listening address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Work the pass ran off the async threads (Git, the compiler) panicked.
    #[error("the {what} panicked (see the log); the pass is retried")]
    Panicked { what: &'static str },
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> RunError {
        RunError::Inventory(Box::new(e))
    }
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
            GitSource::new(spec, &config.data.join("source")).map_err(|e| RunError::Source(Box::new(e)))?;
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
        let (polled, source) = tokio::task::spawn_blocking(move || {
            // Caught here so that a panic in the Git code loses neither the source nor its
            // status: the pass fails, and the next one polls again.
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.poll()));
            (polled, source)
        })
        .await
        .map_err(|_| RunError::Panicked { what: "source" })?;
        self.source = Some(source);
        let polled = polled.map_err(|_| RunError::Panicked { what: "source" })?;
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
        let compiled = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                (compiler.compile(&files), compiler)
            }))
        })
        .await;
        // After a panic the compiler's cache is dropped with it; the default one starts afresh.
        let Ok(Ok((compilation, compiler))) = compiled else {
            return Err(RunError::Panicked { what: "compiler" });
        };
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
                if let Err(e) = self.store.sync_declared(&declared, Timestamp::now().as_millisecond()).await {
                    // Not applied, not refused either: the same commit is offered again
                    // once the backoff has passed.
                    source.apply_failed(&update.revision, &e);
                    return Err(e.into());
                }
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
            let repo = match open_repository(&self.config, &self.keys, fleet.devices().len()) {
                Ok(repo) => repo,
                Err(e) => {
                    source.apply_failed(&update.revision, &e);
                    return Err(e);
                }
            };
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

fn open_repository(config: &RunConfig, keys: &KeyDir, devices: usize) -> Result<Repository, RunError> {
    let dir = config.tuf_dir();
    let mut repo = if dir.join("waveguide-tuf.json").exists() {
        Repository::open(&dir, keys).map_err(|source| RunError::Repository {
            action: "open",
            dir: dir.clone(),
            source: Box::new(source),
        })?
    } else {
        // Sized for the fleet at its first commit, with room to grow.
        let layout = BinLayout::for_fleet(devices as u64 * 2);
        Repository::create(&dir, keys, RepoConfig { layout, expiries: config.expiries }).map_err(
            |source| RunError::Repository { action: "create", dir: dir.clone(), source: Box::new(source) },
        )?
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
