//! The device API over real HTTP on 127.0.0.1: enrollment, signed reports, refusals that
//! store nothing, health, metrics and the TUF files.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use waveguide::api::auth::{DeviceKey, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use waveguide::api::{Api, ApiConfig};
use waveguide::inventory::store::{DeclaredDevice, Store};

struct Server {
    base: String,
    api: Arc<Api>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "berlin-enrollment-secret";

async fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tuf")).unwrap();
    std::fs::write(dir.path().join("tuf/timestamp.json"), b"{\"signed\":{}}").unwrap();
    let store = Store::open(dir.path().join("inventory.db").to_str().unwrap()).await.unwrap();
    let api = Api::new(store, ApiConfig { tuf_dir: Some(dir.path().join("tuf")), ..ApiConfig::default() });
    api.set_enrollment_tokens([(hex::encode(Sha256::digest(TOKEN)), "berlin".to_string())].into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = api.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
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
async fn a_replayed_report_is_refused() {
    let server = serve().await;
    let key = DeviceKey::generate();
    server.enroll("cam-2", TOKEN, &key).await;
    let ts = now_ms();
    let bytes = serde_json::to_vec(&installed("1.0.0")).unwrap();
    let sig = key.sign_report("cam-2", ts, &bytes);
    assert_eq!(server.report_raw("cam-2", &bytes, ts, &sig).await.0, StatusCode::ACCEPTED);
    let (status, body) = server.report_raw("cam-2", &bytes, ts, &sig).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("replayed"), "{body}");
    let history = server.api.store().history("cam-2", 10).await.unwrap();
    assert_eq!(history.len(), 1);
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

    let resp = server.http.post(format!("{}/v1/enroll", server.base)).body("{").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, _) = server.enroll("bad id/../x", TOKEN, &key).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_metrics_and_tuf_files() {
    let server = serve().await;
    let health = server.http.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let tuf = server.http.get(format!("{}/tuf/timestamp.json", server.base)).send().await.unwrap();
    assert_eq!(tuf.status(), StatusCode::OK);
    assert_eq!(tuf.text().await.unwrap(), "{\"signed\":{}}");
    let missing = server.http.get(format!("{}/tuf/nope.json", server.base)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
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
