//! A real Kubernetes API server for the end-to-end tests, and the real `waveguide
//! controller` binary run against it as the Helm chart would run it.
//!
//! The server is started by `scripts/kube-apiserver start` (scripts/test does it), which
//! exports `WAVEGUIDE_TEST_KUBECONFIG`: an admin kubeconfig, used here only as the
//! operator (`kubectl`) and installer. The controller runs with the token of the chart's
//! ServiceAccount, so it can do exactly what the chart's RBAC grants. Each test works in a
//! namespace of its own, with the chart rendered for that namespace
//! (`watchNamespace`), so tests share the server without seeing each other's Fleets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{waveguide_bin, KillOnDrop};

/// The API server the tests run against.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// The server `scripts/kube-apiserver start` runs; panics with what to do when none is.
    pub fn from_env() -> Cluster {
        let kubeconfig = std::env::var_os("WAVEGUIDE_TEST_KUBECONFIG").expect(
            "WAVEGUIDE_TEST_KUBECONFIG is not set: run ./scripts/test, or \
             `eval \"$(scripts/kube-apiserver start)\"` first (a real kube-apiserver and etcd on 127.0.0.1)",
        );
        assert!(
            Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success()),
            "kubectl is not installed (the Kubernetes tests drive the API server with it)"
        );
        Cluster { kubeconfig: kubeconfig.into() }
    }

    /// `kubectl` as the cluster's administrator (the operator of the tests).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, None)
    }

    /// `kubectl` with `input` on its standard input.
    pub fn kubectl_with(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            // The client is newer than the server on purpose (1.20): its skew warning is noise.
            .arg("--warnings-as-errors=false")
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(input) = input {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `kubectl` that must succeed; returns its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_ok_with(args, None)
    }

    /// `kubectl` with `input` that must succeed; returns its standard output.
    pub fn kubectl_ok_with(&self, args: &[&str], input: Option<&str>) -> String {
        let output = self.kubectl_with(args, input);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// An object as JSON, or `None` when it does not exist.
    pub fn get(&self, namespace: &str, kind: &str, name: &str) -> Option<Value> {
        let output = self.kubectl(&["-n", namespace, "get", kind, name, "-o", "json"]);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains("NotFound"), "kubectl get {kind} {name}: {stderr}");
            return None;
        }
        Some(serde_json::from_slice(&output.stdout).unwrap())
    }

    /// Every object of a kind in a namespace.
    pub fn list(&self, namespace: &str, kind: &str) -> Vec<Value> {
        let text = self.kubectl_ok(&["-n", namespace, "get", kind, "-o", "json"]);
        let list: Value = serde_json::from_str(&text).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// The server's minor version (`20` for 1.20).
    pub fn server_minor_version(&self) -> u32 {
        let version: Value = serde_json::from_str(&self.kubectl_ok(&["version", "-o", "json"])).unwrap();
        let minor = version["serverVersion"]["minor"].as_str().unwrap();
        minor.trim_end_matches('+').parse().unwrap()
    }

    /// A new namespace named after `test` (unique per run of the test binary).
    pub fn namespace(&self, test: &str) -> String {
        let name = format!("{test}-{}", std::process::id());
        self.kubectl_ok(&["create", "namespace", &name]);
        name
    }
}

/// What the chart installed for one test: its ServiceAccount's kubeconfig and the
/// controller's settings from the chart's Deployment.
#[derive(Debug, Clone)]
pub struct Install {
    /// The namespace the chart was installed in (and watches).
    pub namespace: String,
    /// A kubeconfig with the ServiceAccount's token, from the TokenRequest API.
    pub kubeconfig: PathBuf,
    /// The environment the chart's Deployment gives the controller (literal values).
    pub env: Vec<(String, String)>,
    /// The controller's arguments, as the Deployment has them.
    pub args: Vec<String>,
}

