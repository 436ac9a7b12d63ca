//! The decision of a pass: a pure function from what the pass read (the compiled fleet,
//! its plan against the inventory, the rollouts with their waves and members, the clock)
//! to what the pass does. No store, no repository, no I/O: [`super::rollouts`] reads the
//! inputs and carries the decisions out.
//!
//! The rules themselves live in [`crate::rollout`]: [`gate`] says what a rollout's current
//! wave allows (advance, wait, halt, complete), [`admit`] which devices of a wave get their
//! instructions now (maintenance windows, concurrency caps), [`classify`] where each member
//! stands. This module composes them over the whole fleet, in a fixed order:
//!
//! 1. rollouts whose policy is gone or now targets another release are superseded;
//! 2. a policy whose reporting devices must move to a release no rollout has taken on yet
//!    starts a rollout, its waves and members pinned from the plan;
//! 3. every active rollout asks its gates, and admits devices of its current wave against
//!    the fleet-wide in-flight counts;
//! 4. devices that joined a policy whose rollout completed get the release at once;
//! 5. pinned devices get their pin.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::rollback;
use super::step::{confirmation_secs, GroupWindows, RolloutStep};
use super::Event;
use crate::compile::{CompiledFleet, CompiledRelease, DeviceIx, PolicyIx, ReleaseIx};
use crate::inventory::store::{ReleaseRef, Requests, RolloutPhase, RolloutRecord, WaveRecord, WaveState};
use crate::inventory::Inventory;
use crate::plan::{Plan, PolicyPlan, WavePlan};
use crate::protocol::FailureClass;
use crate::rollout::admission::InFlight;
use crate::rollout::progress::{classify_member, MemberState, Target};

/// The rollout id written into the instructions of pinned devices.
pub const PIN_ROLLOUT: &str = "pin";

/// A member of a rollout: pinned to a wave when the rollout started, published or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its wave, from 0.
    pub wave: u32,
    /// The device id (kept as text: the device may have left the fleet since).
    pub device: Box<str>,
    /// When its instruction was published, Unix milliseconds (its latest attempt's).
    pub published_at: Option<i64>,
    /// Its instruction's attempt: 0, then one more per retry.
    pub attempt: u32,
    /// The failure its wave counts for good (it turned unhealthy during the bake).
    pub failure: Option<FailureClass>,
    /// The release it ran when the rollout started: where a rollback returns it.
    pub previous: Option<Arc<ReleaseRef>>,
    /// An operator accepted its failure: its wave does not count it.
    pub accepted: bool,
}

/// What a pass read: the input of [`decide`].
#[derive(Debug, Clone, Copy)]
pub struct PassInput<'a> {
    /// The fleet in force.
    pub fleet: &'a CompiledFleet,
    /// The commit it was compiled from.
    pub commit: Option<&'a str>,
    /// The fleet planned against the inventory.
    pub plan: &'a Plan,
    /// What devices reported.
    pub inventory: &'a Inventory,
    /// Every rollout, oldest first.
    pub rollouts: &'a [RolloutRecord],
    /// The waves of every active rollout that is not halted (see [`needs_waves`]).
    pub waves: &'a HashMap<String, Vec<WaveRecord>>,
    /// The members of every active rollout, and of the completed rollouts devices joined
    /// (see [`needs_members`]).
    pub members: &'a HashMap<String, Vec<Member>>,
    /// Now.
    pub now: Timestamp,
    /// How long a published device may stay silent before it counts as stale.
    pub stale_after: SignedDuration,
}

