//! The update lifecycle of the `waveguide agent` binary against a real device API, SQLite
//! inventory and published TUF repository on 127.0.0.1: install → confirm → commit or
//! roll back, a confirmation that survives SIGKILL, the health watch after the commit,
//! and retries only on a higher attempt.

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use waveguide::protocol::{DeviceKey, FailureClass, UpdateState};
use waveguide::publish::{Batch, ReleaseArtifact};
use waveguide_tests::agent::{instruction, Controller, CONFIRMED_UPDATE};
use waveguide_tests::waveguide;

/// A declared device whose key and state live in the controller's temporary directory,
/// and files its commands write.
struct Device {
    id: String,
    key: PathBuf,
    state: PathBuf,
    dir: PathBuf,
}

impl Device {
    async fn declare(c: &Controller, id: &str) -> Device {
        let dir = c.tmp.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let key = DeviceKey::generate();
        std::fs::write(dir.join("key.pk8"), key.pkcs8()).unwrap();
        c.declare(&[(id, key.public_key_b64())]).await;
        Device { id: id.into(), key: dir.join("key.pk8"), state: dir.join("state"), dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Lines a command appended to `name` (none when it never ran).
    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.file(name)).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Appends the release to `installs`, hangs while `install-hangs` exists, and fails
    /// with the content of `install-fails` on stderr while that file exists.
    fn install_cmd(&self) -> String {
        let fails = self.file("install-fails").display().to_string();
        format!(
            "echo \"$WAVEGUIDE_RELEASE\" >> {}; test ! -e {} || sleep 30; test ! -e {fails} || {{ cat {fails} >&2; exit 1; }}",
            self.file("installs").display(),
            self.file("install-hangs").display()
        )
    }

    /// `waveguide agent` for this device: installs append to `installs`, the commit and
    /// rollback commands write what they were given to `committed` and `rolled-back`.
    fn agent(&self, c: &Controller, health: &str, extra: &[&str]) -> std::process::Command {
        let mut command = waveguide();
        command
            .args(["agent", "--server", c.base.as_str(), "--device-id", &self.id])
            .arg("--key")
            .arg(&self.key)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--root")
            .arg(c.root_file())
            .args(["--release", "factory", "--version", "1.0.0"])
            .args(["--install-cmd", &self.install_cmd()])
            .args(["--health-cmd", health])
            .args(["--poll-interval", "200ms"])
            .env("WAVEGUIDE_HEALTH_INTERVAL", "200ms")
            .env(
                "WAVEGUIDE_COMMIT_CMD",
                format!(
                    "echo \"$WAVEGUIDE_RELEASE $WAVEGUIDE_VERSION from $WAVEGUIDE_PREVIOUS_RELEASE $WAVEGUIDE_PREVIOUS_VERSION\" > {}",
                    self.file("committed").display()
                ),
            )
            .env(
                "WAVEGUIDE_ROLLBACK_CMD",
                format!(
                    "echo \"$WAVEGUIDE_RELEASE $WAVEGUIDE_VERSION to $WAVEGUIDE_PREVIOUS_RELEASE $WAVEGUIDE_PREVIOUS_VERSION\" > {}",
                    self.file("rolled-back").display()
                ),
            )
            .args(extra);
        command
    }
}

async fn output(mut command: std::process::Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn stdout(output: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Publishes release `release` (version `version`) to `device` with a confirmation period.
fn publish(
    c: &Controller,
    device: &str,
    release: &str,
    version: &str,
    confirmation: Option<u64>,
    attempt: u32,
) {
    let image: ReleaseArtifact = c.artifact(release, "app.bin", format!("{release} image").as_bytes());
    let mut told = instruction(device, release, version, &[&image]);
    told.confirmation_secs = confirmation;
    told.attempt = attempt;
    c.publish(Batch { upserts: vec![told], releases: vec![image], ..Batch::default() });
}

/// A health command that passes `passes` times, then fails with `message` on stderr;
/// every run is a line in `checks`.
fn health_passing(dev: &Device, passes: usize, message: &str) -> String {
    let checks = dev.file("checks").display().to_string();
    format!(
        "echo \"$WAVEGUIDE_RELEASE\" >> {checks}; test $(wc -l < {checks}) -le {passes} || {{ echo '{message}' >&2; exit 1; }}"
    )
}

/// Waits until `done` holds, or fails after `limit` with `what`.
async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL: no step finishes, nothing more is saved
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_that_passes_commits_and_runs_the_commit_command() {
    let c = Controller::start().await;
    let dev = Device::declare(&c, "ab-1").await;
    publish(&c, "ab-1", "r2", "2.0.0", Some(2), 0);
    let health = format!("echo \"$WAVEGUIDE_RELEASE\" >> {}", dev.file("checks").display());
    let started = Instant::now();
    let out = output(dev.agent(&c, &health, &["--once"])).await;
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("ab-1: installed (runs r2 2.0.0, installed)"), "{}", stdout(&out));
    assert!(started.elapsed() >= Duration::from_secs(2), "the confirmation lasts its period");
    let checks = dev.lines("checks");
    assert!(checks.len() >= 5 && checks.iter().all(|r| r == "r2"), "checked every 200 ms: {checks:?}");
    assert_eq!(dev.lines("committed"), ["r2 2.0.0 from factory 1.0.0"]);
    assert!(dev.lines("rolled-back").is_empty());
    let states: Vec<UpdateState> = c.reports("ab-1").iter().map(|r| r.state).collect();
    assert_eq!(states, CONFIRMED_UPDATE);
    let confirming = &c.reports("ab-1")[2];
    assert_eq!(confirming.release.as_deref(), Some("r2"), "it runs the new release while confirming");
    let report = c.last_report("ab-1");
    assert!(report.healthy && report.failure.is_none(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_failing_during_the_confirmation_rolls_back_to_the_previous_release() {
    let c = Controller::start().await;
    let dev = Device::declare(&c, "ab-2").await;
    publish(&c, "ab-2", "r2", "2.0.0", Some(30), 0);
    let health = health_passing(&dev, 3, "api returned 503");
    let out = output(dev.agent(&c, &health, &["--once"])).await;
    assert!(!out.status.success(), "a rollback is a failure: {}", stdout(&out));
    assert!(stdout(&out).contains("rolled back (health): health command failed"), "{}", stdout(&out));
    assert_eq!(dev.lines("checks").len(), 4, "stopped at the first failing check");
    assert_eq!(dev.lines("rolled-back"), ["r2 2.0.0 to factory 1.0.0"]);
    assert!(dev.lines("committed").is_empty(), "never committed");

    let report = c.last_report("ab-2");
    assert_eq!(report.state, UpdateState::RolledBack);
    assert_eq!(report.failure, Some(FailureClass::Health));
    assert_eq!((report.release.as_deref(), report.version.to_string().as_str()), (Some("factory"), "1.0.0"));
    assert!(report.detail.as_deref().unwrap().contains("api returned 503"), "{report:?}");
    let inventory = c.api.store().inventory().await.unwrap();
    let stored = inventory.get("ab-2").unwrap();
    assert_eq!((stored.state, stored.release.as_deref()), (UpdateState::RolledBack, Some("factory")));

    // Not tried again: the same instruction failed.
    let out = output(dev.agent(&c, &health, &["--once"])).await;
    assert!(stdout(&out).contains("instruction failed before"), "{}", stdout(&out));
    assert_eq!(dev.lines("installs"), ["r2"]);

    // A health interval of zero would check in a busy loop: refused, naming the flag.
    let out = output(dev.agent(&c, &health, &["--once", "--health-interval", "0s"])).await;
    assert!(!out.status.success());
    assert!(stdout(&out).contains("--health-interval must be longer than 0s"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_the_confirmation_resumes_it_without_reinstalling() {
    let c = Controller::start().await;
    let dev = Device::declare(&c, "ab-3").await;
    publish(&c, "ab-3", "r2", "2.0.0", Some(8), 0);
    let health = format!("echo \"$WAVEGUIDE_RELEASE\" >> {}", dev.file("checks").display());
    let mut command = dev.agent(&c, &health, &[]);
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Killed once it confirmed for 4 s of the 8.
    let state_file = dev.state.join("state.json");
    let confirmed = || -> u64 {
        let Ok(text) = std::fs::read_to_string(&state_file) else { return 0 };
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        state["confirming"]["confirmedMs"].as_u64().unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), "4 s of confirmation", || confirmed() >= 4000).await;
    kill(child);
    let before = confirmed();
    assert!(before < 8000, "killed during the confirmation");
    assert_eq!(c.last_report("ab-3").state, UpdateState::Confirming);
    let reports_before = c.reports("ab-3").len();

    // Started again: no download, no install; the confirmation goes on where it stopped.
    let started = Instant::now();
    let out = output(dev.agent(&c, &health, &["--once"])).await;
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("ab-3: installed (runs r2 2.0.0, installed)"), "{}", stdout(&out));
    let resumed = started.elapsed();
    // Starting the confirmation over would take the whole 8 s.
    assert!(
        resumed < Duration::from_millis(8000 - before + 3000),
        "resumed with {before} ms confirmed, yet took {resumed:?}"
    );
    assert_eq!(dev.lines("installs"), ["r2"], "installed once");
    assert_eq!(dev.lines("committed"), ["r2 2.0.0 from factory 1.0.0"]);
    let after: Vec<UpdateState> = c.reports("ab-3")[reports_before..].iter().map(|r| r.state).collect();
    assert!(
        after.iter().all(|s| matches!(s, UpdateState::Confirming | UpdateState::Installed)),
        "no download or install after the restart: {after:?}"
    );
    assert_eq!(after.last(), Some(&UpdateState::Installed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turning_bad_after_the_commit_is_reported_at_once() {
    let c = Controller::start().await;
    let dev = Device::declare(&c, "ab-4").await;
    publish(&c, "ab-4", "r2", "2.0.0", Some(1), 0);
    let broken = dev.file("broken");
    let health = format!("! cat {} 2>/dev/null | grep .", broken.display());
    // Heartbeats an hour apart: only a report sent at once can carry the change.
    let mut command = dev.agent(&c, &health, &["--report-interval", "1h"]);
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let last = |c: &Controller| c.reports("ab-4").last().cloned();
    wait_until(Duration::from_secs(30), "the commit", || {
        last(&c).is_some_and(|r| r.state == UpdateState::Installed)
    })
    .await;
    std::fs::write(&broken, "disk errors on /dev/mmcblk0\n").unwrap();
    let changed = Instant::now();
    wait_until(Duration::from_secs(10), "the unhealthy report", || last(&c).is_some_and(|r| !r.healthy))
        .await;
    assert!(changed.elapsed() < Duration::from_secs(5), "reported at once: {:?}", changed.elapsed());
    let report = last(&c).unwrap();
    assert_eq!((report.state, report.release.as_deref()), (UpdateState::Installed, Some("r2")));
    assert!(report.detail.as_deref().unwrap().contains("disk errors on /dev/mmcblk0"), "{report:?}");
    assert!(dev.lines("rolled-back").is_empty(), "a committed release is not rolled back by the agent");

    std::fs::remove_file(&broken).unwrap();
    wait_until(Duration::from_secs(10), "the healthy report", || last(&c).is_some_and(|r| r.healthy)).await;
    assert_eq!(last(&c).unwrap().detail, None);
    kill(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instruction_is_retried_only_when_its_attempt_grows() {
    let c = Controller::start().await;
    let dev = Device::declare(&c, "ab-5").await;
    // The first install fails (the disk is full), later ones pass.
    std::fs::write(dev.file("install-fails"), "disk full\n").unwrap();
    let run = || output(dev.agent(&c, "true", &["--once"]));
    publish(&c, "ab-5", "r2", "2.0.0", None, 0);
    let out = run().await;
    assert!(stdout(&out).contains("update failed (install): install command failed"), "{}", stdout(&out));
    assert_eq!(c.last_report("ab-5").failure, Some(FailureClass::Install));

    // The same attempt, republished: not tried again.
    publish(&c, "ab-5", "r2", "2.0.0", None, 0);
    let out = run().await;
    assert!(stdout(&out).contains("instruction failed before"), "{}", stdout(&out));
    assert_eq!(dev.lines("installs").len(), 1);

    // The next attempt: tried again, and installed.
    std::fs::remove_file(dev.file("install-fails")).unwrap();
    publish(&c, "ab-5", "r2", "2.0.0", None, 1);
    let out = run().await;
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("ab-5: installed (runs r2 2.0.0, installed)"), "{}", stdout(&out));
    assert_eq!(dev.lines("installs").len(), 2);
    let report = c.last_report("ab-5");
    assert_eq!((report.state, report.failure), (UpdateState::Installed, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_an_install_starts_it_again_or_settles_when_told_to_stay() {
    let c = Controller::start().await;
    let dev = Device::declare(&c, "ab-6").await;
    publish(&c, "ab-6", "r2", "2.0.0", None, 0);
    // The install hangs; killed in the middle of it.
    std::fs::write(dev.file("install-hangs"), "").unwrap();
    let mut command = dev.agent(&c, "true", &[]);
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_until(Duration::from_secs(30), "the install", || dev.lines("installs").len() == 1).await;
    kill(child);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dev.state.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["state"], "installing", "the step was saved before it ran");

    // Told to stay on what it runs: settled, not reporting `installing` forever.
    publish(&c, "ab-6", "factory", "1.0.0", None, 0);
    let out = output(dev.agent(&c, "true", &["--once"])).await;
    assert!(stdout(&out).contains("ab-6: up to date (runs factory 1.0.0, installed)"), "{}", stdout(&out));
    assert_eq!(c.last_report("ab-6").state, UpdateState::Installed);

    // Told to install again: it does.
    std::fs::remove_file(dev.file("install-hangs")).unwrap();
    publish(&c, "ab-6", "r2", "2.0.0", None, 0);
    let out = output(dev.agent(&c, "true", &["--once"])).await;
    assert!(stdout(&out).contains("ab-6: installed (runs r2 2.0.0, installed)"), "{}", stdout(&out));
    assert_eq!(dev.lines("installs").len(), 2);
}
