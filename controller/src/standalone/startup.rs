//! The start-up check of `waveguide run`: the inventory must match the TUF repository it
//! published.
//!
//! The TUF repository holds what devices were told; the inventory holds the rollouts that
//! told them, their waves and gates, and what devices reported. Starting over an inventory
//! that does not know those rollouts (a database file truncated, deleted or replaced,
//! another fleet's database) would start rollouts afresh against published state: waves
//! published again, halted, paused and approved states lost. So such a start is refused,
//! naming both, unless the operator says it is meant (`--allow-inventory-mismatch`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{RunConfig, RunError};
use crate::engine::{EngineError, PIN_ROLLOUT};
use crate::inventory::store::Store;
use crate::publish::sample_instructions;

/// Published instructions the check reads: any one that names a rollout the inventory
/// does not know is proof enough, and reading every device's would cost a million reads
/// at scale.
const SAMPLE: usize = 256;

/// The inventory does not match the published TUF repository.
#[derive(Debug, thiserror::Error)]
#[error(
    "the inventory {database} does not match the TUF repository {}: {reason}. Restore the \
     inventory database that goes with this repository, or, to start over this inventory \
     anyway (rollouts start afresh; devices keep their published instructions until then), \
     pass --allow-inventory-mismatch",
    tuf.display()
)]
pub struct Mismatch {
    /// The inventory database, without credentials.
    pub database: String,
    /// The TUF repository directory.
    pub tuf: PathBuf,
    /// What does not match.
    pub reason: String,
}

/// The check at start: refuses (or, when the configuration allows it, only warns about)
/// an inventory that does not match the TUF repository.
pub(super) async fn check(config: &RunConfig, store: &Store) -> Result<(), RunError> {
    let database = crate::inventory::store::without_password(&config.database_url());
    match check_inventory_matches(&config.tuf_dir(), store, &database).await {
        Err(RunError::Mismatch(mismatch)) if config.allow_inventory_mismatch => {
            tracing::warn!("starting anyway (--allow-inventory-mismatch): {}", mismatch.reason);
            Ok(())
        }
        other => other,
    }
}

/// Checks that the inventory `store` (named `database` in the error) knows the rollouts
/// that the TUF repository at `tuf` published instructions for, and is not empty when
/// the repository published any.
pub async fn check_inventory_matches(tuf: &Path, store: &Store, database: &str) -> Result<(), RunError> {
    let dir = tuf.to_owned();
    let published = tokio::task::spawn_blocking(move || sample_instructions(&dir, SAMPLE))
        .await
        .map_err(|_| EngineError::Panicked { what: "TUF repository check" })?
        .map_err(|source| EngineError::Repository {
            action: "read",
            dir: tuf.to_owned(),
            source: Box::new(source),
        })?;
    let Some(first) = published.first() else { return Ok(()) };
    let mismatch = |reason: String| {
        Err(RunError::Mismatch(Box::new(Mismatch {
            database: database.to_owned(),
            tuf: tuf.to_owned(),
            reason,
        })))
    };
    let rollouts: HashSet<String> = store.rollouts().await?.into_iter().map(|r| r.id).collect();
    if rollouts.is_empty() && store.devices_count().await? == 0 {
        return mismatch(format!(
            "the inventory is empty, but the repository holds published instructions (device {} runs \
             {} from rollout {})",
            first.device, first.release, first.rollout
        ));
    }
    if let Some(unknown) =
        published.iter().find(|i| i.rollout != PIN_ROLLOUT && !rollouts.contains(&i.rollout))
    {
        return mismatch(format!(
            "the repository published rollout {} (device {} runs {}), which the inventory does not know",
            unknown.rollout, unknown.device, unknown.release
        ));
    }
    Ok(())
}
