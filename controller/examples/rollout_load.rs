//! Load benchmark of a whole rollout: N simulated devices (a separate `waveguide
//! simulate` process), the controller in this process (SQLite, TUF repository, device
//! API on 127.0.0.1), one policy moving every device to a new release in 3 waves
//! (10%, 40%, the rest) with at most `maxConcurrent` devices updating at once.
//!
//! ```sh
//! cargo build --release -p waveguide --bin waveguide --example rollout_load
//! target/release/examples/rollout_load 10000 1000
//! target/release/examples/rollout_load 10000 1000 --bake 2m --confirmation 30s \
//!     --health-interval 30s --unhealthy-rate 0.01 --unhealthy-after 1m
//! ```
//! Arguments: devices (10000), maxConcurrent (1000). With `--bake` every wave bakes and
//! its devices must stay healthy meanwhile: the simulated devices keep checking their
//! health every `--health-interval` after they commit and report a change at once (with
//! `--unhealthy-rate`, that share of them turns unhealthy `--unhealthy-after` the
//! install). Prints the rollout's wall time, the controller's CPU time (over the run and
//! its busiest 10 s) and peak RSS, and reports stored per second; the simulator's own
//! CPU and RSS are printed apart.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};
use waveguide::agent::simulate::device_key;
use waveguide::demo::commit_all;
use waveguide::engine::EngineConfig;
use waveguide::inventory::store::RolloutPhase;
use waveguide::rollout::control;
use waveguide::standalone::{self, RunConfig};

const SEED: &str = "rollout-load";

/// The window over which the busiest stretch of the controller's CPU is measured.
const BUSIEST_WINDOW: Duration = Duration::from_secs(10);

/// A whole rollout under load.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated devices.
    #[arg(default_value_t = 10_000)]
    devices: usize,
    /// The policy's `maxConcurrent`.
    #[arg(default_value_t = 1_000)]
    max_concurrent: usize,
    /// Every wave's bake, during which its devices must stay healthy (none by default).
    #[arg(long, value_parser = humantime::parse_duration)]
    bake: Option<Duration>,
    /// The policy's `confirmation`: how long each device confirms before it commits.
    #[arg(long, value_parser = humantime::parse_duration)]
    confirmation: Option<Duration>,
    /// How often each simulated device checks its health once committed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    health_interval: Duration,
    /// Share of the devices whose health turns bad after installing the new release.
    #[arg(long, default_value_t = 0.0)]
    unhealthy_rate: f64,
    /// How long after the install those devices turn unhealthy.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    unhealthy_after: Duration,
}

fn policy(release: &str, args: &Args) -> String {
    let bake = args.bake.map(|b| format!(", bake: {}", humantime::format_duration(b))).unwrap_or_default();
    let mut policy = format!(
        "apiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata: {{name: fleet}}\nspec:\n  selector: {{groups: [fleet]}}\n  release: {release}\n  rollout:\n    order: spread\n    waves:\n      - {{name: first, percent: 10{bake}}}\n      - {{name: second, percent: 40{bake}}}\n      - {{name: rest{bake}}}\n    maxConcurrent: {}\n",
        args.max_concurrent
    );
    if let Some(confirmation) = args.confirmation {
        let _ = writeln!(policy, "    confirmation: {}", humantime::format_duration(confirmation));
    }
    policy
}

fn release(work: &std::path::Path, name: &str, version: &str) -> String {
    let content = format!("{name} {version}\n").repeat(256);
    let path = work.join(format!("{name}.img"));
    std::fs::write(&path, &content).unwrap();
    format!(
        "apiVersion: waveguide.dev/v1alpha1\nkind: Release\nmetadata: {{name: {name}}}\nspec:\n  version: {version}\n  artifacts:\n    - name: {name}.img\n      url: file://{}\n      sha256: {}\n      length: {}\n",
        path.display(),
        hex::encode(Sha256::digest(content.as_bytes())),
        content.len()
    )
}

fn rusage(who: i32) -> (f64, f64) {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let cpu = usage.ru_utime.tv_sec as f64
        + usage.ru_utime.tv_usec as f64 / 1e6
        + usage.ru_stime.tv_sec as f64
        + usage.ru_stime.tv_usec as f64 / 1e6;
    (cpu, usage.ru_maxrss as f64 / 1024.0)
}

