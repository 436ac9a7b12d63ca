//! Operators' retry, accept and rollback under `waveguide run`, on SQLite and on
//! PostgreSQL: a fleet repository committed to git, four `waveguide agent` processes whose
//! install and health commands fail while a file says so, the operator's `waveguide
//! rollout` CLI and HTTP API, and every device's instruction read back with the `tough`
//! client.
//!
//! Each scenario starts the same way: the lab moves from its factory image to `v1` (so
//! every device holds an instruction), then to `v2` in two waves, a two-device canary wave
//! first; the canaries' installs are held until the test has chosen how they fail.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use waveguide::protocol::{DeviceInstruction, DeviceKey};
use waveguide_tests::run::{fresh_instruction, Run};
use waveguide_tests::{fleets, fresh_postgres_database, git, git_stdout, waveguide, KillOnDrop};

const WITHIN: Duration = Duration::from_secs(40);

/// Two tests of `scenario`, `<scenario>::sqlite` and `<scenario>::postgres`.
macro_rules! on_sqlite_and_postgres {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$scenario(super::Db::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$scenario(super::Db::Postgres).await;
            }
        }
    };
}

/// The inventory a scenario runs on.
#[derive(Debug, Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

/// One device: its agent and the files its commands read.
struct Device {
    id: String,
    dir: PathBuf,
    _agent: KillOnDrop,
}

