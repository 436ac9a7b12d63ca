//! The device API over real HTTP on 127.0.0.1: enrollment, signed reports, refusals that
//! store nothing, health, metrics and the TUF files.

use std::sync::Arc;

use jiff::SignedDuration;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use waveguide::api::admin::{self, AdminConfig};
use waveguide::api::{Api, ApiConfig};
use waveguide::inventory::store::{DeclaredDevice, NewMember, Store};
use waveguide::protocol::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use waveguide::protocol::DeviceKey;

struct Server {
    base: String,
    api: Arc<Api>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "berlin-enrollment-secret";
const ADMIN_TOKEN: &str = "operators-secret";

async fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tuf/metadata")).unwrap();
    std::fs::write(dir.path().join("tuf/metadata/timestamp.json"), b"{\"signed\":{}}").unwrap();
    let store = Store::open(dir.path().join("inventory.db").to_str().unwrap()).await.unwrap();
    let api =
        Api::new(store.clone(), ApiConfig { tuf_dir: Some(dir.path().join("tuf")), ..ApiConfig::default() });
    api.set_enrollment_tokens([(hex::encode(Sha256::digest(TOKEN)), "berlin".to_string())].into());
    let admin = admin::router(
        store,
        AdminConfig {
            token: ADMIN_TOKEN.into(),
            stale_after: SignedDuration::from_mins(10),
            wake: Arc::default(),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = api.router().merge(admin);
    tokio::spawn(waveguide::api::serve(listener, router, std::future::pending()));
    Server { base, api, http: reqwest::Client::new(), _dir: dir }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

impl Server {
    async fn enroll(&self, id: &str, token: &str, key: &DeviceKey) -> (StatusCode, Value) {
        let body = json!({"deviceId": id, "token": token, "publicKey": key.public_key_b64()});
        let resp = self.http.post(format!("{}/v1/enroll", self.base)).json(&body).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn report_raw(&self, id: &str, body: &[u8], ts: i64, signature: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/devices/{id}/reports", self.base))
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn report(&self, id: &str, key: &DeviceKey, body: &Value, ts: i64) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        self.report_raw(id, &bytes, ts, &key.sign_report(id, ts, &bytes)).await
    }

    async fn stored_reports(&self) -> usize {
        self.api.store().inventory().await.unwrap().len()
    }
}

fn installed(version: &str) -> Value {
    json!({"release": format!("v{version}"), "version": version, "state": "installed", "healthy": true})
}

#[tokio::test]
async fn an_enrolled_device_reports_and_is_stored() {
    let server = serve().await;
    let key = DeviceKey::generate();
    let (status, body) = server.enroll("cam-7", TOKEN, &key).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!({"deviceId": "cam-7", "group": "berlin"}));

    let (status, body) = server.report("cam-7", &key, &installed("2.0.0"), now_ms()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let inventory = server.api.store().inventory().await.unwrap();
    let report = inventory.get("cam-7").unwrap();
    assert_eq!(report.version.to_string(), "2.0.0");
    assert!(report.healthy);
}

#[tokio::test]
async fn a_declared_device_reports_with_its_declared_key() {
    let server = serve().await;
    let key = DeviceKey::generate();
    let declared =
        DeclaredDevice { id: "gw-1".into(), group: "berlin".into(), public_key: Some(key.public_key_b64()) };
    server.api.store().sync_declared(&[declared], 0).await.unwrap();
    let (status, _) = server.report("gw-1", &key, &installed("1.0.0"), now_ms()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(server.stored_reports().await, 1);
}

#[tokio::test]
async fn refused_reports_store_nothing() {
    let server = serve().await;
    let key = DeviceKey::generate();
    server.enroll("cam-1", TOKEN, &key).await;
    let ts = now_ms();

    // Malformed body: 400, with a JSON error.
    let bad = b"{\"version\": \"not-semver\"}";
    let (status, body) = server.report_raw("cam-1", bad, ts, &key.sign_report("cam-1", ts, bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");

    // Unknown device: 401.
    let (status, body) = server.report("ghost", &key, &installed("1.0.0"), ts).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown device \"ghost\""), "{body}");

    // Signed by another key: 401.
    let (status, body) = server.report("cam-1", &DeviceKey::generate(), &installed("1.0.0"), ts).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("signature"), "{body}");

    // Signature over a different body: 401.
    let sig = key.sign_report("cam-1", ts, b"{}");
    let bytes = serde_json::to_vec(&installed("1.0.0")).unwrap();
    let (status, _) = server.report_raw("cam-1", &bytes, ts, &sig).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Missing signature headers: 401.
    let resp = server
        .http
        .post(format!("{}/v1/devices/cam-1/reports", server.base))
        .json(&installed("1.0.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Outside the replay window: 401.
    let (status, body) = server.report("cam-1", &key, &installed("1.0.0"), ts - 3_600_000).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("window"), "{body}");

    assert_eq!(server.stored_reports().await, 0, "nothing refused may be stored");

    let metrics =
        server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    for reason in ["malformed", "unknown_device", "bad_signature", "stale_timestamp"] {
        assert!(
            metrics.contains(&format!("waveguide_api_reports_refused_total{{reason=\"{reason}\"}}")),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn enrollment_refusals() {
    let server = serve().await;
    let key = DeviceKey::generate();
    let (status, body) = server.enroll("cam-3", "wrong-token", &key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    assert_eq!(server.enroll("cam-3", TOKEN, &key).await.0, StatusCode::CREATED);
    // Again with the same key: fine. With another key: a takeover, refused.
    assert_eq!(server.enroll("cam-3", TOKEN, &key).await.0, StatusCode::CREATED);
    let (status, body) = server.enroll("cam-3", TOKEN, &DeviceKey::generate()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let resp = server
        .http
        .post(format!("{}/v1/enroll", server.base))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, _) = server.enroll("bad id/../x", TOKEN, &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reports_are_all_stored_in_batches() {
    let server = Arc::new(serve().await);
    let devices: Vec<(String, DeviceKey)> =
        (0..200).map(|i| (format!("d{i:03}"), DeviceKey::generate())).collect();
    let declared: Vec<DeclaredDevice> = devices
        .iter()
        .map(|(id, k)| DeclaredDevice {
            id: id.clone(),
            group: "berlin".into(),
            public_key: Some(k.public_key_b64()),
        })
        .collect();
    server.api.store().sync_declared(&declared, 0).await.unwrap();
    let devices = Arc::new(devices);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (server, devices) = (server.clone(), devices.clone());
        tasks.push(tokio::spawn(async move {
            let (id, key) = &devices[i];
            server.report(id, key, &installed("3.1.0"), now_ms()).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::ACCEPTED);
    }
    assert_eq!(server.stored_reports().await, 200);
    let metrics = server.api.metrics().encode();
    assert!(metrics.contains("waveguide_api_reports_stored_total 200"), "{metrics}");
}

/// One request of a table, built against the running server, and what it must answer.
struct Case {
    name: &'static str,
    request: Box<dyn Fn(&Server) -> reqwest::RequestBuilder>,
    status: u16,
    /// The JSON error's `code`, for an error.
    code: Option<&'static str>,
    /// A piece of the error's message (or of the body, for a success).
    says: &'static str,
}

fn case(
    name: &'static str,
    status: u16,
    code: Option<&'static str>,
    says: &'static str,
    request: impl Fn(&Server) -> reqwest::RequestBuilder + 'static,
) -> Case {
    Case { name, request: Box::new(request), status, code, says }
}

/// Sends every case in order; each error answer must be the JSON error shape.
async fn run_table(server: &Server, cases: Vec<Case>) {
    for case in cases {
        let response = (case.request)(server).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        let text = response.text().await.unwrap();
        assert_eq!(status, case.status, "{}: {text}", case.name);
        if let Some(code) = case.code {
            assert_eq!(content_type.as_deref(), Some("application/json"), "{}: {text}", case.name);
            let body: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", case.name));
            assert_eq!(body["error"]["code"], code, "{}: {text}", case.name);
            assert!(body["error"]["message"].as_str().unwrap().contains(case.says), "{}: {text}", case.name);
        } else {
            assert!(text.contains(case.says), "{}: {text}", case.name);
        }
    }
}

impl Server {
    /// A report of `cam-1` at `now + offset_ms`, signed over `body`.
    fn signed(&self, key: &DeviceKey, body: &[u8], offset_ms: i64) -> reqwest::RequestBuilder {
        let ts = now_ms() + offset_ms;
        self.http
            .post(format!("{}/v1/devices/cam-1/reports", self.base))
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, key.sign_report("cam-1", ts, body))
            .header("content-type", "application/json")
            .body(body.to_vec())
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN_TOKEN)
    }
}

/// Every way a device request can go wrong, through real HTTP: each is refused with the
/// right status and a JSON error, and only the accepted reports are stored.
#[tokio::test]
async fn device_api_answers_every_case_with_its_status_and_a_json_error() {
    let server = serve().await;
    let key = Arc::new(DeviceKey::generate());
    server.enroll("cam-1", TOKEN, &key).await;
    let k = key.clone();
    let fixed_ts = now_ms();
    let replayable = serde_json::to_vec(&installed("1.0.0")).unwrap();
    let replay_signature = key.sign_report("cam-1", fixed_ts, &replayable);
    let replay = move |s: &Server| {
        s.http
            .post(format!("{}/v1/devices/cam-1/reports", s.base))
            .header(TIMESTAMP_HEADER, fixed_ts.to_string())
            .header(SIGNATURE_HEADER, replay_signature.clone())
            .header("content-type", "application/json")
            .body(replayable.clone())
    };
    let replay_again = replay.clone();
    let with = move |f: fn(&Server, &DeviceKey) -> reqwest::RequestBuilder| {
        let k = k.clone();
        move |s: &Server| f(s, &k)
    };
    let cases = vec![
        case("a report", 202, None, "stored", replay),
        case("the same report again", 401, Some("unauthorized"), "replayed", replay_again),
        case(
            "an older report",
            401,
            Some("unauthorized"),
            "replayed",
            with(|s, k| s.signed(k, &serde_json::to_vec(&installed("0.9.0")).unwrap(), -2_000)),
        ),
        case(
            "a NUL in release",
            400,
            Some("bad_request"),
            "control characters",
            with(|s, k| {
                s.signed(k, &serde_json::to_vec(&json!({"release": "v1\u{0}evil", "version": "1.0.0", "state": "idle", "healthy": true})).unwrap(), 0)
            }),
        ),
        case(
            "an escape in release",
            400,
            Some("bad_request"),
            "control characters",
            with(|s, k| {
                s.signed(k, &serde_json::to_vec(&json!({"release": "v1\u{1b}[2J", "version": "1.0.0", "state": "idle", "healthy": true})).unwrap(), 0)
            }),
        ),
        case(
            "a malformed body",
            400,
            Some("bad_request"),
            "invalid report body",
            with(|s, k| s.signed(k, b"{\"version\": \"not-semver\"}", 0)),
        ),
        case(
            "a report from 4 minutes ahead",
            401,
            Some("unauthorized"),
            "ahead",
            with(|s, k| s.signed(k, &serde_json::to_vec(&installed("6.6.6")).unwrap(), 240_000)),
        ),
        // The refused report from the future does not hold the device's next one back.
        case(
            "the next honest report",
            202,
            None,
            "stored",
            with(|s, k| s.signed(k, &serde_json::to_vec(&installed("1.1.0")).unwrap(), 0)),
        ),
        case(
            "a report an hour old",
            401,
            Some("unauthorized"),
            "behind",
            with(|s, k| s.signed(k, &serde_json::to_vec(&installed("1.0.0")).unwrap(), -3_600_000)),
        ),
        case("another device's key", 401, Some("unauthorized"), "signature", |s| {
            s.signed(&DeviceKey::generate(), &serde_json::to_vec(&installed("1.0.0")).unwrap(), 0)
        }),
        case("an unknown device", 401, Some("unauthorized"), "unknown device", |s| {
            s.http
                .post(format!("{}/v1/devices/ghost/reports", s.base))
                .header("content-type", "application/json")
                .header(TIMESTAMP_HEADER, now_ms().to_string())
                .header(SIGNATURE_HEADER, "AAAA")
                .body(serde_json::to_vec(&installed("1.0.0")).unwrap())
        }),
        case("no signature", 401, Some("unauthorized"), "missing", |s| {
            s.http.post(format!("{}/v1/devices/cam-1/reports", s.base)).json(&installed("1.0.0"))
        }),
        case(
            "a body that is not JSON",
            415,
            Some("unsupported_media_type"),
            "application/json",
            with(|s, k| {
                s.signed(k, &serde_json::to_vec(&installed("1.0.0")).unwrap(), 0)
                    .header("content-type", "text/plain")
            }),
        ),
        case("no Content-Type", 415, Some("unsupported_media_type"), "without Content-Type", |s| {
            s.http.post(format!("{}/v1/devices/cam-1/reports", s.base)).body("{}")
        }),
        case("an enrollment that is not JSON", 415, Some("unsupported_media_type"), "text/plain", |s| {
            s.http.post(format!("{}/v1/enroll", s.base)).header("content-type", "text/plain").body("{}")
        }),
        case(
            "a 100 KB body",
            413,
            Some("payload_too_large"),
            "length limit",
            with(|s, k| s.signed(k, &vec![b' '; 100_000], 0)),
        ),
        case(
            "20 KB of headers",
            431,
            Some("request_header_fields_too_large"),
            "headers",
            with(|s, k| {
                s.signed(k, &serde_json::to_vec(&installed("1.0.0")).unwrap(), 0)
                    .header("x-padding", "p".repeat(20_000))
            }),
        ),
        case("GET on the reports route", 405, Some("method_not_allowed"), "Method Not Allowed", |s| {
            s.http.get(format!("{}/v1/devices/cam-1/reports", s.base))
        }),
        case("an unknown route", 404, Some("not_found"), "/v1/nope", |s| {
            s.http.post(format!("{}/v1/nope", s.base))
        }),
    ];
    run_table(&server, cases).await;
    let history = server.api.store().history("cam-1", 10).await.unwrap();
    let versions: Vec<String> = history.iter().map(|r| r.report.version.to_string()).collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"], "only the accepted reports are stored");
    let metrics = server.api.metrics().encode();
    for reason in ["replay", "future_timestamp", "stale_timestamp", "malformed"] {
        assert!(metrics.contains(&format!("reason=\"{reason}\"")), "{reason}: {metrics}");
    }
}

/// A rollout `stable-1` of three waves, the first published, as the engine starts one.
async fn three_wave_rollout(store: &Store) {
    use waveguide::inventory::store::{RolloutPhase, RolloutRecord, WaveRecord, WaveState};
    let ids: Vec<String> = (0..3).map(|i| format!("d{i}")).collect();
    let declared: Vec<DeclaredDevice> = ids
        .iter()
        .map(|id| DeclaredDevice { id: id.clone(), group: "berlin".into(), public_key: None })
        .collect();
    store.sync_declared(&declared, 0).await.unwrap();
    let now = now_ms();
    let rollout = RolloutRecord {
        id: "stable-1".into(),
        policy: "stable".into(),
        release: "v2".into(),
        version: "2.0.0".into(),
        commit: None,
        phase: RolloutPhase::Progressing,
        paused: false,
        message: None,
        waiting: None,
        created_at: now,
        updated_at: now,
        revision: 0,
        rollback_of: None,
        requests: Default::default(),
    };
    let waves: Vec<WaveRecord> = ["canary", "half", "rest"]
        .iter()
        .enumerate()
        .map(|(i, name)| WaveRecord {
            index: i as u32,
            name: name.to_string(),
            state: if i == 0 { WaveState::Published } else { WaveState::Pending },
            size: 1,
            published_at: (i == 0).then_some(now),
            healthy_at: None,
            approved_at: None,
            finished_at: None,
            bake_ms: None,
        })
        .collect();
    let members: Vec<Vec<NewMember>> = ids.iter().map(|id| vec![id.clone().into()]).collect();
    store.create_rollout(&rollout, &waves, &members).await.unwrap();
}

/// The operators' API: every action names what it acts on, a repeat changes nothing, and
/// every error is JSON.
#[tokio::test]
async fn operators_api_answers_every_case_and_actions_are_idempotent() {
    use reqwest::Method;
    let server = serve().await;
    three_wave_rollout(server.api.store()).await;
    let approve =
        |wave: Value| move |s: &Server| s.admin(Method::POST, "/v1/rollouts/stable-1/approve").json(&wave);
    let act = |action: &'static str| {
        move |s: &Server| s.admin(Method::POST, &format!("/v1/rollouts/stable-1/{action}"))
    };
    let cases = vec![
        case("no token", 401, Some("unauthorized"), "missing bearer token", |s| {
            s.http.post(format!("{}/v1/rollouts/stable-1/pause", s.base))
        }),
        case("a wrong token", 401, Some("unauthorized"), "wrong bearer token", |s| {
            s.http.post(format!("{}/v1/rollouts/stable-1/pause", s.base)).bearer_auth("guess")
        }),
        case("approve without naming the wave", 400, Some("bad_request"), "name the wave", act("approve")),
        case(
            "approve with a body that is not JSON",
            415,
            Some("unsupported_media_type"),
            "application/json",
            |s| {
                s.admin(Method::POST, "/v1/rollouts/stable-1/approve")
                    .header("content-type", "text/plain")
                    .body("{\"wave\": 1}")
            },
        ),
        case("approve wave 2", 200, None, "\"approvedAt\"", approve(json!({"wave": 1}))),
        case("approve wave 2 again", 200, None, "wave 2 (half) approved", approve(json!({"wave": 1}))),
        case(
            "approve a wave that does not exist",
            409,
            Some("conflict"),
            "no wave 10",
            approve(json!({"wave": 9})),
        ),
        case(
            "approve the wave that started",
            409,
            Some("conflict"),
            "already started",
            approve(json!({"wave": 0})),
        ),
        case("pause", 200, None, "\"paused\":true", act("pause")),
        case("pause again", 200, None, "\"phase\":\"paused\"", act("pause")),
        case("resume", 200, None, "\"paused\":false", act("resume")),
        case("resume again", 200, None, "\"phase\":\"progressing\"", act("resume")),
        case("an unknown action", 404, Some("not_found"), "no action \"restart\"", act("restart")),
        case("an unknown rollout", 404, Some("not_found"), "no rollout", |s| {
            s.admin(Method::POST, "/v1/rollouts/nope-1/pause")
        }),
        case("GET on an action", 405, Some("method_not_allowed"), "Method Not Allowed", |s| {
            s.admin(Method::GET, "/v1/rollouts/stable-1/pause")
        }),
        case("a 100 KB approval", 413, Some("payload_too_large"), "length limit", |s| {
            s.admin(Method::POST, "/v1/rollouts/stable-1/approve")
                .header("content-type", "application/json")
                .body(vec![b' '; 100_000])
        }),
        case("abort", 200, None, "\"phase\":\"aborted\"", act("abort")),
        case("abort again", 200, None, "\"phase\":\"aborted\"", act("abort")),
        case("pause an aborted rollout", 409, Some("conflict"), "aborted", act("pause")),
    ];
    run_table(&server, cases).await;
    let waves = server.api.store().waves("stable-1").await.unwrap();
    assert!(waves[1].approved_at.is_some());
    assert_eq!(waves[2].approved_at, None, "approving wave 2 twice did not approve wave 3");
    let rollout = server.api.store().rollout("stable-1").await.unwrap().unwrap();
    // approve, pause, resume, abort: four writes; the repeats wrote nothing.
    assert_eq!(rollout.revision, 4);
}

/// The TUF repository as a CDN needs it: what changes in place is revalidated, what never
/// changes is immutable, ETags answer 304, and nothing but `metadata/` and `targets/` is
/// served, never through a symbolic link, never with a redirect.
#[tokio::test]
async fn tuf_files_are_served_for_caches_and_nothing_else_is() {
    let server = serve().await;
    let tuf = server._dir.path().join("tuf");
    let hash = "ab".repeat(32);
    std::fs::create_dir_all(tuf.join("targets/devices")).unwrap();
    for (path, content) in [
        ("metadata/root.json", "{\"root\":1}"),
        ("metadata/1.root.json", "{\"root\":1}"),
        ("metadata/7.snapshot.json", "{\"snapshot\":7}"),
        (&format!("targets/devices/{hash}.d1.json") as &str, "{\"device\":\"d1\"}"),
        ("waveguide-tuf.json", "{\"layout\":{}}"),
        (".lock", "4242"),
        ("metadata/.lock", "4242"),
    ] {
        std::fs::write(tuf.join(path), content).unwrap();
    }
    std::os::unix::fs::symlink("/etc/passwd", tuf.join("targets/passwd")).unwrap();
    std::os::unix::fs::symlink("/etc", tuf.join("targets/etc")).unwrap();
    std::os::unix::fs::symlink(tuf.join("metadata"), tuf.join("targets/meta")).unwrap();
    let get = |path: &str| server.http.get(format!("{}/tuf/{path}", server.base)).send();

    for (path, cache_control) in [
        ("metadata/timestamp.json", "no-cache"),
        ("metadata/root.json", "no-cache"),
        ("metadata/1.root.json", "public, max-age=31536000, immutable"),
        ("metadata/7.snapshot.json", "public, max-age=31536000, immutable"),
        (&format!("targets/devices/{hash}.d1.json") as &str, "public, max-age=31536000, immutable"),
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["cache-control"], cache_control, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json", "{path}");
        let etag = response.headers()["etag"].clone();
        assert_eq!(std::fs::read(tuf.join(path)).unwrap(), response.bytes().await.unwrap(), "{path}");
        let again = server
            .http
            .get(format!("{}/tuf/{path}", server.base))
            .header("if-none-match", etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag);
        assert_eq!(again.headers()["cache-control"], cache_control);
    }
    // A new timestamp gets a new ETag: the old one no longer answers 304.
    let old = get("metadata/timestamp.json").await.unwrap().headers()["etag"].clone();
    let next = tuf.join("metadata/timestamp.json.new");
    std::fs::write(&next, b"{\"signed\":{\"version\":2}}").unwrap();
    std::fs::rename(&next, tuf.join("metadata/timestamp.json")).unwrap();
    let response = server
        .http
        .get(format!("{}/tuf/metadata/timestamp.json", server.base))
        .header("if-none-match", old.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_ne!(response.headers()["etag"], old);
    let head = server.http.head(format!("{}/tuf/metadata/timestamp.json", server.base)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "24");

    for path in [
        "waveguide-tuf.json",
        ".lock",
        "metadata/.lock",
        "targets/passwd",
        "targets/etc/passwd",
        "targets/meta/timestamp.json",
        "metadata",
        "metadata/",
        "targets/devices",
        "metadata/nope.json",
        "metadata/%2e%2e/waveguide-tuf.json",
    ] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert!(response.headers().get("location").is_none(), "{path}: no redirect");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client.get(format!("{}/tuf/metadata", server.base)).send().await.unwrap();
    assert_eq!(response.status(), 404, "a directory is not redirected to its listing");
}
