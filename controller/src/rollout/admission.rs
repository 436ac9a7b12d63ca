//! Admission: which devices of a wave get their instructions now.
//!
//! A wave is published in sub-batches. A device is admitted when its group's maintenance
//! window is open, and admitting it keeps every cap: the policy's `maxConcurrent`, and the
//! `maxConcurrent` of its group and of every ancestor group (a group's cap covers its whole
//! subtree, across all rollouts). Devices are taken in rollout order, so a device held back
//! never lets a later one jump the queue within its group, and the order stays
//! deterministic.

use crate::compile::{CompiledFleet, DeviceIx, GroupIx};

/// What is updating right now, fleet-wide: devices whose instructions are published and
/// who have not yet reported a result (nor gone stale).
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    /// In-flight devices per group subtree, indexed by [`GroupIx`].
    per_subtree: Vec<u32>,
}

impl InFlight {
    /// Counts in-flight devices, each in its group and all the group's ancestors.
    pub fn new(fleet: &CompiledFleet, devices: impl IntoIterator<Item = DeviceIx>) -> InFlight {
        let mut in_flight = InFlight { per_subtree: vec![0; fleet.groups().len()] };
        for device in devices {
            in_flight.add(fleet, fleet.devices()[device as usize].group);
        }
        in_flight
    }

    /// In-flight devices in the subtree of `group`.
    pub fn in_subtree(&self, group: GroupIx) -> u32 {
        self.per_subtree[group as usize]
    }

    fn add(&mut self, fleet: &CompiledFleet, group: GroupIx) {
        let mut g = Some(group);
        while let Some(ix) = g {
            self.per_subtree[ix as usize] += 1;
            g = fleet.group(ix).parent;
        }
    }

    /// Whether one more device of `group` keeps every group cap on its path to the root.
    fn fits(&self, fleet: &CompiledFleet, group: GroupIx) -> bool {
        let mut g = Some(group);
        while let Some(ix) = g {
            let compiled = fleet.group(ix);
            if compiled.max_concurrent.is_some_and(|cap| self.per_subtree[ix as usize] >= cap) {
                return false;
            }
            g = compiled.parent;
        }
        true
    }
}

/// Devices of a wave that wait for admission, and why the rest were held back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Devices to publish now, in rollout order.
    pub admitted: Vec<DeviceIx>,
    /// Held back because their maintenance window is closed.
    pub outside_window: usize,
    /// Held back by the policy's or a group's `maxConcurrent`.
    pub capped: usize,
}

/// Admits devices from `waiting` (in rollout order). `policy_in_flight` counts the
/// policy's own in-flight devices; `window_open` says whether a group may install now.
/// `in_flight` is updated with the admitted devices, so several rollouts can be admitted
/// one after the other against the same fleet-wide counts.
pub fn admit(
    fleet: &CompiledFleet,
    waiting: &[DeviceIx],
    policy_cap: Option<u32>,
    policy_in_flight: u32,
    in_flight: &mut InFlight,
    window_open: impl Fn(GroupIx) -> bool,
) -> Admission {
    let mut admission = Admission::default();
    let mut policy_count = policy_in_flight;
    for &device in waiting {
        let group = fleet.devices()[device as usize].group;
        if !window_open(group) {
            admission.outside_window += 1;
            continue;
        }
        if policy_cap.is_some_and(|cap| policy_count >= cap) || !in_flight.fits(fleet, group) {
            admission.capped += 1;
            continue;
        }
        in_flight.add(fleet, group);
        policy_count += 1;
        admission.admitted.push(device);
    }
    admission
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::source::FleetFiles;

    /// eu (cap 3) ─┬─ berlin (cap 2): b0..b4
    ///             └─ paris:          p0..p4
    /// us:                            u0..u4
    fn fleet() -> CompiledFleet {
        let yaml = r#"
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: eu}
spec: {maxConcurrent: 3}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: berlin}
spec: {parent: eu, maxConcurrent: 2}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: paris}
spec: {parent: eu}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: us}
spec: {}
---
apiVersion: waveguide.dev/v1alpha1
kind: DeviceSet
metadata: {name: berlin}
spec: {group: berlin, range: {prefix: b, count: 5}}
---
apiVersion: waveguide.dev/v1alpha1
kind: DeviceSet
metadata: {name: paris}
spec: {group: paris, range: {prefix: p, count: 5}}
---
apiVersion: waveguide.dev/v1alpha1
kind: DeviceSet
metadata: {name: us}
spec: {group: us, range: {prefix: u, count: 5}}
---
apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata: {name: v1}
spec: {version: 1.0.0}
---
apiVersion: waveguide.dev/v1alpha1
kind: Policy
metadata: {name: all}
spec: {selector: {}, release: v1}
"#;
        let files = FleetFiles::from_pairs([("fleet.yaml", yaml.as_bytes().to_vec())]);
        let compilation = compile(&files);
        compilation.fleet.unwrap_or_else(|| panic!("{:#?}", compilation.diagnostics))
    }

    fn ids(fleet: &CompiledFleet, names: &[&str]) -> Vec<DeviceIx> {
        names.iter().map(|n| fleet.devices().iter().position(|d| &*d.id == *n).unwrap() as DeviceIx).collect()
    }

    fn names(fleet: &CompiledFleet, devices: &[DeviceIx]) -> Vec<String> {
        devices.iter().map(|&d| fleet.devices()[d as usize].id.to_string()).collect()
    }

    #[test]
    fn group_caps_cover_their_subtree() {
        let fleet = fleet();
        let waiting = ids(&fleet, &["b0", "b1", "b2", "p0", "p1", "u0", "u1"]);
        let mut in_flight = InFlight::new(&fleet, []);
        let a = admit(&fleet, &waiting, None, 0, &mut in_flight, |_| true);
        // berlin admits 2 (its cap); eu admits one more from paris (eu's cap is 3); us has none.
        assert_eq!(names(&fleet, &a.admitted), ["b0", "b1", "p0", "u0", "u1"]);
        assert_eq!(a.capped, 2);
        let eu = fleet.group_named("eu").unwrap();
        assert_eq!(in_flight.in_subtree(eu), 3);
    }

    #[test]
    fn devices_already_in_flight_count_against_caps() {
        let fleet = fleet();
        let mut in_flight = InFlight::new(&fleet, ids(&fleet, &["b3", "b4"]));
        let a = admit(&fleet, &ids(&fleet, &["b0", "p0", "p1"]), None, 0, &mut in_flight, |_| true);
        assert_eq!(names(&fleet, &a.admitted), ["p0"]);
        assert_eq!(a.capped, 2);
    }

    #[test]
    fn the_policy_cap_limits_the_whole_rollout() {
        let fleet = fleet();
        let mut in_flight = InFlight::new(&fleet, []);
        let waiting = ids(&fleet, &["u0", "u1", "u2", "u3"]);
        let a = admit(&fleet, &waiting, Some(3), 1, &mut in_flight, |_| true);
        assert_eq!(names(&fleet, &a.admitted), ["u0", "u1"]);
        assert_eq!(a.capped, 2);
    }

    #[test]
    fn closed_windows_hold_devices_back() {
        let fleet = fleet();
        let us = fleet.group_named("us").unwrap();
        let mut in_flight = InFlight::new(&fleet, []);
        let a = admit(&fleet, &ids(&fleet, &["u0", "p0"]), None, 0, &mut in_flight, |g| g != us);
        assert_eq!(names(&fleet, &a.admitted), ["p0"]);
        assert_eq!(a.outside_window, 1);
    }
}
