//! `waveguide simulate`: many simulated devices in one process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use url::Url;

use crate::agent::simulate::{device_ids, SimConfig, Simulation};

/// Arguments of `waveguide simulate`.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
#[command(group = clap::ArgGroup::new("fleet").required(true).args(["devices", "ids"]))]
pub struct SimulateArgs {
    /// The controller's base URL (device API and `/tuf/`).
    #[arg(long, env = "WAVEGUIDE_SERVER")]
    pub server: Url,
    /// The TUF root every simulated device trusts at first.
    #[arg(long)]
    pub root: PathBuf,
    /// Simulate this many devices, named `<id-prefix><n>`.
    #[arg(long)]
    pub devices: Option<usize>,
    /// Simulate the device ids in this file (one per line).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Prefix of generated ids.
    #[arg(long, default_value = "sim-")]
    pub id_prefix: String,
    /// Probability that an install fails.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Only updates to this release fail, in every way the other --*-rate flags say.
    #[arg(long)]
    pub fail_release: Option<String>,
    /// Share of devices whose health turns bad --unhealthy-after an install: during the
    /// confirmation they roll back, after it they report the change at once.
    #[arg(long, default_value_t = 0.0)]
    pub unhealthy_rate: f64,
    /// How long after the install those devices turn unhealthy.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub unhealthy_after: Duration,
    /// Probability that a download attempt fails (a transient failure a retry may cure).
    #[arg(long, default_value_t = 0.0)]
    pub download_fail_rate: f64,
    /// Probability that an install attempt hangs and never finishes.
    #[arg(long, default_value_t = 0.0)]
    pub hang_rate: f64,
    /// Probability that a device's agent restarts during an update's confirmation (it
    /// continues from its saved state).
    #[arg(long, default_value_t = 0.0)]
    pub restart_rate: f64,
    /// How often each device runs its health check after an update is committed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// How long an install takes (randomised ±50 %).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub install_time: Duration,
    /// How often each device checks for an instruction.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// How often each device reports when nothing happens.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub report_interval: Duration,
    /// Seed of the device keys: sha256(seed, 0, id) is each device's ed25519 seed.
    #[arg(long, default_value = "waveguide-simulator")]
    pub key_seed: String,
    /// Enroll every device with this token first (for devices not declared in the fleet).
    #[arg(long)]
    pub enroll_token: Option<String>,
    /// The release the devices run at start.
    #[arg(long)]
    pub release: Option<String>,
    /// The version the devices run at start.
    #[arg(long, default_value = "0.0.0")]
    pub version: semver::Version,
    /// Also download and verify the artifacts.
    #[arg(long)]
    pub download: bool,
    /// Stop after this long (default: until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How often to print the counts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
}

/// How long a stop waits for the devices' steps under way.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the simulator.
pub fn run(args: SimulateArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return super::tuf::report_error(&e),
    };
    match runtime.block_on(run_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_async(args: SimulateArgs) -> anyhow::Result<()> {
    for (flag, rate) in [
        ("--fail-rate", args.fail_rate),
        ("--unhealthy-rate", args.unhealthy_rate),
        ("--download-fail-rate", args.download_fail_rate),
        ("--hang-rate", args.hang_rate),
        ("--restart-rate", args.restart_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            anyhow::bail!("{flag} must be between 0 and 1, got {rate}");
        }
    }
    if args.health_interval.is_zero() {
        anyhow::bail!("--health-interval must be longer than 0s");
    }
    let root = std::fs::read(&args.root).with_context(|| format!("reading {}", args.root.display()))?;
    let ids = match (&args.ids, args.devices) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        (None, Some(n)) => device_ids(&args.id_prefix, n),
        (None, None) => unreachable!("clap requires --devices or --ids"),
    };
    let mut config = SimConfig::new(args.server, root);
    config.key_seed = args.key_seed;
    config.enroll_token = args.enroll_token;
    config.poll_interval = args.poll_interval;
    config.report_interval = args.report_interval;
    config.install_time = args.install_time;
    config.fail_rate = args.fail_rate;
    config.fail_release = args.fail_release;
    config.unhealthy_rate = args.unhealthy_rate;
    config.unhealthy_after = args.unhealthy_after;
    config.download_fail_rate = args.download_fail_rate;
    config.hang_rate = args.hang_rate;
    config.restart_rate = args.restart_rate;
    config.health_interval = args.health_interval;
    config.initial_release = args.release;
    config.initial_version = args.version;
    config.download_artifacts = args.download;
    let count = ids.len();
    let signal = super::shutdown_signal();
    tokio::pin!(signal);
    let sim = Simulation::start(config, ids)?;
    eprintln!("simulating {count} devices; Ctrl-C or SIGTERM stops");
    let started = Instant::now();
    let mut ticker = tokio::time::interval(args.stats_interval);
    ticker.tick().await;
    loop {
        let deadline = async {
            match args.duration {
                Some(d) => tokio::time::sleep(d.saturating_sub(started.elapsed())).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            name = &mut signal => {
                eprintln!("{name} received, stopping: each device finishes its step under way");
                break;
            }
            () = deadline => break,
            _ = ticker.tick() => print_stats(&sim, started),
        }
    }
    print_stats(&sim, started);
    // A device waiting on a server that does not answer is not waited for long.
    if tokio::time::timeout(STOP_GRACE, sim.stop()).await.is_err() {
        eprintln!("stopped devices still busy after {STOP_GRACE:?}");
    }
    eprintln!("simulation stopped");
    Ok(())
}

fn print_stats(sim: &Simulation, started: Instant) {
    let stats = sim.stats();
    let states: Vec<String> = stats.by_state.iter().map(|(s, n)| format!("{s}={n}")).collect();
    let releases: Vec<String> = stats.by_release.iter().map(|(r, n)| format!("{r}={n}")).collect();
    println!(
        "{:>6.0}s  {} devices  states: {}  releases: {}  failed attempts: {}  restarts: {}",
        started.elapsed().as_secs_f64(),
        stats.devices,
        states.join(" "),
        releases.join(" "),
        stats.failed_attempts,
        stats.restarts
    );
}
