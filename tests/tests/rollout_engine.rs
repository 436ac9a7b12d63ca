//! The engine's rollouts over a real inventory (SQLite and PostgreSQL) and a real TUF
//! repository on disk, with device reports scripted: waves in order, bake, the success
//! and failure thresholds, manual approval, concurrency caps in sub-batches, stale
//! devices, restarts, a later commit superseding a rollout, and the policy's device-health
//! rules (health during the bake, device timeout, retries, minimum sample).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use tempfile::TempDir;
use waveguide::compile::compile;
use waveguide::engine::{declared_devices, Desired, EngineConfig, Event, Rollouts};
use waveguide::inventory::store::{IncomingReport, RolloutPhase, Store, WaveState};
use waveguide::inventory::DeviceReport;
use waveguide::protocol::{FailureClass, UpdateState};
use waveguide::publish::{BinLayout, Expiries, KeyDir, KeySpec, RepoConfig, Repository};
use waveguide::rollout::control::{self, Action};
use waveguide::source::FleetFiles;
use waveguide_tests::fresh_postgres_database;

const GROUPS: &str = r#"
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: eu}
spec: {}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: berlin}
spec: {parent: eu}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: paris}
spec: {parent: eu}
"#;

fn devices() -> String {
    let mut out = String::from(
        "apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: berlin}\nspec:\n  group: berlin\n  devices:\n",
    );
    for i in 0..10 {
        let canary = if i < 2 { "\n      labels: {tier: canary}" } else { "" };
        out.push_str(&format!("    - id: b{i:02}{canary}\n"));
    }
    out.push_str(
        "---\napiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: paris}\nspec:\n  group: paris\n  devices:\n",
    );
    for i in 0..10 {
        out.push_str(&format!("    - id: p{i:02}\n"));
    }
    out
}

fn release(name: &str, version: &str) -> String {
    format!(
        "apiVersion: waveguide.dev/v1alpha1\nkind: Release\nmetadata: {{name: {name}}}\nspec:\n  version: {version}\n  artifacts:\n    - name: image-{version}.img\n      url: https://downloads.example.com/{name}/image.img\n      sha256: {}\n      length: 1024\n",
        "ab".repeat(32)
    )
}

/// The policy `stable` moving `eu` to `release`: canaries, half, rest.
fn policy(release: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: waveguide.dev/v1alpha1
kind: Policy
metadata: {{name: stable}}
spec:
  selector: {{groups: [eu]}}
  release: {release}
  rollout:
    order: hierarchy
    waves:
      - name: canary
        selector: {{matchLabels: {{tier: canary}}}}
        bake: 1m
      - name: half
        percent: 50
        bake: 1m
      - name: rest
{extra}"#
    )
}

fn fleet(release_name: &str, extra: &str) -> (Desired, FleetFiles) {
    let files = FleetFiles::from_pairs([
        ("groups.yaml", GROUPS.to_string()),
        ("devices.yaml", devices()),
        ("v1.yaml", release("v1", "1.0.0")),
        ("v2.yaml", release("v2", "2.0.0")),
        ("v3.yaml", release("v3", "3.0.0")),
        ("policy.yaml", policy(release_name, extra)),
    ]);
    let compilation = compile(&files);
    assert!(!compilation.has_errors(), "{:#?}", compilation.diagnostics);
    (Desired { fleet: Arc::new(compilation.fleet.unwrap()), commit: Some(release_name.into()) }, files)
}

struct Harness {
    dir: TempDir,
    store: Store,
    engine: Option<Rollouts>,
    desired: Desired,
    now: Timestamp,
    last_report: AtomicI64,
}

async fn harness(store: Store, extra: &str) -> Harness {
    let dir = TempDir::new().unwrap();
    let (keys, _) = KeyDir::init(&dir.path().join("keys"), &KeySpec::without_release_keys()).unwrap();
    let repo = Repository::create(
        &dir.path().join("tuf"),
        &keys,
        RepoConfig { layout: BinLayout::for_fleet(20), expiries: Expiries::default() },
    )
    .unwrap();
    let (desired, files) = fleet("v2", extra);
    let declared = declared_devices(&compile(&files).documents);
    store.sync_declared(&declared, 0).await.unwrap();
    let engine =
        Rollouts::new(store.clone(), repo, EngineConfig { stale_after: SignedDuration::from_mins(10) });
    let h = Harness {
        dir,
        store,
        engine: Some(engine),
        desired,
        now: Timestamp::now(),
        last_report: AtomicI64::new(0),
    };
    let all: Vec<String> = h.ids();
    h.report(&all, "v1", "1.0.0", UpdateState::Idle, true).await;
    h
}

