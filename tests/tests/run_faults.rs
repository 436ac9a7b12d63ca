//! Faults under `waveguide run`, as an operator's bad day brings them: a damaged or
//! replaced inventory database at start, a SIGKILL in the middle of a publish, and a
//! PostgreSQL outage while devices report. After each, the controller recovers by itself,
//! no acknowledged report is lost, and the `tough` client accepts the TUF repository.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use waveguide::inventory::store::Store;
use waveguide::protocol::DeviceKey;
use waveguide_tests::postgres::Postgres;
use waveguide_tests::run::{instruction, send_report, tough, Run};
use waveguide_tests::{fleets, git, git_stdout, waveguide, KillOnDrop};

/// The fleet: devices `lab-<n>` with the given keys following policy `lab` (one wave, no
/// approval), and `bulk` devices `bulk-000000`… pinned to `pin`.
fn write_fleet(repo: &Path, keyed: &[(String, String)], policy_release: &str, bulk: usize, pin: &str) {
    let mut devices = fleets::with_devices(
        fleets::render("lab", "devices.yaml", &[]),
        keyed.iter().map(|(id, key)| (id.as_str(), key.as_str())),
    );
    if bulk > 0 {
        let count = bulk.to_string();
        devices.push_str("---\n");
        devices.push_str(&fleets::render("lab", "devices-bulk.yaml", &[("pin", pin), ("count", &count)]));
    }
    std::fs::write(repo.join("devices.yaml"), devices).unwrap();
    let groups = [fleets::render("lab", "groups.yaml", &[]), fleets::render("lab", "groups-bulk.yaml", &[])];
    std::fs::write(repo.join("groups.yaml"), groups.join("---\n")).unwrap();
    std::fs::write(repo.join("releases.yaml"), fleets::render("lab", "releases.yaml", &[])).unwrap();
    std::fs::write(
        repo.join("policy.yaml"),
        fleets::render("lab", "policy-auto.yaml", &[("release", policy_release)]),
    )
    .unwrap();
}

fn commit(repo: &Path, message: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git_stdout(repo, &["rev-parse", "HEAD"])
}

fn new_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("fleet");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    repo
}

fn keyed(n: usize) -> Vec<(String, DeviceKey)> {
    (0..n).map(|i| (format!("lab-{i}"), DeviceKey::generate())).collect()
}

fn public(keys: &[(String, DeviceKey)]) -> Vec<(String, String)> {
    keys.iter().map(|(id, key)| (id.clone(), key.public_key_b64())).collect()
}

fn repo_args(repo: &Path) -> Vec<&OsStr> {
    vec!["--repo".as_ref(), repo.as_os_str(), "--step-interval".as_ref(), "200ms".as_ref()]
}

