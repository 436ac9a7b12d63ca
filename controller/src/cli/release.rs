//! `waveguide release sign`: a release engineer signs the `releases` role offline, from
//! the fleet's `Release` documents, for the controller to publish as it is.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use jiff::SignedDuration;

use super::tuf::report_error;
use crate::compile::load::load;
use crate::protocol::duration::parse_duration;
use crate::publish::{sign_releases, write_atomic, KeyDir, ReleaseArtifact};
use crate::source::{FleetFile, FleetFiles};

/// The file `release sign` writes beside the release files, and the controller reads at
/// the fleet's root.
pub const RELEASES_FILE: &str = "releases.json";

/// Sign releases with the offline release keys.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Sign the `releases` role listing every artifact of the `Release` documents in the
    /// files given (by name, url, sha256 and length).
    Sign(SignArgs),
}

/// Arguments of `release sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Key directory holding the release keys (`release-keys/`, from `waveguide keys init`).
    #[arg(long, env = "WAVEGUIDE_RELEASE_KEYS")]
    pub keys: PathBuf,
    /// Where to write the signed file. Default: `releases.json` beside the first file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The `releases` file signed before; the new one gets its version plus one.
    /// Default: the output file when it exists, else the first `releases` that
    /// `keys init` signed in the key directory.
    #[arg(long)]
    pub previous: Option<PathBuf>,
    /// How long the signed file stays valid. Sign again before it expires.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub expiry: SignedDuration,
    /// Fleet files holding the `Release` documents to list: every release devices may
    /// still be told to run, since the new version replaces the previous one.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs a `release` subcommand.
pub fn run(command: ReleaseCommand) -> ExitCode {
    let ReleaseCommand::Sign(args) = command;
    let mut files = Vec::with_capacity(args.files.len());
    for path in &args.files {
        match std::fs::read(path) {
            Ok(bytes) => {
                files.push(FleetFile { path: Arc::from(path.display().to_string()), contents: bytes.into() })
            }
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let (documents, diagnostics) = load(&FleetFiles::new(files));
    let errors: Vec<_> = diagnostics.iter().filter(|d| d.is_error()).collect();
    if !errors.is_empty() {
        for d in errors {
            eprintln!("{}: error[{}]: {}", d.location, d.code, d.message);
        }
        return ExitCode::FAILURE;
    }
    if documents.releases.is_empty() {
        eprintln!("error: no Release document in the files given");
        return ExitCode::FAILURE;
    }
    let artifacts: Vec<ReleaseArtifact> = documents
        .releases
        .iter()
        .flat_map(|r| {
            r.value.spec.artifacts.iter().map(|a| ReleaseArtifact {
                release: r.value.metadata.name.clone(),
                name: a.name.clone(),
                url: a.url.clone(),
                sha256: a.sha256.clone(),
                length: a.length,
                file: None,
            })
        })
        .collect();
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.files[0].parent().unwrap_or_else(|| ".".as_ref()).join(RELEASES_FILE));
    let previous = args.previous.clone().or_else(|| output.exists().then(|| output.clone()));
    let result = KeyDir::open_release_keys(&args.keys)
        .and_then(|keys| sign_releases(&keys, &artifacts, previous.as_deref(), args.expiry))
        .and_then(|(version, bytes)| {
            write_atomic(&output, &bytes, true)?;
            Ok(version)
        });
    match result {
        Ok(version) => {
            println!(
                "signed releases version {version}: {} releases, {} artifacts, written to {}",
                documents.releases.len(),
                artifacts.len(),
                output.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => report_error(&e),
    }
}