/// One thing a pass does. They come in the order they are carried out; see the
/// [module](self) documentation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// An active rollout stops: its policy is gone or targets another release. The record
    /// is the rollout as it should be written (aborted), conditional on its revision.
    Supersede {
        /// The rollout, aborted.
        rollout: RolloutRecord,
        /// Why, for operators.
        reason: String,
    },
    /// A rollout starts, its waves cut and its members pinned.
    Start {
        /// The new rollout.
        rollout: RolloutRecord,
        /// Its waves; the first one starts with the rollout.
        waves: Vec<WaveRecord>,
        /// Its members, in rollout order.
        members: Vec<Member>,
    },
    /// Instructions to publish, all in the pass's one commit.
    Publish(Publication),
    /// A rollout's new state, written conditionally on the revision the pass read, with
    /// the events that happen when the write goes through.
    Record {
        /// The rollout as it should be written.
        rollout: RolloutRecord,
        /// Its waves that changed.
        waves: Vec<WaveRecord>,
        /// What happens when the write goes through (a wave published is reported
        /// whether or not).
        events: Vec<Event>,
    },
    /// Members whose failures an operator accepted: their waves no longer count them.
    MembersAccepted {
        /// The rollout.
        rollout: String,
        /// The members.
        members: Vec<Box<str>>,
    },
    /// Members whose wave counts them as failed for good: they turned unhealthy or rolled
    /// back during the bake, or timed out with no retry left; a later report does not
    /// undo it.
    MembersFailed {
        /// The rollout.
        rollout: String,
        /// The members, with the class of their failure.
        members: Vec<(Box<str>, FailureClass)>,
    },
    /// Something that happened whatever the writes find (devices of a wave published
    /// while the rollout's record stays as it was).
    Announce(Event),
}

/// Devices to publish, with the release, rollout and wave their instructions name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The release they get.
    pub release: ReleaseIx,
    /// The rollout their instructions name ([`PIN_ROLLOUT`] for pins).
    pub rollout: String,
    /// The wave their instructions name.
    pub wave: u32,
    /// The devices, in rollout order.
    pub devices: Vec<DeviceIx>,
    /// Whether they are members of `rollout` whose publication is recorded (devices that
    /// joined a completed rollout and pinned devices are not).
    pub members: bool,
    /// How long the devices confirm the release's health before committing it: the
    /// policy's `rollout.confirmation` (none for pins).
    pub confirmation_secs: Option<u64>,
    /// The attempt their instructions name: 0, or the retry of members that failed.
    pub attempt: u32,
    /// The fleet commit their instructions name: the one that started the rollout.
    pub commit: Option<String>,
    /// Whether the devices may move to a lower version (the policy's `allowDowngrade`, a
    /// rollback, a pin).
    pub allow_downgrade: bool,
}

/// Why an active rollout is superseded, if it is: its policy was removed, or now targets
/// another release; for a rollback rollout, its policy was removed or started a newer
/// rollout since the one it rolls back (that rollout's devices are its now).
pub fn supersede_reason(
    fleet: &CompiledFleet,
    rollouts: &[RolloutRecord],
    rollout: &RolloutRecord,
) -> Option<String> {
    let Some(policy) = fleet.policy_named(&rollout.policy) else {
        return Some(format!("policy {} was removed from the fleet", rollout.policy));
    };
    if let Some(of) = &rollout.rollback_of {
        let latest = latest_of(rollouts, &rollout.policy)?;
        return (&latest.id != of).then(|| {
            format!("superseded: rollout {} of policy {} started since", latest.id, rollout.policy)
        });
    }
    let release = fleet.release(fleet.policy(policy).release);
    (!same_release(rollout, release)).then(|| {
        format!("superseded: policy {} now targets {} {}", rollout.policy, release.name, release.version)
    })
}

/// The latest rollout of a policy, rollbacks aside: the one that says what the policy's
/// devices are moving to.
pub fn latest_of<'a>(rollouts: &'a [RolloutRecord], policy: &str) -> Option<&'a RolloutRecord> {
    rollouts.iter().rev().find(|r| r.policy == policy && r.rollback_of.is_none())
}

/// Whether [`decide`] needs the waves of `rollout`: active, not superseded, not halted; or
/// its rollback is due (the rollback copies its waves).
pub fn needs_waves(fleet: &CompiledFleet, rollouts: &[RolloutRecord], rollout: &RolloutRecord) -> bool {
    (rollout.phase != RolloutPhase::Halted && needs_members(fleet, rollouts, &[], rollout))
        || rollback::due(rollouts, rollout)
}

/// Whether [`decide`] needs the members of `rollout`: active and not superseded (their
/// in-flight devices count against the caps), its rollback due, or the completed latest
/// rollout of a policy whose plan has devices to update (devices joined it).
pub fn needs_members(
    fleet: &CompiledFleet,
    rollouts: &[RolloutRecord],
    plans: &[PolicyPlan],
    rollout: &RolloutRecord,
) -> bool {
    if rollback::due(rollouts, rollout) {
        return true;
    }
    if rollout.phase.is_active() {
        return supersede_reason(fleet, rollouts, rollout).is_none();
    }
    rollout.phase == RolloutPhase::Completed
        && plans.iter().any(|p| {
            let policy = fleet.policy(p.policy);
            policy.name == rollout.policy
                && same_release(rollout, fleet.release(policy.release))
                && p.to_update() > 0
        })
}

