//! `waveguide crds`: write the CustomResourceDefinitions of `Fleet` and `FleetRollout`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::k8s::crd;

/// Write the CustomResourceDefinitions generated from the Rust types to
/// `<out>/<name>.yaml`, for `kubectl apply` and the Helm chart.
#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// The directory to write them to (created if missing).
    #[arg(long, default_value = "crds")]
    pub out: PathBuf,
}

/// Runs `waveguide crds`. Exit codes: 0 written, 2 the files could not be written.
pub fn run(args: &CrdsArgs) -> ExitCode {
    super::write_generated(&args.out, crd::files())
}
