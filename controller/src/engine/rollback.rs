//! Rollback rollouts: a rollout whose rollback was asked for (by its policy's
//! `onFailure: rollback` when a wave halted, or by an operator) returns the devices that took
//! its release to the release each ran when it started. The return is a rollout of its own,
//! `<id>-rollback`, that the engine runs like any other: the same waves as the original
//! (only those with devices to return), the policy's caps, maintenance windows, bake and
//! failure threshold, no approvals. Pure, like the rest of the [decision](super::decide).
//!
//! Which devices: every member whose instruction the original published. A device that
//! never installed the release gets an instruction for the release it runs, which it
//! treats as done; a member never published sees nothing. Devices whose previous release
//! the fleet no longer declares (or that had not reported one) cannot be returned and are
//! counted in the rollback's message. Members that ran different releases get one rollback
//! rollout per release (`<id>-rollback`, `<id>-rollback-2`, …), the largest group first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::decide::Member;
use crate::compile::{CompiledFleet, ReleaseIx};
use crate::inventory::store::{ReleaseRef, Requests, RolloutPhase, RolloutRecord, WaveRecord, WaveState};

/// A rollback rollout to create: its record, its waves and its members.
pub type NewRollback = (RolloutRecord, Vec<WaveRecord>, Vec<Member>);

/// Whether `rollout` asked for a rollback that no rollout carries out yet.
pub fn due(rollouts: &[RolloutRecord], rollout: &RolloutRecord) -> bool {
    rollout.requests.rollback_at.is_some()
        && rollout.rollback_of.is_none()
        && !rollouts.iter().any(|r| r.rollback_of.as_deref() == Some(&rollout.id))
}

/// The rollback rollouts of `original`, whose rollback is [`due`]: one per release its
/// published members return to. When none can be returned, one finished record says why,
/// so that the rollback is not asked again at every pass.
pub fn rollbacks(
    fleet: &CompiledFleet,
    original: &RolloutRecord,
    original_waves: &[WaveRecord],
    members: &[Member],
    commit: Option<&str>,
    now_ms: i64,
) -> Vec<NewRollback> {
    let mut groups: HashMap<&Arc<ReleaseRef>, Vec<&Member>> = HashMap::new();
    let mut unknown = 0u64;
    for m in members.iter().filter(|m| m.published_at.is_some()) {
        match &m.previous {
            Some(previous) if declared(fleet, &previous.release, &previous.version).is_some() => {
                groups.entry(previous).or_default().push(m)
            }
            _ => unknown += 1,
        }
    }
    let mut groups: Vec<(&Arc<ReleaseRef>, Vec<&Member>)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(b.0)));
    let left_out = if unknown > 0 {
        format!("; {unknown} devices left out: the release they ran before is not in the fleet or not known")
    } else {
        String::new()
    };
    let record = |n: usize, release: &ReleaseRef, message: String, phase: RolloutPhase| RolloutRecord {
        id: if n == 0 {
            format!("{}-rollback", original.id)
        } else {
            format!("{}-rollback-{}", original.id, n + 1)
        },
        policy: original.policy.clone(),
        release: release.release.clone(),
        version: release.version.clone(),
        commit: commit.map(str::to_string),
        phase,
        paused: false,
        message: Some(message),
        waiting: None,
        created_at: now_ms,
        updated_at: now_ms,
        revision: 0,
        rollback_of: Some(original.id.clone()),
        requests: Requests::default(),
    };
    if groups.is_empty() {
        let nothing = ReleaseRef { release: original.release.clone(), version: original.version.clone() };
        let message =
            format!("nothing to roll back: no device of {} took its release{left_out}", original.id);
        return vec![(record(0, &nothing, message, RolloutPhase::Completed), Vec::new(), Vec::new())];
    }
    let from = Arc::new(ReleaseRef { release: original.release.clone(), version: original.version.clone() });
    groups
        .into_iter()
        .enumerate()
        .map(|(n, (previous, group))| {
            // The original's waves that have devices to return, renumbered from 0.
            let mut by_wave: BTreeMap<u32, Vec<&Member>> = BTreeMap::new();
            for m in group.iter().copied() {
                by_wave.entry(m.wave).or_default().push(m);
            }
            let mut waves = Vec::new();
            let mut new_members = Vec::new();
            for (index, (wave, devices)) in by_wave.into_iter().enumerate() {
                let of = original_waves.iter().find(|w| w.index == wave);
                waves.push(WaveRecord {
                    index: index as u32,
                    name: of.map_or_else(|| format!("wave-{}", wave + 1), |w| w.name.clone()),
                    state: if index == 0 { WaveState::Published } else { WaveState::Pending },
                    size: devices.len() as u64,
                    published_at: (index == 0).then_some(now_ms),
                    healthy_at: None,
                    approved_at: None,
                    finished_at: None,
                    bake_ms: of.and_then(|w| w.bake_ms),
                });
                new_members.extend(devices.into_iter().map(|m| Member {
                    wave: index as u32,
                    device: m.device.clone(),
                    published_at: None,
                    attempt: 0,
                    failure: None,
                    previous: Some(from.clone()),
                    accepted: false,
                }));
            }
            let message = format!(
                "returns {} devices of {} to {} {}{}",
                new_members.len(),
                original.id,
                previous.release,
                previous.version,
                if n == 0 { left_out.as_str() } else { "" }
            );
            (record(n, previous, message, RolloutPhase::Progressing), waves, new_members)
        })
        .collect()
}

/// The release the fleet declares under `name` at `version`, if it does: only then can
/// devices be sent to it (its artifacts are what the instructions name).
pub fn declared(fleet: &CompiledFleet, name: &str, version: &str) -> Option<ReleaseIx> {
    fleet.release_named(name).filter(|&ix| fleet.release(ix).version.to_string() == version)
}