/// Decides one pass. See the [module](self) documentation.
pub fn decide(input: &PassInput<'_>) -> Vec<Decision> {
    let fleet = input.fleet;
    let now_ms = input.now.as_millisecond();
    let mut decisions = Vec::new();
    let mut rollouts = input.rollouts.to_vec();

    let superseded: Vec<(usize, String)> = rollouts
        .iter()
        .enumerate()
        .filter(|(_, r)| r.phase.is_active())
        .filter_map(|(i, r)| Some((i, supersede_reason(fleet, input.rollouts, r)?)))
        .collect();
    for (i, reason) in superseded {
        let rollout = &mut rollouts[i];
        rollout.phase = RolloutPhase::Aborted;
        rollout.message = Some(reason.clone());
        rollout.updated_at = now_ms;
        decisions.push(Decision::Supersede { rollout: rollout.clone(), reason });
    }

    // A policy with devices to move to a release that no rollout has taken on yet starts
    // one, with the planner's waves pinned.
    let mut started: HashMap<String, (Vec<WaveRecord>, Vec<Member>)> = HashMap::new();
    for policy_plan in &input.plan.policies {
        let policy = fleet.policy(policy_plan.policy);
        let release = fleet.release(policy.release);
        let latest = latest_of(&rollouts, &policy.name);
        // Devices never seen are scheduled in their place, but do not start a rollout on
        // their own: a fleet whose devices have not reported yet has nothing to measure a
        // wave by.
        let reported_to_update = policy_plan.to_update() - policy_plan.never_seen;
        if latest.is_some_and(|r| same_release(r, release)) || reported_to_update == 0 {
            continue;
        }
        let (record, waves, members) = start(fleet, policy_plan, input, &rollouts, now_ms);
        decisions.push(Decision::Start { rollout: record.clone(), waves: Vec::new(), members: Vec::new() });
        started.insert(record.id.clone(), (waves, members));
        rollouts.push(record);
    }

    // A rollout whose rollback was asked for (and that is still its policy's latest)
    // starts its rollback rollouts.
    let due: Vec<&RolloutRecord> = rollouts
        .iter()
        .filter(|r| rollback::due(&rollouts, r))
        .filter(|r| fleet.policy_named(&r.policy).is_some())
        .filter(|r| latest_of(&rollouts, &r.policy).is_some_and(|latest| latest.id == r.id))
        .collect();
    let mut new_rollbacks = Vec::new();
    for original in due {
        let waves = input.waves.get(&original.id).map_or(&[][..], Vec::as_slice);
        let members = input.members.get(&original.id).map_or(&[][..], Vec::as_slice);
        new_rollbacks.extend(rollback::rollbacks(fleet, original, waves, members, input.commit, now_ms));
    }
    for (record, waves, members) in new_rollbacks {
        decisions.push(Decision::Start { rollout: record.clone(), waves: Vec::new(), members: Vec::new() });
        started.insert(record.id.clone(), (waves, members));
        rollouts.push(record);
    }
    let members_of = |id: &str| members_of(&started, input.members, id);

    // Every active rollout, and what is in flight fleet-wide for the caps.
    let active: Vec<(&RolloutRecord, PolicyIx)> = rollouts
        .iter()
        .filter(|r| r.phase.is_active())
        .filter_map(|r| Some((r, fleet.policy_named(&r.policy)?)))
        .collect();
    let mut in_flight_devices = Vec::new();
    let mut policy_in_flight: HashMap<PolicyIx, u32> = HashMap::new();
    // A rolled-back rollout's devices are in flight in its rollback, not in it.
    for (rollout, policy) in active.iter().filter(|(r, _)| r.requests.rollback_at.is_none()) {
        let version = rollout_version(rollout);
        let target = target(rollout, &version, input);
        for member in members_of(&rollout.id).iter().filter(|m| m.published_at.is_some()) {
            let ix = fleet.device_index(&member.device);
            let report = input.inventory.get(&member.device);
            let state = classify_member(
                &target,
                member.published_at,
                member.failure,
                member.accepted,
                ix.is_some(),
                report,
            );
            if state == MemberState::InFlight {
                in_flight_devices.extend(ix);
                *policy_in_flight.entry(*policy).or_default() += 1;
            }
        }
    }
    let mut in_flight = InFlight::new(fleet, in_flight_devices);
    let windows = GroupWindows::new(fleet);
    for (rollout, policy) in active {
        if rollout.phase == RolloutPhase::Halted {
            continue;
        }
        let waves = match started.get(&rollout.id) {
            Some((waves, _)) => waves.clone(),
            None => input.waves.get(&rollout.id).cloned().unwrap_or_default(),
        };
        let Some(release) = publishes(fleet, rollout, policy) else {
            let message = format!(
                "release {} {} is no longer in the fleet; nothing more can be published",
                rollout.release, rollout.version
            );
            if rollout.message.as_deref() != Some(&message) {
                let record = RolloutRecord {
                    phase: RolloutPhase::Halted,
                    message: Some(message.clone()),
                    waiting: None,
                    updated_at: now_ms,
                    ..rollout.clone()
                };
                let event = Event::RolloutHalted { rollout: rollout.id.clone(), reason: message };
                decisions.push(Decision::Record { rollout: record, waves: Vec::new(), events: vec![event] });
            }
            continue;
        };
        let step = RolloutStep { input, policy, release, members: members_of(&rollout.id), waves };
        step.run(rollout.clone(), &mut decisions, &mut in_flight, &policy_in_flight, &windows);
    }

    // A policy whose rollout of its release completed: devices that joined since (new in
    // the fleet, or newly selected) get the release at once, without a new rollout.
    for policy_plan in &input.plan.policies {
        let policy = fleet.policy(policy_plan.policy);
        let release = fleet.release(policy.release);
        let Some(done) = latest_of(&rollouts, &policy.name) else { continue };
        if done.phase != RolloutPhase::Completed
            || !same_release(done, release)
            || policy_plan.to_update() == 0
        {
            continue;
        }
        let members = members_of(&done.id);
        let ids: HashSet<&str> = members.iter().map(|m| &*m.device).collect();
        let joined: Vec<DeviceIx> = policy_plan
            .waves
            .iter()
            .flat_map(|w| w.devices.iter().copied())
            .filter(|&d| !ids.contains(&*fleet.devices()[d as usize].id))
            .collect();
        if !joined.is_empty() {
            decisions.push(Decision::Publish(Publication {
                release: policy.release,
                rollout: done.id.clone(),
                wave: members.last().map_or(0, |m| m.wave),
                devices: joined,
                members: false,
                confirmation_secs: confirmation_secs(policy),
                attempt: 0,
                commit: done.commit.clone(),
                allow_downgrade: policy.allow_downgrade,
            }));
        }
    }

    // Pinned devices get their pin as is, one publication per release.
    let mut pins: BTreeMap<ReleaseIx, Vec<DeviceIx>> = BTreeMap::new();
    for &d in &input.plan.pinned.to_update {
        if let Some(pin) = fleet.devices()[d as usize].pin() {
            pins.entry(pin).or_default().push(d);
        }
    }
    for (release, devices) in pins {
        decisions.push(Decision::Publish(Publication {
            release,
            rollout: PIN_ROLLOUT.into(),
            wave: 0,
            devices,
            members: false,
            confirmation_secs: None,
            attempt: 0,
            commit: input.commit.map(str::to_string),
            // A pin names its release on purpose, older or not.
            allow_downgrade: true,
        }));
    }

    // The started rollouts' waves and members, moved in rather than copied.
    for decision in &mut decisions {
        if let Decision::Start { rollout, waves, members } = decision {
            if let Some((w, m)) = started.remove(&rollout.id) {
                (*waves, *members) = (w, m);
            }
        }
    }
    decisions
}

