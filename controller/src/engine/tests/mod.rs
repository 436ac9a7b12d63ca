//! The decision of a pass, with every input built in memory by small `mk_*` builders: the
//! fleet compiled from YAML text, reports as an inventory, rollouts, waves and members as
//! records. No database, no TUF repository. [`World`] carries decisions out in memory the
//! way the store would, so that several passes can follow one another.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use super::decide::{decide, Decision, Member, PassInput, Publication, PIN_ROLLOUT};
use super::Event;
use crate::compile::{compile, CompiledFleet};
use crate::inventory::store::{RolloutPhase, RolloutRecord, Waiting, WaveRecord, WaveState};
use crate::inventory::{DeviceReport, Inventory};
use crate::protocol::{FailureClass, UpdateState};
use crate::source::FleetFiles;

const MIN: i64 = 60_000;
const STALE_AFTER: SignedDuration = SignedDuration::from_mins(10);

mod operators;

/// eu ─┬─ berlin: b00..b09 (b00 and b01 labelled `tier: canary`)
///     └─ paris:  p00..p09
/// Releases v1, v2, v3; the policy `stable` moves eu to `release` in three waves:
/// canary (the canaries, bake 1m), half (50%, bake 1m), rest. `rollout` adds lines to
/// the policy's rollout; `documents` adds documents.
fn mk_fleet(release: &str, rollout: &str, documents: &str) -> CompiledFleet {
    mk_compiled(&mk_fleet_yaml(release, rollout, documents))
}

fn mk_compiled(yaml: &str) -> CompiledFleet {
    let compilation = compile(&FleetFiles::from_pairs([("fleet.yaml", yaml.as_bytes().to_vec())]));
    compilation.fleet.unwrap_or_else(|| panic!("{:#?}", compilation.diagnostics))
}

fn mk_fleet_yaml(release: &str, rollout: &str, documents: &str) -> String {
    let mut yaml = String::from(
        "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: eu}\nspec: {}\n---\n\
         apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: berlin}\nspec: {parent: eu}\n---\n\
         apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: paris}\nspec: {parent: eu}\n---\n\
         apiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: berlin}\nspec:\n  group: berlin\n  devices:\n",
    );
    for i in 0..10 {
        let labels = if i < 2 { ", labels: {tier: canary}" } else { "" };
        yaml.push_str(&format!("    - {{id: b{i:02}{labels}}}\n"));
    }
    yaml.push_str(
        "---\napiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: paris}\nspec:\n  group: paris\n  devices:\n",
    );
    for i in 0..10 {
        yaml.push_str(&format!("    - {{id: p{i:02}}}\n"));
    }
    for (name, version) in [("v1", "1.0.0"), ("v2", "2.0.0"), ("v3", "3.0.0")] {
        yaml.push_str(&format!(
            "---\napiVersion: waveguide.dev/v1alpha1\nkind: Release\nmetadata: {{name: {name}}}\nspec: {{version: {version}}}\n"
        ));
    }
    yaml.push_str(&format!(
        "---\napiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata: {{name: stable}}\nspec:\n  \
         selector: {{groups: [eu]}}\n  release: {release}\n  rollout:\n    order: hierarchy\n    waves:\n      \
         - {{name: canary, selector: {{matchLabels: {{tier: canary}}}}, bake: 1m}}\n      \
         - {{name: half, percent: 50, bake: 1m}}\n      - {{name: rest}}\n{rollout}"
    ));
    yaml.push_str(documents);
    yaml
}

fn mk_report(release: &str, state: UpdateState, healthy: bool, seen_ms: i64) -> DeviceReport {
    let version = format!("{}.0.0", &release[1..]);
    DeviceReport {
        release: Some(release.into()),
        version: version.parse().unwrap(),
        state,
        healthy,
        failure: None,
        last_seen: Some(Timestamp::from_millisecond(seen_ms).unwrap()),
    }
}

/// Every device of `fleet` reporting `release`, idle and healthy, at `seen_ms`.
fn mk_inventory(fleet: &CompiledFleet, release: &str, seen_ms: i64) -> Inventory {
    let reports = fleet
        .devices()
        .iter()
        .map(|d| (Box::<str>::from(d.id.as_str()), mk_report(release, UpdateState::Idle, true, seen_ms)))
        .collect();
    Inventory::new(None, reports).unwrap()
}

