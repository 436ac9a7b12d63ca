//! How long a commit to a large fleet repository takes to reach devices: a policy change
//! committed to a repository of N devices (from `waveguide gen-fleet`, whose devices have
//! all reported), then one source sync and one engine pass — what the controller does
//! when the webhook (or the file watcher) wakes it. Prints the split: fetch, compile,
//! declared devices, inventory read, plan, rollouts, publish, record. A second argument
//! makes that many changes in a row (each one measured). Then the same changes again
//! through `waveguide run`'s loop, each announced by a signed GitHub push webhook: the
//! time from sending the webhook to the wave's instructions published.
//!
//! ```sh
//! cargo build --release -p waveguide --bin waveguide --example commit_to_publish
//! target/release/examples/commit_to_publish 1000000 3
//! ```

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use waveguide::demo::commit_all;
use waveguide::engine::{Engine, EngineConfig, Event, SourceOutcome};
use waveguide::inventory::read_snapshot;
use waveguide::inventory::store::{IncomingReport, Store};
use waveguide::publish::{KeyDir, KeySpec};
use waveguide::standalone::RunConfig;

fn ms(d: Duration) -> String {
    format!("{:>7.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let devices: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let changes: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("fleet");
    let binary = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("waveguide");
    let groups = (devices / 1000).clamp(10, 1000).to_string();
    let status = Command::new(&binary)
        .args(["gen-fleet", "--devices", &devices.to_string(), "--groups", &groups, "--out"])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(status.success());
    // The generated regions update at night; the benchmark publishes at any hour.
    let regions = repo.join("groups/regions.yaml");
    let text = std::fs::read_to_string(&regions).unwrap();
    let text: String = text
        .split_inclusive('\n')
        .scan(false, |skipping, line| {
            if line.starts_with("  maintenanceWindows:") {
                *skipping = true;
                return Some(String::new());
            }
            if *skipping && (line.starts_with("    ") || line.starts_with("      ")) {
                return Some(String::new());
            }
            *skipping = false;
            Some(line.to_string())
        })
        .collect();
    std::fs::write(&regions, text).unwrap();
    let git =
        git2::Repository::init_opts(&repo, git2::RepositoryInitOptions::new().initial_head("main")).unwrap();
    commit_all(&git, "fleet").unwrap();

    let data = tmp.path().join("data");
    let (keys, _) = KeyDir::init(&data.join("keys"), &KeySpec::without_release_keys()).unwrap();
    let store = Store::open(data.join("inventory.sqlite").to_str().unwrap()).await.unwrap();
    let mut config = RunConfig::new(repo.display().to_string(), &data);
    config.engine = EngineConfig::default();
    let mut engine = Engine::new(config.setup(), config.source_spec(), keys, store.clone(), None).unwrap();

    let started = Instant::now();
    let outcome = engine.sync_source().await.unwrap();
    assert!(matches!(outcome, SourceOutcome::Applied { .. }), "{outcome:?}");
    eprintln!("first commit applied in {:.1?} ({:?})", started.elapsed(), engine.sync_timings());
    let started = Instant::now();
    let snapshot = read_snapshot(Path::new(&format!("{}.inventory.json", repo.display()))).unwrap();
    // The devices reported a minute ago; the controller has seen those reports already.
    let now = Timestamp::now().as_millisecond() - 60_000;
    let reports: Vec<IncomingReport> = snapshot
        .reports()
        .iter()
        .map(|(id, r)| IncomingReport {
            device_id: id.to_string(),
            report: r.clone(),
            detail: None,
            commit: None,
            reported_at: now,
            received_at: now,
        })
        .collect();
    for chunk in reports.chunks(20_000) {
        store.record_reports(chunk).await.unwrap();
    }
    eprintln!("{} reports recorded in {:.1?}", reports.len(), started.elapsed());
    let report = engine.step(Timestamp::now()).await.unwrap();
    eprintln!("first pass: {} events, {:?}", report.events.len(), report.timings);
    // The fleet keeps reporting: a fresh heartbeat moves the engine's read mark to now.
    let mut heartbeat = reports[0].clone();
    heartbeat.reported_at = Timestamp::now().as_millisecond();
    heartbeat.received_at = heartbeat.reported_at;
    store.record_reports(&[heartbeat]).await.unwrap();
    let report = engine.step(Timestamp::now()).await.unwrap();
    eprintln!("second pass: {} events, {:?}", report.events.len(), report.timings);

    // The change under test: the x86 hold moves to 1.1.0, then back to 1.0.0 (it allows
    // downgrades), and so on: each commit supersedes the policy's rollout and publishes
    // the new one's first wave.
    // The setup wrote a fleet, a million reports and a million instruction files; they
    // reach the disk now, not inside the first measured publish's flush.
    assert!(Command::new("sync").status().unwrap().success());
    if let Ok(seconds) = std::env::var("WAVEGUIDE_BENCH_PAUSE") {
        eprintln!("pid {}: pausing {seconds} s before the first change", std::process::id());
        tokio::time::sleep(Duration::from_secs(seconds.parse().unwrap())).await;
    }
    let path = repo.join("policies/policies.yaml");
    let stanza = |release: &str| {
        format!("name: x86-hold\nspec:\n  selector:\n    matchLabels: {{hw: x86}}\n  release: {release}")
    };
    let mut release = "os-1-0-0";
    // Moves the x86 hold to the other release and commits: the release and the commit.
    let mut change = || {
        let next = if release == "os-1-0-0" { "os-1-1-0" } else { "os-1-0-0" };
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = text.replacen(&stanza(release), &stanza(next), 1);
        assert_ne!(text, changed, "the policy file changed shape");
        std::fs::write(&path, changed).unwrap();
        release = next;
        (next, commit_all(&git, &format!("x86 to {next}")).unwrap())
    };
    for _ in 0..changes {
        let (next, _) = change();
        let woken = Instant::now();
        let outcome = engine.sync_source().await.unwrap();
        let sync = engine.sync_timings();
        let report = engine.step(Timestamp::now()).await.unwrap();
        let total = woken.elapsed();
        assert!(matches!(outcome, SourceOutcome::Applied { .. }), "{outcome:?}");
        let published: u64 = report
            .events
            .iter()
            .map(|e| match e {
                Event::WavePublished { devices, .. } => *devices,
                _ => 0,
            })
            .sum();
        let t = report.timings;
        println!(
            "{devices} devices: x86-hold to {next} published {published} instructions in {}",
            ms(total).trim()
        );
        println!("  fetch             {}", ms(sync.fetch));
        println!("  compile           {}", ms(sync.compile));
        println!("  declared devices  {}", ms(sync.declare));
        println!("  inventory read    {}", ms(t.inventory));
        println!("  plan              {}", ms(t.plan));
        println!("  rollouts          {}", ms(t.rollouts));
        println!("  publish           {}", ms(t.publish));
        println!("  record            {}", ms(t.record));
        for e in &report.events {
            println!("  event: {}", serde_json::to_string(e).unwrap());
        }
    }

    // End to end, as deployed: the same data directory under `waveguide run`'s loop, woken
    // by a signed GitHub push webhook; the time runs from sending the webhook to the
    // loop reporting the new rollout's wave published (the TUF timestamp written).
    drop(engine); // releases the TUF repository's writer lock
    let secret = "benchmark-secret";
    let mut config = RunConfig::new(repo.display().to_string(), &data);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.webhook_secret = Some(secret.into());
    config.poll_interval = Duration::from_secs(3600);
    config.step_interval = Duration::from_secs(3600);
    let (controller, _task) = waveguide::standalone::start(config, std::future::pending()).await.unwrap();
    let mut status = controller.status.clone();
    let started = Instant::now();
    let head = git.head().unwrap().target().unwrap().to_string();
    let address = status
        .wait_for(|s| s.commit.as_deref() == Some(head.as_str()) && s.passes >= 1)
        .await
        .unwrap()
        .listening
        .expect("listening");
    eprintln!("waveguide run: first commit applied and first pass made in {:.1?}", started.elapsed());
    let client = reqwest::Client::new();
    let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
    let signature = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    for _ in 0..changes {
        let (next, commit) = change();
        let seen = status.borrow().events.len();
        let sent = Instant::now();
        let response = client
            .post(format!("http://{address}/v1/hooks/git"))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", &signature)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let published = status
            .wait_for(|s| {
                s.commit.as_deref() == Some(commit.as_str())
                    && s.events.iter().skip(seen).any(|e| matches!(e, Event::WavePublished { .. }))
            })
            .await
            .unwrap()
            .events
            .iter()
            .skip(seen)
            .map(|e| match e {
                Event::WavePublished { devices, .. } => *devices,
                _ => 0,
            })
            .sum::<u64>();
        println!(
            "{devices} devices, waveguide run: webhook to {published} instructions published ({next}) in {}",
            ms(sent.elapsed()).trim()
        );
    }
}
