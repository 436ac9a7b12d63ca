//! `waveguide tuf`: create the TUF repository, publish a batch, refresh expiring roles.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use jiff::SignedDuration;

use crate::protocol::duration::parse_duration;
use crate::publish::{
    BinLayout, CommitReport, Expiries, KeyDir, PreparedBatch, PublishError, RepoConfig, Repository,
};

/// Manage the published TUF repository.
#[derive(Debug, Subcommand)]
pub enum TufCommand {
    /// Create a repository sized for a fleet and publish its first, empty state.
    Init(InitArgs),
    /// Publish one batch of device instructions and release artifacts as one commit.
    Publish(PublishArgs),
    /// Re-sign roles close to expiry (usually just the timestamp).
    Refresh(RefreshArgs),
    /// Change the number of hashed bins (when the fleet outgrew what they were sized
    /// for), as one metadata commit.
    Rebin(RebinArgs),
    /// Remove metadata versions and device files that the last snapshots no longer refer to.
    Prune(PruneArgs),
}

/// Where the repository and keys are.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// Repository directory (clients fetch `metadata/` and `targets/` under it).
    #[arg(long, env = "WAVEGUIDE_TUF_REPO")]
    pub repo: PathBuf,
    /// Key directory made by `waveguide keys init`.
    #[arg(long, env = "WAVEGUIDE_TUF_KEYS")]
    pub keys: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not flush to disk before the timestamp (only where the storage is made durable
    /// some other way; a killed process is safe either way).
    #[arg(long)]
    pub no_sync: bool,
}

/// Expiry periods (`1d`, `12h`, `30m`, `90s`; negative values sign already-expired
/// metadata, which only tests want).
#[derive(Debug, Args, Default)]
pub struct ExpiryArgs {
    /// Timestamp expiry [stored default: 1d].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub timestamp_expiry: Option<SignedDuration>,
    /// Snapshot and bin expiry [stored default: 7d].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub snapshot_expiry: Option<SignedDuration>,
    /// Targets and releases expiry [stored default: 90d].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub targets_expiry: Option<SignedDuration>,
}

impl ExpiryArgs {
    fn apply(&self, mut e: Expiries) -> Expiries {
        e.timestamp = self.timestamp_expiry.unwrap_or(e.timestamp);
        e.snapshot = self.snapshot_expiry.unwrap_or(e.snapshot);
        e.targets = self.targets_expiry.unwrap_or(e.targets);
        e
    }
}

/// Arguments of `tuf init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Expected fleet size; fixes the number of hashed bins.
    #[arg(long)]
    pub devices: u64,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
}

/// Arguments of `tuf publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Batch file (JSON or YAML): `upserts` (device instructions), `removals` (device
    /// ids), `releases` (artifacts).
    #[arg(long)]
    pub batch: PathBuf,
    /// A `releases` file signed by the release keys (`waveguide release sign`), published
    /// as it is with the batch once checked.
    #[arg(long)]
    pub releases: Option<PathBuf>,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
}

/// Arguments of `tuf refresh`.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Re-sign roles that expire within this margin.
    #[arg(long, default_value = "6h", value_parser = parse_duration, allow_hyphen_values = true)]
    pub margin: SignedDuration,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
}

/// Arguments of `tuf rebin`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("size").required(true).args(["devices", "leaves"])))]
pub struct RebinArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The fleet size to size the bins for, as `tuf init --devices` does.
    #[arg(long)]
    pub devices: Option<u64>,
    /// The number of leaf bins: a power of two (parent roles follow from it).
    #[arg(long)]
    pub leaves: Option<u32>,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
}

/// Arguments of `tuf prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Snapshots to keep, the published one included: clients that fetched one of the
    /// older kept timestamps can still finish their update.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
}

