//! The scene of the Kubernetes end-to-end tests: a namespace on the real API server with
//! the chart installed, TUF keys in a Secret (made as docs/kubernetes.md says), a fleet
//! repository served by `git daemon`, and the real `waveguide controller` and `waveguide
//! simulate` binaries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use waveguide::agent::simulate::device_key;

use crate::fleets;
use crate::kube::{install_chart, Cluster, ControllerProcess, Install};
use crate::{git, git_stdout, waveguide, GitDaemon, KillOnDrop};

/// The seed of the simulated devices' keys.
pub const SEED: &str = "k8s-e2e";

/// One test's namespace, chart, keys and fleet repository.
pub struct Scene {
    /// The API server.
    pub cluster: Cluster,
    /// The test's namespace.
    pub ns: String,
    /// What the chart installed.
    pub install: Install,
    /// Scratch space: keys, repositories, controller data and logs.
    pub dir: TempDir,
    /// Serves `dir/git/*` over git://.
    pub daemon: GitDaemon,
    /// The controllers started, for their logs when a wait times out.
    logs: std::cell::RefCell<Vec<PathBuf>>,
}

impl Scene {
    /// A namespace named after `test`, the chart installed into it, the keys Secret
    /// `edge-tuf-keys`, and a fleet repository with `devices` devices (`dev-0`, ...) whose
    /// policy moves them from `r1` to `r2` in two waves, the second approved by hand.
    pub fn new(test: &str, devices: usize) -> Scene {
        let cluster = Cluster::from_env();
        let ns = cluster.namespace(test);
        let dir = tempfile::tempdir().unwrap();
        let install = install_chart(&cluster, &ns, dir.path());

        // docs/kubernetes.md, "Create a Fleet": keys made offline, only the online key and
        // the signed files go into the cluster.
        let keys = dir.path().join("keys");
        // Release keys come with the signed releases file (docs/operations.md); until then
        // the online key signs the releases the fleet lists.
        let output =
            waveguide().args(["keys", "init", "--release-keys", "0", "--dir"]).arg(&keys).output().unwrap();
        assert!(output.status.success(), "keys init: {}", String::from_utf8_lossy(&output.stderr));
        let online = format!("--from-file={}", keys.join("online.pk8").display());
        let mut secret =
            vec!["-n".to_owned(), ns.clone(), "create".into(), "secret".into(), "generic".into()];
        secret.extend(["edge-tuf-keys".to_owned(), online]);
        for sub in ["roots", "targets", "releases"].into_iter().filter(|sub| keys.join(sub).is_dir()) {
            secret.push(format!("--from-file={}/", keys.join(sub).display()));
        }
        cluster.kubectl_ok(&secret.iter().map(String::as_str).collect::<Vec<_>>());

        let repo = dir.path().join("git/fleet");
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        let daemon = GitDaemon::start(&dir.path().join("git"));
        let scene = Scene { cluster, ns, install, dir, daemon, logs: Default::default() };
        scene.write("fleet.yaml", &fleet_yaml(devices, "r2", "manual"));
        scene.commit("fleet");
        scene
    }