/// What the store holds, and the clock.
struct World {
    fleet: CompiledFleet,
    inventory: Inventory,
    rollouts: Vec<RolloutRecord>,
    waves: HashMap<String, Vec<WaveRecord>>,
    members: HashMap<String, Vec<Member>>,
    now_ms: i64,
}

fn mk_world(rollout: &str) -> World {
    let fleet = mk_fleet("v2", rollout, "");
    let now_ms = 1_800_000_000_000;
    let inventory = mk_inventory(&fleet, "v1", now_ms);
    World { fleet, inventory, rollouts: Vec::new(), waves: HashMap::new(), members: HashMap::new(), now_ms }
}

impl World {
    fn now(&self) -> Timestamp {
        Timestamp::from_millisecond(self.now_ms).unwrap()
    }

    fn advance(&mut self, minutes: f64) {
        self.now_ms += (minutes * MIN as f64) as i64;
    }

    fn decide(&self) -> Vec<Decision> {
        let plan = crate::plan::plan(&self.fleet, &self.inventory);
        decide(&PassInput {
            fleet: &self.fleet,
            commit: Some("c0ffee"),
            plan: &plan,
            inventory: &self.inventory,
            rollouts: &self.rollouts,
            waves: &self.waves,
            members: &self.members,
            now: self.now(),
            stale_after: STALE_AFTER,
        })
    }

    /// Decides, and carries the decisions out as the store would (every conditional write
    /// going through).
    fn pass(&mut self) -> Vec<Decision> {
        let decisions = self.decide();
        for decision in decisions.clone() {
            match decision {
                Decision::Supersede { rollout, .. } | Decision::Record { rollout, .. }
                    if !self.rollouts.iter().any(|r| r.id == rollout.id) =>
                {
                    panic!("{} written before it was created", rollout.id)
                }
                Decision::Supersede { rollout, .. } => self.record(rollout, Vec::new()),
                Decision::Record { rollout, waves, .. } => self.record(rollout, waves),
                Decision::Start { rollout, waves, members } => {
                    self.waves.insert(rollout.id.clone(), waves);
                    self.members.insert(rollout.id.clone(), members);
                    self.rollouts.push(rollout);
                }
                Decision::Publish(Publication { rollout, devices, members: true, attempt, .. }) => {
                    let ids: Vec<&str> =
                        devices.iter().map(|&d| &*self.fleet.devices()[d as usize].id).collect();
                    for m in self.members.get_mut(&rollout).unwrap() {
                        if ids.contains(&&*m.device) {
                            m.published_at = Some(self.now_ms);
                            m.attempt = attempt;
                            m.failure = None;
                            m.accepted = false;
                        }
                    }
                }
                Decision::MembersFailed { rollout, members } => {
                    for m in self.members.get_mut(&rollout).unwrap() {
                        if let Some((_, class)) = members.iter().find(|(d, _)| *d == m.device) {
                            m.failure = Some(*class);
                        }
                    }
                }
                Decision::MembersAccepted { rollout, members } => {
                    for m in self.members.get_mut(&rollout).unwrap() {
                        if members.contains(&m.device) {
                            m.accepted = true;
                        }
                    }
                }
                Decision::Publish(_) | Decision::Announce(_) => {}
            }
        }
        decisions
    }

    fn record(&mut self, rollout: RolloutRecord, waves: Vec<WaveRecord>) {
        let stored = self.rollouts.iter_mut().find(|r| r.id == rollout.id).unwrap();
        assert_eq!(stored.revision, rollout.revision, "a write names the revision it read");
        *stored = RolloutRecord { revision: rollout.revision + 1, ..rollout };
        let stored = self.waves.get_mut(&stored.id).unwrap();
        for wave in waves {
            let index = wave.index as usize;
            stored[index] = wave;
        }
    }

    /// Devices report.
    fn report(&mut self, ids: &[&str], release: &str, state: UpdateState, healthy: bool) {
        let changed =
            ids.iter().map(|id| (Box::from(*id), mk_report(release, state, healthy, self.now_ms))).collect();
        self.inventory.update(changed);
    }

