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
    super::write_generated(&args.out, schema::files())
}