    /// The fleet repository's working tree.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("git/fleet")
    }

    /// Its URL on the git daemon.
    pub fn repo_url(&self) -> String {
        format!("git://127.0.0.1:{}/fleet", self.daemon.port)
    }

    /// The root every device trusts at first.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("keys/roots/1.root.json")
    }

    /// Writes a file of the fleet repository.
    pub fn write(&self, file: &str, text: &str) {
        std::fs::write(self.repo().join(file), text).unwrap();
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        git(&self.repo(), &["add", "-A"]);
        git(&self.repo(), &["commit", "-q", "-m", message]);
        git_stdout(&self.repo(), &["rev-parse", "HEAD"])
    }

    /// The Fleet `edge` following the repository's `main`, with `extra` merged into its spec.
    pub fn fleet(&self, extra: Value) -> String {
        let mut spec = serde_json::json!({
            "source": {"url": self.repo_url(), "ref": {"branch": "main"}, "interval": "1s"},
            "tuf": {"keysSecretRef": {"name": "edge-tuf-keys"}},
        });
        merge(&mut spec, extra);
        serde_json::json!({
            "apiVersion": "waveguide.dev/v1alpha1", "kind": "Fleet",
            "metadata": {"name": "edge", "namespace": self.ns},
            "spec": spec,
        })
        .to_string()
    }

    /// `kubectl apply` of a manifest.
    pub fn apply(&self, manifest: &str) {
        self.cluster.kubectl_ok_with(&["apply", "-f", "-"], Some(manifest));
    }

    /// `kubectl -n <ns> <args>`, which must succeed.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        self.cluster.kubectl_ok(&all)
    }

    /// The Fleet `edge`.
    pub fn fleet_object(&self) -> Option<Value> {
        self.cluster.get(&self.ns, "fleet", "edge")
    }

    /// Starts a controller named `identity` over a data directory of that name.
    pub fn controller(&self, identity: &str, overrides: &[(&str, &str)]) -> ControllerProcess {
        self.controller_over(identity, &self.dir.path().join(format!("data-{identity}")), overrides)
    }

    /// Starts a controller named `identity` over `data`, one step a second.
    pub fn controller_over(
        &self,
        identity: &str,
        data: &std::path::Path,
        overrides: &[(&str, &str)],
    ) -> ControllerProcess {
        let mut all = vec![("WAVEGUIDE_STEP_INTERVAL", "1s")];
        all.extend_from_slice(overrides);
        let process = ControllerProcess::start(&self.install, identity, data, &all);
        self.logs.borrow_mut().push(process.log.clone());
        process
    }

    /// Simulated devices `dev-0`… reporting through `base` (a controller's per-fleet
    /// route), starting on `r1`; installs of `fail_release` fail.
    pub fn simulate(&self, base: &str, devices: usize, fail_release: Option<&str>) -> KillOnDrop {
        let ids = self.dir.path().join("ids.txt");
        std::fs::write(&ids, device_ids(devices).join("\n")).unwrap();
        let mut command = waveguide();
        command
            .args(["simulate", "--server", base, "--root"])
            .arg(self.root())
            .arg("--ids")
            .arg(&ids)
            .args(["--key-seed", SEED, "--release", "r1", "--version", "1.0.0"])
            .args(["--poll-interval", "300ms", "--install-time", "200ms", "--report-interval", "1s"])
            .args(["--stats-interval", "5s"]);
        if let Some(release) = fail_release {
            command.args(["--fail-release", release, "--fail-rate", "1"]);
        }
        let log = std::fs::File::create(self.dir.path().join("simulate.log")).unwrap();
        KillOnDrop(command.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap())
    }

    /// Polls `check` until it returns `Some`; on timeout, panics with what it waited for,
    /// the Fleet, and the end of every controller's log.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() > deadline {
                let mut report = format!("timed out after {limit:?} waiting for {what}\n");
                report += &format!("Fleet: {:#}\n", self.fleet_object().unwrap_or_default()["status"]);
                for rollout in self.cluster.list(&self.ns, "fleetrollouts") {
                    report += &format!("FleetRollout: {:#}\n", rollout["status"]);
                }
                let simulated =
                    std::fs::read_to_string(self.dir.path().join("simulate.log")).unwrap_or_default();
                report += &format!("--- simulate:\n{simulated}\n");
                for log in self.logs.borrow().iter() {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    report += &format!("--- {}:\n", log.display());
                    report += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                }
                panic!("{report}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the Fleet's condition `type_` has `status`; returns the Fleet.
    pub fn wait_condition(&self, type_: &str, status: &str, limit: Duration) -> Value {
        self.wait(&format!("condition {type_}={status}"), limit, || {
            let fleet = self.fleet_object()?;
            let condition = crate::kube::condition(&fleet, type_)?;
            (condition["status"] == status).then_some(fleet)
        })
    }

    /// The only FleetRollout, once there is one.
    pub fn rollout(&self, limit: Duration) -> Value {
        self.wait("a FleetRollout", limit, || self.cluster.list(&self.ns, "fleetrollouts").into_iter().next())
    }

    /// Waits until the FleetRollout `name` satisfies `check`.
    pub fn wait_rollout(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait(what, Duration::from_secs(60), || {
            let rollout = self.cluster.get(&self.ns, "fleetrollout", name)?;
            check(&rollout).then_some(rollout)
        })
    }
}

/// `dev-0`, `dev-1`, ...
pub fn device_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dev-{i}")).collect()
}

/// A fleet of `devices` devices in group `site` and a policy moving them to `release` in
/// two waves (one canary, then the rest) with `approval` (`auto` or `manual`).
pub fn fleet_yaml(devices: usize, release: &str, approval: &str) -> String {
    let keys: Vec<(String, String)> =
        device_ids(devices).into_iter().map(|id| (device_key(SEED, &id).public_key_b64(), id)).collect();
    fleets::with_devices(
        fleets::render("site", "fleet.yaml", &[("release", release), ("approval", approval)]),
        keys.iter().map(|(key, id)| (id.as_str(), key.as_str())),
    )
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from,
    }
}