    /// A pass, and what it published of rollouts' members: `(wave, ids)`.
    fn pass_published(&mut self) -> Vec<(u32, Vec<String>)> {
        let decisions = self.pass();
        published(self, &decisions)
    }

    fn rollout(&self, id: &str) -> &RolloutRecord {
        self.rollouts.iter().find(|r| r.id == id).unwrap()
    }

    fn wave_members(&self, rollout: &str, wave: u32) -> Vec<&str> {
        self.members[rollout].iter().filter(|m| m.wave == wave).map(|m| &*m.device).collect()
    }
}

/// The devices each publication of a rollout's members names: `(wave, ids)`, the ids
/// sorted (they come in rollout order, a stable hash within each group).
fn published(world: &World, decisions: &[Decision]) -> Vec<(u32, Vec<String>)> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Publish(p) if p.members => {
                let mut ids: Vec<String> =
                    p.devices.iter().map(|&d| world.fleet.devices()[d as usize].id.to_string()).collect();
                ids.sort();
                Some((p.wave, ids))
            }
            _ => None,
        })
        .collect()
}

fn events(decisions: &[Decision]) -> Vec<&Event> {
    decisions
        .iter()
        .flat_map(|d| match d {
            Decision::Record { events, .. } => events.iter().collect(),
            Decision::Announce(event) => vec![event],
            _ => Vec::new(),
        })
        .collect()
}

/// A world whose rollout `stable-1` started and published its canaries, which then
/// reported healthy on v2.
fn canaries_healthy(rollout: &str) -> World {
    let mut w = mk_world(rollout);
    w.pass();
    w.report(&["b00", "b01"], "v2", UpdateState::Installed, true);
    w
}

/// [`canaries_healthy`], baked: the second wave (`half`) is published. Returns its members.
fn half_wave_published(rollout: &str) -> (World, Vec<String>) {
    let mut w = canaries_healthy(rollout);
    w.pass();
    w.advance(1.1);
    w.pass();
    let half = w.wave_members("stable-1", 1).iter().map(|d| d.to_string()).collect();
    (w, half)
}

#[test]
fn reporting_devices_start_a_rollout_that_publishes_its_canaries_only() {
    let mut w = mk_world("");
    let decisions = w.pass();
    let Decision::Start { rollout, waves, members } = &decisions[0] else { panic!("{decisions:#?}") };
    assert_eq!((rollout.id.as_str(), rollout.release.as_str(), rollout.revision), ("stable-1", "v2", 0));
    assert_eq!(
        waves.iter().map(|w| (w.name.as_str(), w.size)).collect::<Vec<_>>(),
        [("canary", 2), ("half", 10), ("rest", 8)]
    );
    assert_eq!((waves[0].state, waves[1].state), (WaveState::Published, WaveState::Pending));
    assert_eq!(waves[0].bake_ms, Some(MIN));
    assert_eq!(members.len(), 20);
    assert_eq!(published(&w, &decisions), [(0, vec!["b00".to_string(), "b01".to_string()])]);
    assert!(events(&decisions).contains(&&Event::WavePublished {
        rollout: "stable-1".into(),
        wave: 0,
        name: "canary".into(),
        devices: 2
    }));
}

#[test]
fn a_pass_that_finds_nothing_changed_decides_nothing() {
    let mut w = mk_world("");
    w.pass();
    // The canaries in flight: the message says so once, then nothing.
    let decisions = w.pass();
    assert!(matches!(&decisions[..], [Decision::Record { waves, .. }] if waves.is_empty()), "{decisions:#?}");
    assert_eq!(w.rollout("stable-1").waiting, Some(Waiting::Health));
    assert_eq!(w.pass(), []);
    w.advance(1.0);
    assert_eq!(w.pass(), [], "time alone changes nothing while devices install");
}

#[test]
fn devices_never_seen_do_not_start_a_rollout() {
    let mut w = mk_world("");
    w.inventory = Inventory::new(None, Vec::new()).unwrap();
    assert_eq!(w.pass(), []);
}