/// Installs the chart as `helm install --namespace <namespace>` would, with `watchNamespace`
/// set to it: CRDs created as Helm creates them (kept when they exist), then the
/// templates. The ServiceAccount's token comes from the TokenRequest API (a bare API server
/// has no token controller to fill Secrets).
pub fn install_chart(cluster: &Cluster, namespace: &str, dir: &Path) -> Install {
    let python = std::env::var("WAVEGUIDE_TEST_PYTHON").expect(
        "WAVEGUIDE_TEST_PYTHON is not set: run ./scripts/test (the Python virtualenv with helm-python-sdk)",
    );
    let values = serde_json::json!({"watchNamespace": namespace, "persistence": {"enabled": false}});
    let output = Command::new(python)
        .arg(super::repo_root().join("tests/python/tools/render_chart.py"))
        .args(["waveguide", namespace, &values.to_string()])
        .output()
        .expect("python runs");
    assert!(output.status.success(), "rendering the chart: {}", String::from_utf8_lossy(&output.stderr));
    let manifests = String::from_utf8(output.stdout).unwrap();
    let documents: Vec<Value> = manifests
        .split("\n---\n")
        .flat_map(|text| {
            serde_yaml::Deserializer::from_str(text)
                .filter_map(|d| Option::<Value>::deserialize(d).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let (crds, templates): (Vec<_>, Vec<_>) =
        documents.into_iter().partition(|d| d["kind"] == "CustomResourceDefinition");
    for crd in &crds {
        // Helm posts CRDs as they are; a server older than 1.25 drops their CEL rules
        // (`x-kubernetes-validations`), which kubectl's client-side check would refuse.
        let output = cluster.kubectl_with(&["create", "--validate=false", "-f", "-"], Some(&crd.to_string()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() || stderr.contains("AlreadyExists"), "creating a CRD: {stderr}");
    }
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        cluster.kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", &format!("crd/{name}")]);
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": templates});
    cluster.kubectl_ok_with(&["apply", "-f", "-"], Some(&list.to_string()));

    let deployment =
        templates.iter().find(|d| d["kind"] == "Deployment").expect("the chart has a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect();
    let args = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    let account = pod["serviceAccountName"].as_str().unwrap();
    // The TokenRequest API itself (what `kubectl create token` calls, in kubectl 1.24 and
    // later): any kubectl reaches it through `create --raw`.
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 7200},
    });
    let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token");
    let response =
        cluster.kubectl_ok_with(&["create", "--raw", &path, "-f", "-"], Some(&request.to_string()));
    let response: Value = serde_json::from_str(&response).unwrap();
    let token = response["status"]["token"].as_str().expect("a TokenRequest answers with a token").to_owned();
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(&cluster.kubeconfig).unwrap()).unwrap();
    let server = &admin["clusters"][0]["cluster"];
    let kubeconfig = dir.join("controller.kubeconfig");
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": server}],
        "users": [{"name": account, "user": {"token": token.trim()}}],
        "contexts": [{"name": "controller", "context": {"cluster": "test", "user": account, "namespace": namespace}}],
        "current-context": "controller",
    });
    std::fs::write(&kubeconfig, serde_yaml::to_string(&config).unwrap()).unwrap();
    Install { namespace: namespace.to_owned(), kubeconfig, env, args }
}

use serde::Deserialize as _;

/// A `waveguide controller` process, killed when dropped.
pub struct ControllerProcess {
    /// Its identity in Leases.
    pub identity: String,
    /// Where the device API and TUF files are served.
    pub device_port: u16,
    /// Where health and metrics are served.
    pub health_port: u16,
    /// Its log.
    pub log: PathBuf,
    process: KillOnDrop,
}

impl ControllerProcess {
    /// Starts the controller as the chart's Deployment does (its arguments and
    /// environment), with the ServiceAccount's kubeconfig, on free ports on 127.0.0.1, over
    /// `data`; `overrides` replace or add environment variables. Waits until `/readyz`.
    pub fn start(
        install: &Install,
        identity: &str,
        data: &Path,
        overrides: &[(&str, &str)],
    ) -> ControllerProcess {
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (device_port, health_port) = (free(), free());
        let log = data.with_file_name(format!("{identity}.log"));
        let mut command = Command::new(waveguide_bin());
        command.args(&install.args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (name, value) in &install.env {
            command.env(name, value);
        }
        command
            .env("KUBECONFIG", &install.kubeconfig)
            .env("POD_NAME", identity)
            .env("WAVEGUIDE_DATA", data)
            .env("WAVEGUIDE_LISTEN", format!("127.0.0.1:{device_port}"))
            .env("WAVEGUIDE_HEALTH_LISTEN", format!("127.0.0.1:{health_port}"))
            .env("WAVEGUIDE_LOG", "info");
        for (name, value) in overrides {
            command.env(name, value);
        }
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("waveguide controller starts");
        let mut process = ControllerProcess {
            identity: identity.into(),
            device_port,
            health_port,
            log,
            process: KillOnDrop(child),
        };
        let url = format!("http://127.0.0.1:{health_port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(&url).is_some() {
                break;
            }
            if let Some(status) = process.process.0.try_wait().unwrap() {
                panic!("the controller exited ({status}):\n{}", process.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the controller is not ready after 30 s:\n{}",
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        process
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits for the process to exit (after a signal); returns its exit status.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the controller did not exit within {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The base URL of a fleet's device API and TUF files.
    pub fn fleet_url(&self, namespace: &str, fleet: &str) -> String {
        format!("http://127.0.0.1:{}/fleets/{namespace}/{fleet}", self.device_port)
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.health_port)).expect("metrics answer")
    }
}

/// A plain HTTP GET on 127.0.0.1 (blocking), its body when it answers 2xx.
pub fn http_get(url: &str) -> Option<String> {
    let output = Command::new("curl").args(["-fsS", "--max-time", "5", url]).output().ok()?;
    output.status.success().then(|| String::from_utf8(output.stdout).unwrap())
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `limit` naming
/// `what` it waited for.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The condition `type_` of an object's status.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// The Events regarding an object, oldest first, as `(reason, note)`.
pub fn events(cluster: &Cluster, namespace: &str, kind: &str, name: &str) -> Vec<(String, String)> {
    let mut items: Vec<Value> = cluster
        .list(namespace, "events.events.k8s.io")
        .into_iter()
        .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
        .collect();
    items.sort_by(|a, b| a["eventTime"].as_str().cmp(&b["eventTime"].as_str()));
    items
        .iter()
        .map(|e| (e["reason"].as_str().unwrap_or("").to_owned(), e["note"].as_str().unwrap_or("").to_owned()))
        .collect()
}