impl Harness {
    fn ids(&self) -> Vec<String> {
        self.desired.fleet.devices().iter().map(|d| d.id.to_string()).collect()
    }

    async fn step(&mut self) -> Vec<Event> {
        self.engine.as_mut().unwrap().step(&self.desired, self.now).await.unwrap().events
    }

    fn advance(&mut self, by: SignedDuration) {
        self.now = self.now.checked_add(by).unwrap();
    }

    async fn report(&self, ids: &[String], release: &str, version: &str, state: UpdateState, healthy: bool) {
        self.report_failure(ids, release, version, state, healthy, None).await
    }

    /// Devices report, `failure` naming the step that failed.
    async fn report_failure(
        &self,
        ids: &[String],
        release: &str,
        version: &str,
        state: UpdateState,
        healthy: bool,
        failure: Option<FailureClass>,
    ) {
        // Each report must be newer than the device's last one: a millisecond apart when
        // the harness's clock stands still.
        let at = self.now.as_millisecond().max(self.last_report.load(Ordering::Relaxed) + 1);
        self.last_report.store(at, Ordering::Relaxed);
        let reports: Vec<IncomingReport> = ids
            .iter()
            .map(|id| IncomingReport {
                device_id: id.clone(),
                report: DeviceReport {
                    release: Some(release.into()),
                    version: version.parse().unwrap(),
                    state,
                    healthy,
                    failure,
                    last_seen: None,
                },
                detail: None,
                commit: None,
                reported_at: at,
                received_at: at,
            })
            .collect();
        self.store.record_reports(&reports).await.unwrap();
    }

    /// Restarts the engine over the same inventory and repository.
    fn restart(&mut self) {
        drop(self.engine.take());
        let keys = KeyDir::open(&self.dir.path().join("keys")).unwrap();
        let repo = Repository::open(&self.dir.path().join("tuf"), &keys).unwrap();
        self.engine = Some(Rollouts::new(
            self.store.clone(),
            repo,
            EngineConfig { stale_after: SignedDuration::from_mins(10) },
        ));
    }

    /// What the TUF repository publishes for each device, read from its files the way
    /// a client does: timestamp → snapshot → the newest version of every bin → targets.
    fn published(&self) -> BTreeMap<String, Value> {
        published_instructions(&self.dir.path().join("tuf"))
    }

    async fn members(&self, rollout: &str) -> Vec<(u32, String, Option<i64>)> {
        let members = self.store.rollout_members(rollout).await.unwrap();
        members.into_iter().map(|m| (m.wave, m.device_id, m.published_at)).collect()
    }

