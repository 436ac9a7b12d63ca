//! `waveguide run` as operators start it — a local Git repository, a data directory, a
//! port on 127.0.0.1 — with devices reporting over signed HTTP, and `waveguide rollout`
//! steering the rollout through the operators' API.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use waveguide::protocol::DeviceKey;
use waveguide_tests::run::{send_report, Run};
use waveguide_tests::{fleets, git, git_stdout, waveguide};

/// Starts `waveguide run` on a local repository and waits until its first commit is
/// applied.
async fn start(repo: &Path, data: &Path) -> Run {
    start_with(repo, data, &["--step-interval", "200ms", "--poll-interval", "1s"]).await
}

async fn start_with(repo: &Path, data: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--repo".as_ref(), repo.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let running = Run::spawn(data, &args);
    running.wait_status("the first commit", Duration::from_secs(30), |s| s["commit"].is_string()).await;
    running
}

fn fleet(dir: &Path, keys: &[(String, DeviceKey)], release: &str) {
    let keys: Vec<(&str, String)> =
        keys.iter().map(|(id, key)| (id.as_str(), key.public_key_b64())).collect();
    let devices = fleets::with_devices(
        fleets::render("lab", "devices.yaml", &[]),
        keys.iter().map(|(id, key)| (*id, key.as_str())),
    );
    std::fs::write(dir.join("devices.yaml"), devices).unwrap();
    std::fs::write(dir.join("groups.yaml"), fleets::render("lab", "groups.yaml", &[])).unwrap();
    std::fs::write(dir.join("releases.yaml"), fleets::render("lab", "releases.yaml", &[])).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        fleets::render("lab", "policy-manual.yaml", &[("release", release)]),
    )
    .unwrap();
}

async fn report(base: &str, id: &str, key: &DeviceKey, release: &str, version: &str, state: &str) {
    let (status, body) = send_report(base, id, key, (release, version, state), None).await;
    assert_eq!(status, 202, "{body}");
}

