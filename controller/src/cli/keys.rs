//! `waveguide keys`: create the TUF keys and rotate the online key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use jiff::SignedDuration;

use super::tuf::report_error;
use crate::protocol::duration::parse_duration;
use crate::publish::{KeyDir, Repository};

/// Manage the TUF signing keys.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate the offline root keys and the online key, and sign root version 1.
    Init(InitArgs),
    /// Replace the online key: sign a new root with the root keys and re-sign the repository.
    RotateOnline(RotateArgs),
}

/// Arguments of `keys init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Key directory to create.
    #[arg(long, env = "WAVEGUIDE_TUF_KEYS")]
    pub dir: PathBuf,
    /// Number of offline root keys.
    #[arg(long, default_value_t = 1)]
    pub root_keys: usize,
    /// Root key signatures required on a new root.
    #[arg(long, default_value_t = 1)]
    pub root_threshold: usize,
    /// How long the root stays valid (`365d`, `12h`, ...).
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub root_expiry: SignedDuration,
}

/// Arguments of `keys rotate-online`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Key directory, with the offline root keys present.
    #[arg(long, env = "WAVEGUIDE_TUF_KEYS")]
    pub dir: PathBuf,
    /// The repository that must trust the new key.
    #[arg(long, env = "WAVEGUIDE_TUF_REPO")]
    pub repo: PathBuf,
    /// How long the new root stays valid.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub root_expiry: SignedDuration,
}

/// Runs a `keys` subcommand.
pub fn run(command: KeysCommand) -> ExitCode {
    let result = match command {
        KeysCommand::Init(args) => {
            KeyDir::init(&args.dir, args.root_keys, args.root_threshold, args.root_expiry).map(
                |(_, created)| {
                    println!("created keys in {}", args.dir.display());
                    for id in &created.root_keyids {
                        println!("  root key    {id}");
                    }
                    println!("  threshold   {} of {}", created.root_threshold, created.root_keyids.len());
                    println!("  online key  {}", created.online_keyid);
                    println!(
                        "move root-keys/ offline once the repository is created (see docs/operations.md)"
                    );
                },
            )
        }
        KeysCommand::RotateOnline(args) => KeyDir::open(&args.dir)
            .and_then(|keys| {
                let mut repo = Repository::open(&args.repo, &keys)?;
                repo.rotate_online_key(&keys, args.root_expiry)
            })
            .map(|report| {
                println!(
                    "online key rotated: {} roles re-signed, timestamp v{}",
                    report.roles.len(),
                    report.timestamp_version.unwrap_or_default()
                );
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report_error(&e),
    }
}