/// The members of a rollout, started in this pass or read.
fn members_of<'a>(
    started: &'a HashMap<String, (Vec<WaveRecord>, Vec<Member>)>,
    read: &'a HashMap<String, Vec<Member>>,
    id: &str,
) -> &'a [Member] {
    match started.get(id) {
        Some((_, members)) => members,
        None => read.get(id).map_or(&[], Vec::as_slice),
    }
}

/// The release a rollout's instructions name: its policy's, or for a rollback rollout the
/// release its devices return to (`None` once the fleet no longer declares it).
fn publishes(fleet: &CompiledFleet, rollout: &RolloutRecord, policy: PolicyIx) -> Option<ReleaseIx> {
    if rollout.rollback_of.is_none() {
        return Some(fleet.policy(policy).release);
    }
    rollback::declared(fleet, &rollout.release, &rollout.version)
}

/// A new rollout of a policy's plan: its record, waves and members, each member with the
/// release it reports now (where a rollback would return it).
fn start(
    fleet: &CompiledFleet,
    policy_plan: &PolicyPlan,
    input: &PassInput<'_>,
    existing: &[RolloutRecord],
    now_ms: i64,
) -> (RolloutRecord, Vec<WaveRecord>, Vec<Member>) {
    let commit = input.commit;
    let policy = fleet.policy(policy_plan.policy);
    let release = fleet.release(policy.release);
    let taken: HashSet<&str> = existing.iter().map(|r| r.id.as_str()).collect();
    let mut n = existing.iter().filter(|r| r.policy == policy.name && r.rollback_of.is_none()).count() + 1;
    while taken.contains(format!("{}-{n}", policy.name).as_str()) {
        n += 1;
    }
    let record = RolloutRecord {
        id: format!("{}-{n}", policy.name),
        policy: policy.name.clone(),
        release: release.name.clone(),
        version: release.version.to_string(),
        commit: commit.map(str::to_string),
        phase: RolloutPhase::Progressing,
        paused: false,
        message: Some("started".into()),
        waiting: None,
        created_at: now_ms,
        updated_at: now_ms,
        revision: 0,
        rollback_of: None,
        requests: Requests::default(),
    };
    // One shared copy per release: most members ran the same one.
    let mut releases: HashMap<(&str, &semver::Version), Arc<ReleaseRef>> = HashMap::new();
    let mut previous = |id: &str| {
        let report = input.inventory.get(id)?;
        let release = report.release.as_deref()?;
        Some(
            releases
                .entry((release, &report.version))
                .or_insert_with(|| {
                    Arc::new(ReleaseRef { release: release.to_string(), version: report.version.to_string() })
                })
                .clone(),
        )
    };
    let waves = policy_plan.waves.iter().enumerate().map(|(i, w)| wave_record(i, w, now_ms)).collect();
    let mut members = Vec::with_capacity(policy_plan.to_update());
    for (wave, w) in policy_plan.waves.iter().enumerate() {
        for &d in &w.devices {
            let id = &*fleet.devices()[d as usize].id;
            members.push(Member {
                wave: wave as u32,
                device: id.to_string().into_boxed_str(),
                published_at: None,
                attempt: 0,
                failure: None,
                previous: previous(id),
                accepted: false,
            });
        }
    }
    (record, waves, members)
}