#[test]
fn a_healthy_wave_bakes_then_the_next_one_starts() {
    let mut w = canaries_healthy("");
    let decisions = w.pass();
    assert_eq!(w.rollout("stable-1").waiting, Some(Waiting::Baking));
    let healthy_at = w.waves["stable-1"][0].healthy_at;
    assert_eq!(healthy_at, Some(w.now_ms), "{decisions:#?}");
    w.advance(0.5);
    assert_eq!(w.pass(), [], "still baking");
    w.advance(0.6);
    let decisions = w.pass();
    let half = published(&w, &decisions);
    assert_eq!(half.len(), 1);
    assert_eq!(half[0].1.len(), 10);
    assert_eq!(half[0].1.iter().filter(|d| d.starts_with('b')).count(), 8, "hierarchy: berlin first");
    assert!(events(&decisions).contains(&&Event::WaveSucceeded {
        rollout: "stable-1".into(),
        wave: 0,
        name: "canary".into()
    }));
    let waves = &w.waves["stable-1"];
    assert_eq!((waves[0].state, waves[1].state), (WaveState::Succeeded, WaveState::Published));
    assert_eq!(waves[0].healthy_at, healthy_at, "the bake's start is kept");
}

#[test]
fn crossing_the_failure_threshold_halts_and_the_halt_holds() {
    let (mut w, half) = half_wave_published("");
    let half: Vec<&str> = half.iter().map(String::as_str).collect();
    w.report(&half[..1], "v1", UpdateState::Failed, true);
    w.report(&half[1..], "v2", UpdateState::Installed, true);
    let decisions = w.pass();
    assert!(events(&decisions).iter().any(
        |e| matches!(e, Event::RolloutHalted { reason, .. } if reason.contains("1 of 10 devices failed"))
    ));
    assert_eq!(w.rollout("stable-1").phase, RolloutPhase::Halted);
    assert_eq!(w.waves["stable-1"][1].state, WaveState::Failed);
    w.advance(60.0);
    assert_eq!(w.pass(), [], "a halted rollout publishes nothing and writes nothing");
}

#[test]
fn manual_approval_waits_until_the_wave_is_approved() {
    let mut w = canaries_healthy("    approval: manual\n");
    w.pass();
    w.advance(2.0);
    let decisions = w.pass();
    assert!(published(&w, &decisions).is_empty());
    let rollout = w.rollout("stable-1");
    assert_eq!(rollout.waiting, Some(Waiting::Approval));
    assert_eq!(rollout.message.as_deref(), Some("wave 2 (half) waits for approval"));
    assert_eq!(w.pass(), []);
    w.waves.get_mut("stable-1").unwrap()[1].approved_at = Some(w.now_ms);
    assert_eq!(w.pass_published()[0].0, 1);
}

#[test]
fn paused_rollouts_wait_and_a_paused_policy_too() {
    let mut w = canaries_healthy("");
    w.rollouts[0].paused = true;
    w.pass();
    w.advance(5.0);
    assert!(w.pass_published().is_empty());
    assert_eq!(w.rollout("stable-1").phase, RolloutPhase::Paused);
    assert_eq!(w.rollout("stable-1").waiting, Some(Waiting::Paused));
    w.rollouts[0].paused = false;
    w.pass(); // healthy from now on: the bake starts over
    w.advance(1.1);
    assert_eq!(w.pass_published()[0].0, 1);
}

#[test]
fn the_policy_cap_splits_a_wave_into_sub_batches() {
    let mut w = canaries_healthy("    maxConcurrent: 3\n");
    w.pass();
    w.advance(1.1);
    let first = w.pass_published();
    assert_eq!(first[0].1.len(), 3);
    let rollout = w.rollout("stable-1");
    assert_eq!(rollout.waiting, Some(Waiting::Publishing));
    assert!(
        rollout
            .message
            .as_deref()
            .unwrap()
            .contains("7 devices wait (0 outside their maintenance window, 7 over a concurrency cap)"),
        "{:?}",
        rollout.message
    );
    assert!(w.pass_published().is_empty(), "three in flight: the cap is full");
    let done: Vec<&str> = first[0].1.iter().map(String::as_str).collect();
    w.report(&done, "v2", UpdateState::Installed, true);
    assert_eq!(w.pass_published()[0].1.len(), 3, "the next three once those reported");
}

