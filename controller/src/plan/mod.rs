//! The planner: desired state (the compiled fleet) against discovered state (the
//! inventory) → what each policy would roll out, and in which waves.
//!
//! A pure function over data: [`plan`] reads a [`CompiledFleet`] and an [`Inventory`]
//! and returns a [`Plan`] holding device indices, cheap for a million devices. Reports
//! for people and programs are built from it in [`report`].
//!
//! How a device with a desired release is classified:
//! - **up to date**: it reports that release, at that version, and is settled (`idle` or
//!   `installed`);
//! - **never seen**: it has never reported. It is still scheduled, in its place in the
//!   order: the instruction is published and a device picks it up on first contact, so a
//!   device that comes online mid-rollout never waits for a new rollout;
//! - **refused downgrade**: it runs a higher version than the release and the policy does
//!   not set `allowDowngrade`; it is left alone. A pin is an explicit per-device choice,
//!   so pinned devices may move down;
//! - **to update**: anything else, including devices whose last update `failed` and
//!   devices still downloading or installing another release.

pub mod diff;
pub mod report;
pub mod review;

mod waves;

pub use waves::{cut_waves, percent_of, wave_capacity};

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::compile::{CompiledDevice, CompiledFleet, DeviceIx, GroupIx, PolicyIx, ReleaseIx};
use crate::inventory::{DeviceReport, Inventory};
use crate::model::{Approval, Order};
use crate::protocol::duration::WrittenDuration;
use crate::protocol::UpdateState;

/// Where a device stands against its desired release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceStatus {
    /// Runs its desired release and is settled.
    UpToDate,
    /// Has never reported; scheduled anyway.
    NeverSeen,
    /// Must move to its desired release.
    Update,
    /// Runs a higher version and may not move down.
    RefusedDowngrade,
}

/// Judges one device against its desired release. `allow_downgrade` comes from the
/// governing policy (always true for a pin).
pub fn device_status(
    fleet: &CompiledFleet,
    desired: ReleaseIx,
    report: Option<&DeviceReport>,
    allow_downgrade: bool,
) -> DeviceStatus {
    let Some(report) = report else { return DeviceStatus::NeverSeen };
    let release = fleet.release(desired);
    let same_release = report.release.as_deref() == Some(release.name.as_str());
    match report.version.cmp(&release.version) {
        Ordering::Equal if same_release && report.state.is_settled() => DeviceStatus::UpToDate,
        Ordering::Greater if !allow_downgrade => DeviceStatus::RefusedDowngrade,
        _ => DeviceStatus::Update,
    }
}

/// One wave of a rollout as planned.
#[derive(Debug, Clone, PartialEq)]
pub struct WavePlan {
    /// The wave's name (`wave-<n>` when unnamed).
    pub name: String,
    /// Its devices, in rollout order.
    pub devices: Vec<DeviceIx>,
    /// How long it must stay healthy before the next wave.
    pub bake: Option<WrittenDuration>,
    /// Whether it waits for an operator's approval before it starts (manual approval:
    /// every wave after the first).
    pub needs_approval: bool,
}

/// What one policy would do.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyPlan {
    /// The policy.
    pub policy: PolicyIx,
    /// Devices it governs (pinned devices are governed by their pin, not a policy).
    pub devices: usize,
    /// Governed devices already on the release.
    pub up_to_date: usize,
    /// Governed devices that never reported (all of them are scheduled).
    pub never_seen: usize,
    /// Scheduled devices whose last update failed.
    pub failed: usize,
    /// Governed devices left on a higher version.
    pub refused_downgrades: Vec<DeviceIx>,
    /// The devices to update (never-seen included), cut into waves.
    pub waves: Vec<WavePlan>,
}

impl PolicyPlan {
    /// Devices the rollout would publish instructions for (never-seen included).
    pub fn to_update(&self) -> usize {
        self.waves.iter().map(|w| w.devices.len()).sum()
    }
}

/// Pinned devices, which no rollout covers: their pin is published as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinnedPlan {
    /// Pinned devices.
    pub devices: usize,
    /// Already on their pinned release.
    pub up_to_date: usize,
    /// Never reported.
    pub never_seen: usize,
    /// To move to their pinned release (never-seen included), by id.
    pub to_update: Vec<DeviceIx>,
}

/// What the fleet would do, given what its devices report.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One entry per policy, in policy name order.
    pub policies: Vec<PolicyPlan>,
    /// Pinned devices.
    pub pinned: PinnedPlan,
    /// Devices with no desired release (no policy, no pin).
    pub uncovered: usize,
    /// Devices in the inventory that the fleet does not declare, by id (a decommissioned
    /// device, or one declared on another branch). They are ignored.
    pub unknown_devices: Vec<Box<str>>,
}

