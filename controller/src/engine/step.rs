//! One active rollout's turn in a pass: its gates' verdict, the devices of its current
//! wave admitted now, the retries due, what operators asked of it (a retry, an acceptance),
//! and the record to write when anything changed. Pure, like the rest of the
//! [decision](super::decide).

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};

use super::decide::{target, Decision, Member, PassInput, Publication};
use super::Event;
use crate::compile::{CompiledFleet, CompiledPolicy, DeviceIx, PolicyIx, ReleaseIx};
use crate::inventory::store::{RolloutPhase, RolloutRecord, Waiting, WaveRecord, WaveState};
use crate::model::{Approval, OnFailure};
use crate::protocol::{FailureClass, Windows};
use crate::rollout::admission::{admit, InFlight};
use crate::rollout::gate::{self, Gates, Position, Verdict, Wait};
use crate::rollout::progress::{classify_member, failed_at, MemberState, Progress, Target};
use crate::rollout::retry::{retry, Retry};

/// Where a rollout's members stand (see [`RolloutStep::progress`]).
#[derive(Debug, Default)]
struct WaveProgress {
    /// The measured wave's members by state.
    progress: Progress,
    /// The failed members whose retry is due now, by wave and next attempt.
    retries: BTreeMap<(u32, u32), Vec<DeviceIx>>,
    /// Members the wave counts as failed for good from now on (unhealthy during the bake,
    /// or timed out with no retry left).
    failed: Vec<(Box<str>, FailureClass)>,
    /// Failed members whose failures an operator's acceptance covers now.
    accepted: Vec<Box<str>>,
}

/// What operators asked of the rollout that this pass carries out.
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    /// Retry every failed member of the waves started so far.
    retry: bool,
    /// Accept the failures of every failed member of the waves started so far.
    accept: bool,
}

/// One active rollout's turn in a pass.
pub(super) struct RolloutStep<'a> {
    pub input: &'a PassInput<'a>,
    pub policy: PolicyIx,
    /// The release its instructions name: the policy's, or for a rollback rollout the
    /// release its devices return to.
    pub release: ReleaseIx,
    pub members: &'a [Member],
    pub waves: Vec<WaveRecord>,
}

