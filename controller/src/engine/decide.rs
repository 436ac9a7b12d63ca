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

use super::Event;
use crate::compile::{CompiledFleet, CompiledPolicy, CompiledRelease, DeviceIx, PolicyIx, ReleaseIx};
use crate::inventory::store::{
    ReleaseRef, Requests, RolloutPhase, RolloutRecord, Waiting, WaveRecord, WaveState,
};
use crate::inventory::Inventory;
use crate::plan::{Plan, PolicyPlan, WavePlan};
use crate::protocol::{FailureClass, Windows};
use crate::rollout::admission::{admit, InFlight};
use crate::rollout::gate::{self, Gates, Position, Verdict, Wait};
use crate::rollout::progress::{classify_member, failed_at, MemberState, Progress, Target};
use crate::rollout::retry::{retry, Retry};

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
}

/// Why an active rollout is superseded, if it is: its policy was removed, or now targets
/// another release.
pub fn supersede_reason(fleet: &CompiledFleet, rollout: &RolloutRecord) -> Option<String> {
    let Some(policy) = fleet.policy_named(&rollout.policy) else {
        return Some(format!("policy {} was removed from the fleet", rollout.policy));
    };
    let release = fleet.release(fleet.policy(policy).release);
    (!same_release(rollout, release)).then(|| {
        format!("superseded: policy {} now targets {} {}", rollout.policy, release.name, release.version)
    })
}

/// Whether [`decide`] needs the waves of `rollout`: active, not superseded, not halted.
pub fn needs_waves(fleet: &CompiledFleet, rollout: &RolloutRecord) -> bool {
    rollout.phase != RolloutPhase::Halted && needs_members(fleet, &[], rollout)
}