/// Runs `waveguide run` expecting it to refuse to start: returns its exit code, standard
/// error and how long it took.
fn refused_start(data: &Path, args: &[&OsStr]) -> (Option<i32>, String, Duration) {
    let mut command = Run::command(data, args);
    let started = Instant::now();
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("waveguide run neither started nor stopped within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned(), started.elapsed())
}

/// Waits until `tough` reads `release` for every device of `ids`.
async fn wait_published(run: &Run, cache: &Path, ids: &[String], release: &str, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let _ = std::fs::remove_dir_all(cache);
        let repo = tough(run, cache).await;
        let mut behind = None;
        for id in ids {
            if instruction(&repo, id).await.map(|i| i.release) != Some(release.to_owned()) {
                behind = Some(id);
                break;
            }
        }
        let Some(id) = behind else { return };
        assert!(Instant::now() < until, "{id} was not told to run {release} in time");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn timestamp_version(data: &Path) -> u64 {
    let text = std::fs::read_to_string(data.join("tuf/metadata/timestamp.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value["signed"]["version"].as_u64().unwrap()
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_inventory_file_is_refused_at_once_naming_it_and_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(tmp.path());
    write_fleet(&repo, &public(&keyed(1)), "v1", 0, "v1");
    commit(&repo, "fleet");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let inventory = data.join("inventory.sqlite");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&inventory, garbage).unwrap();

    let (code, stderr, took) = refused_start(&data, &repo_args(&repo));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(took < Duration::from_secs(10), "refused after {took:?}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&inventory.display().to_string()), "{stderr}");
    assert!(errors[0].contains("not a database"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
}

/// An inventory that lost what the TUF repository published (truncated to nothing, or
/// replaced by one that never saw the rollout) is refused at start, unless the operator
/// says to start over it.
#[tokio::test(flavor = "multi_thread")]
async fn an_inventory_that_no_longer_matches_the_tuf_repository_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(tmp.path());
    let keys = keyed(2);
    write_fleet(&repo, &public(&keys), "v1", 0, "v1");
    commit(&repo, "lab on v1");
    let data = tmp.path().join("data");
    let mut run = Run::spawn(&data, &repo_args(&repo));
    run.wait_status("the first commit", Duration::from_secs(30), |s| s["commit"].is_string()).await;
    for (id, key) in &keys {
        let (status, body) = send_report(&run.base, id, key, ("v1", "1.0.0", "idle"), None).await;
        assert_eq!(status, 202, "{body}");
    }
    write_fleet(&repo, &public(&keys), "v2", 0, "v1");
    commit(&repo, "lab to v2");
    run.wait_status("the rollout to publish", Duration::from_secs(30), |s| {
        s["events"].as_array().unwrap().iter().any(|e| e["event"] == "wavePublished")
    })
    .await;
    assert!(run.signal_and_wait(libc::SIGTERM, Duration::from_secs(15)).success());

    // Truncated to nothing (its journal gone with it).
    let inventory = data.join("inventory.sqlite");
    std::fs::write(&inventory, b"").unwrap();
    for journal in ["inventory.sqlite-wal", "inventory.sqlite-shm"] {
        let _ = std::fs::remove_file(data.join(journal));
    }
    let (code, stderr, _) = refused_start(&data, &repo_args(&repo));
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [&inventory.display().to_string(), "tuf", "is empty", "--allow-inventory-mismatch"] {
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }

    // The operator says to start over it: it starts, and the new inventory knows the
    // devices but not the rollout the repository published.
    let mut args = repo_args(&repo);
    args.push("--allow-inventory-mismatch".as_ref());
    let mut run = Run::spawn(&data, &args);
    run.wait_status("the first commit", Duration::from_secs(30), |s| s["commit"].is_string()).await;
    assert!(run.logged("starting anyway"));
    assert!(run.signal_and_wait(libc::SIGTERM, Duration::from_secs(15)).success());
    let (code, stderr, _) = refused_start(&data, &repo_args(&repo));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("rollout lab-1") && stderr.contains("does not know"), "{stderr}");
}

/// SIGKILL in the middle of a publish, twice, then a restart: the repository stays
/// one that `tough` accepts throughout, the timestamp's version only grows, the publish
/// completes, and every report acknowledged before the kills is in the inventory.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_during_a_publish_loses_nothing() {
    const BULK: usize = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(tmp.path());
    let keys = keyed(3);
    write_fleet(&repo, &public(&keys), "v1", BULK, "v1");
    commit(&repo, "bulk pinned to v1");
    let data = tmp.path().join("data");
    let devices_dir = data.join("tuf/targets/devices");
    let args = repo_args(&repo);
    let mut run = Run::spawn(&data, &args);
    run.wait_status("the first commit", Duration::from_secs(60), |s| s["commit"].is_string()).await;
    let cache = tmp.path().join("tough");
    let sample: Vec<String> = (0..BULK).step_by(499).map(|n| format!("bulk-{n:06}")).collect();
    wait_published(&run, &cache, &sample, "v1", Duration::from_secs(120)).await;
    let mut acknowledged = Vec::new();
    for (id, key) in &keys {
        let detail = format!("{id} before the kills");
        let (status, body) = send_report(&run.base, id, key, ("v1", "1.0.0", "idle"), Some(&detail)).await;
        assert_eq!(status, 202, "{body}");
        acknowledged.push((id.clone(), detail));
    }

    write_fleet(&repo, &public(&keys), "v1", BULK, "v2");
    commit(&repo, "bulk pinned to v2");
    let mut versions = vec![timestamp_version(&data)];
    for kill in 0..2 {
        if kill == 0 {
            // Killed once the new instructions' files are being written: before the bins,
            // the snapshot and the timestamp that would name them.
            let files = count_files(&devices_dir);
            let until = Instant::now() + Duration::from_secs(120);
            while count_files(&devices_dir) < files + 200 {
                assert!(Instant::now() < until, "the publish did not start");
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            // Killed as the restarted controller takes the commit up again: its pass
            // publishes what the first one left unpublished.
            run.wait_status("the commit", Duration::from_secs(60), |s| s["commit"].is_string()).await;
        }
        run.kill();
        let version = timestamp_version(&data);
        assert!(version >= *versions.last().unwrap(), "timestamp versions only grow");
        versions.push(version);
        run = Run::spawn(&data, &args);
        // Between two kills, the half-published repository is served and accepted.
        let _ = std::fs::remove_dir_all(&cache);
        let loaded = tough(&run, &cache).await;
        let first = instruction(&loaded, "bulk-000000").await.expect("published before");
        assert!(first.release == "v1" || first.release == "v2");
    }
    wait_published(&run, &cache, &sample, "v2", Duration::from_secs(180)).await;
    assert!(timestamp_version(&data) > *versions.last().unwrap());

    let store = Store::open(data.join("inventory.sqlite").to_str().unwrap()).await.unwrap();
    for (id, detail) in &acknowledged {
        let history = store.history(id, 20).await.unwrap();
        assert!(history.iter().any(|r| r.detail.as_deref() == Some(detail.as_str())), "{id}: {history:?}");
    }
    assert!(run.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)).success());
}

/// PostgreSQL stops under a running controller while simulated devices report and a
/// commit arrives: the loop reports the outage (status, `/healthz` promptly, metrics)
/// without dying, and once the server is back it applies the commit, rolls it out and
/// loses no acknowledged report.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_outage_is_reported_and_survived() {
    const SIMULATED: usize = 12;
    const SEED: &str = "outage";
    let postgres = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(tmp.path());
    let keys = keyed(2);
    let sim_ids: Vec<String> = (0..SIMULATED).map(|n| format!("sim-{n:02}")).collect();
    let mut declared = public(&keys);
    declared.extend(
        sim_ids
            .iter()
            .map(|id| (id.clone(), waveguide::agent::simulate::device_key(SEED, id).public_key_b64())),
    );
    write_fleet(&repo, &declared, "v1", 0, "v1");
    commit(&repo, "lab on v1");
    let data = tmp.path().join("data");
    let url = postgres.url();
    let mut args = repo_args(&repo);
    args.extend(["--database", &url, "--poll-interval", "1s"].map(OsStr::new));
    let mut run = Run::spawn(&data, &args);
    run.wait_status("the first commit", Duration::from_secs(30), |s| s["commit"].is_string()).await;

    let ids = tmp.path().join("ids");
    std::fs::write(&ids, sim_ids.join("\n")).unwrap();
    let simulate = waveguide()
        .args(["simulate", "--server", &run.base, "--root"])
        .arg(data.join("tuf/metadata/1.root.json"))
        .arg("--ids")
        .arg(&ids)
        .args(["--key-seed", SEED, "--release", "v1", "--version", "1.0.0", "--poll-interval", "1s"])
        .args(["--report-interval", "1s", "--install-time", "200ms", "--stats-interval", "1h"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("simulate.log")).unwrap())
        .spawn()
        .unwrap();
    let mut simulate = KillOnDrop(simulate);
    let store = Store::open(&url).await.unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while store.inventory().await.unwrap().len() < SIMULATED {
        assert!(Instant::now() < until, "the simulated devices did not report");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut acknowledged = Vec::new();
    // Report `n` of a keyed device; `Some` when acknowledged.
    let report = |n: u32, running: (&'static str, &'static str, &'static str)| {
        let (id, key) = &keys[n as usize % keys.len()];
        let detail = format!("report {n}");
        let base = run.base.clone();
        async move {
            let (status, _) = send_report(&base, id, key, running, Some(&detail)).await;
            (status == 202).then(|| (id.clone(), detail))
        }
    };
    const OLD: (&str, &str, &str) = ("v1", "1.0.0", "idle");
    const NEW: (&str, &str, &str) = ("v2", "2.0.0", "installed");
    acknowledged.extend(report(0, OLD).await);
    acknowledged.extend(report(1, OLD).await);
    assert_eq!(acknowledged.len(), 2, "reports are stored while the database is up");

    postgres.stop();
    // The commit declares a new device: applying it writes to the inventory.
    write_fleet(&repo, &declared, "v2", 1, "v1");
    let head = commit(&repo, "lab to v2 and one more device, during the outage");
    let status = run
        .wait_status("the outage to be reported", Duration::from_secs(60), |s| s["failure"].is_object())
        .await;
    assert!(["apply", "rollout"].contains(&status["failure"]["stage"].as_str().unwrap()), "{status}");
    let started = Instant::now();
    let health = reqwest::get(format!("{}/healthz", run.base)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "/healthz took {:?}", started.elapsed());
    assert_eq!(health.status(), 200, "a failing loop is not a stuck one");
    let health: Value = health.json().await.unwrap();
    assert_ne!(health["database"], "ok", "{health}");
    assert!(health["controller"]["failure"].is_object(), "{health}");
    let metrics = reqwest::get(format!("{}/metrics", run.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("waveguide_run_pass_failures_total{stage="), "{metrics}");
    for n in 2..4 {
        acknowledged.extend(report(n, OLD).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = run.status().await;
    assert!(status["failure"]["consecutive"].as_u64().unwrap() >= 1, "{status}");
    assert_ne!(status["commit"], head.as_str(), "nothing is applied while the database is down");

    postgres.start_again();
    let status = run
        .wait_status("the commit after the outage", Duration::from_secs(90), |s| {
            s["commit"] == head.as_str() && s["failure"].is_null()
        })
        .await;
    assert!(status["error"].is_null(), "{status}");
    // The keyed devices follow the policy too: they install the new release.
    for n in 4..6 {
        acknowledged.extend(report(n, NEW).await);
    }
    run.wait_status("the rollout to complete", Duration::from_secs(120), |s| {
        s["events"].as_array().unwrap().iter().any(|e| e["event"] == "rolloutCompleted")
    })
    .await;
    let cache = tmp.path().join("tough");
    wait_published(&run, &cache, &sim_ids, "v2", Duration::from_secs(30)).await;

    for (id, detail) in &acknowledged {
        let history = store.history(id, 20).await.unwrap();
        assert!(history.iter().any(|r| r.detail.as_deref() == Some(detail.as_str())), "{id} {detail}: lost");
    }
    // The simulator stops on SIGTERM as the controller does.
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(simulate.0.id() as i32, libc::SIGTERM) }, 0);
    let until = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = simulate.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < until, "waveguide simulate did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    assert!(run.signal_and_wait(libc::SIGTERM, Duration::from_secs(30)).success());
    assert!(run.logged("waveguide: stopped"));
}

/// A database that cannot be reached at start is refused with an error that names it, but
/// never prints the password its URL carries.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_named_without_its_password() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = new_repo(tmp.path());
    write_fleet(&repo, &public(&keyed(1)), "v1", 0, "v1");
    commit(&repo, "fleet");
    let data = tmp.path().join("data");
    // Nothing listens on the discard port of the loopback address.
    let url = "postgres://wg:s3cret-pw@127.0.0.1:9/fleet";
    let mut args = repo_args(&repo);
    args.extend([OsStr::new("--database"), OsStr::new(url)]);
    let (code, stderr, _) = refused_start(&data, &args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("postgres://wg:***@127.0.0.1:9/fleet"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}