fn rollout(running: &Run, args: &[&str]) -> (bool, String, String) {
    let out = waveguide()
        .args(["rollout", "--server", &running.base, "--data"])
        .arg(&running.data)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn show(running: &Run, id: &str) -> Value {
    let (ok, out, err) = rollout(running, &["--format", "json", "show", id]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_rolls_out_a_commit_and_rollout_commands_steer_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, keys) = lab_repository(tmp.path());
    let running = start(&repo, &tmp.path().join("data")).await;
    for (id, key) in &keys {
        report(&running.base, id, key, "v1", "1.0.0", "idle").await;
    }
    let (ok, out, err) = rollout(&running, &["list"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "only the header: nothing to roll out yet\n{out}");

    // A commit moves the policy to v2: a rollout starts, its first wave published.
    fleet(&repo, &keys, "v2");
    git(&repo, &["commit", "-q", "-am", "lab to v2"]);
    wait_until("the rollout to start", || rollout(&running, &["list"]).1.contains("lab-1"));
    let status = show(&running, "lab-1");
    assert_eq!(status["release"], "v2");
    assert_eq!(status["waves"][0]["state"], "published");
    assert_eq!(status["waves"][0]["progress"]["size"], 1);

    // The first device installs; the next wave waits for an operator.
    let tuf = reqwest::get(format!("{}/tuf/metadata/timestamp.json", running.base)).await.unwrap();
    assert_eq!(tuf.status(), 200, "TUF files are served");
    for (id, key) in &keys {
        // Every device reports v2 installed (one told, two updated by hand, say): the
        // first wave is healthy, and the rest are up to date once their wave comes.
        report(&running.base, id, key, "v2", "2.0.0", "installed").await;
    }
    wait_until("the approval gate", || {
        show(&running, "lab-1")["message"].as_str().unwrap_or_default().contains("waits for approval")
    });
    let (ok, out, _) = rollout(&running, &["show", "lab-1"]);
    assert!(ok);
    assert!(out.contains("waits for approval") && out.contains("first") && out.contains("rest"), "{out}");

    // Pause, resume, approve; unknown rollouts and bad tokens are refused.
    let (ok, _, _) = rollout(&running, &["pause", "lab-1"]);
    assert!(ok);
    assert_eq!(show(&running, "lab-1")["phase"], "paused");
    let (ok, _, _) = rollout(&running, &["resume", "lab-1"]);
    assert!(ok);
    let (ok, _, err) = rollout(&running, &["approve", "nope-1", "--wave", "2"]);
    assert!(!ok && err.contains("404") && err.contains("no rollout"), "{err}");
    let out = waveguide()
        .args(["rollout", "--server", &running.base, "--token", "wrong", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let (ok, _, err) = rollout(&running, &["approve", "lab-1", "--wave", "2"]);
    assert!(ok, "{err}");
    wait_until("the rollout to complete", || show(&running, "lab-1")["phase"] == "completed");
    let status = show(&running, "lab-1");
    assert_eq!(status["total"]["healthy"], 3);
    assert!(status["waves"][1]["approvedAt"].is_string());
    let (ok, _, err) = rollout(&running, &["abort", "lab-1"]);
    assert!(!ok && err.contains("completed"), "{err}");

    // A commit that does not compile is refused; the last good one stays in force, and
    // `waveguide reconcile` shows both (and fails).
    let good = git_stdout(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    fleet(&repo, &keys, "v9");
    git(&repo, &["commit", "-q", "-am", "lab to a release that does not exist"]);
    let bad = git_stdout(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let out = waveguide()
        .args(["reconcile", "--server", &running.base, "--data"])
        .arg(&running.data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("in force:       {good}")), "{stdout}");
    assert!(stdout.contains(&format!("last attempted: {bad}")), "{stdout}");
    assert!(stdout.contains("policy.yaml") && stdout.contains("v9"), "{stdout}");
    fleet(&repo, &keys, "v2");
    git(&repo, &["commit", "-q", "-am", "back to v2"]);
    let out = waveguide()
        .args(["reconcile", "--server", &running.base, "--data"])
        .arg(&running.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// `waveguide run --source FILE` takes the whole source description: here a fleet path
/// inside the repository and SSH signature verification. An unsigned commit is refused
/// and the status names it; nothing of it is applied.
#[tokio::test(flavor = "multi_thread")]
async fn run_with_a_source_file_refuses_unsigned_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("fleet");
    std::fs::create_dir_all(repo.join("fleet")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let keys: Vec<(String, DeviceKey)> = vec![("lab-0".to_string(), DeviceKey::generate())];
    fleet(&repo.join("fleet"), &keys, "v1");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "unsigned"]);
    let unsigned = git_stdout(&repo, &["rev-parse", "HEAD"]).trim().to_string();

    let key = tmp.path().join("signer");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let source = tmp.path().join("source.yaml");
    std::fs::write(
        &source,
        format!(
            "url: {}\nref: {{branch: main}}\npath: fleet\ninterval: 1s\nverify:\n  mode: head\n  allowedSigners: |\n    alice@example.com {}\n",
            repo.display(),
            public.trim()
        ),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let running = Run::spawn(&data, &["--source".as_ref(), source.as_os_str()]);
    let reconcile = || {
        waveguide()
            .args(["reconcile", "--server", &running.base, "--data"])
            .arg(&running.data)
            .output()
            .unwrap()
    };
    let out = reconcile();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("in force:       -"), "{stdout}");
    assert!(stdout.contains(&format!("last attempted: {unsigned}")), "{stdout}");
    assert!(stdout.contains("not signed"), "{stdout}");

    // The same fleet, signed by the allowed key, is applied.
    let signing = [
        "-c",
        "gpg.format=ssh",
        "-c",
        &format!("user.signingkey={}", key.display()),
        "commit",
        "-q",
        "-S",
        "--allow-empty",
        "-m",
        "signed",
    ];
    git(&repo, &signing);
    let signed = git_stdout(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let out = reconcile();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("in force:       {signed}")), "{stdout}");
}

/// A repository with three keyed devices on `v1`, committed.
fn lab_repository(dir: &Path) -> (std::path::PathBuf, Vec<(String, DeviceKey)>) {
    let repo = dir.join("fleet");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let keys: Vec<(String, DeviceKey)> =
        (0..3).map(|i| (format!("lab-{i}"), DeviceKey::generate())).collect();
    fleet(&repo, &keys, "v1");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "lab on v1"]);
    (repo, keys)
}

/// An idle controller following a local repository fetches once per poll interval, not at
/// every wake-up of its own file watcher (which its fetch's reads of the repository used
/// to cause, about sixty times a second); a commit still wakes it at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_run_makes_almost_no_fetches() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, keys) = lab_repository(tmp.path());
    let running = start_with(&repo, &tmp.path().join("data"), &["--poll-interval", "1h"]).await;
    let polls = |s: &Value| s["source"]["polls"].as_u64().unwrap();
    let before = polls(&running.status().await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = polls(&running.status().await) - before;
    assert!(idle <= 1, "{idle} fetches in 3 s of an idle run with an hour-long poll interval");

    fleet(&repo, &keys, "v2");
    git(&repo, &["commit", "-q", "-am", "lab to v2"]);
    let head = git_stdout(&repo, &["rev-parse", "HEAD"]);
    running.wait_status("the commit", Duration::from_secs(5), |s| s["commit"] == head.as_str()).await;
    let after = polls(&running.status().await) - before;
    assert!(after <= 4, "{after} fetches for one commit");
}

/// SIGTERM (what Kubernetes and systemd send) and SIGINT stop `waveguide run` the same
/// way: the pass under way finishes, reports already accepted are in the inventory, and
/// the process says so and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_sigint_stop_run_gracefully() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, keys) = lab_repository(tmp.path());
        let data = tmp.path().join("data");
        let mut running = start(&repo, &data).await;
        let (id, key) = &keys[0];
        report(&running.base, id, key, "v1", "1.0.0", "installed").await;
        let status = running.signal_and_wait(signal, Duration::from_secs(15));
        assert!(status.success(), "{name}: {status}");
        assert!(running.logged(&format!("{name} received, stopping")), "{name}");
        assert!(running.logged("waveguide: stopped"), "{name}");

        let store = waveguide::inventory::store::Store::open(data.join("inventory.sqlite").to_str().unwrap())
            .await
            .unwrap();
        let history = store.history(id, 10).await.unwrap();
        assert_eq!(history.len(), 1, "{name}: the accepted report is stored");
    }
}