#[test]
fn group_caps_cover_the_group_subtree() {
    let mut w = mk_world("");
    // berlin updates two devices at once at most.
    let yaml = mk_fleet_yaml("v2", "", "").replace(
        "metadata: {name: berlin}\nspec: {parent: eu}",
        "metadata: {name: berlin}\nspec: {parent: eu, maxConcurrent: 2}",
    );
    w.fleet = mk_compiled(&yaml);
    assert_eq!(w.pass_published()[0].1, ["b00", "b01"]);
    w.report(&["b00", "b01"], "v2", UpdateState::Installed, true);
    w.pass();
    w.advance(1.1);
    let half = w.pass_published();
    // Two of berlin's eight, and paris's two: the rest of berlin waits.
    let berlin = half[0].1.iter().filter(|d| d.starts_with('b')).count();
    assert_eq!((berlin, half[0].1.len()), (2, 4), "{half:?}");
    assert!(w.rollout("stable-1").message.as_deref().unwrap().contains("6 over a concurrency cap"));
}

#[test]
fn silent_devices_go_stale_and_do_not_block_the_wave() {
    let mut w = mk_world("");
    w.pass();
    w.report(&["b00"], "v2", UpdateState::Installed, true);
    w.pass();
    assert_eq!(w.rollout("stable-1").waiting, Some(Waiting::Health), "b01 is in flight");
    w.advance(11.0);
    w.report(&["b00"], "v2", UpdateState::Installed, true);
    w.pass();
    assert_eq!(w.rollout("stable-1").waiting, Some(Waiting::Baking), "b01 is stale: b00 carries the wave");
    w.advance(1.1);
    assert_eq!(w.pass_published()[0].0, 1);
}

#[test]
fn a_new_release_supersedes_the_rollout_and_starts_another() {
    let mut w = canaries_healthy("");
    w.pass();
    w.fleet = mk_fleet("v3", "", "");
    let decisions = w.pass();
    let Decision::Supersede { rollout, reason } = &decisions[0] else { panic!("{decisions:#?}") };
    assert_eq!((rollout.id.as_str(), rollout.phase), ("stable-1", RolloutPhase::Aborted));
    assert_eq!(reason, "superseded: policy stable now targets v3 3.0.0");
    assert!(
        matches!(&decisions[1], Decision::Start { rollout, .. } if rollout.id == "stable-2" && rollout.release == "v3")
    );
    // Its canaries go out again, on v3, though they already run v2.
    assert_eq!(published(&w, &decisions), [(0, vec!["b00".to_string(), "b01".to_string()])]);
    assert_eq!(w.pass().iter().filter(|d| matches!(d, Decision::Supersede { .. })).count(), 0);
}

#[test]
fn a_removed_policy_supersedes_its_rollout() {
    let mut w = mk_world("");
    w.pass();
    w.fleet =
        mk_compiled("apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: eu}\nspec: {}\n");
    let decisions = w.pass();
    assert!(
        matches!(&decisions[..], [Decision::Supersede { reason, .. }] if reason == "policy stable was removed from the fleet"),
        "{decisions:#?}"
    );
}

#[test]
fn a_restart_decides_from_the_records_alone() {
    // Wave 2 published and its devices installing; then the process restarts: what it
    // reads back is the same records, and the same decisions follow from them.
    let mut w = canaries_healthy("");
    w.pass();
    w.advance(1.1);
    w.pass();
    w.pass();
    let restarted = World {
        fleet: mk_fleet("v2", "", ""),
        inventory: w.inventory.clone(),
        rollouts: w.rollouts.clone(),
        waves: w.waves.clone(),
        members: w.members.clone(),
        now_ms: w.now_ms,
    };
    assert_eq!(restarted.decide(), [], "nothing is published twice; the current wave stays the current one");
    assert_eq!(w.waves["stable-1"][1].state, WaveState::Published);
}