async fn reports_stored(base: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("waveguide_api_reports_stored_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let devices = args.devices;
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let repo = work.join("fleet");
    std::fs::create_dir_all(&repo).unwrap();

    // 100 sites under one group, the devices spread over them, keys the simulator derives.
    let ids = waveguide::agent::simulate::device_ids("sim-", devices);
    let mut groups =
        String::from("apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: fleet}\nspec: {}\n");
    let mut sets = String::new();
    for site in 0..100 {
        let _ = write!(
            groups,
            "---\napiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {{name: site-{site:03}}}\nspec: {{parent: fleet}}\n"
        );
        let _ = write!(
            sets,
            "---\napiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {{name: site-{site:03}}}\nspec:\n  group: site-{site:03}\n  devices:\n"
        );
        for id in ids.iter().skip(site).step_by(100) {
            let _ =
                writeln!(sets, "    - id: {id}\n      publicKey: {}", device_key(SEED, id).public_key_b64());
        }
    }
    std::fs::write(repo.join("groups.yaml"), groups).unwrap();
    std::fs::write(repo.join("devices.yaml"), sets.trim_start_matches("---\n")).unwrap();
    std::fs::write(repo.join("v1.yaml"), release(work, "v1", "1.0.0")).unwrap();
    std::fs::write(repo.join("v2.yaml"), release(work, "v2", "2.0.0")).unwrap();
    std::fs::write(repo.join("policy.yaml"), policy("v1", &args)).unwrap();
    let git =
        git2::Repository::init_opts(&repo, git2::RepositoryInitOptions::new().initial_head("main")).unwrap();
    commit_all(&git, "fleet on v1").unwrap();

    let mut config = RunConfig::new(repo.display().to_string(), work.join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.poll_interval = Duration::from_secs(1);
    config.step_interval = Duration::from_millis(500);
    config.engine = EngineConfig { stale_after: SignedDuration::from_mins(5) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (controller, task) = standalone::start(config.clone(), async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let addr = controller.status.borrow().listening.unwrap();
    let base = format!("http://{addr}");
    let root = config.tuf_dir().join("metadata/1.root.json");
    while !root.exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let binary = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("waveguide");
    let mut simulator = Command::new(&binary)
        .args(["simulate", "--server", &base, "--root"])
        .arg(&root)
        .args(["--devices", &devices.to_string(), "--id-prefix", "sim-", "--key-seed", SEED])
        .args(["--release", "v1", "--version", "1.0.0", "--download"])
        .args([
            "--install-time",
            "2s",
            "--poll-interval",
            "5s",
            "--report-interval",
            "30s",
            "--stats-interval",
            "1h",
        ])
        .args(["--health-interval", &humantime::format_duration(args.health_interval).to_string()])
        .args(["--unhealthy-rate", &args.unhealthy_rate.to_string(), "--fail-release", "v2"])
        .args(["--unhealthy-after", &humantime::format_duration(args.unhealthy_after).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));

    let store = controller.store.clone();
    let online = Instant::now();
    while store.inventory().await.unwrap().len() < devices {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{devices} devices online in {:.1?}", online.elapsed());

    std::fs::write(repo.join("policy.yaml"), policy("v2", &args)).unwrap();
    let (cpu0, _) = rusage(libc::RUSAGE_SELF);
    let reports0 = reports_stored(&base).await;
    let started = Instant::now();
    commit_all(&git, "fleet to v2").unwrap();
    let mut peak_in_flight = 0;
    // (when, CPU seconds so far) over the last window, for the busiest stretch.
    let mut samples: VecDeque<(Instant, f64)> = VecDeque::from([(started, cpu0)]);
    let mut busiest: f64 = 0.0;
    let status = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let (cpu, _) = rusage(libc::RUSAGE_SELF);
        while samples.len() > 1 && now.duration_since(samples[1].0) >= BUSIEST_WINDOW {
            samples.pop_front();
        }
        let (since, cpu_then) = samples[0];
        if now.duration_since(since) >= BUSIEST_WINDOW {
            busiest = busiest.max((cpu - cpu_then) / now.duration_since(since).as_secs_f64());
        }
        samples.push_back((now, cpu));
        let list = control::list(&store, SignedDuration::from_mins(5), Timestamp::now()).await.unwrap();
        let Some(r) = list.into_iter().next() else { continue };
        peak_in_flight = peak_in_flight.max(r.total.in_flight);
        if matches!(r.phase, RolloutPhase::Completed | RolloutPhase::Halted) {
            break r;
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, rss) = rusage(libc::RUSAGE_SELF);
    let reports = reports_stored(&base).await - reports0;
    simulator.kill().unwrap();
    simulator.wait().unwrap();
    let (sim_cpu, sim_rss) = rusage(libc::RUSAGE_CHILDREN);
    let _ = stop.send(());
    let _ = task.await;

    let health = match (args.bake, args.confirmation) {
        (None, None) => String::new(),
        (bake, confirmation) => format!(
            ", bake {}, confirmation {}, health checked every {}, {}% turning unhealthy {} after the install",
            bake.map_or("none".into(), |b| humantime::format_duration(b).to_string()),
            confirmation.map_or("none".into(), |c| humantime::format_duration(c).to_string()),
            humantime::format_duration(args.health_interval),
            args.unhealthy_rate * 100.0,
            humantime::format_duration(args.unhealthy_after),
        ),
    };
    println!(
        "rollout of {devices} devices in 3 waves, maxConcurrent {}{health}: {}",
        args.max_concurrent, status.phase
    );
    for w in &status.waves {
        println!(
            "  wave {} {}: {} devices, {} healthy, {} failed",
            w.index + 1,
            w.name,
            w.progress.size,
            w.progress.healthy,
            w.progress.failed
        );
    }
    println!("  wall time        {wall:.1} s (commit to the rollout's end)");
    println!("  controller CPU   {:.1} s ({:.2} cores)", cpu1 - cpu0, (cpu1 - cpu0) / wall);
    println!("  busiest {} s     {busiest:.2} cores", BUSIEST_WINDOW.as_secs());
    println!("  controller RSS   {rss:.0} MiB peak");
    println!("  reports stored   {reports:.0} ({:.0}/s)", reports / wall);
    println!("  most in flight   {peak_in_flight}");
    println!("  simulator        {sim_cpu:.1} s CPU over its whole run, {sim_rss:.0} MiB peak");
}
