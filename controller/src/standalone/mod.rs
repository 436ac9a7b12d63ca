//! The standalone controller behind `waveguide run` and `waveguide demo`: one fleet's
//! [`Engine`] in a loop, in one process, with the device API, the TUF files and the
//! operators' API served beside it.
//!
//! ```text
//!  poll / notify / webhook / operator action ──► Engine::pass ──► TUF repository
//!                                                (source → decide →  (served under /tuf/
//!                                                 publish → record)   with the device API)
//! ```
//!
//! Everything lives under one data directory: `keys/` (created on first start when no key
//! directory is given), `tuf/` (the repository, sized for the fleet at its first commit),
//! `inventory.sqlite` (unless a database URL is given), `source/` (the Git mirror) and
//! `admin-token` (the operators' bearer token).
//!
//! [`process`] runs the engine in a loop that survives its errors, [`health`] is what that
//! loop reports of itself, and [`startup`] refuses an inventory that does not match the TUF
//! repository.

mod health;
mod process;
mod startup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{EngineConfig, EngineError, Setup};
use crate::files::FileError;
use crate::inventory::store::StoreError;
use crate::publish::{Expiries, PublishError};
use crate::source::{GitReference, SourceError, SourceSpec};

pub use health::{LoopHealth, LoopVerdict, PassFailure, Stage};
pub use process::{start, Controller, RunStatus, SourceView};
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

    /// Where the engine keeps its files and how it publishes.
    pub fn setup(&self) -> Setup {
        Setup {
            data: self.data.clone(),
            expiries: self.expiries,
            tuf_keep_snapshots: self.tuf_keep_snapshots,
            rollouts: self.engine,
        }
    }

    /// The source: [`RunConfig::source`] when given, else the repository, reference, path
    /// and poll interval.
    pub fn source_spec(&self) -> SourceSpec {
        self.source.clone().unwrap_or_else(|| {
            let mut spec = SourceSpec::new(self.repo.clone(), self.reference.clone());
            spec.path = self.path.clone();
            spec.interval = self.poll_interval;
            spec.jitter = Duration::ZERO;
            spec
        })
    }
}

/// Why the controller could not start. The large errors are boxed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A file or directory of the data directory could not be created or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The TUF keys could not be opened or created.
    #[error("cannot {action} the TUF keys in {dir}: {source}")]
    Keys {
        /// `open` or `create`.
        action: &'static str,
        /// The key directory.
        dir: PathBuf,
        /// Why.
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
        /// The address asked for.
        addr: SocketAddr,
        /// Why it cannot be bound.
        #[source]
        source: std::io::Error,
    },
    /// The engine could not start, or the TUF repository could not be checked.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> RunError {
        RunError::Inventory(Box::new(e))
    }
}
