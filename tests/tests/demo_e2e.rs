//! The demo scenario, smaller, end to end: the example fleet in a Git repository, the
//! controller (`standalone::start`, as `waveguide run` and `waveguide demo` run it) with
//! its TUF repository over real HTTP, and simulated agents that verify their instructions
//! through TUF and report back. Runs once on SQLite and once on PostgreSQL.
//!
//! Asserted throughout the rollout: waves start in order, and no device moves to a new
//! release unless its wave published its instruction. Asserted at the end: the beta,
//! turning unhealthy during its bake, halts and the halt holds, manual approval waits for
//! the operator, a controller restart mid-rollout resumes without publishing any wave
//! twice, and the reference Python TUF client reads the same instructions the agents
//! acted on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use waveguide::agent::simulate::{device_key, SimConfig, Simulation};
use waveguide::demo::{self, BetaWatch, DemoOptions, BETA_RELEASE, OLD_RELEASE};
use waveguide::engine::EngineConfig;
use waveguide::inventory::store::{RolloutPhase, Store, WaveState};
use waveguide::rollout::control::{self, RolloutStatus};
use waveguide::standalone::{self, Controller, RunConfig};
use waveguide_tests::{fresh_postgres_database, repo_root, waveguide};

const SEED: &str = "e2e";
const STALE: SignedDuration = SignedDuration::from_secs(60);

struct Running {
    controller: Controller,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), standalone::RunError>>,
}

async fn start(config: &RunConfig) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (controller, task) = standalone::start(config.clone(), async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    Running { controller, stop, task }
}