impl RolloutStep<'_> {
    /// Decides what the rollout does now: its gates' verdict, the devices of its current
    /// wave admitted now, and the record to write when anything changed.
    pub fn run(
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
        // Operators' requests wait while the rollout is paused: a retry publishes.
        let asked = Asked {
            retry: rollout.requests.retry_at.is_some() && !paused,
            accept: rollout.requests.accept_at.is_some(),
        };
        let WaveProgress { progress, retries, failed, accepted } =
            self.progress(&target, measured, policy, paused, asked);
        if !failed.is_empty() {
            decisions.push(Decision::MembersFailed { rollout: rollout.id.clone(), members: failed });
        }
        if !accepted.is_empty() {
            decisions.push(Decision::MembersAccepted { rollout: rollout.id.clone(), members: accepted });
        }
        let position = Position {
            wave: current,
            waves: self.waves.len(),
            paused,
            bake: self.waves[current].bake_ms.map(SignedDuration::from_millis),
            healthy_since: self.waves[current].healthy_at.and_then(|t| Timestamp::from_millisecond(t).ok()),
            next_approved: self.waves.get(current + 1).is_some_and(|w| w.approved_at.is_some()),
        };
        let rollback = rollout.rollback_of.is_some();
        let gates = Gates {
            success_threshold: policy.rollout.success_threshold,
            failure: policy.rules.failure,
            // A rollback does not wait for approvals: operators pause it if they must.
            approval: if rollback { Approval::Auto } else { policy.rollout.approval },
        };
        let verdict = gate::decide(&gates, &position, &progress.tally(), now);
        let healthy_since = verdict.healthy_since(&position, now).map(|t| t.as_millisecond());
        let before = (rollout.phase, rollout.message.clone(), rollout.waiting, rollout.requests);
        if asked.retry {
            rollout.requests.retry_at = None;
        }
        if asked.accept {
            rollout.requests.accept_at = None;
        }
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
                events.push(Event::RolloutHalted { rollout: rollout.id.clone(), reason: reason.clone() });
                // The next pass starts the rollback rollout (see `super::rollback`).
                if policy.rules.on_failure == OnFailure::Rollback && !rollback {
                    rollout.requests.rollback_at = Some(now_ms);
                    rollout.message = Some(format!("{reason}; rolling back (onFailure: rollback)"));
                } else {
                    rollout.message = Some(reason.clone());
                }
            }
            Verdict::Complete => {
                self.finish_wave(&rollout, current, WaveState::Succeeded, now_ms, &mut waves, &mut events);
                rollout.phase = RolloutPhase::Completed;
                rollout.message = Some(match self.waves.len() {
                    1 => "its wave succeeded".to_string(),
                    n => format!("all {n} waves succeeded"),
                });
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
                    release: self.release,
                    rollout: rollout.id.clone(),
                    wave: wave as u32,
                    devices: admission.admitted,
                    members: true,
                    confirmation_secs: confirmation_secs(policy),
                    attempt: 0,
                    commit: rollout.commit.clone(),
                    allow_downgrade: policy.allow_downgrade || rollback,
                }));
            }
        }
        // Failed members whose retry is due get their instruction again, with the next
        // attempt; not once the rollout halted.
        if rollout.phase != RolloutPhase::Halted {
            for ((wave, attempt), devices) in retries {
                decisions.push(Decision::Publish(Publication {
                    release: self.release,
                    rollout: rollout.id.clone(),
                    wave,
                    devices,
                    members: true,
                    confirmation_secs: confirmation_secs(policy),
                    attempt,
                    commit: rollout.commit.clone(),
                    allow_downgrade: policy.allow_downgrade || rollback,
                }));
            }
        }
        let changed = (rollout.phase, rollout.message.clone(), rollout.waiting, rollout.requests) != before;
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
    /// counts as in flight. What operators `asked` covers the failed members of every wave
    /// started so far: a retry publishes them again whatever the policy's retries say, an
    /// acceptance takes their failures out of the count.
    fn progress(
        &self,
        target: &Target<'_>,
        wave: u32,
        policy: &CompiledPolicy,
        paused: bool,
        asked: Asked,
    ) -> WaveProgress {
        let (fleet, inventory) = (self.input.fleet, self.input.inventory);
        let baking = self.waves.get(wave as usize).is_some_and(|w| w.healthy_at.is_some());
        let mut out = WaveProgress::default();
        let earlier_too = asked.retry || asked.accept;
        for m in self.members.iter().filter(|m| m.wave == wave || (earlier_too && m.wave < wave)) {
            let measured = m.wave == wave;
            let ix = fleet.device_index(&m.device);
            let report = inventory.get(&m.device);
            let state = classify_member(target, m.published_at, m.failure, m.accepted, ix.is_some(), report);
            if let (MemberState::Failed(_), Some(ix)) = (state, ix) {
                if asked.retry {
                    out.retries.entry((m.wave, m.attempt.saturating_add(1))).or_default().push(ix);
                    if measured {
                        out.progress.add(MemberState::InFlight);
                    }
                    continue;
                }
                if asked.accept {
                    out.accepted.push(m.device.clone());
                    if measured {
                        out.progress.add(MemberState::Accepted);
                    }
                    continue;
                }
            }
            if !measured {
                continue;
            }
            if baking && m.failure.is_none() && state == MemberState::Failed(FailureClass::Health) {
                out.failed.push((m.device.clone(), FailureClass::Health));
            }
            let (MemberState::Failed(class), Some(published_at), Some(ix)) = (state, m.published_at, ix)
            else {
                out.progress.add(state);
                continue;
            };
            let failed_at = failed_at(target, published_at, report, class);
            match retry(&policy.rules.retries, class, m.attempt, failed_at, target.now_ms) {
                Retry::No => {
                    out.progress.add(state);
                    // A timeout is the controller's verdict, not the device's: kept, so that
                    // a late finish does not undo it and operators' status shows it.
                    if class == FailureClass::Timeout && m.failure.is_none() {
                        out.failed.push((m.device.clone(), class));
                    }
                }
                Retry::Backoff => out.progress.add(MemberState::InFlight),
                Retry::Now(attempt) => {
                    out.progress.add(MemberState::InFlight);
                    if !paused {
                        out.retries.entry((wave, attempt)).or_default().push(ix);
                    }
                }
            }
        }
        out
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
pub(super) fn confirmation_secs(policy: &CompiledPolicy) -> Option<u64> {
    policy.rules.confirmation.as_ref().map(|c| c.value().as_secs().unsigned_abs())
}

/// Each group's maintenance windows, as the compiler parsed them.
pub(super) struct GroupWindows {
    windows: Vec<std::sync::Arc<Windows>>,
}

impl GroupWindows {
    pub fn new(fleet: &CompiledFleet) -> GroupWindows {
        GroupWindows { windows: fleet.groups().iter().map(|g| g.maintenance_windows.clone()).collect() }
    }

    fn is_open(&self, group: u32, now: Timestamp) -> bool {
        self.windows[group as usize].is_open(now)
    }
}