/// A planned wave as a new rollout records it; the first wave starts with the rollout.
fn wave_record(index: usize, wave: &WavePlan, now_ms: i64) -> WaveRecord {
    WaveRecord {
        index: index as u32,
        name: wave.name.clone(),
        state: if index == 0 { WaveState::Published } else { WaveState::Pending },
        size: wave.devices.len() as u64,
        published_at: (index == 0).then_some(now_ms),
        healthy_at: None,
        approved_at: None,
        finished_at: None,
        bake_ms: wave.bake.as_ref().map(|b| b.value().as_millis() as i64),
    }
}

/// Whether a rollout moves its policy to `release` already.
pub(super) fn same_release(rollout: &RolloutRecord, release: &CompiledRelease) -> bool {
    rollout.release == release.name && rollout.version == release.version.to_string()
}

/// The version a rollout moves to; a record whose version does not parse (written by
/// hand) is measured against 0.0.0, so its devices never count as on target.
fn rollout_version(rollout: &RolloutRecord) -> semver::Version {
    rollout.version.parse().unwrap_or(semver::Version::new(0, 0, 0))
}

/// What a rollout's members are measured against; the device timeout is its policy's
/// (none when the policy is gone).
pub(super) fn target<'a>(
    rollout: &'a RolloutRecord,
    version: &'a semver::Version,
    input: &PassInput<'_>,
) -> Target<'a> {
    let fleet = input.fleet;
    let device_timeout = fleet
        .policy_named(&rollout.policy)
        .and_then(|p| fleet.policy(p).rules.device_timeout.as_ref())
        .map(|t| t.value());
    Target {
        release: &rollout.release,
        version,
        stale_after: input.stale_after,
        device_timeout,
        now_ms: input.now.as_millisecond(),
    }
}
