//! The engine: one fleet's pass, for `waveguide run` and the Kubernetes controller alike.
//!
//! ```text
//!  read ─────────────────────────► decide ──────────► publish ──────────► record
//!  source: poll, compile,          pure: which         one TUF commit      the inventory:
//!   declared devices (source.rs)   rollouts start,     (rollouts.rs)       what was published,
//!  inventory: reports since the    supersede, which                        rollouts' new state
//!   last pass, rollouts, waves,    devices go out in                       (compare-and-swap
//!   members (rollouts.rs)          which wave, halt,                        on the revision)
//!                                  complete (decide.rs)
//! ```
//!
//! [`Engine::pass`] is that sequence; the standalone loop ([`crate::standalone`]) and the
//! Kubernetes reconciler ([`crate::k8s`]) call it and only report what it did. Each pass
//! is level-based: it recomputes from the fleet in force and the inventory, can be
//! repeated or interrupted at any point, and writes nothing when nothing changed. The TUF
//! commit comes before the database records it, so a crash in between is repaired by the
//! next pass (see [`rollouts`]). [`upkeep`] keeps the published metadata signed and
//! pruned between passes.

pub mod decide;
mod rollback;
pub mod rollouts;
mod source;
mod step;
mod upkeep;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;

use crate::api::Api;
use crate::compile::{Compiler, DeviceDocuments};
use crate::inventory::store::{Store, StoreError};
use crate::publish::{Expiries, KeyDir, PublishError};
use crate::source::{GitSource, SourceError, SourceSpec};

pub use decide::{Decision, Member, PassInput, Publication, PIN_ROLLOUT};
pub use rollouts::{
    instruction, release_artifacts, Desired, EngineConfig, Event, Rollouts, StepError, StepReport,
    StepTimings,
};
pub use source::{declared_devices, enrollment_tokens, SourceOutcome, SyncTimings};

/// Where a fleet's engine keeps its files and how it publishes.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The fleet's data directory: the Git mirror in `source/`, the TUF repository in
    /// `tuf/` (sized for the fleet at its first commit).
    pub data: PathBuf,
    /// Expiries of new TUF metadata.
    pub expiries: Expiries,
    /// Snapshots the daily TUF prune keeps, the published one included; 0 never prunes.
    pub tuf_keep_snapshots: u64,
    /// The rollouts' settings.
    pub rollouts: EngineConfig,
}

impl Setup {
    /// The TUF repository directory.
    pub fn tuf_dir(&self) -> PathBuf {
        self.data.join("tuf")
    }
}

/// Why the engine could not start, or why applying a commit failed. The large errors are
/// boxed: the Kubernetes controller carries this one in its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The source settings cannot be used.
    #[error("invalid source settings: {0}")]
    Source(#[source] Box<SourceError>),
    /// The TUF repository could not be opened or created.
    #[error("cannot {action} the TUF repository {dir}: {source}")]
    Repository {
        /// `open` or `create`.
        action: &'static str,
        /// The repository directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<PublishError>,
    },
    /// The inventory database failed.
    #[error(transparent)]
    Inventory(Box<StoreError>),
    /// Work the pass ran off the async threads (Git, the compiler) panicked.
    #[error("the {what} panicked (see the log); the pass is retried")]
    Panicked {
        /// What panicked.
        what: &'static str,
    },
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> EngineError {
        EngineError::Inventory(Box::new(e))
    }
}

/// What one [`Engine::pass`] did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// What syncing the source found, when the pass polled it.
    pub source: Option<Result<SourceOutcome, EngineError>>,
    /// The rollouts' step, unless the pass was told it may not write.
    pub step: Option<Result<StepReport, StepError>>,
}

/// The engine of one fleet: its source, the fleet in force, the inventory and the TUF
/// repository. Each call does one level-based step and can be repeated safely.
pub struct Engine {
    timings: SyncTimings,
    /// A digest of the declared devices last recorded: a commit that leaves them as
    /// they were (a policy change, say) skips the comparison with the inventory.
    declared_digest: Option<[u8; 32]>,
    /// The documents the declared devices were last read from: when a commit leaves them
    /// all in place, even the digest is skipped.
    declared_from: Option<DeviceDocuments>,
    /// Keeps the parsed files of the last commit, so the next one parses only what changed.
    compiler: Compiler,
    setup: Setup,
    keys: KeyDir,
    store: Store,
    api: Option<Arc<Api>>,
    source: Option<GitSource>,
    rollouts: Option<Rollouts>,
    desired: Option<Desired>,
    /// When [`Engine::maintain_repository`] next re-signs expiring TUF roles.
    next_refresh: Instant,
    /// When it next prunes the TUF repository.
    next_prune: Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("data", &self.setup.data).finish_non_exhaustive()
    }
}

impl Engine {
    /// The engine of the fleet `spec` describes (credentials and signature verification
    /// included), keeping its files as `setup` says, signing with `keys` and keeping its
    /// state in `store`. `api`, when given, learns the fleet's enrollment tokens and device
    /// keys at every applied commit.
    pub fn new(
        setup: Setup,
        spec: SourceSpec,
        keys: KeyDir,
        store: Store,
        api: Option<Arc<Api>>,
    ) -> Result<Engine, EngineError> {
        let source =
            GitSource::new(spec, &setup.data.join("source")).map_err(|e| EngineError::Source(Box::new(e)))?;
        Ok(Engine {
            timings: SyncTimings::default(),
            declared_digest: None,
            declared_from: None,
            compiler: Compiler::default(),
            setup,
            keys,
            store,
            api,
            source: Some(source),
            rollouts: None,
            desired: None,
            next_refresh: Instant::now(),
            next_prune: Instant::now() + upkeep::FIRST_PRUNE_AFTER,
        })
    }

    /// One pass: the source when `poll` (a new commit compiled and applied, or refused),
    /// then, when `may_write` still says so, the rollouts' step at the current time and
    /// the repository's upkeep. Errors are returned in the report, each with its part;
    /// none stops the other part. The Kubernetes reconciler calls the two halves
    /// ([`Engine::read`], [`Engine::advance`]) itself, because it reports the source's
    /// outcome, checks its Lease again and applies operators' changes in between.
    pub async fn pass(&mut self, poll: bool, may_write: impl Fn() -> bool) -> PassReport {
        let source = self.read(poll).await;
        let step = if may_write() { Some(self.advance(Timestamp::now()).await) } else { None };
        PassReport { source, step }
    }

    /// The pass's read half: the source synced when `poll`, `None` otherwise.
    pub async fn read(&mut self, poll: bool) -> Option<Result<SourceOutcome, EngineError>> {
        if poll {
            Some(self.sync_source().await)
        } else {
            None
        }
    }

    /// The pass's writing half: the rollouts' step at `now` (decide, publish, record),
    /// then the repository's upkeep (expiring roles re-signed, old versions pruned, when
    /// due) whatever the step's outcome.
    pub async fn advance(&mut self, now: Timestamp) -> Result<StepReport, StepError> {
        let step = self.step(now).await;
        self.maintain_repository();
        step
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

    /// Where the last [`Engine::sync_source`] spent its time.
    pub fn sync_timings(&self) -> SyncTimings {
        self.timings
    }

    /// The rollouts' step over the fleet in force (nothing before the first applied
    /// commit): read, decide, publish, record.
    pub async fn step(&mut self, now: Timestamp) -> Result<StepReport, StepError> {
        match (self.rollouts.as_mut(), self.desired.as_ref()) {
            (Some(rollouts), Some(desired)) => rollouts.step(desired, now).await,
            _ => Ok(StepReport::default()),
        }
    }
}
