//! `waveguide run` as operators start it — a local Git repository, a data directory, a
//! port on 127.0.0.1 — with devices reporting over signed HTTP, and `waveguide rollout`
//! steering the rollout through the operators' API.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use waveguide::api::auth::{DeviceKey, SIGNATURE_HEADER, TIMESTAMP_HEADER};

mod common;
use common::{git, waveguide, KillOnDrop};

struct Running {
    _process: KillOnDrop,
    base: String,
    data: std::path::PathBuf,
}

/// Starts `waveguide run` with `source` (`--repo PATH` or `--source FILE`) and `extra`
/// arguments, and waits for the address it prints.
fn spawn(source: &[&std::ffi::OsStr], data: &Path, extra: &[&str]) -> Running {
    let mut child = waveguide()
        .arg("run")
        .args(source)
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Shown when the test fails.
            eprintln!("waveguide run: {line}");
            if let Some(rest) = line.split("device API on http://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("waveguide run prints its address");
    Running { _process: KillOnDrop(child), base: format!("http://{addr}"), data: data.to_owned() }
}

/// Starts `waveguide run` on a local repository and waits until its first commit is
/// applied.
async fn start(repo: &Path, data: &Path) -> Running {
    let running = spawn(
        &["--repo".as_ref(), repo.as_os_str()],
        data,
        &["--step-interval", "200ms", "--poll-interval", "1s"],
    );
    let base = running.base.clone();
    // The first commit is applied (devices known, TUF repository created) once the
    // timestamp is served.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let served = reqwest::get(format!("{base}/tuf/metadata/timestamp.json")).await;
        if served.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < until, "the first commit was not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running
}

fn fleet(dir: &Path, keys: &[(String, DeviceKey)], release: &str) {
    let mut devices = String::from(
        "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: lab}\nspec:\n  group: lab\n  devices:\n",
    );
    for (id, key) in keys {
        devices.push_str(&format!("    - id: {id}\n      publicKey: {}\n", key.public_key_b64()));
    }
    std::fs::write(dir.join("devices.yaml"), devices).unwrap();
    std::fs::write(
        dir.join("groups.yaml"),
        "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: lab}\nspec: {}\n",
    )
    .unwrap();
    for (name, version) in [("v1", "1.0.0"), ("v2", "2.0.0")] {
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            format!("apiVersion: waveguide.dev/v1alpha1\nkind: Release\nmetadata: {{name: {name}}}\nspec:\n  version: {version}\n"),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            "apiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata: {{name: lab}}\nspec:\n  selector: {{groups: [lab]}}\n  release: {release}\n  rollout:\n    waves:\n      - {{name: first, count: 1}}\n      - {{name: rest}}\n    approval: manual\n"
        ),
    )
    .unwrap();
}

async fn report(base: &str, id: &str, key: &DeviceKey, release: &str, version: &str, state: &str) {
    let body =
        serde_json::to_vec(&json!({"release": release, "version": version, "state": state, "healthy": true}))
            .unwrap();
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/devices/{id}/reports"))
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, key.sign_report(id, ts, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

fn rollout(running: &Running, args: &[&str]) -> (bool, String, String) {
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

fn show(running: &Running, id: &str) -> Value {
    let (ok, out, err) = rollout(running, &["--format", "json", "show", id]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_rolls_out_a_commit_and_rollout_commands_steer_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("fleet");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let keys: Vec<(String, DeviceKey)> =
        (0..3).map(|i| (format!("lab-{i}"), DeviceKey::generate())).collect();
    fleet(&repo, &keys, "v1");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "lab on v1"]);

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
    let good = common::git_stdout(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    fleet(&repo, &keys, "v9");
    git(&repo, &["commit", "-q", "-am", "lab to a release that does not exist"]);
    let bad = common::git_stdout(&repo, &["rev-parse", "HEAD"]).trim().to_string();
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
    let unsigned = common::git_stdout(&repo, &["rev-parse", "HEAD"]).trim().to_string();

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
    let running = spawn(&["--source".as_ref(), source.as_os_str()], &data, &[]);
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
    let signed = common::git_stdout(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let out = reconcile();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("in force:       {signed}")), "{stdout}");
}
