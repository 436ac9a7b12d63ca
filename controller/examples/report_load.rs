//! A load generator for the device API: signed reports through real HTTP, as fast as a
//! fixed number of connections can send them, with the latency of each.
//!
//! ```sh
//! # A fleet repository whose devices' keys the generator can sign with:
//! report_load fleet --devices 10000 --out /tmp/fleet
//! # Reports against a running controller (`waveguide run --repo /tmp/fleet ...`):
//! report_load run --server http://127.0.0.1:8080 --devices 10000 --connections 64 --duration 30s
//! ```
//!
//! Each device's key is the simulator's (`waveguide simulate`): the ed25519 key whose seed
//! is `sha256(seed || 0 || id)`. Every report is signed when it is sent, with a timestamp
//! newer than the device's previous one, so each is a new report the server verifies and
//! stores. `run` prints one JSON line: reports/s, latency percentiles, and every status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use waveguide::agent::simulate::{device_ids, device_key};
use waveguide::protocol::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a fleet repository of `--devices` devices with the generator's keys: one
    /// group, one release every device already runs, one policy (nothing to roll out).
    Fleet {
        #[arg(long)]
        devices: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "waveguide-simulator")]
        key_seed: String,
    },
    /// Send signed reports to a running controller and measure them.
    Run {
        #[arg(long)]
        server: String,
        #[arg(long)]
        devices: usize,
        /// Concurrent connections, each sending one report after the other.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Sent first and not measured: connections opened, caches warm.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "waveguide-simulator")]
        key_seed: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fleet { devices, out, key_seed } => write_fleet(devices, &out, &key_seed),
        Command::Run { server, devices, connections, duration, warmup, key_seed } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(run(server, devices, connections, duration, warmup, key_seed))
        }
    }
}

fn write_fleet(devices: usize, out: &std::path::Path, seed: &str) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(out)?;
    let mut yaml = String::from(
        "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: load}\nspec: {}\n---\n\
         apiVersion: waveguide.dev/v1alpha1\nkind: Release\nmetadata: {name: v1}\nspec: {version: 1.0.0}\n---\n\
         apiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata: {name: load}\nspec:\n  selector: {groups: [load]}\n  release: v1\n---\n\
         apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: load}\nspec:\n  group: load\n  devices:\n",
    );
    for id in device_ids("load-", devices) {
        let _ = writeln!(yaml, "    - id: {id}\n      publicKey: {}", device_key(seed, &id).public_key_b64());
    }
    std::fs::write(out.join("fleet.yaml"), yaml)?;
    Ok(())
}

async fn run(
    server: String,
    devices: usize,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    seed: String,
) -> anyhow::Result<()> {
    let ids = device_ids("load-", devices);
    let keys: Vec<_> = ids.iter().map(|id| device_key(&seed, id)).collect();
    let devices = Arc::new(ids.into_iter().zip(keys).collect::<Vec<_>>());
    let base = server.trim_end_matches('/').to_string();
    let started = Instant::now();
    let measure_from = started + warmup;
    let until = measure_from + duration;
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let (devices, base) = (devices.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            // One client per task: one keep-alive connection each.
            let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("an HTTP client");
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mine: Vec<usize> = (connection..devices.len()).step_by(connections).collect();
            let mut last = vec![0i64; mine.len()];
            for turn in 0.. {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                let slot = turn % mine.len();
                let (id, key) = &devices[mine[slot]];
                let body = br#"{"release":"v1","version":"1.0.0","state":"idle","healthy":true}"#;
                let wall =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                        as i64;
                let timestamp = wall.max(last[slot] + 1);
                last[slot] = timestamp;
                let sent = Instant::now();
                let status = http
                    .post(format!("{base}/v1/devices/{id}/reports"))
                    .header("content-type", "application/json")
                    .header(TIMESTAMP_HEADER, timestamp.to_string())
                    .header(SIGNATURE_HEADER, key.sign_report(id, timestamp, body))
                    .body(&body[..])
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if sent >= measure_from {
                    latencies.push(sent.elapsed());
                    *statuses.entry(status).or_default() += 1;
                }
            }
            (latencies, statuses)
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for task in tasks {
        let (l, s) = task.await?;
        latencies.extend(l);
        for (status, n) in s {
            *statuses.entry(status).or_default() += n;
        }
    }
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let accepted = statuses.get(&202).copied().unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "connections": connections,
            "seconds": duration.as_secs_f64(),
            "reports": latencies.len(),
            "accepted": accepted,
            "reportsPerSecond": (accepted as f64 / duration.as_secs_f64()).round(),
            "p50Ms": (percentile(0.50) * 10.0).round() / 10.0,
            "p99Ms": (percentile(0.99) * 10.0).round() / 10.0,
            "statuses": statuses,
        })
    );
    Ok(())
}
