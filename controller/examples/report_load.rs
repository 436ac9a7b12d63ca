//! Load benchmark of the device API's report path on SQLite: N enrolled devices send
//! signed reports over HTTP on 127.0.0.1 with C requests in flight; prints reports/s.
//! Reports are signed before the clock starts, so the figure is the server's (sharing
//! the machine with the HTTP client, which runs in the same process).
//!
//! ```sh
//! cargo run --release -p waveguide --example report_load -- 10000 200000 256
//! ```
//! Arguments: devices (10000), reports (200000), requests in flight (256), and
//! optionally a database URL (default: SQLite in a temporary directory).

use std::sync::Arc;
use std::time::Instant;

use waveguide::api::auth::{DeviceKey, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use waveguide::api::{Api, ApiConfig};
use waveguide::inventory::store::{DeclaredDevice, Store};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (devices, reports, in_flight) = (arg(1, 10_000), arg(2, 200_000), arg(3, 256));
    let dir = tempfile::tempdir().unwrap();
    let url =
        args.get(4).cloned().unwrap_or_else(|| dir.path().join("inventory.sqlite").display().to_string());
    let store = Store::open(&url).await.unwrap();

    eprintln!("declaring {devices} devices and signing {reports} reports...");
    let keys: Vec<DeviceKey> = (0..devices).map(|_| DeviceKey::generate()).collect();
    let ids: Vec<String> = (0..devices).map(|i| format!("dev-{i:06}")).collect();
    let declared: Vec<DeclaredDevice> = ids
        .iter()
        .zip(&keys)
        .map(|(id, key)| DeclaredDevice {
            id: id.clone(),
            group: "lab".into(),
            public_key: Some(key.public_key_b64()),
        })
        .collect();
    store.sync_declared(&declared, 0).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let states = ["downloading", "installing", "installed"];
    let requests: Vec<(String, i64, String, Vec<u8>)> = (0..reports)
        .map(|n| {
            let d = n % devices;
            let round = (n / devices) as i64;
            let body = format!(
                r#"{{"release":"v2","version":"2.0.{round}","state":"{}","healthy":true}}"#,
                states[(round % 3) as usize]
            )
            .into_bytes();
            let ts = now + round;
            (ids[d].clone(), ts, keys[d].sign_report(&ids[d], ts, &body), body)
        })
        .collect();

    let api = Api::new(store.clone(), ApiConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = api.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let http = reqwest::Client::builder().pool_max_idle_per_host(in_flight).build().unwrap();
    let requests = Arc::new(requests);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (http, requests, next, base) = (http.clone(), requests.clone(), next.clone(), base.clone());
            tokio::spawn(async move {
                let mut failed = 0usize;
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((id, ts, signature, body)) = requests.get(n) else { return failed };
                    let response = http
                        .post(format!("{base}/v1/devices/{id}/reports"))
                        .header(TIMESTAMP_HEADER, ts.to_string())
                        .header(SIGNATURE_HEADER, signature)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if !response.is_ok_and(|r| r.status() == 202) {
                        failed += 1;
                    }
                }
            })
        })
        .collect();
    let mut failed = 0;
    for w in workers {
        failed += w.await.unwrap();
    }
    let elapsed = started.elapsed();
    let stored = store.inventory().await.unwrap().len();
    println!(
        "{reports} reports from {devices} devices, {in_flight} in flight: {:.2} s, {:.0} reports/s, {failed} refused, {stored} devices in the inventory ({})",
        elapsed.as_secs_f64(),
        reports as f64 / elapsed.as_secs_f64(),
        if url.starts_with("postgres") { "PostgreSQL" } else { "SQLite" }
    );
}
