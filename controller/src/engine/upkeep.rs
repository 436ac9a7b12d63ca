//! Upkeep of the published TUF repository between passes: what expires soon is re-signed,
//! and old versions are pruned. The standalone loop and the Kubernetes reconciler both
//! have it done through [`Engine::pass`] (a suspended Kubernetes Fleet calls
//! [`Engine::maintain_repository`] alone, so that its devices are not stranded).

use std::time::{Duration, Instant};

use jiff::SignedDuration;

use super::{Engine, EngineError, Rollouts, Setup};
use crate::publish::{BinLayout, KeyDir, PublishError, RepoConfig, Repository};

/// How often the controllers re-sign what expires within [`REFRESH_MARGIN`].
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
const REFRESH_MARGIN: SignedDuration = SignedDuration::from_hours(24);
/// How often they prune the TUF repository (the first time one period after start).
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);
pub(super) const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(3600);

impl Engine {
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
        if self.rollouts.is_none() && self.setup.tuf_dir().join("waveguide-tuf.json").exists() {
            match open_repository(&self.setup, &self.keys, 0) {
                Ok(repo) => {
                    self.rollouts = Some(Rollouts::new(self.store.clone(), repo, self.setup.rollouts))
                }
                Err(e) => tracing::error!(tuf = %self.setup.tuf_dir().display(), "{e}"),
            }
        }
        if now >= self.next_refresh {
            if let Err(e) = self.with_repository(|repo| repo.refresh(REFRESH_MARGIN).map(drop)) {
                tracing::error!(tuf = %self.setup.tuf_dir().display(), "refreshing TUF expiries failed: {e}");
            }
            // Hourly, or four times per timestamp period when that is shorter, so that a
            // short-lived timestamp never runs out between two refreshes.
            let quarter = Duration::try_from(self.setup.expiries.timestamp / 4).unwrap_or(REFRESH_EVERY);
            self.next_refresh = now + REFRESH_EVERY.min(quarter).max(Duration::from_secs(1));
        }
        let keep = self.setup.tuf_keep_snapshots;
        if keep > 0 && now >= self.next_prune {
            if let Err(e) = self.with_repository(|repo| repo.prune(keep).map(drop)) {
                tracing::error!(tuf = %self.setup.tuf_dir().display(), "pruning the TUF repository failed: {e}");
            }
            self.next_prune = now + PRUNE_EVERY;
        }
    }

    /// Runs `work` on the engine's TUF repository, off the async threads.
    fn with_repository(
        &mut self,
        work: impl FnOnce(&mut Repository) -> Result<(), PublishError>,
    ) -> Result<(), PublishError> {
        match self.rollouts.as_mut() {
            Some(rollouts) => {
                let repo = rollouts.repository();
                tokio::task::block_in_place(|| work(repo))
            }
            None => Ok(()),
        }
    }
}

/// Opens the fleet's TUF repository, or creates it sized for `devices`.
pub(super) fn open_repository(
    setup: &Setup,
    keys: &KeyDir,
    devices: usize,
) -> Result<Repository, EngineError> {
    let dir = setup.tuf_dir();
    let mut repo = if dir.join("waveguide-tuf.json").exists() {
        Repository::open(&dir, keys).map_err(|source| EngineError::Repository {
            action: "open",
            dir: dir.clone(),
            source: Box::new(source),
        })?
    } else {
        // Sized for the fleet at its first commit, with room to grow.
        let layout = BinLayout::for_fleet(devices as u64 * 2);
        Repository::create(&dir, keys, RepoConfig { layout, expiries: setup.expiries }).map_err(|source| {
            EngineError::Repository { action: "create", dir: dir.clone(), source: Box::new(source) }
        })?
    };
    repo.set_expiries(setup.expiries);
    Ok(repo)
}