/// Plans every policy of `fleet` against `inventory`.
pub fn plan(fleet: &CompiledFleet, inventory: &Inventory) -> Plan {
    let devices = fleet.devices();
    let policies = fleet.policies();

    // Join devices (sorted by id) with reports (sorted by id) in one pass.
    let reports = inventory.reports();
    let mut device_report: Vec<Option<&DeviceReport>> = Vec::with_capacity(devices.len());
    let mut unknown_devices = Vec::new();
    let mut r = 0;
    for device in devices {
        while r < reports.len() && *reports[r].0 < *device.id {
            unknown_devices.push(reports[r].0.clone());
            r += 1;
        }
        if r < reports.len() && reports[r].0 == device.id {
            device_report.push(Some(&reports[r].1));
            r += 1;
        } else {
            device_report.push(None);
        }
    }
    unknown_devices.extend(reports[r..].iter().map(|(id, _)| id.clone()));

    let mut plans: Vec<PolicyPlan> = (0..policies.len() as PolicyIx)
        .map(|policy| PolicyPlan {
            policy,
            devices: 0,
            up_to_date: 0,
            never_seen: 0,
            failed: 0,
            refused_downgrades: Vec::new(),
            waves: Vec::new(),
        })
        .collect();
    let mut candidates: Vec<Vec<DeviceIx>> = vec![Vec::new(); policies.len()];
    let mut pinned = PinnedPlan::default();
    let mut uncovered = 0;

    for (ix, device) in devices.iter().enumerate() {
        let report = device_report[ix];
        let Some(desired) = device.desired() else {
            uncovered += 1;
            continue;
        };
        if device.pin().is_some() {
            pinned.devices += 1;
            match device_status(fleet, desired, report, true) {
                DeviceStatus::UpToDate => pinned.up_to_date += 1,
                DeviceStatus::NeverSeen => {
                    pinned.never_seen += 1;
                    pinned.to_update.push(ix as DeviceIx);
                }
                _ => pinned.to_update.push(ix as DeviceIx),
            }
            continue;
        }
        let Some(policy) = device.policy() else { continue };
        let p = &mut plans[policy as usize];
        p.devices += 1;
        match device_status(fleet, desired, report, policies[policy as usize].allow_downgrade) {
            DeviceStatus::UpToDate => p.up_to_date += 1,
            DeviceStatus::RefusedDowngrade => p.refused_downgrades.push(ix as DeviceIx),
            status => {
                p.never_seen += usize::from(status == DeviceStatus::NeverSeen);
                p.failed += usize::from(report.is_some_and(|r| r.state == UpdateState::Failed));
                candidates[policy as usize].push(ix as DeviceIx);
            }
        }
    }

    for (p, mut ordered) in plans.iter_mut().zip(candidates) {
        let policy = &policies[p.policy as usize];
        sort_for_rollout(fleet, policy.rollout.order, &mut ordered);
        let cut = cut_waves(&policy.rollout.waves, &ordered, |selector, d| {
            fleet.device_matches(selector, &devices[d as usize])
        });
        let manual = policy.rollout.approval == Approval::Manual;
        p.waves = cut
            .into_iter()
            .enumerate()
            .map(|(i, devices)| {
                let spec = policy.rollout.waves.get(i);
                WavePlan {
                    name: spec.map_or_else(|| "all".to_owned(), |w| w.display_name(i)),
                    devices,
                    bake: policy.bakes.get(i).cloned().flatten(),
                    needs_approval: manual && i > 0,
                }
            })
            .collect();
    }

    Plan { policies: plans, pinned, uncovered, unknown_devices }
}

/// Sorts devices into a rollout order: `spread` by the stable hash of the device id;
/// `hierarchy` group by group in the fleet's depth-first group order, and by the hash
/// inside a group. The id breaks the (astronomically unlikely) hash ties, so the order is
/// total and the same on every run.
pub fn sort_for_rollout(fleet: &CompiledFleet, order: Order, devices: &mut [DeviceIx]) {
    let all = fleet.devices();
    // Sorting the keys beside the indices keeps the comparisons in one array; comparing
    // through the devices would read a random place in memory at every step.
    let mut keyed: Vec<(GroupIx, u64, DeviceIx)> = devices
        .par_iter()
        .map(|&d| {
            let device: &CompiledDevice = &all[d as usize];
            let group = match order {
                Order::Hierarchy => device.group,
                Order::Spread => 0,
            };
            (group, device.order_key, d)
        })
        .collect();
    keyed.par_sort_unstable_by(|a, b| {
        (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| all[a.2 as usize].id.cmp(&all[b.2 as usize].id))
    });
    for (slot, (_, _, d)) in devices.iter_mut().zip(keyed) {
        *slot = d;
    }
}

#[cfg(test)]
mod tests;
