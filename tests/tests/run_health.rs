//! The policy's device-health rules under `waveguide run`, as operators and devices meet
//! them: a fleet repository committed to git, devices reporting over signed HTTP, the
//! instructions read back through the `tough` client. A transient download failure is
//! retried with the next attempt and the rollout completes; a device that never finishes
//! installing times out and halts the rollout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use waveguide::protocol::DeviceKey;
use waveguide_tests::run::{instruction, send_report_body, tough, Run};
use waveguide_tests::{fleets, git, waveguide};

/// The confirmation period and the device timeout of the lab's policy.
type Periods<'a> = (&'a str, &'a str);

/// The lab fleet on `release` under `policy-health.yaml`.
fn write_fleet(
    repo: &Path,
    keys: &[(String, DeviceKey)],
    release: &str,
    (confirmation, device_timeout): Periods,
) {
    let public: Vec<(String, String)> =
        keys.iter().map(|(id, key)| (id.clone(), key.public_key_b64())).collect();
    let devices = fleets::with_devices(
        fleets::render("lab", "devices.yaml", &[]),
        public.iter().map(|(id, key)| (id.as_str(), key.as_str())),
    );
    std::fs::write(repo.join("devices.yaml"), devices).unwrap();
    std::fs::write(repo.join("groups.yaml"), fleets::render("lab", "groups.yaml", &[])).unwrap();
    std::fs::write(repo.join("releases.yaml"), fleets::render("lab", "releases.yaml", &[])).unwrap();
    let policy = fleets::render(
        "lab",
        "policy-health.yaml",
        &[("release", release), ("confirmation", confirmation), ("deviceTimeout", device_timeout)],
    );
    std::fs::write(repo.join("policy.yaml"), policy).unwrap();
}

/// A repository with the lab on v1, `waveguide run` following it, every device reporting
/// v1; then a commit moves the lab to v2. Returns the run, the keys and the tough cache.
async fn rolling_out_v2(dir: &Path, periods: Periods<'_>) -> (Run, Vec<(String, DeviceKey)>, PathBuf) {
    let repo = dir.join("fleet");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let keys: Vec<(String, DeviceKey)> =
        (0..3).map(|i| (format!("lab-{i}"), DeviceKey::generate())).collect();
    write_fleet(&repo, &keys, "v1", periods);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "lab on v1"]);
    let args: Vec<&std::ffi::OsStr> =
        vec!["--repo".as_ref(), repo.as_os_str(), "--step-interval".as_ref(), "200ms".as_ref()];
    let run = Run::spawn(&dir.join("data"), &args);
    run.wait_status("the first commit", Duration::from_secs(30), |s| s["commit"].is_string()).await;
    for (id, key) in &keys {
        report(&run, id, key, json!({"release": "v1", "version": "1.0.0", "state": "idle", "healthy": true}))
            .await;
    }
    write_fleet(&repo, &keys, "v2", periods);
    git(&repo, &["commit", "-q", "-am", "lab to v2"]);
    let cache = dir.join("tough");
    let ids: Vec<String> = keys.iter().map(|(id, _)| id.clone()).collect();
    wait_for("every device told v2", Duration::from_secs(30), || async {
        let repo = fresh_tough(&run, &cache).await;
        for id in &ids {
            if instruction(&repo, id).await.map(|i| i.release) != Some("v2".into()) {
                return false;
            }
        }
        true
    })
    .await;
    (run, keys, cache)
}

async fn fresh_tough(run: &Run, cache: &Path) -> tough::Repository {
    let _ = std::fs::remove_dir_all(cache);
    tough(run, cache).await
}

/// A report of v2 installed and healthy.
fn installed_v2() -> Value {
    json!({"release": "v2", "version": "2.0.0", "state": "installed", "healthy": true})
}

async fn report(run: &Run, id: &str, key: &DeviceKey, body: Value) {
    let (status, text) = send_report_body(&run.base, id, key, &body).await;
    assert_eq!(status, 202, "{text}");
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    while !ready().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `waveguide rollout show ID --format json`.
fn show(run: &Run, id: &str) -> Value {
    let out = waveguide()
        .args(["rollout", "--server", &run.base, "--data"])
        .arg(&run.data)
        .args(["--format", "json", "show", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_download_failure_is_retried_with_the_next_attempt_and_the_rollout_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, keys, cache) = rolling_out_v2(tmp.path(), ("30s", "1h")).await;
    let first = instruction(&fresh_tough(&run, &cache).await, "lab-0").await.unwrap();
    assert_eq!((first.attempt, first.confirmation_secs), (0, Some(30)));

    let (id, key) = &keys[0];
    let failed = json!({"release": "v1", "version": "1.0.0", "state": "failed", "healthy": true,
                        "failure": "download", "detail": "connection reset"});
    report(&run, id, key, failed).await;
    for (id, key) in &keys[1..] {
        report(&run, id, key, installed_v2()).await;
    }
    wait_for("the retry of lab-0", Duration::from_secs(30), || async {
        instruction(&fresh_tough(&run, &cache).await, "lab-0").await.is_some_and(|i| i.attempt == 1)
    })
    .await;
    let status = show(&run, "lab-1");
    assert_eq!(status["phase"], "progressing", "a failure being retried does not halt: {status:#}");
    assert_eq!(status["waves"][0]["progress"]["failed"], 0, "{status:#}");

    report(&run, id, key, installed_v2()).await;
    wait_for("the rollout to complete", Duration::from_secs(30), || async {
        show(&run, "lab-1")["phase"] == "completed"
    })
    .await;
    let retried = instruction(&fresh_tough(&run, &cache).await, "lab-0").await.unwrap();
    assert_eq!((retried.release.as_str(), retried.attempt), ("v2", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_that_never_finishes_installing_times_out_and_halts_the_rollout() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, keys, _cache) = rolling_out_v2(tmp.path(), ("1s", "3s")).await;
    for (id, key) in &keys[1..] {
        report(&run, id, key, installed_v2()).await;
    }
    let (id, key) = &keys[0];
    let installing = json!({"release": "v1", "version": "1.0.0", "state": "installing", "healthy": true});
    wait_for("the rollout to halt", Duration::from_secs(30), || async {
        // lab-0 keeps reporting: it is not silent, it is stuck.
        report(&run, id, key, installing.clone()).await;
        show(&run, "lab-1")["phase"] == "halted"
    })
    .await;
    let status = show(&run, "lab-1");
    assert!(status["message"].as_str().unwrap().contains("1 of 3 devices failed"), "{status:#}");
}
