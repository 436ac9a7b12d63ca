//! `waveguide run` started as an operator starts it, for the tests that drive it over
//! HTTP, signal it and kill it.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::{json, Value};
use waveguide::protocol::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use waveguide::protocol::target::device_target_path;
use waveguide::protocol::{DeviceInstruction, DeviceKey};
use waveguide::publish::SpecTargetPaths;

use super::waveguide;

/// A running `waveguide run`, killed when dropped.
pub struct Run {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its data directory.
    pub data: PathBuf,
    /// Every line it wrote to standard error so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Run {
    /// Starts `waveguide run --data DATA --listen 127.0.0.1:0 ARGS...` and waits for the
    /// address it prints.
    pub fn spawn(data: &Path, args: &[&OsStr]) -> Run {
        let mut child = Run::command(data, args).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Shown when the test fails.
                eprintln!("waveguide run: {line}");
                if let Some(rest) = line.split("device API on http://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("waveguide run prints its address");
        Run { child: Some(child), base: format!("http://{addr}"), data: data.to_owned(), log }
    }

    /// The command `waveguide run --data DATA --listen 127.0.0.1:0 ARGS...`, its standard
    /// output dropped.
    pub fn command(data: &Path, args: &[&OsStr]) -> Command {
        let mut command = waveguide();
        command
            .arg("run")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null());
        command
    }

    /// The operators' token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token")).unwrap().trim().to_owned()
    }

    /// A request to the operators' API, with the token.
    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new().request(method, format!("{}{path}", self.base)).bearer_auth(self.token())
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Value {
        let response = self
            .admin(reqwest::Method::GET, "/v1/status")
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `POST /v1/rollouts/{id}/{action}`: the HTTP status and the JSON answer.
    pub async fn act(&self, id: &str, action: &str) -> (u16, Value) {
        let path = format!("/v1/rollouts/{id}/{action}");
        let response =
            self.admin(reqwest::Method::POST, &path).timeout(Duration::from_secs(30)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// `GET /v1/rollouts/{id}`: the HTTP status and the JSON answer.
    pub async fn rollout(&self, id: &str) -> (u16, Value) {
        let path = format!("/v1/rollouts/{id}");
        let response =
            self.admin(reqwest::Method::GET, &path).timeout(Duration::from_secs(30)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Waits up to `within` until `ready(status)` holds; returns that status.
    pub async fn wait_status(&self, what: &str, within: Duration, ready: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + within;
        loop {
            let status = self.status().await;
            if ready(&status) {
                return status;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}; status: {status:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the log has a line containing `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Sends `signal` (`libc::SIGTERM`, ...) and waits up to `within` for the exit.
    pub fn signal_and_wait(&mut self, signal: i32, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let until = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Lets the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("waveguide run did not stop within {within:?} of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signed report of `id`; returns the HTTP status and body. `detail` makes each
/// report tellable from the others in the device's history.
pub async fn send_report(
    base: &str,
    id: &str,
    key: &DeviceKey,
    (release, version, state): (&str, &str, &str),
    detail: Option<&str>,
) -> (u16, String) {
    let body =
        json!({"release": release, "version": version, "state": state, "healthy": true, "detail": detail});
    send_report_body(base, id, key, &body).await
}

/// Sends `body`, signed, as a report of `id`; returns the HTTP status and body.
pub async fn send_report_body(base: &str, id: &str, key: &DeviceKey, body: &Value) -> (u16, String) {
    let body = serde_json::to_vec(body).unwrap();
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let sent = reqwest::Client::new()
        .post(format!("{base}/v1/devices/{id}/reports"))
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, key.sign_report(id, ts, &body))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(30))
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The TUF repository `run` serves, loaded by the `tough` client from its first root into
/// `cache`.
pub async fn tough(run: &Run, cache: &Path) -> tough::Repository {
    let root = std::fs::read(run.data.join("tuf/metadata/1.root.json")).unwrap();
    tough_at(&run.base, &root, cache).await
}

/// The TUF repository served under `<base>/tuf/`, loaded by the `tough` client from
/// `root` into `cache`.
pub async fn tough_at(base: &str, root: &[u8], cache: &Path) -> tough::Repository {
    let base = url::Url::parse(&format!("{base}/tuf/")).unwrap();
    std::fs::create_dir_all(cache).unwrap();
    tough::RepositoryLoader::new(&root, base.join("metadata/").unwrap(), base.join("targets/").unwrap())
        .transport(SpecTargetPaths(tough::HttpTransportBuilder::new().tries(1).build()))
        .datastore(cache)
        .load()
        .await
        .expect("tough accepts the repository")
}

/// The instruction `repo` holds for `device`, as the `tough` client reads it.
pub async fn instruction(repo: &tough::Repository, device: &str) -> Option<DeviceInstruction> {
    let name = tough::TargetName::new(device_target_path(device)).unwrap();
    let stream = repo.read_target(&name).await.expect("tough reads the target")?;
    let bytes: Vec<u8> = stream.map_ok(|b| b.to_vec()).try_concat().await.unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// The instruction for `device` that the TUF repository under `<base>/tuf/` holds now, read
/// by the `tough` client from `root` with an empty cache.
pub async fn fresh_instruction(
    base: &str,
    root: &[u8],
    cache: &Path,
    device: &str,
) -> Option<DeviceInstruction> {
    let _ = std::fs::remove_dir_all(cache);
    instruction(&tough_at(base, root, cache).await, device).await
}