    async fn wave_members(&self, rollout: &str, wave: u32) -> Vec<String> {
        self.store.wave_members(rollout, wave).await.unwrap()
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

/// Every device instruction the repository serves, by device id.
fn published_instructions(repo: &Path) -> BTreeMap<String, Value> {
    let meta = repo.join("metadata");
    let timestamp = read_json(&meta.join("timestamp.json"));
    let snapshot_version = timestamp["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    let snapshot = read_json(&meta.join(format!("{snapshot_version}.snapshot.json")));
    let mut out = BTreeMap::new();
    for (role, info) in snapshot["signed"]["meta"].as_object().unwrap() {
        let version = info["version"].as_u64().unwrap();
        let doc = read_json(&meta.join(format!("{version}.{role}")));
        let Some(targets) = doc["signed"]["targets"].as_object() else { continue };
        for (path, target) in targets {
            let Some(file) = path.strip_prefix("devices/") else { continue };
            let hash = target["hashes"]["sha256"].as_str().unwrap();
            let instruction = read_json(&repo.join("targets/devices").join(format!("{hash}.{file}")));
            out.insert(instruction["device"].as_str().unwrap().to_string(), instruction);
        }
    }
    out
}

/// A fresh, empty database of each backend.
async fn stores() -> Vec<(Store, Option<TempDir>)> {
    let dir = TempDir::new().unwrap();
    let sqlite = Store::open(dir.path().join("inventory.db").to_str().unwrap()).await.unwrap();
    let postgres = Store::open(&fresh_postgres_database().await).await.unwrap();
    vec![(sqlite, Some(dir)), (postgres, None)]
}

fn started(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RolloutStarted { rollout, .. } => Some(rollout.clone()),
            _ => None,
        })
        .collect()
}

fn published_wave(events: &[Event]) -> Vec<(u32, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::WavePublished { wave, devices, .. } => Some((*wave, *devices)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn waves_advance_in_order_on_health_and_bake_then_halt_on_failures() {
    for (store, _guard) in stores().await {
        let mut h = harness(store, "").await;
        let events = h.step().await;
        assert_eq!(started(&events), ["stable-1"]);
        assert_eq!(published_wave(&events), [(0, 2)], "{events:?}");
        let canaries = h.wave_members("stable-1", 0).await;
        assert_eq!(canaries, ["b00", "b01"]);
        let published = h.published();
        assert_eq!(published.keys().cloned().collect::<Vec<_>>(), canaries, "only the canaries are told");
        assert_eq!(published["b00"]["release"], "v2");
        assert_eq!(published["b00"]["rollout"], "stable-1");
        assert_eq!(published["b00"]["wave"], 0);

        // Nothing changed: a pass writes nothing.
        let before = std::fs::read(h.dir.path().join("tuf/metadata/timestamp.json")).unwrap();
        assert!(published_wave(&h.step().await).is_empty());
        assert_eq!(std::fs::read(h.dir.path().join("tuf/metadata/timestamp.json")).unwrap(), before);

        // Canaries healthy: the wave bakes for a minute before the next one starts.
        h.report(&canaries, "v2", "2.0.0", UpdateState::Installed, true).await;
        h.step().await;
        h.advance(SignedDuration::from_secs(30));
        assert!(published_wave(&h.step().await).is_empty(), "still baking");
        let status = control::status(&h.store, "stable-1", SignedDuration::from_mins(10), h.now)
            .await
            .unwrap()
            .unwrap();
        assert!(status.message.as_deref().unwrap().starts_with("baking until"), "{:?}", status.message);
        h.advance(SignedDuration::from_secs(31));
        let events = h.step().await;
        assert_eq!(published_wave(&events), [(1, 10)], "{events:?}");
        let half = h.wave_members("stable-1", 1).await;
        assert_eq!(h.published().len(), 12);
        for id in h.ids() {
            let told = h.published().contains_key(&id);
            assert_eq!(told, canaries.contains(&id) || half.contains(&id), "{id}");
        }
        // Hierarchy order: the half wave takes berlin before paris.
        assert!(half.iter().filter(|d| d.starts_with('b')).count() == 8, "{half:?}");

        // One failure in ten crosses the 5% failure threshold: the rollout halts, and a
        // halt holds — no later pass publishes anything.
        h.report(&half[..1], "v1", "1.0.0", UpdateState::Failed, true).await;
        h.report(&half[1..], "v2", "2.0.0", UpdateState::Installed, true).await;
        let events = h.step().await;
        assert!(events.iter().any(|e| matches!(e, Event::RolloutHalted { .. })), "{events:?}");
        let rollout = h.store.rollout("stable-1").await.unwrap().unwrap();
        assert_eq!(rollout.phase, RolloutPhase::Halted);
        assert!(rollout.message.unwrap().contains("failure threshold"));
        assert_eq!(h.store.waves("stable-1").await.unwrap()[1].state, WaveState::Failed);
        h.advance(SignedDuration::from_mins(5));
        h.restart();
        assert!(published_wave(&h.step().await).is_empty());
        assert_eq!(h.published().len(), 12, "nothing beyond the halted wave is published");
    }
}

/// A rollout with manual approval whose canaries are healthy and baked: its second wave
/// waits for an operator.
async fn canaries_baked_with_manual_approval(store: Store) -> Harness {
    let mut h = harness(store, "    approval: manual\n").await;
    h.step().await;
    let canaries = h.wave_members("stable-1", 0).await;
    h.report(&canaries, "v2", "2.0.0", UpdateState::Installed, true).await;
    h.step().await;
    h.advance(SignedDuration::from_mins(2));
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_approval_waits_and_a_restart_resumes_without_republishing() {
    for (store, _guard) in stores().await {
        let mut h = canaries_baked_with_manual_approval(store).await;
        for _ in 0..3 {
            assert!(published_wave(&h.step().await).is_empty(), "waits for approval");
        }
        let rollout = h.store.rollout("stable-1").await.unwrap().unwrap();
        assert_eq!(rollout.message.as_deref(), Some("wave 2 (half) waits for approval"));
        assert_eq!(h.published().len(), 2);

        control::act(&h.store, "stable-1", Action::Approve(1), h.now).await.unwrap();
        let events = h.step().await;
        assert_eq!(published_wave(&events), [(1, 10)]);
        let published_at: Vec<_> = h.members("stable-1").await;
        let snapshot = h.engine.as_mut().unwrap().repository().snapshot_version();

        // Restart mid-wave: the wave in progress stays the current one, nothing is
        // published twice, and the next wave still needs its own approval.
        h.restart();
        assert!(published_wave(&h.step().await).is_empty());
        assert_eq!(h.engine.as_mut().unwrap().repository().snapshot_version(), snapshot);
        assert_eq!(h.members("stable-1").await, published_at);
        let half = h.wave_members("stable-1", 1).await;
        h.report(&half, "v2", "2.0.0", UpdateState::Installed, true).await;
        h.step().await;
        h.advance(SignedDuration::from_mins(2));
        assert!(published_wave(&h.step().await).is_empty());
        control::act(&h.store, "stable-1", Action::Approve(2), h.now).await.unwrap();
        assert_eq!(published_wave(&h.step().await), [(2, 8)]);
        let rest = h.wave_members("stable-1", 2).await;
        h.report(&rest, "v2", "2.0.0", UpdateState::Installed, true).await;
        let events = h.step().await;
        assert!(events.iter().any(|e| matches!(e, Event::RolloutCompleted { .. })), "{events:?}");
        assert_eq!(h.published().len(), 20);
        let waves = h.store.waves("stable-1").await.unwrap();
        assert!(waves.iter().all(|w| w.state == WaveState::Succeeded));
        assert!(waves.windows(2).all(|w| w[0].published_at <= w[1].published_at), "waves started in order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_split_a_wave_and_stale_devices_do_not_block() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path().join("inventory.db").to_str().unwrap()).await.unwrap();
    let mut h = harness(store, "    maxConcurrent: 3\n").await;
    let events = h.step().await;
    assert_eq!(published_wave(&events), [(0, 2)]);
    // One canary never answers; after the stale timeout it is counted apart and the
    // other, healthy one carries the wave.
    h.report(&["b00".to_string()], "v2", "2.0.0", UpdateState::Installed, true).await;
    h.step().await;
    let status =
        control::status(&h.store, "stable-1", SignedDuration::from_mins(10), h.now).await.unwrap().unwrap();
    assert!(status.message.as_deref().unwrap().contains("waiting for health"), "{:?}", status.message);
    h.advance(SignedDuration::from_mins(11));
    h.report(&["b00".to_string()], "v2", "2.0.0", UpdateState::Installed, true).await;
    h.step().await; // healthy: starts baking
    h.advance(SignedDuration::from_mins(2));
    let events = h.step().await;
    // The half wave is published three devices at a time (the policy's maxConcurrent)...
    assert_eq!(published_wave(&events), [(1, 3)], "{events:?}");
    assert!(published_wave(&h.step().await).is_empty(), "three in flight: the cap is full");
    let status =
        control::status(&h.store, "stable-1", SignedDuration::from_mins(10), h.now).await.unwrap().unwrap();
    assert_eq!(status.waves[0].progress.stale, 1);
    assert_eq!(status.waves[1].progress.in_flight, 3);
    assert_eq!(status.waves[1].progress.unpublished, 7);
    // ...and the next three once those report a result.
    let first: Vec<String> =
        h.published().keys().filter(|d| d.as_str() != "b00" && d.as_str() != "b01").cloned().collect();
    assert_eq!(first.len(), 3);
    h.report(&first, "v2", "2.0.0", UpdateState::Installed, true).await;
    assert_eq!(published_wave(&h.step().await), [(1, 3)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_commit_supersedes_a_rollout_and_pause_holds_publishing() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path().join("inventory.db").to_str().unwrap()).await.unwrap();
    let mut h = harness(store, "").await;
    h.step().await;
    control::act(&h.store, "stable-1", Action::Pause, h.now).await.unwrap();
    let canaries = h.wave_members("stable-1", 0).await;
    h.report(&canaries, "v2", "2.0.0", UpdateState::Installed, true).await;
    h.step().await;
    h.advance(SignedDuration::from_mins(5));
    assert!(published_wave(&h.step().await).is_empty(), "paused");
    assert_eq!(h.store.rollout("stable-1").await.unwrap().unwrap().phase, RolloutPhase::Paused);
    control::act(&h.store, "stable-1", Action::Resume, h.now).await.unwrap();
    h.step().await; // healthy since now: bake starts over from this pass
    h.advance(SignedDuration::from_mins(2));
    assert_eq!(published_wave(&h.step().await), [(1, 10)]);

    // The policy moves on to v3: the v2 rollout is aborted and a new one starts with its
    // own canaries, including devices that already run v2.
    h.desired = fleet("v3", "").0;
    let events = h.step().await;
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::RolloutAborted { rollout, .. } if rollout == "stable-1")));
    assert_eq!(started(&events), ["stable-2"]);
    assert_eq!(h.store.rollout("stable-1").await.unwrap().unwrap().phase, RolloutPhase::Aborted);
    let published = h.published();
    assert_eq!(published["b00"]["release"], "v3");
    assert!(!published.contains_key("p09"), "the rest wave of the aborted rollout was never told");
    let err = control::act(&h.store, "stable-1", Action::Resume, h.now).await.unwrap_err();
    assert!(err.to_string().contains("aborted"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_actions_name_their_target_and_are_idempotent() {
    for (store, _guard) in stores().await {
        let mut h = canaries_baked_with_manual_approval(store).await;
        h.step().await;

        // Approving wave 2 twice (a retry) approves it once, and never wave 3.
        let approved = control::act(&h.store, "stable-1", Action::Approve(1), h.now).await.unwrap();
        h.advance(SignedDuration::from_secs(1));
        let again = control::act(&h.store, "stable-1", Action::Approve(1), h.now).await.unwrap();
        assert_eq!(again.revision, approved.revision, "a repeated approval writes nothing");
        let waves = h.store.waves("stable-1").await.unwrap();
        assert_eq!(waves[1].approved_at, Some(approved.updated_at));
        assert_eq!(waves[2].approved_at, None, "the next wave is not approved by a repeat");
        assert_eq!(published_wave(&h.step().await), [(1, 10)]);
        let err = control::act(&h.store, "stable-1", Action::Approve(7), h.now).await.unwrap_err();
        assert!(err.to_string().contains("no wave 8"), "{err}");
        let err = control::act(&h.store, "stable-1", Action::Approve(0), h.now).await.unwrap_err();
        assert!(err.to_string().contains("already started"), "{err}");

        // Pause, resume and abort: each a second time changes nothing.
        for (action, phase) in [
            (Action::Pause, RolloutPhase::Paused),
            (Action::Resume, RolloutPhase::Progressing),
            (Action::Abort, RolloutPhase::Aborted),
        ] {
            let first = control::act(&h.store, "stable-1", action, h.now).await.unwrap();
            assert_eq!(first.phase, phase, "{action:?}");
            let second = control::act(&h.store, "stable-1", action, h.now).await.unwrap();
            assert_eq!((second.phase, second.revision), (phase, first.revision), "{action:?} again");
            assert_eq!(h.store.rollout("stable-1").await.unwrap().unwrap(), first);
        }
        let err = control::act(&h.store, "stable-1", Action::Pause, h.now).await.unwrap_err();
        assert!(err.to_string().contains("aborted"), "{err}");
    }
}

fn halted(events: &[Event]) -> Option<&str> {
    events.iter().find_map(|e| match e {
        Event::RolloutHalted { reason, .. } => Some(reason.as_str()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn health_turning_bad_during_the_bake_fails_the_device_and_halts_the_wave() {
    for (store, _guard) in stores().await {
        let mut h = harness(store, "    confirmation: 2m\n").await;
        h.step().await;
        let canaries = h.wave_members("stable-1", 0).await;
        assert_eq!(h.published()["b00"]["confirmation_secs"], 120, "the policy's confirmation period");
        h.report(&canaries, "v2", "2.0.0", UpdateState::Installed, true).await;
        h.step().await;
        h.advance(SignedDuration::from_secs(30));
        assert!(halted(&h.step().await).is_none(), "baking");
        // b01 fails its health check and goes back to v1.
        h.report_failure(
            &canaries[1..],
            "v1",
            "1.0.0",
            UpdateState::RolledBack,
            false,
            Some(FailureClass::Health),
        )
        .await;
        let events = h.step().await;
        let reason = halted(&events).unwrap_or_else(|| panic!("{events:?}"));
        assert!(reason.contains("1 of 2 devices failed"), "{reason}");
        assert_eq!(h.store.waves("stable-1").await.unwrap()[0].state, WaveState::Failed);
        let status = control::status(&h.store, "stable-1", SignedDuration::from_mins(10), h.now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.waves[0].progress.failed_by.health, 1);
        h.advance(SignedDuration::from_mins(2));
        assert!(published_wave(&h.step().await).is_empty(), "nothing more is published");
        assert_eq!(h.published().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_stuck_installing_times_out() {
    for (store, _guard) in stores().await {
        let mut h = harness(store, "    deviceTimeout: 5m\n").await;
        h.step().await;
        let canaries = h.wave_members("stable-1", 0).await;
        h.report(&canaries[..1], "v2", "2.0.0", UpdateState::Installed, true).await;
        for _ in 0..5 {
            // b01 keeps reporting, installing, never done.
            h.report(&canaries[1..], "v1", "1.0.0", UpdateState::Installing, true).await;
            assert!(halted(&h.step().await).is_none());
            h.advance(SignedDuration::from_secs(61));
        }
        h.report(&canaries[1..], "v1", "1.0.0", UpdateState::Installing, true).await;
        let events = h.step().await;
        let reason = halted(&events).unwrap_or_else(|| panic!("{events:?}"));
        assert!(reason.contains("1 of 2 devices failed"), "{reason}");
        // Operators see the timeout, and a late finish does not undo it.
        h.report(&canaries[1..], "v2", "2.0.0", UpdateState::Installed, true).await;
        let status = control::status(&h.store, "stable-1", SignedDuration::from_mins(10), h.now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.waves[0].progress.failed_by.timeout, 1, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_download_failure_is_retried_and_then_succeeds() {
    for (store, _guard) in stores().await {
        let mut h = harness(store, "    retries: {max: 2, backoff: 1m}\n").await;
        h.step().await;
        let canaries = h.wave_members("stable-1", 0).await;
        assert_eq!(h.published()["b01"].get("attempt"), None, "the first attempt names none");
        h.report(&canaries[..1], "v2", "2.0.0", UpdateState::Installed, true).await;
        h.report_failure(
            &canaries[1..],
            "v1",
            "1.0.0",
            UpdateState::Failed,
            true,
            Some(FailureClass::Download),
        )
        .await;
        assert!(halted(&h.step().await).is_none(), "a failure to be retried does not count");
        h.advance(SignedDuration::from_secs(30));
        h.step().await;
        assert_eq!(h.published()["b01"].get("attempt"), None, "not before the backoff");

        // After the backoff, and across a restart: the instruction again, with attempt 1.
        h.advance(SignedDuration::from_secs(31));
        h.restart();
        assert!(halted(&h.step().await).is_none());
        assert_eq!(h.published()["b01"]["attempt"], 1);
        assert_eq!(h.published()["b01"]["release"], "v2");
        let members = h.store.rollout_members("stable-1").await.unwrap();
        let attempt = |id: &str| members.iter().find(|m| m.device_id == id).unwrap().attempt;
        assert_eq!((attempt("b00"), attempt("b01")), (0, 1), "the attempt is kept in the inventory");
        let before = std::fs::read(h.dir.path().join("tuf/metadata/timestamp.json")).unwrap();
        h.restart();
        h.step().await;
        let after = std::fs::read(h.dir.path().join("tuf/metadata/timestamp.json")).unwrap();
        assert_eq!(before, after, "a retry is published once");

        // The retry succeeds: the canaries bake and the next wave starts.
        h.advance(SignedDuration::from_secs(5));
        h.report(&canaries[1..], "v2", "2.0.0", UpdateState::Installed, true).await;
        h.step().await;
        h.advance(SignedDuration::from_secs(61));
        assert_eq!(published_wave(&h.step().await), [(1, 10)]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_minimum_sample_holds_a_halt_back() {
    for (store, _guard) in stores().await {
        let mut h = harness(store, "    failureThreshold: {percent: 5, minimumSample: 5}\n").await;
        h.step().await;
        let canaries = h.wave_members("stable-1", 0).await;
        h.report(&canaries, "v2", "2.0.0", UpdateState::Installed, true).await;
        h.step().await;
        h.advance(SignedDuration::from_secs(61));
        h.step().await;
        let half = h.wave_members("stable-1", 1).await;
        h.report(&half[..1], "v1", "1.0.0", UpdateState::Failed, true).await;
        h.report(&half[1..3], "v2", "2.0.0", UpdateState::Installed, true).await;
        assert!(halted(&h.step().await).is_none(), "3 of the 5 needed finished");
        h.advance(SignedDuration::from_secs(5));
        h.report(&half[3..5], "v2", "2.0.0", UpdateState::Installed, true).await;
        let events = h.step().await;
        let reason = halted(&events).unwrap_or_else(|| panic!("{events:?}"));
        assert!(reason.contains("1 of 10 devices failed"), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_unhealthy_during_the_bake_stays_failed_across_a_restart() {
    for (store, _guard) in stores().await {
        // 1 of 2 canaries failing is below this threshold: only the bake rule holds the wave.
        let mut h = harness(store, "    failureThreshold: {health: 60}\n").await;
        h.step().await;
        let canaries = h.wave_members("stable-1", 0).await;
        h.report(&canaries, "v2", "2.0.0", UpdateState::Installed, true).await;
        h.step().await;
        h.advance(SignedDuration::from_secs(30));
        h.report(&canaries[1..], "v2", "2.0.0", UpdateState::Installed, false).await;
        assert!(halted(&h.step().await).is_none());
        h.advance(SignedDuration::from_secs(5));
        h.report(&canaries[1..], "v2", "2.0.0", UpdateState::Installed, true).await;
        h.restart();
        h.step().await;
        h.advance(SignedDuration::from_mins(3));
        assert!(published_wave(&h.step().await).is_empty(), "the canaries did not stay healthy");
        let status = control::status(&h.store, "stable-1", SignedDuration::from_mins(10), h.now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.waves[0].progress.failed_by.health, 1, "{status:?}");
        assert_eq!(status.waves[0].progress.healthy, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_rollback_returns_exactly_the_changed_devices_through_a_rollback_rollout() {
    for (store, _guard) in stores().await {
        let mut h = harness(store, "    onFailure: rollback\n").await;
        h.step().await;
        let canaries = h.wave_members("stable-1", 0).await;
        h.report(&canaries[..1], "v2", "2.0.0", UpdateState::Installed, true).await;
        h.report(&canaries[1..], "v2", "2.0.0", UpdateState::Installed, false).await;
        let reason = halted(&h.step().await).map(str::to_string).expect("halted");
        assert!(reason.contains("1 of 2 devices failed"), "{reason}");

        // A restarted engine starts the rollback from the records alone: the canaries go
        // back to v1, the devices that never got v2 see nothing.
        h.restart();
        let events = h.step().await;
        assert_eq!(started(&events), ["stable-1-rollback"]);
        let published = h.published();
        assert_eq!(published.keys().cloned().collect::<Vec<_>>(), canaries);
        for id in &canaries {
            assert_eq!(
                (published[id]["release"].as_str(), published[id]["rollout"].as_str()),
                (Some("v1"), Some("stable-1-rollback"))
            );
        }
        let list = control::list(&h.store, SignedDuration::from_mins(10), h.now).await.unwrap();
        let rollback = list.iter().find(|r| r.id == "stable-1-rollback").unwrap();
        assert_eq!((rollback.rollback_of.as_deref(), rollback.release.as_str()), (Some("stable-1"), "v1"));
        assert!(list.iter().any(|r| r.id == "stable-1" && r.rolled_back_at.is_some()));

        // Back on v1 and healthy: the rollback's wave bakes and it completes.
        h.report(&canaries, "v1", "1.0.0", UpdateState::Installed, true).await;
        h.step().await;
        h.advance(SignedDuration::from_secs(61));
        let events = h.step().await;
        assert!(
            events.contains(&Event::RolloutCompleted { rollout: "stable-1-rollback".into() }),
            "{events:?}"
        );
        h.advance(SignedDuration::from_mins(5));
        assert!(published_wave(&h.step().await).is_empty());
        assert_eq!(h.published().len(), 2, "nothing else was ever published");
    }
}
