//! `waveguide schemas`: write the JSON Schemas of the fleet document kinds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::model::schema;

/// Write the JSON Schema of every fleet document kind to `<out>/<kind>.schema.json`, for
/// editors (yaml-language-server) and CI tools.
#[derive(Debug, Args)]
pub struct SchemasArgs {
    /// The directory to write the schemas to (created if missing).
    #[arg(long, default_value = "schemas")]
    pub out: PathBuf,
}

/// Runs `waveguide schemas`. Exit codes: 0 written, 2 the files could not be written.
pub fn run(args: &SchemasArgs) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot create {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    for (name, text) in schema::files() {
        let path = args.out.join(&name);
        // Rewrite only what differs, so an unchanged schema keeps its timestamp.
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
