//! The device API and the operators' API under races and faults, against `waveguide run`
//! as operators start it: concurrent enrollments of one id, pause and resume racing the
//! engine's passes, replays across a restart and across two controllers sharing
//! PostgreSQL, a PostgreSQL outage (503 with `Retry-After`, then recovery), and keep-alive
//! requests that do not wait for delayed ACKs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use waveguide::protocol::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use waveguide::protocol::DeviceKey;
use waveguide_tests::{fleets, git, repo_root, waveguide, KillOnDrop};

const ENROLLMENT_TOKEN: &str = "lab-enrollment-secret";

/// A fleet repository: group `lab` (open to enrollment), devices with keys, releases v1
/// and v2, and a policy moving `lab` to `release` in two waves, the second approved by hand.
struct Fleet {
    dir: PathBuf,
    devices: Vec<(String, DeviceKey)>,
}

impl Fleet {
    fn new(dir: &Path, devices: usize) -> Fleet {
        std::fs::create_dir_all(dir).unwrap();
        git(dir, &["init", "-q", "-b", "main"]);
        let devices = (0..devices).map(|i| (format!("lab-{i}"), DeviceKey::generate())).collect();
        let fleet = Fleet { dir: dir.to_owned(), devices };
        fleet.commit("v1");
        fleet
    }

    fn commit(&self, release: &str) {
        let token_sha256 = hex::encode(Sha256::digest(ENROLLMENT_TOKEN));
        let keys: Vec<(&str, String)> =
            self.devices.iter().map(|(id, key)| (id.as_str(), key.public_key_b64())).collect();
        let yaml = [
            fleets::render("lab", "groups-enrollment.yaml", &[("token_sha256", &token_sha256)]),
            fleets::with_devices(
                fleets::render("lab", "devices.yaml", &[]),
                keys.iter().map(|(id, key)| (*id, key.as_str())),
            ),
            fleets::render("lab", "releases.yaml", &[]),
            fleets::render("lab", "policy-manual.yaml", &[("release", release)]),
        ]
        .join("---\n");
        std::fs::write(self.dir.join("fleet.yaml"), yaml).unwrap();
        git(&self.dir, &["add", "."]);
        git(&self.dir, &["commit", "-q", "-m", &format!("lab on {release}")]);
    }
}

/// A running `waveguide run`, killed when dropped.
struct Controller {
    base: String,
    data: PathBuf,
    http: reqwest::Client,
    _process: KillOnDrop,
}

impl Controller {
    /// Starts `waveguide run` on `fleet` with `data` (and `extra` arguments) and waits
    /// until its first commit is applied.
    async fn start(fleet: &Fleet, data: &Path, extra: &[&str]) -> Controller {
        let mut child = waveguide()
            .args(["run", "--listen", "127.0.0.1:0", "--step-interval", "100ms", "--poll-interval", "1s"])
            .arg("--repo")
            .arg(&fleet.dir)
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("waveguide run: {line}");
                if let Some((_, address)) = line.split_once("device API on http://") {
                    let _ = tx.send(address.split('/').next().unwrap_or_default().to_string());
                }
            }
        });
        let address = rx.recv_timeout(Duration::from_secs(60)).expect("waveguide run prints its address");
        let controller = Controller {
            base: format!("http://{address}"),
            data: data.to_owned(),
            http: reqwest::Client::new(),
            _process: KillOnDrop(child),
        };
        eventually("the first commit to be applied", || async {
            controller.get("/tuf/metadata/timestamp.json").await.status() == StatusCode::OK
        })
        .await;
        controller
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    /// A signed report body and its headers, to send (and send again) as it is.
    fn signed_report(
        &self,
        id: &str,
        key: &DeviceKey,
        release: &str,
        version: &str,
        state: &str,
    ) -> SignedReport {
        let body = serde_json::to_vec(
            &json!({"release": release, "version": version, "state": state, "healthy": true}),
        )
        .unwrap();
        let timestamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let signature = key.sign_report(id, timestamp, &body);
        SignedReport { path: format!("/v1/devices/{id}/reports"), body, timestamp, signature }
    }

    async fn send(&self, report: &SignedReport) -> StatusCode {
        self.send_for_response(report).await.status()
    }

    async fn send_for_response(&self, report: &SignedReport) -> reqwest::Response {
        self.http
            .post(format!("{}{}", self.base, report.path))
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, report.timestamp.to_string())
            .header(SIGNATURE_HEADER, &report.signature)
            .body(report.body.clone())
            .send()
            .await
            .unwrap()
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token")).unwrap().trim().to_string()
    }

    async fn operator(&self, method: reqwest::Method, path: &str) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap()
    }

    async fn enroll(&self, id: &str, key: &DeviceKey) -> StatusCode {
        let body = json!({"deviceId": id, "token": ENROLLMENT_TOKEN, "publicKey": key.public_key_b64()});
        self.http.post(format!("{}/v1/enroll", self.base)).json(&body).send().await.unwrap().status()
    }
}