/// Runs a `tuf` subcommand.
pub fn run(command: TufCommand) -> ExitCode {
    let (args, result) = match command {
        TufCommand::Prune(a) => return prune(&a),
        TufCommand::Init(a) => {
            let r = KeyDir::open(&a.repo.keys).and_then(|keys| {
                let config = RepoConfig {
                    layout: BinLayout::for_fleet(a.devices),
                    expiries: a.expiry.apply(Expiries::default()),
                };
                Repository::create(&a.repo.repo, &keys, config).map(|repo| {
                    let l = repo.config().layout;
                    println!(
                        "created {} with {} device bins under {} parent roles",
                        a.repo.repo.display(),
                        l.leaves(),
                        l.parents()
                    );
                    CommitReport {
                        snapshot_version: Some(repo.snapshot_version()),
                        timestamp_version: Some(repo.timestamp_version()),
                        ..CommitReport::default()
                    }
                })
            });
            (a.repo, r)
        }
        TufCommand::Publish(a) => {
            let r = PreparedBatch::read(&a.batch).and_then(|mut batch| {
                if let Some(path) = &a.releases {
                    let bytes = std::fs::read(path).map_err(|e| PublishError::Io {
                        action: "read",
                        path: path.clone(),
                        source: e,
                    })?;
                    batch = batch.with_signed_releases(bytes);
                }
                let mut repo = open(&a.repo, &a.expiry)?;
                repo.commit_prepared(batch)
            });
            (a.repo, r)
        }
        TufCommand::Rebin(a) => {
            let layout = match (a.devices, a.leaves) {
                (Some(devices), _) => Ok(BinLayout::for_fleet(devices)),
                (None, leaves) => BinLayout::with_leaves(leaves.unwrap_or_default()),
            };
            let r = layout.and_then(|layout| {
                let mut repo = open(&a.repo, &a.expiry)?;
                let before = repo.config().layout;
                let report = repo.rebin(layout)?;
                if a.repo.json {
                } else if layout == before {
                    println!(
                        "already {} device bins under {} parent roles",
                        layout.leaves(),
                        layout.parents()
                    );
                } else {
                    println!(
                        "re-binned {} devices from {} bins under {} parents to {} bins under {} parents",
                        report.devices_changed,
                        before.leaves(),
                        before.parents(),
                        layout.leaves(),
                        layout.parents()
                    );
                }
                Ok(report)
            });
            (a.repo, r)
        }
        TufCommand::Refresh(a) => {
            let r = open(&a.repo, &a.expiry).and_then(|mut repo| repo.refresh(a.margin));
            (a.repo, r)
        }
    };
    match result {
        Ok(report) => {
            print_report(&report, args.json);
            ExitCode::SUCCESS
        }
        Err(e) => report_error(&e),
    }
}

fn prune(args: &PruneArgs) -> ExitCode {
    let report = match open(&args.repo, &ExpiryArgs::default()).and_then(|mut repo| repo.prune(args.keep)) {
        Ok(report) => report,
        Err(e) => return report_error(&e),
    };
    if args.repo.json {
        println!("{}", serde_json::to_string(&report).expect("a prune report serialises"));
    } else {
        let kept = match report.snapshots_kept.as_slice() {
            [only] => format!("snapshot {only}"),
            [first, .., last] => format!("snapshots {first} to {last}"),
            [] => "no snapshot".to_owned(),
        };
        println!(
            "kept {kept}; removed {} metadata files and {} device files ({} bytes)",
            report.metadata_files, report.target_files, report.bytes
        );
    }
    ExitCode::SUCCESS
}

fn open(args: &RepoArgs, expiry: &ExpiryArgs) -> Result<Repository, PublishError> {
    let keys = KeyDir::open(&args.keys)?;
    let mut repo = Repository::open(&args.repo, &keys)?;
    let expiries = expiry.apply(repo.config().expiries);
    repo.set_expiries(expiries);
    repo.set_sync(!args.no_sync);
    Ok(repo)
}

fn print_report(report: &CommitReport, json: bool) {
    if json {
        let value = serde_json::json!({
            "roles": report.roles,
            "devices_changed": report.devices_changed,
            "target_files": report.target_files,
            "target_bytes": report.target_bytes,
            "metadata_bytes": report.metadata_bytes(),
            "bytes_written": report.bytes_written(),
            "snapshot_version": report.snapshot_version,
            "timestamp_version": report.timestamp_version,
        });
        println!("{value}");
        return;
    }
    if report.roles.is_empty() && report.timestamp_version.is_none() {
        println!("nothing changed; nothing written");
        return;
    }
    if report.roles.is_empty() {
        // A new repository: its first state was written by `create`.
        println!("published the empty repository");
    } else {
        println!(
            "wrote {} metadata files ({} bytes) and {} target files ({} bytes) for {} devices",
            report.roles.len(),
            report.metadata_bytes(),
            report.target_files,
            report.target_bytes,
            report.devices_changed
        );
    }
    if let Some(v) = report.snapshot_version {
        println!("snapshot version {v}");
    }
    if let Some(v) = report.timestamp_version {
        println!("timestamp version {v}");
    }
}

/// Prints an error with its causes and returns the failure exit code.
pub(crate) fn report_error(e: &dyn std::error::Error) -> ExitCode {
    let mut message = format!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    eprintln!("{message}");
    ExitCode::FAILURE
}
