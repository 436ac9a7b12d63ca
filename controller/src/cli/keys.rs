//! `waveguide keys`: create the TUF keys, re-sign `targets` offline, rotate the online key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use jiff::SignedDuration;

use super::tuf::report_error;
use crate::protocol::duration::parse_duration;
use crate::publish::{KeyCount, KeyDir, KeySpec, Repository};

/// Manage the TUF signing keys.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate the offline root, targets and release keys and the online key, and sign
    /// root version 1, `targets` version 1 and an empty `releases`.
    Init(InitArgs),
    /// Sign the next version of `targets` with the offline targets keys (before it
    /// expires); the controller publishes it on its next refresh.
    SignTargets(SignTargetsArgs),
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
    /// Number of offline keys that sign the top-level `targets`.
    #[arg(long, default_value_t = 1)]
    pub targets_keys: usize,
    /// Targets key signatures required on `targets`.
    #[arg(long, default_value_t = 1)]
    pub targets_threshold: usize,
    /// How long `targets` stays valid.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub targets_expiry: SignedDuration,
    /// Number of offline release keys that sign `releases`. 0 lets the online key sign
    /// `releases` (trials only: a stolen online key could then list any artifact).
    #[arg(long, default_value_t = 1)]
    pub release_keys: usize,
    /// Release key signatures required on `releases`.
    #[arg(long, default_value_t = 1)]
    pub release_threshold: usize,
}

/// Arguments of `keys sign-targets`.
#[derive(Debug, Args)]
pub struct SignTargetsArgs {
    /// Key directory, with the offline targets keys present.
    #[arg(long, env = "WAVEGUIDE_TUF_KEYS")]
    pub dir: PathBuf,
    /// How long the new `targets` stays valid.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub expiry: SignedDuration,
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
            let spec = KeySpec {
                root: KeyCount { keys: args.root_keys, threshold: args.root_threshold },
                targets: KeyCount { keys: args.targets_keys, threshold: args.targets_threshold },
                releases: KeyCount { keys: args.release_keys, threshold: args.release_threshold },
                root_expiry: args.root_expiry,
                targets_expiry: args.targets_expiry,
            };
            KeyDir::init(&args.dir, &spec).map(|(_, created)| {
                println!("created keys in {}", args.dir.display());
                for id in &created.root_keyids {
                    println!("  root key     {id}");
                }
                println!("  threshold    {} of {}", created.root_threshold, created.root_keyids.len());
                for id in &created.targets_keyids {
                    println!("  targets key  {id}");
                }
                for id in &created.release_keyids {
                    println!("  release key  {id}");
                }
                if created.release_keyids.is_empty() {
                    println!("  no release keys: the online key signs releases (trials only)");
                }
                println!("  online key   {}", created.online_keyid);
                println!(
                    "move root-keys/, targets-keys/ and release-keys/ offline once the repository is created \
                     (see docs/operations.md)"
                );
            })
        }
        KeysCommand::SignTargets(args) => KeyDir::open(&args.dir)
            .and_then(|keys| keys.resign_targets(args.expiry, None))
            .map(|version| println!("signed targets version {version}")),
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
