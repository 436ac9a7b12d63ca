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
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot create {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    for (name, text) in crd::files() {
        let path = args.out.join(&name);
        // Rewrite only what differs, so an unchanged file keeps its timestamp.
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