impl Running {
    async fn shut_down(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn wait_for<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> F,
) {
    let until = Instant::now() + timeout;
    while !ready().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the invariants that must hold at every moment of a rollout.
struct Watch {
    /// Rollout → when each started wave started.
    started: HashMap<String, Vec<Option<i64>>>,
    /// Rollout → how many devices the halted rollout had published when it halted.
    halted_published: HashMap<String, u64>,
}

impl Watch {
    async fn check(&mut self, store: &Store, list: &[RolloutStatus]) {
        for r in list {
            // Waves start in order, each after the one before, and a start time never moves.
            let states: Vec<WaveState> = r.waves.iter().map(|w| w.state).collect();
            let started = states.iter().take_while(|s| **s != WaveState::Pending).count();
            assert!(
                states[started..].iter().all(|s| *s == WaveState::Pending),
                "{}: waves out of order: {states:?}",
                r.id
            );
            let times: Vec<Option<i64>> =
                r.waves.iter().map(|w| w.published_at.map(|t| t.as_millisecond())).collect();
            assert!(times.iter().flatten().collect::<Vec<_>>().windows(2).all(|w| w[0] <= w[1]), "{}", r.id);
            if let Some(before) = self.started.get(&r.id) {
                for (i, t) in before.iter().enumerate() {
                    if t.is_some() {
                        assert_eq!(&times[i], t, "{} wave {} started twice", r.id, i + 1);
                    }
                }
            }
            self.started.insert(r.id.clone(), times);
            // A halt holds: nothing more is published.
            if r.phase == RolloutPhase::Halted {
                let published = r.total.published();
                let first = *self.halted_published.entry(r.id.clone()).or_insert(published);
                assert_eq!(published, first, "{} published more devices after it halted", r.id);
            }
        }
        // No device runs a new release unless a rollout of that release told it.
        let told: HashMap<String, HashSet<String>> = {
            let mut told: HashMap<String, HashSet<String>> = HashMap::new();
            for r in list {
                for m in store.rollout_members(&r.id).await.unwrap() {
                    if m.published_at.is_some() {
                        told.entry(r.release.clone()).or_default().insert(m.device_id);
                    }
                }
            }
            told
        };
        let inventory = store.inventory().await.unwrap();
        for (device, report) in inventory.reports() {
            let Some(release) = report.release.as_deref() else { continue };
            if release != OLD_RELEASE {
                assert!(
                    told.get(release).is_some_and(|t| t.contains(&**device)),
                    "{device} runs {release} but no published wave told it to"
                );
            }
        }
    }
}

fn example() -> PathBuf {
    repo_root().join("examples/fleet")
}

/// What the reference Python client reads for `devices`.
fn python_instructions(base: &str, root: &Path, work: &Path, devices: &[String]) -> BTreeMap<String, Value> {
    let python = std::env::var("WAVEGUIDE_TEST_PYTHON").expect("WAVEGUIDE_TEST_PYTHON: run ./scripts/test");
    let out = std::process::Command::new(python)
        .arg(repo_root().join("tests/python/tools/tuf_instructions.py"))
        .arg(format!("{base}/tuf"))
        .arg(root)
        .arg(work)
        .args(devices)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The rollouts by policy, rollbacks left out (they share their policy).
fn by_policy(list: &[RolloutStatus]) -> HashMap<&str, &RolloutStatus> {
    list.iter().filter(|r| r.rollback_of.is_none()).map(|r| (r.policy.as_str(), r)).collect()
}

/// The rollback rollout of `id`, if there is one.
fn rollback_of<'a>(list: &'a [RolloutStatus], id: &str) -> Option<&'a RolloutStatus> {
    list.iter().find(|r| r.rollback_of.as_deref() == Some(id))
}

/// How many devices whose instruction rollout `id` published report the release they ran
/// before it (the inventory's view); panics on one that does not.
async fn back_on_previous_release(store: &Store, id: &str) -> usize {
    let inventory = store.inventory().await.unwrap();
    let mut returned = 0;
    for m in store.rollout_members(id).await.unwrap() {
        if m.published_at.is_none() {
            continue;
        }
        let previous = m.previous.as_ref().expect("the release it ran before").release.clone();
        assert_eq!(previous, OLD_RELEASE, "{}", m.device_id);
        let report = inventory.get(&m.device_id).unwrap_or_else(|| panic!("{} reports", m.device_id));
        assert_eq!(report.release.as_deref(), Some(previous.as_str()), "{} is back", m.device_id);
        returned += 1;
    }
    returned
}

async fn scenario(database: Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = demo::prepare(
        &example(),
        tmp.path(),
        &DemoOptions { devices: 240, bake: "2s".into(), beta: BetaWatch::default() },
        |id| device_key(SEED, id).public_key_b64(),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = RunConfig::new(fleet.repo.display().to_string(), tmp.path().join("data"));
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.database = database;
    config.poll_interval = Duration::from_secs(1);
    config.step_interval = Duration::from_millis(200);
    config.engine = EngineConfig { stale_after: STALE };
    let mut running = start(&config).await;
    let base = format!("http://127.0.0.1:{port}");
    let root = config.tuf_dir().join("metadata/1.root.json");
    wait_for("the first commit", Duration::from_secs(30), || {
        let exists = root.exists();
        async move { exists }
    })
    .await;

    let mut sim = SimConfig::new(base.parse().unwrap(), std::fs::read(&root).unwrap());
    sim.key_seed = SEED.into();
    sim.initial_release = Some(OLD_RELEASE.into());
    sim.initial_version = "1.4.2".parse().unwrap();
    // Half the beta's devices turn unhealthy past its 5 s confirmation, in its 20 s bake.
    sim.unhealthy_rate = 0.5;
    sim.unhealthy_after = Duration::from_secs(10);
    sim.fail_release = Some(BETA_RELEASE.into());
    sim.install_time = Duration::from_millis(300);
    sim.poll_interval = Duration::from_millis(300);
    sim.report_interval = Duration::from_secs(3);
    sim.health_interval = Duration::from_secs(1);
    let simulation = Simulation::start(sim, fleet.devices.clone()).unwrap();

    let store = running.controller.store.clone();
    wait_for("every device to report", Duration::from_secs(60), || {
        let store = store.clone();
        async move { store.inventory().await.unwrap().len() == 240 }
    })
    .await;
    assert!(
        control::list(&store, STALE, Timestamp::now()).await.unwrap().is_empty(),
        "the fleet starts up to date"
    );

    let commit = demo::commit_change(&fleet).unwrap();
    let token = running.controller.admin_token.clone();
    let http = reqwest::Client::new();
    let mut watch = Watch { started: HashMap::new(), halted_published: HashMap::new() };
    let mut restarted = false;
    let mut approvals = 0;
    let mut waiting_since: HashMap<String, (u32, Instant)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let list = control::list(&store, STALE, Timestamp::now()).await.unwrap();
        watch.check(&store, &list).await;
        let by_policy = by_policy(&list);
        for r in &list {
            assert_eq!(r.commit.as_deref(), Some(commit.as_str()), "{}", r.id);
        }

        // Manual approval waits (`stable` and `gateways` approve every wave after the
        // canaries by hand): the next wave stays pending until an operator approves it
        // through the operators' HTTP API.
        for r in &list {
            let Some(next) = r.awaits_approval() else {
                waiting_since.remove(&r.id);
                continue;
            };
            let (wave, since) =
                *waiting_since.entry(r.id.clone()).or_insert((r.current_wave, Instant::now()));
            assert_eq!(r.current_wave, wave);
            assert_eq!(r.waves[wave as usize + 1].state, WaveState::Pending);
            if since.elapsed() > Duration::from_secs(2) {
                let response = http
                    .post(format!("{base}/v1/rollouts/{}/approve", r.id))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "wave": next }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                approvals += 1;
                waiting_since.remove(&r.id);
            }
        }

        // Restart the controller once, in the middle of the stable rollout.
        if !restarted && by_policy.get("stable").is_some_and(|r| r.current_wave == 1) {
            running.shut_down().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            running = start(&config).await;
            restarted = true;
        }

        let ended = |r: &RolloutStatus| matches!(r.phase, RolloutPhase::Completed | RolloutPhase::Halted);
        let done = ["stable", "gateways", "apac"].iter().all(|p| by_policy.get(p).is_some_and(|r| ended(r)))
            && rollback_of(&list, "apac-1").is_some_and(ended);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "rollouts did not finish: {list:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(restarted, "the controller was restarted mid-rollout");
    assert!(approvals >= 3, "manual waves waited for approval ({approvals} approvals)");

    // A halt holds while devices keep reporting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let list = control::list(&store, STALE, Timestamp::now()).await.unwrap();
    watch.check(&store, &list).await;
    let by_policy = by_policy(&list);
    assert_eq!(by_policy["stable"].phase, RolloutPhase::Completed);
    assert_eq!(by_policy["gateways"].phase, RolloutPhase::Completed);
    let apac = by_policy["apac"];
    assert_eq!(apac.phase, RolloutPhase::Halted);
    assert!(apac.message.as_deref().unwrap().contains("failure threshold"), "{:?}", apac.message);
    // The beta fails on half the devices: it halts in the first wave that has any
    // (the sample's canary wave may be a single lucky device), and no wave after it starts.
    let halted = apac.current_wave as usize;
    assert_eq!(apac.waves[halted].state, WaveState::Failed);
    assert!(apac.waves[halted].progress.failed > 0);
    // It halted on health during the bake: the wave had met its success threshold first.
    assert!(apac.waves[halted].healthy_at.is_some(), "{apac:#?}");
    assert!(apac.waves[halted].progress.failed_by.health > 0, "{apac:#?}");
    assert!(apac.waves[halted + 1..].iter().all(|w| w.state == WaveState::Pending));
    // `onFailure: rollback`: the devices the beta reached are back on the old release,
    // through a rollback rollout that completed.
    let rollback = rollback_of(&list, &apac.id).expect("a rollback rollout");
    assert_eq!(rollback.phase, RolloutPhase::Completed, "{rollback:#?}");
    assert_eq!(rollback.release, OLD_RELEASE);
    let returned = back_on_previous_release(&store, &apac.id).await;
    assert_eq!(returned as u64, apac.total.published(), "{apac:#?}");
    let views: HashMap<String, Option<String>> =
        simulation.devices().into_iter().map(|v| (v.id, v.release)).collect();
    for m in store.rollout_members(&apac.id).await.unwrap() {
        if m.published_at.is_some() {
            assert_eq!(views[&m.device_id].as_deref(), Some(OLD_RELEASE), "{}", m.device_id);
        }
    }

    // The reference client reads what the agents acted on.
    let views = simulation.devices();
    let ids: Vec<String> = views.iter().map(|v| v.id.clone()).collect();
    let python = python_instructions(&base, &root, &tmp.path().join("python"), &ids);
    let mut compared = 0;
    for view in &views {
        let instruction = &python[&view.id];
        if view.release.as_deref() != Some(OLD_RELEASE) {
            // A device on a new release got there through an instruction the Python
            // client verifies too.
            assert_eq!(instruction["release"].as_str(), view.release.as_deref(), "{}", view.id);
            assert_eq!(
                instruction["version"].as_str(),
                Some(view.version.to_string().as_str()),
                "{}",
                view.id
            );
            compared += 1;
        } else if !instruction.is_null() && view.failures == 0 {
            // Still on the old release with an instruction: it is the halted beta's, or
            // one still in progress; never a release the device did not get told about.
            assert!(instruction["release"].is_string());
        }
    }
    assert!(compared > 100, "only {compared} devices moved");

    simulation.stop().await;
    running.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_scenario_on_sqlite() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_scenario_on_postgres() {
    scenario(Some(fresh_postgres_database().await)).await;
}

/// `waveguide demo` stops cleanly on SIGTERM in the middle of its run: devices and
/// controller stopped, its summary printed, exit 0, and its temporary files removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let mut demo = waveguide()
        .args(["demo", "--devices", "20", "--install-time", "100ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(demo.stdout.take().unwrap()).lines().map_while(Result::ok);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            let _ = tx.send(line);
        }
    });
    let mut out = Vec::new();
    let mut work = None;
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("the demo goes on");
        if let Some(dir) = line.split("files in ").nth(1) {
            work = Some(PathBuf::from(dir.trim()));
        }
        let started = line.contains("controller on http");
        out.push(line);
        if started {
            break;
        }
    }
    let work = work.expect("the demo says where its files are");
    assert!(work.exists());
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(demo.id() as i32, libc::SIGTERM) }, 0);
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = demo.kill();
            panic!("the demo did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    out.extend(rx.try_iter());
    std::thread::sleep(Duration::from_millis(200));
    out.extend(rx.try_iter());
    let out = out.join("\n");
    assert!(status.success(), "{status}\n{out}");
    assert!(out.contains("SIGTERM received") && out.contains("finished in"), "{out}");
    assert!(!work.exists(), "{} is removed", work.display());
}