struct SignedReport {
    path: String,
    body: Vec<u8>,
    timestamp: i64,
    signature: String,
}

/// Waits up to 30 s for `ready`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut ready: impl FnMut() -> F) {
    let until = Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Thirty devices enroll one new id at once, each with its own key: one wins, the others
/// are refused, and the key stored is the winner's. The winner enrolling again is fine.
async fn enroll_racing(controller: &Controller, id: &str) {
    let keys: Vec<DeviceKey> = (0..30).map(|_| DeviceKey::generate()).collect();
    let statuses = futures::future::join_all(keys.iter().map(|key| controller.enroll(id, key))).await;
    let winners: Vec<usize> = (0..keys.len()).filter(|&i| statuses[i] == StatusCode::CREATED).collect();
    assert_eq!(winners.len(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{statuses:?}");
    let winner = &keys[winners[0]];
    assert_eq!(controller.enroll(id, winner).await, StatusCode::CREATED, "the same key again");
    // Only the winner's key authenticates reports.
    let report = controller.signed_report(id, winner, "v1", "1.0.0", "idle");
    assert_eq!(controller.send(&report).await, StatusCode::ACCEPTED);
    let loser = &keys[(winners[0] + 1) % keys.len()];
    let report = controller.signed_report(id, loser, "v1", "1.0.0", "idle");
    assert_eq!(controller.send(&report).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrollment_races_replays_across_restarts_and_keep_alive_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(&tmp.path().join("fleet"), 2);
    let data = tmp.path().join("data");
    let controller = Controller::start(&fleet, &data, &[]).await;
    enroll_racing(&controller, "newcomer").await;

    // A report captured on the wire is refused when replayed after a restart.
    let (id, key) = &fleet.devices[0];
    let captured = controller.signed_report(id, key, "v1", "1.0.0", "idle");
    assert_eq!(controller.send(&captured).await, StatusCode::ACCEPTED);
    drop(controller);
    let controller = Controller::start(&fleet, &data, &[]).await;
    assert_eq!(controller.send(&captured).await, StatusCode::UNAUTHORIZED, "replayed after a restart");
    let fresh = controller.signed_report(id, key, "v1", "1.0.0", "installed");
    assert_eq!(controller.send(&fresh).await, StatusCode::ACCEPTED);

    // Keep-alive requests answer at once: with Nagle's algorithm on, an answer written in
    // two parts (headers, then the file) waits for the client's delayed ACK, about 40 ms.
    // A plain HTTP/1.1 client on one connection, as a device's or a CDN's would be.
    let address = controller.base.trim_start_matches("http://").to_string();
    let took = tokio::task::spawn_blocking(move || {
        keep_alive_latencies(&address, "/tuf/metadata/timestamp.json", 40)
    })
    .await
    .unwrap();
    assert!(took[took.len() / 2] < Duration::from_millis(20), "median of keep-alive requests: {took:?}");
}

/// Sends `count` GETs of `path` one after the other on one connection and returns how
/// long each took, sorted.
fn keep_alive_latencies(address: &str, path: &str, count: usize) -> Vec<Duration> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    // The client's side must not delay its own requests.
    stream.set_nodelay(true).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let mut took = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a Content-Length")
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    took
}

/// Resume and pause sent back to back while the engine makes passes: the pause, sent
/// last, always stands; a pass never writes back the state it read before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_right_after_resume_is_never_lost_to_a_running_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(&tmp.path().join("fleet"), 3);
    let controller = Controller::start(&fleet, &tmp.path().join("data"), &[]).await;
    for (id, key) in &fleet.devices {
        assert_eq!(
            controller.send(&controller.signed_report(id, key, "v1", "1.0.0", "idle")).await,
            StatusCode::ACCEPTED
        );
    }
    fleet.commit("v2");
    eventually("the rollout to start", || async {
        controller.operator(reqwest::Method::GET, "/v1/rollouts").await.to_string().contains("lab-1")
    })
    .await;
    let passes = || async {
        controller.operator(reqwest::Method::GET, "/v1/status").await["passes"].as_u64().unwrap()
    };
    let mut lost = 0;
    for _ in 0..40 {
        controller.operator(reqwest::Method::POST, "/v1/rollouts/lab-1/resume").await;
        controller.operator(reqwest::Method::POST, "/v1/rollouts/lab-1/pause").await;
        // Two whole passes after the pause.
        let after = passes().await;
        eventually("two passes", || async { passes().await >= after + 2 }).await;
        let rollout = controller.operator(reqwest::Method::GET, "/v1/rollouts/lab-1").await;
        if rollout["paused"] != true || rollout["phase"] != "paused" {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "pauses undone by a concurrent pass");
}

/// A throw-away PostgreSQL server of this test's own (`scripts/postgres`), which the test
/// stops and starts again.
struct Postgres {
    url: String,
    dir: String,
}

impl Postgres {
    fn start() -> Postgres {
        let out = Command::new(repo_root().join("scripts/postgres")).arg("start").output().unwrap();
        assert!(out.status.success(), "scripts/postgres start: {}", String::from_utf8_lossy(&out.stderr));
        let exports = String::from_utf8(out.stdout).unwrap();
        let value = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} in {exports}"))
                .to_string()
        };
        let (server, _) = value("WAVEGUIDE_TEST_POSTGRES_URL")
            .rsplit_once('/')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap();
        Postgres { url: format!("{server}/postgres"), dir: value("WAVEGUIDE_TEST_POSTGRES_DIR") }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/postgres installs it)")
            .map(|e| e.unwrap().path().join("bin/pg_ctl"))
            .max()
            .unwrap();
        let uid = Command::new("id").arg("-u").output().unwrap().stdout;
        // PostgreSQL refuses to run as root; scripts/postgres runs it as `postgres` then.
        let mut command = if String::from_utf8_lossy(&uid).trim() == "0" {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        let status = command.arg("-D").arg(format!("{}/data", self.dir)).args(args).status().unwrap();
        assert!(status.success(), "pg_ctl {args:?}");
    }

    /// Stops the server at once, as a crash or a network cut would look to clients.
    fn stop(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    fn start_again(&self) {
        let port = self.url.rsplit(':').next().unwrap().split('/').next().unwrap();
        let options = format!("-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off", self.dir);
        let log = format!("{}/server.log", self.dir);
        self.pg_ctl(&["-l", &log, "-w", "-t", "60", "-o", &options, "start"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/postgres")).args(["stop", &self.dir]).status();
    }
}

/// Two controllers share one PostgreSQL inventory: enrollment races and replays are
/// decided by the database, not by either process. Then PostgreSQL stops: reports get 503
/// with `Retry-After` at once instead of hanging, and are accepted again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_on_one_postgres_and_an_outage() {
    let postgres = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(&tmp.path().join("fleet"), 2);
    let database = ["--database", postgres.url.as_str()];
    let a = Controller::start(&fleet, &tmp.path().join("a"), &database).await;
    let b = Controller::start(&fleet, &tmp.path().join("b"), &database).await;
    enroll_racing(&a, "newcomer").await;
    // What one controller enrolled, the other knows; a second enrollment race goes through B.
    enroll_racing(&b, "second").await;

    // A report accepted by one controller is refused by the other, and the same report
    // sent to both at once is accepted exactly once (the other says replay, not 500).
    let (id, key) = &fleet.devices[0];
    let report = a.signed_report(id, key, "v1", "1.0.0", "idle");
    assert_eq!(a.send(&report).await, StatusCode::ACCEPTED);
    assert_eq!(b.send(&report).await, StatusCode::UNAUTHORIZED);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let report = a.signed_report(id, key, "v1", "1.0.0", "idle");
        let (x, y) = tokio::join!(a.send(&report), b.send(&report));
        let mut statuses = [x, y];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::UNAUTHORIZED]);
    }

    // The outage. Device 0's key is in A's memory, so its report reaches the writer;
    // device 1's key must be read from the database first. Both answer 503 at once.
    postgres.stop();
    for (id, key) in fleet.devices.iter().chain(&fleet.devices) {
        let started = Instant::now();
        let response = a.send_for_response(&a.signed_report(id, key, "v1", "1.0.0", "idle")).await;
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{id}");
        assert!(took < Duration::from_secs(5), "{id} answered after {took:?}");
        assert_eq!(response.headers()["retry-after"], "5");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }

    // Back: the same controller stores reports again, without a restart.
    postgres.start_again();
    let (id, key) = &fleet.devices[1];
    let mut recovered = false;
    for _ in 0..60 {
        let report = a.signed_report(id, key, "v1", "1.0.0", "idle");
        if a.send(&report).await == StatusCode::ACCEPTED {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(recovered, "reports are accepted again once PostgreSQL is back");
}
