//! The simulator against a real device API, SQLite inventory and TUF repository on
//! 127.0.0.1: every simulated device verifies its own TUF metadata, installs, and
//! reports with its own derived key.

use std::time::{Duration, Instant};

use waveguide::agent::simulate::{device_ids, device_key, SimConfig, Simulation};
use waveguide::protocol::{FailureClass, UpdateState};
use waveguide::publish::Batch;
use waveguide_tests::agent::{instruction, Controller};
use waveguide_tests::waveguide;

const SEED: &str = "agent-simulate-test";

async fn fleet(c: &Controller, ids: &[String]) {
    let keys: Vec<(&str, String)> =
        ids.iter().map(|id| (id.as_str(), device_key(SEED, id).public_key_b64())).collect();
    c.declare(&keys).await;
}

fn config(c: &Controller) -> SimConfig {
    let mut config = SimConfig::new(c.base.clone(), c.root_bytes());
    config.key_seed = SEED.into();
    config.poll_interval = Duration::from_millis(300);
    config.report_interval = Duration::from_secs(2);
    config.install_time = Duration::from_millis(200);
    config
}

/// Waits until `done` holds for the simulation's counts, or fails after `limit`.
async fn wait_for(
    sim: &Simulation,
    limit: Duration,
    done: impl Fn(&waveguide::agent::simulate::SimStats) -> bool,
) {
    let start = Instant::now();
    loop {
        let stats = sim.stats();
        if done(&stats) {
            return;
        }
        assert!(start.elapsed() < limit, "timed out: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_install_and_the_failing_release_fails_everywhere() {
    let c = Controller::start().await;
    let ids = device_ids("sim-", 200);
    fleet(&c, &ids).await;
    let upserts = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            if i % 2 == 0 {
                instruction(id, "good", "2.0.0", &[])
            } else {
                instruction(id, "bad", "2.1.0", &[])
            }
        })
        .collect();
    c.publish(Batch { upserts, ..Batch::default() });

    let mut config = config(&c);
    config.fail_rate = 1.0;
    config.fail_release = Some("bad".into());
    let sim = Simulation::start(config, ids.clone()).unwrap();
    wait_for(&sim, Duration::from_secs(60), |s| {
        s.by_state.get("installed") == Some(&100) && s.by_state.get("failed") == Some(&100)
    })
    .await;
    let stats = sim.stats();
    assert_eq!(stats.by_release.get("good"), Some(&100));
    assert_eq!(stats.by_release.get("-"), Some(&100), "failed devices still run nothing");
    assert_eq!(stats.failed_attempts, 100, "a failed instruction is not retried");
    // Let the last reports land, then check the inventory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.stop().await;
    let inventory = c.api.store().inventory().await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let report = inventory.get(id).unwrap_or_else(|| panic!("{id} reported"));
        if i % 2 == 0 {
            assert_eq!(
                (report.state, report.release.as_deref()),
                (UpdateState::Installed, Some("good")),
                "{id}"
            );
        } else {
            assert_eq!(report.state, UpdateState::Failed, "{id}");
            let history = c.api.store().history(id, 100).await.unwrap();
            let failed = history.iter().find(|r| r.report.state == UpdateState::Failed).unwrap();
            assert!(failed.detail.as_deref().unwrap().contains("simulated install failure of bad 2.1.0"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_command_runs_a_fleet_and_prints_its_counts() {
    let c = Controller::start().await;
    let ids = device_ids("cli-", 20);
    fleet(&c, &ids).await;
    c.publish(Batch {
        upserts: ids.iter().map(|id| instruction(id, "r2", "2.0.0", &[])).collect(),
        ..Batch::default()
    });
    let args: Vec<String> = [
        "simulate",
        "--server",
        c.base.as_str(),
        "--root",
        c.root_file().to_str().unwrap(),
        "--devices",
        "20",
        "--id-prefix",
        "cli-",
        "--key-seed",
        SEED,
        "--poll-interval",
        "200ms",
        "--install-time",
        "100ms",
        "--release",
        "factory",
        "--version",
        "1.0.0",
        "--duration",
        "3s",
        "--stats-interval",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let output =
        tokio::task::spawn_blocking(move || waveguide().args(&args).output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().last().unwrap();
    assert!(last.contains("20 devices  states: installed=20  releases: r2=20"), "{stdout}");
    let inventory = c.api.store().inventory().await.unwrap();
    assert!(ids.iter().all(|id| inventory.get(id).is_some_and(|r| r.state == UpdateState::Installed)));
}

/// Publishes `release` to every device of `ids`, confirmed for `confirmation` seconds.
fn publish_to(c: &Controller, ids: &[String], release: &str, confirmation: Option<u64>, attempt: u32) {
    let upserts = ids
        .iter()
        .map(|id| {
            let mut told = instruction(id, release, "2.0.0", &[]);
            told.confirmation_secs = confirmation;
            told.attempt = attempt;
            told
        })
        .collect();
    c.publish(Batch { upserts, ..Batch::default() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_turning_unhealthy_roll_back_and_agents_restarted_mid_confirmation_finish_it() {
    let c = Controller::start().await;
    let ids = device_ids("sick-", 40);
    fleet(&c, &ids).await;
    publish_to(&c, &ids, "r2", Some(2), 0);
    let mut config = config(&c);
    config.health_interval = Duration::from_millis(200);
    config.unhealthy_rate = 0.5;
    config.unhealthy_after = Duration::from_secs(1);
    config.restart_rate = 1.0;
    let sim = Simulation::start(config, ids.clone()).unwrap();
    wait_for(&sim, Duration::from_secs(60), |s| {
        s.by_state.get("installed").unwrap_or(&0) + s.by_state.get("rolled_back").unwrap_or(&0) == 40
    })
    .await;
    let stats = sim.stats();
    let (installed, rolled_back) = (stats.by_state["installed"], stats.by_state["rolled_back"]);
    assert!(installed > 5 && rolled_back > 5, "about half turn unhealthy: {stats:?}");
    assert_eq!(stats.by_release.get("r2"), Some(&installed));
    assert_eq!(stats.by_release.get("-"), Some(&rolled_back), "rolled back to what they ran: {stats:?}");
    assert_eq!(stats.restarts, 40, "every agent restarted once during its confirmation");
    assert_eq!(stats.failed_attempts, rolled_back);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let devices = sim.devices();
    sim.stop().await;
    for device in devices {
        let report = c.last_report(&device.id);
        assert_eq!(report.state, device.state, "{}", device.id);
        if device.state == UpdateState::RolledBack {
            assert_eq!(report.failure, Some(FailureClass::Health), "{}", device.id);
            assert!(report.detail.as_deref().unwrap().contains("simulated health failure of r2"));
            assert!(report.healthy, "{}: healthy again on the release it went back to", device.id);
        }
        let states: Vec<UpdateState> = c.reports(&device.id).iter().map(|r| r.state).collect();
        let installs = states.iter().filter(|s| **s == UpdateState::Installing).count();
        assert_eq!(installs, 1, "{}: the restart did not install again: {states:?}", device.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_download_failures_are_tried_again_on_a_new_attempt_and_hung_installs_stay_installing() {
    let c = Controller::start().await;
    let ids = device_ids("flaky-", 10);
    fleet(&c, &ids).await;
    publish_to(&c, &ids, "r2", None, 0);
    let mut flaky = config(&c);
    flaky.download_fail_rate = 1.0;
    let sim = Simulation::start(flaky, ids.clone()).unwrap();
    wait_for(&sim, Duration::from_secs(30), |s| s.by_state.get("failed") == Some(&10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.stats().failed_attempts, 10, "not tried again on its own");
    assert!(ids.iter().all(|id| c.last_report(id).failure == Some(FailureClass::Download)));
    publish_to(&c, &ids, "r2", None, 1);
    wait_for(&sim, Duration::from_secs(30), |s| s.failed_attempts == 20).await;
    sim.stop().await;

    let ids = device_ids("hung-", 10);
    fleet(&c, &ids).await;
    publish_to(&c, &ids, "r2", None, 0);
    let mut hanging = config(&c);
    hanging.hang_rate = 1.0;
    let sim = Simulation::start(hanging, ids.clone()).unwrap();
    wait_for(&sim, Duration::from_secs(30), |s| s.by_state.get("installing") == Some(&10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim.stats().by_state.get("installing"), Some(&10), "{:?}", sim.stats());
    let stopping = Instant::now();
    sim.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "a hung install does not hold the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_command_takes_the_fault_flags() {
    let c = Controller::start().await;
    let ids = device_ids("cli-", 10);
    fleet(&c, &ids).await;
    publish_to(&c, &ids, "r2", Some(1), 0);
    let run = |faults: &[&str]| {
        let mut command = waveguide();
        command
            .args(["simulate", "--server", c.base.as_str(), "--root", c.root_file().to_str().unwrap()])
            .args(["--devices", "10", "--id-prefix", "cli-", "--key-seed", SEED])
            .args(["--poll-interval", "200ms", "--install-time", "100ms", "--health-interval", "200ms"])
            .args(["--duration", "4s", "--stats-interval", "1s"])
            .args(faults);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let output =
        run(&["--unhealthy-rate", "1", "--unhealthy-after", "0s", "--restart-rate", "1"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().last().unwrap();
    assert!(last.contains("states: rolled_back=10  releases: -=10  failed attempts: 10"), "{stdout}");
    assert!(ids.iter().all(|id| c.last_report(id).failure == Some(FailureClass::Health)));

    let output = run(&["--hang-rate", "1.5"]).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--hang-rate must be between 0 and 1, got 1.5"), "{stderr}");
}

/// A measurement, not a check: `WAVEGUIDE_SIM_DEVICES=2000 cargo nextest run -p
/// waveguide-tests --test agent_simulate --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_a_large_simulation() {
    let n: usize = std::env::var("WAVEGUIDE_SIM_DEVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let poll: u64 = std::env::var("WAVEGUIDE_SIM_POLL_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let c = Controller::start_with(waveguide::publish::BinLayout::for_fleet(n as u64)).await;
    let ids = device_ids("sim-", n);
    fleet(&c, &ids).await;
    let mut config = config(&c);
    config.poll_interval = Duration::from_secs(poll);
    config.report_interval = Duration::from_secs(30);
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let start = Instant::now();
    let sim = Simulation::start(config, ids.clone()).unwrap();
    println!("started {n} agents in {:?}", start.elapsed());
    tokio::time::sleep(Duration::from_secs(poll * 2)).await;
    c.take_requests();
    let (cpu0, t0) = (cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(poll * 3)).await;
    let requests = c.take_requests().len();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "steady state: {:.0} requests/s, {:.2} CPU cores (simulator and server in one process)",
        requests as f64 / secs,
        (cpu() - cpu0) / secs
    );
    // Publish one instruction for every device, as one wave.
    let t = Instant::now();
    c.publish(Batch {
        upserts: ids.iter().map(|id| instruction(id, "r2", "2.0.0", &[])).collect(),
        ..Batch::default()
    });
    println!("published {n} instructions in {:?}", t.elapsed());
    let (cpu0, t0) = (cpu(), Instant::now());
    wait_for(&sim, Duration::from_secs(600), |s| s.by_state.get("installed") == Some(&n)).await;
    println!(
        "all {n} installed {:?} after publishing, {:.2} CPU cores",
        t.elapsed(),
        (cpu() - cpu0) / t0.elapsed().as_secs_f64()
    );
    let rss = std::fs::read_to_string("/proc/self/status").unwrap();
    println!("{}", rss.lines().find(|l| l.starts_with("VmRSS")).unwrap());
    sim.stop().await;
}