/// `waveguide demo` as a new user runs it, to its end, in under 2 minutes: the beta passes
/// its confirmation, turns unhealthy during its bake and halts, its rollback rollout takes
/// the canaries back to the old release, the manual approvals are made, the other
/// rollouts complete, the output says what happened as it happened and the final table
/// shows it, exit 0; with `--dir` its files stay, and the inventory and the TUF
/// repository they hold agree with the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let started = Instant::now();
    let output = tokio::task::spawn_blocking({
        let work = work.clone();
        move || {
            waveguide()
                .args(["demo", "--devices", "200", "--install-time", "100ms", "--timeout", "3m", "--dir"])
                .arg(&work)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{out}\n{err}", output.status);
    assert!(took < Duration::from_secs(120), "the demo took {took:?}:\n{out}");

    let row = |rollout: &str| {
        out.lines()
            .find(|l| {
                // A table row: ROLLOUT POLICY RELEASE PHASE …; progress lines read
                // "<rollout> wave …", and what happens "<rollout>: …".
                let mut words = l.split_whitespace();
                words.next() == Some(rollout) && words.next().is_some_and(|w| w != "wave")
            })
            .unwrap_or_else(|| panic!("no row for {rollout} in the final table:\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("apac-1")[3], "halted", "{out}");
    assert_eq!(row("apac-1-rollback")[2], OLD_RELEASE, "{out}");
    assert_eq!(row("apac-1-rollback")[3], "completed", "{out}");
    assert_eq!(row("stable-1")[3], "completed", "{out}");
    assert_eq!(row("gateways-1")[3], "completed", "{out}");
    assert!(out.contains("waits for approval — approving"), "{out}");
    // Said live, in this order: the halt on health during the bake, the rollback's start
    // and its end.
    let said = |what: &str| out.find(what).unwrap_or_else(|| panic!("{what:?} not said:\n{out}"));
    let halted = said("apac-1: halted — ");
    assert!(out[halted..].lines().next().unwrap().contains("turned unhealthy during its bake"), "{out}");
    let started = said("apac-1-rollback: rollback of apac-1 started");
    let completed = said("apac-1-rollback: rollback completed");
    assert!(halted < started && started < completed, "{out}");
    assert!(out.contains("finished in"), "{out}");

    // The files are kept, and what they hold is what the table shows.
    let store =
        Store::open(&format!("sqlite://{}", work.join("data/inventory.sqlite").display())).await.unwrap();
    let list = control::list(&store, STALE, Timestamp::now()).await.unwrap();
    let phase = |id: &str| list.iter().find(|r| r.id == id).map(|r| r.phase);
    assert_eq!(phase("apac-1"), Some(RolloutPhase::Halted));
    assert_eq!(phase("apac-1-rollback"), Some(RolloutPhase::Completed));
    assert_eq!(phase("stable-1"), Some(RolloutPhase::Completed));
    assert_eq!(phase("gateways-1"), Some(RolloutPhase::Completed));
    let apac = list.iter().find(|r| r.id == "apac-1").unwrap();
    let halted = &apac.waves[apac.current_wave as usize];
    assert!(halted.healthy_at.is_some() && halted.progress.failed_by.health > 0, "{apac:#?}");
    // The beta's canaries, every device it reached, are back on the old release.
    assert_eq!(rollback_of(&list, "apac-1").map(|r| r.release.as_str()), Some(OLD_RELEASE));
    let returned = back_on_previous_release(&store, "apac-1").await;
    assert!(returned > 0 && returned as u64 == apac.total.published(), "{returned} returned: {apac:#?}");
    let timestamp: Value =
        serde_json::from_slice(&std::fs::read(work.join("data/tuf/metadata/timestamp.json")).unwrap())
            .unwrap();
    assert_eq!(timestamp["signed"]["_type"], "timestamp");
}
