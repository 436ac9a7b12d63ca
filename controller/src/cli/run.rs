//! `waveguide run`: the standalone controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::engine::EngineConfig;
use crate::source::GitReference;
use crate::standalone::{self, RunConfig};

/// Run the controller: follow the fleet repository, roll releases out wave by wave, and
/// serve the device API, the TUF repository and the operators' API until interrupted.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The fleet repository: a local path or a Git URL.
    #[arg(long, required_unless_present = "source", conflicts_with = "source")]
    pub repo: Option<String>,
    /// The source in full, as YAML: url, ref, path, interval, auth (token, basic, SSH
    /// key) and signature verification (see docs/source.md). Instead of --repo.
    #[arg(long, value_name = "FILE")]
    pub source: Option<PathBuf>,
    /// The branch to follow.
    #[arg(long, default_value = "main", conflicts_with_all = ["tag", "commit"])]
    pub branch: String,
    /// Follow a tag instead of a branch.
    #[arg(long)]
    pub tag: Option<String>,
    /// Follow one commit.
    #[arg(long)]
    pub commit: Option<String>,
    /// The fleet directory inside the repository.
    #[arg(long, default_value = "")]
    pub path: String,
    /// The data directory: keys, TUF repository, inventory, Git mirror, admin token.
    #[arg(long)]
    pub data: PathBuf,
    /// Where the device API, the TUF files (`/tuf/`) and the operators' API listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The inventory database: a `postgres://` URL or a SQLite file. Default
    /// `<data>/inventory.sqlite`.
    #[arg(long)]
    pub database: Option<String>,
    /// The TUF key directory (from `waveguide keys init`). Default `<data>/keys`, created
    /// on first start.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// How often to poll the repository when no notification comes.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// How often the engine checks the gates of running rollouts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub step_interval: Duration,
    /// How long a device may stay silent after its instruction is published before it
    /// counts as stale.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub stale_after: Duration,
    /// Secret of the Git webhook at `POST /v1/hooks/git` (GitHub or GitLab). Also read
    /// from `WAVEGUIDE_WEBHOOK_SECRET`.
    #[arg(long, env = "WAVEGUIDE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Snapshots the daily prune of the TUF repository keeps, the published one included
    /// (older metadata versions and device files nothing kept names are removed); 0 never
    /// prunes.
    #[arg(long, default_value_t = 10)]
    pub tuf_keep_snapshots: u64,
    /// How long the loop may go without completing a pass (failed or not) before
    /// `/healthz` answers 503.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub stuck_after: Duration,
    /// Start even when the inventory database does not match the TUF repository in the
    /// data directory (it is empty, or does not know the rollouts the repository
    /// published): rollouts then start afresh. Without it such a start is refused.
    #[arg(long)]
    pub allow_inventory_mismatch: bool,
}

impl RunArgs {
    fn config(&self) -> Result<RunConfig, String> {
        let source = match &self.source {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let spec: crate::source::SourceSpec =
                    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                Some(spec)
            }
            None => None,
        };
        let repo = match (&self.repo, &source) {
            (Some(repo), _) => repo.clone(),
            (None, Some(spec)) => spec.url.clone(),
            (None, None) => return Err("give the fleet repository with --repo or --source".into()),
        };
        let mut config = RunConfig::new(repo, self.data.clone());
        config.source = source;
        config.reference = match (&self.tag, &self.commit) {
            (Some(tag), _) => GitReference::Tag(tag.clone()),
            (_, Some(commit)) => GitReference::Commit(commit.clone()),
            _ => GitReference::Branch(self.branch.clone()),
        };
        config.path = self.path.clone();
        config.listen = self.listen;
        config.database = self.database.clone();
        config.keys = self.keys.clone();
        config.poll_interval = self.poll_interval;
        config.step_interval = self.step_interval;
        config.engine = EngineConfig {
            stale_after: jiff::SignedDuration::try_from(self.stale_after)
                .unwrap_or(jiff::SignedDuration::MAX),
        };
        config.webhook_secret = self.webhook_secret.clone();
        config.tuf_keep_snapshots = self.tuf_keep_snapshots;
        config.stuck_after = self.stuck_after;
        config.allow_inventory_mismatch = self.allow_inventory_mismatch;
        Ok(config)
    }
}

pub fn run(args: &RunArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let signal = super::shutdown_signal();
        let shutdown = async {
            let name = signal.await;
            eprintln!(
                "waveguide: {name} received, stopping: finishing the pass under way and the open requests"
            );
        };
        let config = match args.config() {
            Ok(config) => config,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let (controller, task) = match standalone::start(config.clone(), shutdown).await {
            Ok(started) => started,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let addr = controller.status.borrow().listening.unwrap_or(config.listen);
        eprintln!("waveguide: serving the device API on http://{addr}/v1/, TUF files on http://{addr}/tuf/");
        eprintln!(
            "waveguide: data in {}, admin token in {}",
            config.data.display(),
            config.data.join("admin-token").display()
        );
        match task.await {
            Ok(Ok(())) => {
                eprintln!("waveguide: stopped");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
