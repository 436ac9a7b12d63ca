//! `waveguide demo`: the whole loop on one machine. [`fleet`] makes the fleet repository
//! from `examples/fleet`; [`drive`] runs the controller over it with simulated devices,
//! commits a change and follows the rollouts to their end (the rollback of the beta's
//! halted rollout included), approving manual waves as an operator would. What it shows
//! goes through [`Show`], which the CLI prints.

mod drive;
mod fleet;

use std::path::PathBuf;

use crate::files::FileError;

pub use drive::{run, DemoConfig, Outcome, Show};
pub use fleet::{
    commit_all, commit_change, prepare, BetaWatch, DemoFleet, DemoOptions, BETA_POLICY, BETA_RELEASE,
    OLD_RELEASE, OLD_VERSION,
};

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A file or directory could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The example fleet could not be read.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The example fleet does not load.
    #[error("{} does not load: {file}: {message}", example.display())]
    Example {
        /// The example fleet's directory.
        example: PathBuf,
        /// The file at fault.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A document could not be written or read as YAML.
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// The fleet repository could not be written.
    #[error("git: {}", .0.message())]
    Git(#[from] git2::Error),
    /// The controller could not start.
    #[error(transparent)]
    Run(#[from] crate::standalone::RunError),
    /// The inventory failed.
    #[error(transparent)]
    Inventory(#[from] crate::inventory::store::StoreError),
    /// Approving a wave failed.
    #[error(transparent)]
    Control(#[from] crate::rollout::control::ControlError),
    /// The simulated devices could not start.
    #[error("cannot start the simulated devices: {0:#}")]
    Simulation(anyhow::Error),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Not every device came online.
    #[error("only {seen} of {total} devices came online")]
    Offline {
        /// Devices that reported.
        seen: u64,
        /// Devices of the fleet.
        total: u64,
    },
}