#[test]
fn pinned_devices_get_their_pin_and_joined_devices_the_completed_release() {
    let pin = "---\napiVersion: waveguide.dev/v1alpha1\nkind: Device\nmetadata: {name: x01}\nspec: {group: paris, pin: v3}\n";
    let mut w = mk_world("");
    w.fleet = mk_fleet("v2", "", pin);
    w.inventory = mk_inventory(&w.fleet, "v1", w.now_ms);
    let decisions = w.pass();
    let pins: Vec<&Publication> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Publish(p) if p.rollout == PIN_ROLLOUT => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(pins.len(), 1);
    assert_eq!(w.fleet.release(pins[0].release).name, "v3");
    assert!(!pins[0].members);

    // Every wave done: a device that joins the policy later gets v2 at once.
    for wave in w.waves.get_mut("stable-1").unwrap() {
        wave.state = WaveState::Succeeded;
    }
    w.rollouts[0].phase = RolloutPhase::Completed;
    let all: Vec<String> = w.fleet.devices().iter().map(|d| d.id.to_string()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    w.report(&all, "v2", UpdateState::Installed, true);
    w.fleet = mk_fleet("v2", "", "---\napiVersion: waveguide.dev/v1alpha1\nkind: Device\nmetadata: {name: p99}\nspec: {group: paris}\n");
    w.report(&["p99"], "v1", UpdateState::Idle, true);
    let decisions = w.pass();
    assert!(
        matches!(&decisions[..], [Decision::Publish(p)] if p.rollout == "stable-1" && !p.members && p.devices.len() == 1),
        "{decisions:#?}"
    );
}

/// The reason of the halt among `decisions`, if any.
fn halt_reason(decisions: &[Decision]) -> Option<&str> {
    events(decisions).into_iter().find_map(|e| match e {
        Event::RolloutHalted { reason, .. } => Some(reason.as_str()),
        _ => None,
    })
}

#[test]
fn a_canary_rolled_back_during_the_bake_halts_the_wave() {
    let mut w = canaries_healthy("");
    w.pass();
    assert_eq!(w.rollout("stable-1").waiting, Some(Waiting::Baking));
    w.advance(0.5);
    w.report(&["b01"], "v1", UpdateState::RolledBack, true);
    let decisions = w.pass();
    let reason = halt_reason(&decisions).expect("halted");
    assert!(reason.contains("1 of 2 devices failed"), "{reason}");
    assert_eq!(w.waves["stable-1"][0].state, WaveState::Failed);
}

#[test]
fn a_device_stuck_installing_times_out() {
    let mut w = mk_world("    deviceTimeout: 5m\n");
    w.pass();
    w.report(&["b00"], "v2", UpdateState::Installed, true);
    w.report(&["b01"], "v1", UpdateState::Installing, true);
    w.advance(4.0);
    w.report(&["b01"], "v1", UpdateState::Installing, true);
    assert_eq!(halt_reason(&w.pass()), None, "within the timeout");
    w.advance(1.5);
    w.report(&["b01"], "v1", UpdateState::Installing, true);
    let decisions = w.pass();
    let reason = halt_reason(&decisions).expect("halted");
    assert!(reason.contains("1 of 2 devices failed"), "{reason}");
}

#[test]
fn a_transient_failure_is_retried_with_the_next_attempt_then_succeeds() {
    let mut w = mk_world("    retries: {max: 1, backoff: 2m}\n");
    w.pass();
    w.report(&["b00"], "v2", UpdateState::Installed, true);
    w.advance(1.0);
    let failed = DeviceReport {
        failure: Some(FailureClass::Download),
        ..mk_report("v1", UpdateState::Failed, true, w.now_ms)
    };
    w.inventory.update(vec![("b01".into(), failed.clone())]);
    let decisions = w.pass();
    assert_eq!(halt_reason(&decisions), None, "a failure to be retried does not count");
    assert!(published(&w, &decisions).is_empty(), "not before the backoff");
    w.advance(2.0);
    let decisions = w.pass();
    let retried: Vec<_> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Publish(p) if p.attempt > 0 => Some((p.attempt, p.devices.len())),
            _ => None,
        })
        .collect();
    assert_eq!(retried, [(1, 1)], "{decisions:#?}");
    assert_eq!(w.members["stable-1"].iter().find(|m| &*m.device == "b01").unwrap().attempt, 1);
    w.advance(1.0);
    assert_eq!(halt_reason(&w.pass()), None, "the old failure is about the first attempt");
    // The retry fails too: retries are used up, the failure counts.
    w.inventory.update(vec![("b01".into(), DeviceReport { last_seen: Some(w.now()), ..failed })]);
    assert!(halt_reason(&w.pass()).is_some_and(|r| r.contains("1 of 2 devices failed")));
}