/// Whether [`decide`] needs the members of `rollout`: active and not superseded (their
/// in-flight devices count against the caps), or the completed latest rollout of a policy
/// whose plan has devices to update (devices joined it).
pub fn needs_members(fleet: &CompiledFleet, plans: &[PolicyPlan], rollout: &RolloutRecord) -> bool {
    if rollout.phase.is_active() {
        return supersede_reason(fleet, rollout).is_none();
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

    for rollout in rollouts.iter_mut().filter(|r| r.phase.is_active()) {
        if let Some(reason) = supersede_reason(fleet, rollout) {
            rollout.phase = RolloutPhase::Aborted;
            rollout.message = Some(reason.clone());
            rollout.updated_at = now_ms;
            decisions.push(Decision::Supersede { rollout: rollout.clone(), reason });
        }
    }

    // A policy with devices to move to a release that no rollout has taken on yet starts
    // one, with the planner's waves pinned.
    let mut started: HashMap<String, (Vec<WaveRecord>, Vec<Member>)> = HashMap::new();
    for policy_plan in &input.plan.policies {
        let policy = fleet.policy(policy_plan.policy);
        let release = fleet.release(policy.release);
        let latest = rollouts.iter().rev().find(|r| r.policy == policy.name);
        // Devices never seen are scheduled in their place, but do not start a rollout on
        // their own: a fleet whose devices have not reported yet has nothing to measure a
        // wave by.
        let reported_to_update = policy_plan.to_update() - policy_plan.never_seen;
        if latest.is_some_and(|r| same_release(r, release)) || reported_to_update == 0 {
            continue;
        }
        let (record, waves, members) = start(fleet, policy_plan, input.commit, &rollouts, now_ms);
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
    for (rollout, policy) in &active {
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
        let step = RolloutStep { input, policy, members: members_of(&rollout.id), waves };
        step.run(rollout.clone(), &mut decisions, &mut in_flight, &policy_in_flight, &windows);
    }

    // A policy whose rollout of its release completed: devices that joined since (new in
    // the fleet, or newly selected) get the release at once, without a new rollout.
    for policy_plan in &input.plan.policies {
        let policy = fleet.policy(policy_plan.policy);
        let release = fleet.release(policy.release);
        let Some(done) = rollouts.iter().rev().find(|r| r.policy == policy.name) else { continue };
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

/// A new rollout of a policy's plan: its record, waves and members.
fn start(
    fleet: &CompiledFleet,
    policy_plan: &PolicyPlan,
    commit: Option<&str>,
    existing: &[RolloutRecord],
    now_ms: i64,
) -> (RolloutRecord, Vec<WaveRecord>, Vec<Member>) {
    let policy = fleet.policy(policy_plan.policy);
    let release = fleet.release(policy.release);
    let taken: HashSet<&str> = existing.iter().map(|r| r.id.as_str()).collect();
    let mut n = existing.iter().filter(|r| r.policy == policy.name).count() + 1;
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
    let waves = policy_plan.waves.iter().enumerate().map(|(i, w)| wave_record(i, w, now_ms)).collect();
    let members = policy_plan
        .waves
        .iter()
        .enumerate()
        .flat_map(|(wave, w)| {
            w.devices.iter().map(move |&d| Member {
                wave: wave as u32,
                device: fleet.devices()[d as usize].id.to_string().into_boxed_str(),
                published_at: None,
                attempt: 0,
                failure: None,
                previous: None,
                accepted: false,
            })
        })
        .collect();
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

/// Where a wave's members stand, the retries due now by attempt, and the members its bake
/// counts as failed from now on (see [`RolloutStep::progress`]).
type WaveProgress = (Progress, BTreeMap<u32, Vec<DeviceIx>>, Vec<(Box<str>, FailureClass)>);

/// One active rollout's turn in a pass.
struct RolloutStep<'a> {
    input: &'a PassInput<'a>,
    policy: PolicyIx,
    members: &'a [Member],
    waves: Vec<WaveRecord>,
}

impl RolloutStep<'_> {
    /// Decides what the rollout does now: its gates' verdict, the devices of its current
    /// wave admitted now, and the record to write when anything changed.
    fn run(
        mut self,
        mut rollout: RolloutRecord,
        decisions: &mut Vec<Decision>,
        in_flight: &mut InFlight,
        policy_in_flight: &HashMap<PolicyIx, u32>,
        windows: &GroupWindows,
    ) {
        let (fleet, now) = (self.input.fleet, self.input.now);
        let now_ms = now.as_millisecond();
        let policy = fleet.policy(self.policy);
        let Ok(version) = rollout.version.parse::<semver::Version>() else { return };
        if self.waves.is_empty() {
            return;
        }
        let target = target(&rollout, &version, self.input);
        let mut current = self.waves.iter().rposition(|w| w.state != WaveState::Pending).unwrap_or(0);
        let paused = rollout.paused || policy.paused;
        // The wave measured (and whose failed members are retried), before an advance.
        let measured = current as u32;
        let (progress, retries, failed) = self.progress(&target, measured, policy, paused);
        if !failed.is_empty() {
            decisions.push(Decision::MembersFailed { rollout: rollout.id.clone(), members: failed });
        }
        let position = Position {
            wave: current,
            waves: self.waves.len(),
            paused,
            bake: self.waves[current].bake_ms.map(SignedDuration::from_millis),
            healthy_since: self.waves[current].healthy_at.and_then(|t| Timestamp::from_millisecond(t).ok()),
            next_approved: self.waves.get(current + 1).is_some_and(|w| w.approved_at.is_some()),
        };
        let gates = Gates {
            success_threshold: policy.rollout.success_threshold,
            failure: policy.rules.failure,
            approval: policy.rollout.approval,
        };
        let verdict = gate::decide(&gates, &position, &progress.tally(), now);
        let healthy_since = verdict.healthy_since(&position, now).map(|t| t.as_millisecond());
        let before = (rollout.phase, rollout.message.clone(), rollout.waiting);
        rollout.waiting = match &verdict {
            Verdict::Wait(wait) => Some(Waiting::of(wait)),
            _ => None,
        };
        let mut waves = Vec::new();
        let mut events = Vec::new();
        let mut admit_wave = None;
        match &verdict {
            Verdict::Halt { reason } => {
                self.finish_wave(&rollout, current, WaveState::Failed, now_ms, &mut waves, &mut events);
                rollout.phase = RolloutPhase::Halted;
                rollout.message = Some(reason.clone());
                events.push(Event::RolloutHalted { rollout: rollout.id.clone(), reason: reason.clone() });
            }
            Verdict::Complete => {
                self.finish_wave(&rollout, current, WaveState::Succeeded, now_ms, &mut waves, &mut events);
                rollout.phase = RolloutPhase::Completed;
                rollout.message = Some(format!("all {} waves succeeded", self.waves.len()));
                events.push(Event::RolloutCompleted { rollout: rollout.id.clone() });
            }
            Verdict::Advance => {
                self.finish_wave(&rollout, current, WaveState::Succeeded, now_ms, &mut waves, &mut events);
                current += 1;
                let next = &mut self.waves[current];
                next.state = WaveState::Published;
                next.published_at = Some(now_ms);
                waves.push(next.clone());
                rollout.phase = RolloutPhase::Progressing;
                rollout.message = Some(format!("wave {} ({}) started", current + 1, next.name));
                admit_wave = Some(current);
            }
            Verdict::Wait(wait) => {
                if self.waves[current].healthy_at != healthy_since {
                    self.waves[current].healthy_at = healthy_since;
                    waves.push(self.waves[current].clone());
                }
                rollout.phase = if paused { RolloutPhase::Paused } else { RolloutPhase::Progressing };
                rollout.message = Some(describe(wait, &self.waves, &progress));
                if matches!(wait, Wait::Publishing { .. }) {
                    admit_wave = Some(current);
                }
            }
        }
        if let Some(wave) = admit_wave {
            let waiting: Vec<DeviceIx> = self
                .members
                .iter()
                .filter(|m| m.wave == wave as u32 && m.published_at.is_none())
                .filter_map(|m| fleet.device_index(&m.device))
                .collect();
            let admission = admit(
                fleet,
                &waiting,
                policy.rollout.max_concurrent,
                policy_in_flight.get(&self.policy).copied().unwrap_or(0),
                in_flight,
                |g| windows.is_open(g, now),
            );
            if !admission.admitted.is_empty() {
                events.push(Event::WavePublished {
                    rollout: rollout.id.clone(),
                    wave: wave as u32,
                    name: self.waves[wave].name.clone(),
                    devices: admission.admitted.len() as u64,
                });
            }
            let held = admission.outside_window + admission.capped;
            if held > 0 {
                rollout.waiting = Some(Waiting::Publishing);
                rollout.message = Some(format!(
                    "wave {} ({}): {} devices wait ({} outside their maintenance window, {} over a concurrency cap)",
                    wave + 1,
                    self.waves[wave].name,
                    held,
                    admission.outside_window,
                    admission.capped
                ));
            }
            if !admission.admitted.is_empty() {
                decisions.push(Decision::Publish(Publication {
                    release: policy.release,
                    rollout: rollout.id.clone(),
                    wave: wave as u32,
                    devices: admission.admitted,
                    members: true,
                    confirmation_secs: confirmation_secs(policy),
                    attempt: 0,
                }));
            }
        }
        // Failed members whose retry is due get their instruction again, with the next
        // attempt; not once the rollout halted.
        if rollout.phase != RolloutPhase::Halted {
            for (attempt, devices) in retries {
                decisions.push(Decision::Publish(Publication {
                    release: policy.release,
                    rollout: rollout.id.clone(),
                    wave: measured,
                    devices,
                    members: true,
                    confirmation_secs: confirmation_secs(policy),
                    attempt,
                }));
            }
        }
        let changed = (rollout.phase, rollout.message.clone(), rollout.waiting) != before;
        if changed {
            rollout.updated_at = now_ms;
        }
        if changed || !waves.is_empty() {
            decisions.push(Decision::Record { rollout, waves, events });
        } else {
            decisions.extend(events.into_iter().map(Decision::Announce));
        }
    }

    /// Where the members of `wave` stand; the failed ones whose retry is due now, by their
    /// next attempt (none while paused); and the members that turned unhealthy during the
    /// bake, which the wave counts as failed from now on. A member waiting for its retry
    /// counts as in flight.
    fn progress(
        &self,
        target: &Target<'_>,
        wave: u32,
        policy: &CompiledPolicy,
        paused: bool,
    ) -> WaveProgress {
        let (fleet, inventory) = (self.input.fleet, self.input.inventory);
        let baking = self.waves.get(wave as usize).is_some_and(|w| w.healthy_at.is_some());
        let mut progress = Progress::default();
        let mut due: BTreeMap<u32, Vec<DeviceIx>> = BTreeMap::new();
        let mut failed = Vec::new();
        for m in self.members.iter().filter(|m| m.wave == wave) {
            let ix = fleet.device_index(&m.device);
            let report = inventory.get(&m.device);
            let state = classify_member(target, m.published_at, m.failure, m.accepted, ix.is_some(), report);
            if baking && m.failure.is_none() && state == MemberState::Failed(FailureClass::Health) {
                failed.push((m.device.clone(), FailureClass::Health));
            }
            let (MemberState::Failed(class), Some(published_at), Some(ix)) = (state, m.published_at, ix)
            else {
                progress.add(state);
                continue;
            };
            let failed_at = failed_at(target, published_at, report, class);
            match retry(&policy.rules.retries, class, m.attempt, failed_at, target.now_ms) {
                Retry::No => {
                    progress.add(state);
                    // A timeout is the controller's verdict, not the device's: kept, so that
                    // a late finish does not undo it and operators' status shows it.
                    if class == FailureClass::Timeout && m.failure.is_none() {
                        failed.push((m.device.clone(), class));
                    }
                }
                Retry::Backoff => progress.add(MemberState::InFlight),
                Retry::Now(attempt) => {
                    progress.add(MemberState::InFlight);
                    if !paused {
                        due.entry(attempt).or_default().push(ix);
                    }
                }
            }
        }
        (progress, due, failed)
    }

    fn finish_wave(
        &mut self,
        rollout: &RolloutRecord,
        index: usize,
        state: WaveState,
        now_ms: i64,
        waves: &mut Vec<WaveRecord>,
        events: &mut Vec<Event>,
    ) {
        let wave = &mut self.waves[index];
        wave.state = state;
        wave.finished_at = Some(now_ms);
        wave.healthy_at = wave.healthy_at.or((state == WaveState::Succeeded).then_some(now_ms));
        waves.push(wave.clone());
        if state == WaveState::Succeeded {
            events.push(Event::WaveSucceeded {
                rollout: rollout.id.clone(),
                wave: index as u32,
                name: wave.name.clone(),
            });
        }
    }
}

/// Operators' one-line account of why a rollout waits.
fn describe(wait: &Wait, waves: &[WaveRecord], progress: &Progress) -> String {
    let name = |i: usize| waves.get(i).map_or("?", |w| w.name.as_str());
    match wait {
        Wait::Paused => "paused".into(),
        Wait::Publishing { unpublished } => format!("{unpublished} devices not published yet"),
        Wait::Health { healthy_percent, needed_percent } => format!(
            "waiting for health: {healthy_percent:.1}% healthy of {needed_percent}% needed ({} in flight, {} failed, {} stale)",
            progress.in_flight, progress.failed, progress.stale
        ),
        Wait::Baking { until } => format!("baking until {}", until.strftime("%Y-%m-%dT%H:%M:%SZ")),
        Wait::Approval { wave } => format!("wave {} ({}) waits for approval", wave + 1, name(*wave)),
    }
}

/// The confirmation period a policy's instructions carry, whole seconds.
fn confirmation_secs(policy: &CompiledPolicy) -> Option<u64> {
    policy.rules.confirmation.as_ref().map(|c| c.value().as_secs().unsigned_abs())
}

/// Whether a rollout moves its policy to `release` already.
fn same_release(rollout: &RolloutRecord, release: &CompiledRelease) -> bool {
    rollout.release == release.name && rollout.version == release.version.to_string()
}

/// The version a rollout moves to; a record whose version does not parse (written by
/// hand) is measured against 0.0.0, so its devices never count as on target.
fn rollout_version(rollout: &RolloutRecord) -> semver::Version {
    rollout.version.parse().unwrap_or(semver::Version::new(0, 0, 0))
}

/// What a rollout's members are measured against; the device timeout is its policy's
/// (none when the policy is gone).
fn target<'a>(rollout: &'a RolloutRecord, version: &'a semver::Version, input: &PassInput<'_>) -> Target<'a> {
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

/// Each group's maintenance windows, as the compiler parsed them.
struct GroupWindows {
    windows: Vec<std::sync::Arc<Windows>>,
}

impl GroupWindows {
    fn new(fleet: &CompiledFleet) -> GroupWindows {
        GroupWindows { windows: fleet.groups().iter().map(|g| g.maintenance_windows.clone()).collect() }
    }

    fn is_open(&self, group: u32, now: Timestamp) -> bool {
        self.windows[group as usize].is_open(now)
    }
}