/// `waveguide agent` stops on SIGTERM too: its step under way finishes, its state is
/// saved, and it exits 0 saying so.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, keys) = lab_repository(tmp.path());
    let running = start(&repo, &tmp.path().join("data")).await;
    let (id, key) = &keys[0];
    let key_file = tmp.path().join("device.pk8");
    std::fs::write(&key_file, key.pkcs8()).unwrap();
    let state = tmp.path().join("state");
    let mut agent = waveguide()
        .args(["agent", "--server", &running.base, "--device-id", id, "--key"])
        .arg(&key_file)
        .arg("--state-dir")
        .arg(&state)
        .arg("--root")
        .arg(running.data.join("tuf/metadata/1.root.json"))
        .args(["--release", "v1", "--version", "1.0.0", "--poll-interval", "1s", "--report-interval", "1s"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let store_url = running.data.join("inventory.sqlite");
    let store = waveguide::inventory::store::Store::open(store_url.to_str().unwrap()).await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while store.history(id, 1).await.unwrap().is_empty() {
        assert!(Instant::now() < until, "the agent did not report");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let until = Instant::now() + Duration::from_secs(20);
    while agent.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = agent.kill();
            panic!("the agent did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = agent.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("SIGTERM received, stopping") && stderr.contains("agent stopped"), "{stderr}");
    assert!(state.read_dir().unwrap().next().is_some(), "the state is saved");
}