#[test]
fn a_retried_failure_that_succeeds_lets_the_wave_go_on() {
    let mut w = mk_world("    retries: {max: 2}\n");
    w.pass();
    w.report(&["b00"], "v2", UpdateState::Installed, true);
    w.inventory.update(vec![(
        "b01".into(),
        DeviceReport {
            failure: Some(FailureClass::Timeout),
            ..mk_report("v1", UpdateState::Failed, true, w.now_ms)
        },
    )]);
    w.advance(0.1);
    assert!(w.pass().iter().any(|d| matches!(d, Decision::Publish(p) if p.attempt == 1)));
    w.advance(0.1);
    w.report(&["b01"], "v2", UpdateState::Installed, true);
    w.pass();
    w.advance(1.1);
    assert_eq!(w.pass_published()[0].0, 1, "the next wave starts");
}

#[test]
fn the_minimum_sample_holds_a_halt_back() {
    let (mut w, half) = half_wave_published("    failureThreshold: {percent: 5, minimumSample: 5}\n");
    let half: Vec<&str> = half.iter().map(String::as_str).collect();
    w.report(&half[..1], "v1", UpdateState::Failed, true);
    w.report(&half[1..3], "v2", UpdateState::Installed, true);
    assert_eq!(halt_reason(&w.pass()), None, "3 of the 5 needed finished");
    w.advance(0.1);
    w.report(&half[3..5], "v2", UpdateState::Installed, true);
    assert!(halt_reason(&w.pass()).is_some_and(|r| r.contains("1 of 10 devices failed")));
}

#[test]
fn a_canary_unhealthy_during_the_bake_stays_failed_when_it_recovers() {
    // 1 of 2 failing is below this threshold: only the bake rule keeps the wave back.
    let mut w = canaries_healthy("    failureThreshold: {health: 60}\n");
    w.pass();
    assert_eq!(w.rollout("stable-1").waiting, Some(Waiting::Baking));
    w.advance(0.5);
    w.report(&["b01"], "v2", UpdateState::Installed, false);
    let decisions = w.pass();
    assert!(decisions.iter().any(|d| matches!(d, Decision::MembersFailed { members, .. }
        if members == &[("b01".into(), FailureClass::Health)])));
    assert_eq!(halt_reason(&decisions), None);
    w.advance(0.1);
    w.report(&["b01"], "v2", UpdateState::Installed, true);
    w.pass();
    w.advance(5.0);
    assert!(w.pass_published().is_empty(), "the wave did not stay healthy: no next wave");
    let rollout = w.rollout("stable-1");
    assert_eq!(rollout.waiting, Some(Waiting::Health));
    assert!(rollout.message.as_deref().unwrap().contains("1 failed"), "{:?}", rollout.message);
}

#[test]
fn a_retry_due_as_the_next_wave_starts_names_the_wave_of_its_member() {
    let mut w =
        mk_world("    successThreshold: 50\n    failureThreshold: 40\n    retries: {max: 1, backoff: 1m}\n");
    w.pass();
    w.report(&["b00"], "v2", UpdateState::Installed, true);
    let failed = DeviceReport {
        failure: Some(FailureClass::Download),
        ..mk_report("v1", UpdateState::Failed, true, w.now_ms)
    };
    w.inventory.update(vec![("b01".into(), failed)]);
    w.pass(); // half the canaries healthy: the bake starts, the retry waits for its backoff
    w.advance(1.1);
    let decisions = w.pass();
    let waves: Vec<(u32, u32)> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Publish(p) if p.members => Some((p.wave, p.attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(waves, [(1, 0), (0, 1)], "the next wave, and b01's retry in its own wave");
}
