//! `waveguide agent`: the device agent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use url::Url;

use crate::agent::{self, Agent, AgentConfig, CommandInstaller, Installer, PollOutcome};
use crate::protocol::DeviceId;

/// Arguments of `waveguide agent`.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct AgentArgs {
    /// The controller's base URL (device API and `/tuf/`).
    #[arg(long, env = "WAVEGUIDE_SERVER")]
    pub server: Url,
    /// This device's id.
    #[arg(long, env = "WAVEGUIDE_DEVICE_ID")]
    pub device_id: DeviceId,
    /// The device key (PKCS#8 ed25519); created with mode 0600 when missing.
    #[arg(long)]
    pub key: PathBuf,
    /// Directory for the agent's state, trusted TUF metadata and downloaded artifacts.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The TUF root shipped with the device (used until the state directory has one).
    #[arg(long)]
    pub root: PathBuf,
    /// Installs a release: `sh -c` with WAVEGUIDE_DEVICE_ID, WAVEGUIDE_RELEASE,
    /// WAVEGUIDE_VERSION and WAVEGUIDE_ARTIFACTS (newline-separated paths) set.
    #[arg(long)]
    pub install_cmd: Option<String>,
    /// Checks health: exit status 0 is healthy. Run during an update's confirmation and
    /// every --health-interval after it, with WAVEGUIDE_DEVICE_ID, WAVEGUIDE_RELEASE and
    /// WAVEGUIDE_VERSION set.
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Makes a confirmed release permanent (e.g. marks the new A/B slot good); run with
    /// WAVEGUIDE_RELEASE, WAVEGUIDE_VERSION, WAVEGUIDE_PREVIOUS_RELEASE and
    /// WAVEGUIDE_PREVIOUS_VERSION set. A failure rolls the update back.
    #[arg(long, env = "WAVEGUIDE_COMMIT_CMD")]
    pub commit_cmd: Option<String>,
    /// Goes back to the previous release when the confirmation fails (e.g. switches back
    /// to the previous slot); run with the same variables as --commit-cmd.
    #[arg(long, env = "WAVEGUIDE_ROLLBACK_CMD")]
    pub rollback_cmd: Option<String>,
    /// How often to run the health command after an update is committed; a health change
    /// is reported at once. A confirmation checks at this interval too, but at least every
    /// 10 s.
    #[arg(long, env = "WAVEGUIDE_HEALTH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// Enroll with this group token before the first report.
    #[arg(long, env = "WAVEGUIDE_ENROLL_TOKEN")]
    pub enroll_token: Option<String>,
    /// The release the device runs before the agent ever ran (factory image).
    #[arg(long)]
    pub release: Option<String>,
    /// The version the device runs before the agent ever ran.
    #[arg(long, default_value = "0.0.0")]
    pub version: semver::Version,
    /// How often to check for a new instruction.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// How often to report when nothing happens.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub report_interval: Duration,
    /// Check once, act on the instruction, report, and exit (non-zero on any error).
    #[arg(long)]
    pub once: bool,
}

/// Runs the agent.
pub fn run(args: AgentArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return super::tuf::report_error(&e),
    };
    match runtime.block_on(run_async(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_async(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if args.health_interval.is_zero() {
        // A zero interval would run the health command in a busy loop.
        anyhow::bail!("--health-interval must be longer than 0s");
    }
    let key = agent::load_or_create_key(&args.key)?;
    let mut config = AgentConfig::new(args.server.clone(), args.device_id.clone());
    config.poll_interval = args.poll_interval;
    config.report_interval = args.report_interval;
    config.health_interval = args.health_interval;
    config.enroll_token = args.enroll_token.clone();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        // No overall limit: an image over a slow link may take long; a stalled one may not.
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let installer = Installer::Command(CommandInstaller {
        install: args.install_cmd,
        health: args.health_cmd,
        commit: args.commit_cmd,
        rollback: args.rollback_cmd,
    });
    let mut agent =
        Agent::open(config, http, key, &args.state_dir, &args.root, (args.release, args.version), installer)?;
    if args.once {
        let outcome = agent.once().await?;
        let state = agent.state();
        println!(
            "{}: {} (runs {} {}, {})",
            args.device_id,
            describe(&outcome),
            state.release.as_deref().unwrap_or("-"),
            state.version,
            state.state.as_str()
        );
        return Ok(match outcome {
            PollOutcome::Failed { .. } | PollOutcome::RolledBack { .. } => ExitCode::FAILURE,
            _ => ExitCode::SUCCESS,
        });
    }
    tracing::info!(device = %args.device_id, server = %args.server, "agent started");
    let signal = super::shutdown_signal();
    let stop = async {
        let name = signal.await;
        tracing::info!(device = %args.device_id, "{name} received, stopping");
    };
    // The step under way (an install, a report) finishes first; the state is saved.
    agent.run_until(stop, false).await;
    tracing::info!(device = %args.device_id, "agent stopped");
    Ok(ExitCode::SUCCESS)
}

fn describe(outcome: &PollOutcome) -> String {
    match outcome {
        PollOutcome::NoInstruction => "no instruction".into(),
        PollOutcome::UpToDate => "up to date".into(),
        PollOutcome::AlreadyFailed => "instruction failed before; waiting for a new one or a retry".into(),
        PollOutcome::Confirming => "confirming".into(),
        PollOutcome::Held { next_open: Some(t) } => format!("held until the maintenance window at {t}"),
        PollOutcome::Held { next_open: None } => "held: no maintenance window ever opens".into(),
        PollOutcome::Installed { healthy: true } => "installed".into(),
        PollOutcome::Installed { healthy: false } => "installed, health check failed".into(),
        PollOutcome::Failed { failure, error } => format!("update failed ({}): {error}", failure.as_str()),
        PollOutcome::RolledBack { failure, error } => format!("rolled back ({}): {error}", failure.as_str()),
    }
}