impl Device {
    /// Creates (or removes) the file `name` that the device's commands read: `hold` holds
    /// installs back, `install-fails` fails them, `unhealthy-<release>` fails the health
    /// check while that release runs.
    fn set(&self, name: &str, on: bool) {
        let path = self.dir.join(name);
        if on {
            std::fs::write(path, "").unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The lab: its repository, `waveguide run` over it, and four agents.
struct Lab {
    tmp: tempfile::TempDir,
    run: Run,
    devices: Vec<Device>,
    root: Vec<u8>,
    /// The v2 rollout's id, once it started.
    id: String,
}

fn write_policy(repo: &Path, release: &str, bake: &str, on_failure: &str) {
    let policy = fleets::render(
        "lab",
        "policy-operator.yaml",
        &[("release", release), ("bake", bake), ("onFailure", on_failure)],
    );
    std::fs::write(repo.join("policy.yaml"), policy).unwrap();
}

impl Lab {
    /// The lab on v1, then moving to v2 with `on_failure` and a canary bake of `bake`; its
    /// canaries are told v2 and hold their installs. Returns the lab and the canaries'
    /// indexes in `devices`.
    async fn rolling_out_v2(db: Db, bake: &str, on_failure: &str) -> (Lab, Vec<usize>) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("fleet");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        let ids: Vec<String> = (0..4).map(|i| format!("lab-{i}")).collect();
        let keys: Vec<DeviceKey> = ids.iter().map(|_| DeviceKey::generate()).collect();
        let public: Vec<String> = keys.iter().map(DeviceKey::public_key_b64).collect();
        let devices = fleets::with_devices(
            fleets::render("lab", "devices.yaml", &[]),
            ids.iter().map(String::as_str).zip(public.iter().map(String::as_str)),
        );
        std::fs::write(repo.join("devices.yaml"), devices).unwrap();
        std::fs::write(repo.join("groups.yaml"), fleets::render("lab", "groups.yaml", &[])).unwrap();
        std::fs::write(repo.join("releases.yaml"), fleets::render("lab", "releases.yaml", &[])).unwrap();
        write_policy(&repo, "v1", "1s", on_failure);
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "lab on v1"]);

        let data = tmp.path().join("data");
        let database = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(fresh_postgres_database().await),
        };
        let mut args: Vec<&OsStr> = vec![
            "--repo".as_ref(),
            repo.as_os_str(),
            "--step-interval".as_ref(),
            "200ms".as_ref(),
            "--poll-interval".as_ref(),
            "1s".as_ref(),
        ];
        if let Some(url) = &database {
            args.extend([OsStr::new("--database"), OsStr::new(url)]);
        }
        let run = Run::spawn(&data, &args);
        run.wait_status("the first commit", WITHIN, |s| s["commit"].is_string()).await;
        let root = std::fs::read(data.join("tuf/metadata/1.root.json")).unwrap();
        let devices = ids
            .iter()
            .zip(&keys)
            .map(|(id, key)| {
                let dir = tmp.path().join(id);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("key.pk8"), key.pkcs8()).unwrap();
                let agent = agent(&run.base, &data, id, &dir);
                Device { id: id.clone(), dir, _agent: agent }
            })
            .collect();
        let mut lab = Lab { tmp, run, devices, root, id: String::new() };
        let v1 = lab.wait_rollout("the v1 rollout to complete", |r| {
            r["release"] == "v1" && r["phase"] == "completed"
        });
        assert_eq!(v1["total"]["healthy"], 4, "{v1:#}");

        // v2: the canaries are told, and hold their installs.
        for device in &lab.devices {
            device.set("hold", true);
        }
        write_policy(&repo, "v2", bake, on_failure);
        git(&repo, &["commit", "-q", "-am", "lab to v2"]);
        let canaries = lab
            .wait("the canaries told v2", || async {
                let mut told = Vec::new();
                for (i, device) in lab.devices.iter().enumerate() {
                    if lab.instruction(&device.id).await.is_some_and(|i| i.release == "v2") {
                        told.push(i);
                    }
                }
                (told.len() == 2).then_some(told)
            })
            .await;
        lab.id = lab.rollout_of("v2")["id"].as_str().unwrap().to_owned();
        (lab, canaries)
    }

    /// Lets every held install go on.
    fn release_installs(&self) {
        for device in &self.devices {
            device.set("hold", false);
        }
    }

    /// The instruction the TUF repository holds for `device` now.
    async fn instruction(&self, device: &str) -> Option<DeviceInstruction> {
        fresh_instruction(&self.run.base, &self.root, &self.tmp.path().join("tough"), device).await
    }

    /// Every device's instruction, in order.
    async fn instructions(&self) -> Vec<Option<DeviceInstruction>> {
        let mut all = Vec::new();
        for device in &self.devices {
            all.push(self.instruction(&device.id).await);
        }
        all
    }

    /// `waveguide rollout --format json ARGS`, which must succeed.
    fn cli(&self, args: &[&str]) -> Value {
        let out = self.cli_output(args);
        assert!(out.status.success(), "rollout {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn cli_output(&self, args: &[&str]) -> std::process::Output {
        cli_command(&self.run, args).output().unwrap()
    }

    /// Every rollout, as `waveguide rollout list` shows them.
    fn list(&self) -> Vec<Value> {
        self.cli(&["list"]).as_array().unwrap().clone()
    }

    /// The rollout of `release` that is no rollback.
    fn rollout_of(&self, release: &str) -> Value {
        self.list().into_iter().find(|r| r["release"] == release && r["rollbackOf"].is_null()).unwrap()
    }

    /// `POST /v1/rollouts/{id}/{action}` with the operators' token.
    async fn act(&self, id: &str, action: &str) -> (u16, Value) {
        self.run.act(id, action).await
    }

    /// Waits until a rollout satisfies `ready`; returns it.
    fn wait_rollout(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + WITHIN;
        loop {
            let all = self.list();
            if let Some(found) = all.iter().find(|r| ready(r)) {
                return found.clone();
            }
            assert!(Instant::now() < until, "timed out waiting for {what}: {all:#?}");
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    async fn wait<T, F, Fut>(&self, what: &str, mut ready: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let until = Instant::now() + WITHIN;
        loop {
            if let Some(value) = ready().await {
                return value;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}: {:#?}", self.list());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

/// `waveguide agent` for `id`: installs wait while `hold` exists and fail while
/// `install-fails` does; the health check fails while `unhealthy-<release>` exists.
fn agent(base: &str, data: &Path, id: &str, dir: &Path) -> KillOnDrop {
    let d = dir.display();
    let install = format!(
        "while test -e {d}/hold; do sleep 0.1; done; \
         test ! -e {d}/install-fails || {{ echo simulated install failure >&2; exit 1; }}"
    );
    let health = format!("test ! -e {d}/unhealthy-$WAVEGUIDE_RELEASE");
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = waveguide()
        .args(["agent", "--server", base, "--device-id", id])
        .arg("--key")
        .arg(dir.join("key.pk8"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--root")
        .arg(data.join("tuf/metadata/1.root.json"))
        .args(["--release", "factory", "--version", "0.1.0"])
        .args(["--install-cmd", &install, "--health-cmd", &health])
        .args(["--poll-interval", "200ms", "--report-interval", "1s", "--health-interval", "200ms"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn cli_command(run: &Run, args: &[&str]) -> Command {
    let mut command = waveguide();
    command
        .args(["rollout", "--server", &run.base, "--data"])
        .arg(&run.data)
        .args(["--format", "json"])
        .args(args)
        .stdin(Stdio::null());
    command
}

/// The canary that fails its install (`failing`), the one that succeeds, and the rollout
/// halted on the failure.
async fn one_canary_fails(db: Db, on_failure: &str) -> (Lab, usize, usize, Value) {
    let (lab, canaries) = Lab::rolling_out_v2(db, "1s", on_failure).await;
    let (failing, healthy) = (canaries[0], canaries[1]);
    lab.devices[failing].set("install-fails", true);
    lab.release_installs();
    let halted = lab.wait_rollout("the rollout to halt", |r| {
        r["id"] == lab.id.as_str() && r["phase"] == "halted" && r["total"]["healthy"] == 1
    });
    assert_eq!(halted["total"]["failed"], 1, "{halted:#}");
    assert_eq!(halted["total"]["failedBy"]["install"], 1, "{halted:#}");
    (lab, failing, healthy, halted)
}

// (a) Retry: exactly the failed device is told again, with the next attempt.

async fn retry_republishes_exactly_the_failed_devices(db: Db) {
    let (lab, failing, healthy, _) = one_canary_fails(db, "halt").await;
    let before = lab.instructions().await;
    assert_eq!(before[failing].as_ref().unwrap().attempt, 0);

    // The failure is gone (the operator fixed the device); `waveguide rollout retry`.
    lab.devices[failing].set("install-fails", false);
    let answered = lab.cli(&["retry", &lab.id]);
    assert_eq!(answered["id"], lab.id.as_str());
    let retried = lab
        .wait("the failed canary's next attempt", || async {
            lab.instruction(&lab.devices[failing].id).await.filter(|i| i.attempt == 1)
        })
        .await;
    assert_eq!((retried.release.as_str(), retried.rollout.as_str()), ("v2", lab.id.as_str()));
    let done = lab
        .wait_rollout("the rollout to complete", |r| r["id"] == lab.id.as_str() && r["phase"] == "completed");
    assert_eq!((&done["total"]["healthy"], &done["total"]["failed"]), (&json!(4), &json!(0)), "{done:#}");
    // Provenance: every instruction names the commit that started the rollout, and every
    // device reports running the release of that commit.
    let head = git_stdout(&lab.tmp.path().join("fleet"), &["rev-parse", "HEAD"]).trim().to_string();
    let running = lab.wait_rollout("every device reporting its commit", |r| {
        r["id"] == lab.id.as_str() && r["devicesByCommit"][head.as_str()] == 4
    });
    assert_eq!(running["devicesByCommit"].as_object().unwrap().len(), 1, "{running:#}");
    // Only the failed device was retried.
    let after = lab.instructions().await;
    assert_eq!(after[healthy], before[healthy], "the healthy canary is not told again");
    for (i, told) in after.iter().enumerate() {
        let told = told.as_ref().unwrap();
        assert_eq!(told.release, "v2", "{}", lab.devices[i].id);
        assert_eq!(told.attempt, u32::from(i == failing), "{}: {told:?}", lab.devices[i].id);
        assert_eq!(told.commit.as_deref(), Some(head.as_str()), "{}", lab.devices[i].id);
    }
}

on_sqlite_and_postgres!(retry_republishes_exactly_the_failed_devices);

// (b) Accept: the halted rollout completes, the accepted device counted apart.

async fn accept_lets_a_halted_rollout_complete(db: Db) {
    let (lab, failing, _, _) = one_canary_fails(db, "halt").await;
    let (status, answered) = lab.act(&lab.id, "accept").await;
    assert_eq!(status, 200, "{answered:#}");
    let done = lab
        .wait_rollout("the rollout to complete", |r| r["id"] == lab.id.as_str() && r["phase"] == "completed");
    let total = &done["total"];
    assert_eq!(
        (&total["healthy"], &total["failed"], &total["accepted"]),
        (&json!(3), &json!(0), &json!(1)),
        "{done:#}"
    );
    assert_eq!(done["waves"][0]["progress"]["accepted"], 1, "{done:#}");
    // Accepting is not retrying: the failed device keeps its first attempt.
    let told = lab.instruction(&lab.devices[failing].id).await.unwrap();
    assert_eq!((told.release.as_str(), told.attempt), ("v2", 0));
    // `rollout show` tells the accepted device apart.
    let shown = lab.cli(&["show", &lab.id]);
    assert_eq!(shown["total"]["accepted"], 1, "{shown:#}");
    // Asking again once the rollout completed is refused, with the reason.
    let (status, refused) = lab.act(&lab.id, "accept").await;
    assert_eq!(status, 409, "{refused:#}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("completed"), "{refused:#}");
}

on_sqlite_and_postgres!(accept_lets_a_halted_rollout_complete);

// (c) Rollback: the changed devices return to v1 through `<id>-rollback`; the devices of
// the later wave, never told v2, see nothing new.

/// Checks the rollback of the lab's rollout: its rollout, the canaries back on v1, the
/// rest's instructions unchanged from `before`.
async fn check_rollback(lab: &Lab, canaries: &[usize], before: &[Option<DeviceInstruction>]) {
    let back = format!("{}-rollback", lab.id);
    let done = lab.wait_rollout("the rollback rollout to complete", |r| {
        r["id"] == back.as_str() && r["phase"] == "completed"
    });
    assert_eq!(done["rollbackOf"], lab.id.as_str(), "{done:#}");
    assert_eq!(
        (&done["release"], &done["total"]["size"], &done["total"]["healthy"]),
        (&json!("v1"), &json!(2), &json!(2))
    );
    // Visible in `rollout list` and `show`, and through the HTTP API.
    let listed: Vec<String> = lab.list().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        listed.iter().filter(|id| id.starts_with(&back)).count(),
        1,
        "exactly one rollback: {listed:?}"
    );
    let original = lab.cli(&["show", &lab.id]);
    assert!(original["rolledBackAt"].is_string(), "{original:#}");
    let (status, api) = lab.run.rollout(&back).await;
    assert_eq!(status, 200, "{api:#}");
    assert_eq!(api["rollbackOf"], lab.id.as_str());
    let text = waveguide()
        .args(["rollout", "--server", &lab.run.base, "--data"])
        .arg(&lab.run.data)
        .args(["show", &back])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&format!("returns the devices of {} to the release they ran before", lab.id)),
        "{text}"
    );
    let after = lab.instructions().await;
    for (i, told) in after.iter().enumerate() {
        if canaries.contains(&i) {
            let told = told.as_ref().unwrap();
            assert_eq!((told.release.as_str(), told.rollout.as_str()), ("v1", back.as_str()), "{told:?}");
        } else {
            assert_eq!(told, &before[i], "{} never took v2: its instruction stays", lab.devices[i].id);
            assert_eq!(told.as_ref().unwrap().release, "v1");
        }
    }
}

async fn on_failure_rollback_returns_the_changed_devices(db: Db) {
    let (lab, canaries) = Lab::rolling_out_v2(db, "10s", "rollback").await;
    let before = lab.instructions().await;
    lab.release_installs();
    lab.wait_rollout("both canaries on v2", |r| r["id"] == lab.id.as_str() && r["total"]["healthy"] == 2);
    // One canary turns unhealthy during the bake: the wave fails, the rollout halts and
    // its policy rolls it back.
    lab.devices[canaries[0]].set("unhealthy-v2", true);
    let halted =
        lab.wait_rollout("the rollout to halt", |r| r["id"] == lab.id.as_str() && r["phase"] == "halted");
    assert_eq!(halted["total"]["failedBy"]["health"], 1, "{halted:#}");
    check_rollback(&lab, &canaries, &before).await;
}

on_sqlite_and_postgres!(on_failure_rollback_returns_the_changed_devices);

async fn rollback_by_hand_returns_the_changed_devices(db: Db) {
    let (lab, failing, healthy, _) = one_canary_fails(db, "halt").await;
    let before = lab.instructions().await;
    // Halted, not rolled back: the policy says `halt`.
    assert!(lab.list().iter().all(|r| r["rollbackOf"].is_null()));
    let answered = lab.cli(&["rollback", &lab.id]);
    assert!(answered["rolledBackAt"].is_string(), "{answered:#}");
    check_rollback(&lab, &[failing, healthy], &before).await;
    // Sent again: the same answer, no second rollback.
    let again = lab.cli(&["rollback", &lab.id]);
    assert_eq!(again["rolledBackAt"], answered["rolledBackAt"]);
    let rollbacks = lab.list().iter().filter(|r| r["rollbackOf"] == lab.id.as_str()).count();
    assert_eq!(rollbacks, 1);
}

on_sqlite_and_postgres!(rollback_by_hand_returns_the_changed_devices);

// (d) Operators racing each other and the engine's passes (one every 200 ms).

async fn racing_operators_lose_nothing_and_roll_back_once(db: Db) {
    let (lab, _, _, _) = one_canary_fails(db, "halt").await;
    // Two operators at once, different actions: the pause and the acceptance both hold.
    let (paused, accepted) = tokio::join!(lab.act(&lab.id, "pause"), lab.act(&lab.id, "accept"));
    assert_eq!((paused.0, accepted.0), (200, 200), "{paused:?} {accepted:?}");
    let both = lab.wait_rollout("paused with the failure accepted", |r| {
        r["id"] == lab.id.as_str() && r["paused"] == true && r["total"]["accepted"] == 1
    });
    assert_eq!(both["phase"], "paused", "{both:#}");

    // Many rollbacks at once, through the API and the CLI, with a retry among them:
    // exactly one rollback rollout.
    let cli: Vec<_> = (0..3)
        .map(|_| cli_command(&lab.run, &["rollback", &lab.id]).stdout(Stdio::null()).spawn().unwrap())
        .collect();
    let api = futures::future::join_all((0..4).map(|_| lab.run.act(&lab.id, "rollback"))).await;
    let retry = lab.act(&lab.id, "retry").await;
    for (status, body) in &api {
        assert_eq!(*status, 200, "{body:#}");
    }
    for mut child in cli {
        assert!(child.wait().unwrap().success());
    }
    // The retry came after the rollback, or before it: refused, or carried out; never lost
    // in between.
    assert!(retry.0 == 200 || retry.0 == 409, "{retry:?}");
    if retry.0 == 409 {
        assert!(retry.1["error"]["message"].as_str().unwrap().contains("rolled back"), "{retry:?}");
    }
    let back = format!("{}-rollback", lab.id);
    lab.wait_rollout("the rollback rollout to complete", |r| {
        r["id"] == back.as_str() && r["phase"] == "completed"
    });
    std::thread::sleep(Duration::from_secs(1));
    let rollbacks: Vec<Value> =
        lab.list().into_iter().filter(|r| r["rollbackOf"] == lab.id.as_str()).collect();
    assert_eq!(rollbacks.len(), 1, "{rollbacks:#?}");
}

on_sqlite_and_postgres!(racing_operators_lose_nothing_and_roll_back_once);
