//! Planning over a small fleet: classification, rollout order and waves.

use super::*;
use crate::compile::compile;
use crate::inventory::{parse_snapshot, SnapshotFormat};
use crate::source::FleetFiles;

const FLEET: &str = "\
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
metadata: {name: amsterdam}
spec: {parent: eu}
---
apiVersion: waveguide.dev/v1alpha1
kind: DeviceSet
metadata: {name: berlin}
spec: {group: berlin, range: {prefix: b, count: 20, width: 2}}
---
apiVersion: waveguide.dev/v1alpha1
kind: DeviceSet
metadata: {name: amsterdam}
spec:
  group: amsterdam
  range: {prefix: a, count: 20, width: 2}
---
apiVersion: waveguide.dev/v1alpha1
kind: DeviceSet
metadata: {name: canaries}
spec:
  group: berlin
  labels: {tier: canary}
  devices: [{id: c1}, {id: c2}]
---
apiVersion: waveguide.dev/v1alpha1
kind: Device
metadata: {name: lab}
spec: {group: berlin, pin: old}
---
apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata: {name: old}
spec: {version: 1.0.0}
---
apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata: {name: new}
spec: {version: 2.0.0}
";

fn policy(order: &str, waves: &str, allow_downgrade: bool) -> String {
    format!(
        "---\napiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata: {{name: p}}\nspec:\n  selector: {{groups: [eu]}}\n  release: new\n  allowDowngrade: {allow_downgrade}\n  rollout:\n    order: {order}\n    approval: manual\n    waves: {waves}\n"
    )
}

fn fleet(order: &str, waves: &str, allow_downgrade: bool) -> CompiledFleet {
    let c = compile(&FleetFiles::from_pairs([(
        "fleet.yaml",
        format!("{FLEET}{}", policy(order, waves, allow_downgrade)),
    )]));
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    c.fleet.unwrap()
}

/// b00 is up to date, b01 failed, b02 runs a newer version, b03 is downloading, lab is
/// on its pin; the others never reported. `ghost` is not in the fleet.
const INVENTORY: &str = "\
devices:
  b00: {release: new, version: 2.0.0, state: installed, healthy: true}
  b01: {release: old, version: 1.0.0, state: failed}
  b02: {release: next, version: 3.0.0, state: installed, healthy: true}
  b03: {release: old, version: 1.0.0, state: downloading, healthy: true}
  lab: {release: old, version: 1.0.0, state: installed, healthy: true}
  ghost: {release: old, version: 1.0.0, state: installed}
";

fn inventory() -> Inventory {
    parse_snapshot("inventory.yaml", INVENTORY.as_bytes(), SnapshotFormat::Yaml).unwrap()
}

fn ids(fleet: &CompiledFleet, devices: &[DeviceIx]) -> Vec<String> {
    devices.iter().map(|&d| fleet.devices()[d as usize].id.to_string()).collect()
}

#[test]
fn classifies_devices_and_schedules_never_seen_ones() {
    let fleet = fleet("spread", "[]", false);
    let plan = plan(&fleet, &inventory());
    let p = &plan.policies[0];
    assert_eq!(p.devices, 42);
    assert_eq!(p.up_to_date, 1);
    assert_eq!(ids(&fleet, &p.refused_downgrades), ["b02"]);
    assert_eq!(p.to_update(), 40, "everything else, never-seen devices included");
    assert_eq!(p.never_seen, 38);
    assert_eq!(p.failed, 1);
    assert_eq!(plan.pinned, PinnedPlan { devices: 1, up_to_date: 1, never_seen: 0, to_update: vec![] });
    assert_eq!(plan.unknown_devices, vec![Box::from("ghost")]);
    assert_eq!(p.waves.len(), 1);
    assert_eq!(p.waves[0].name, "all");
}

#[test]
fn allow_downgrade_schedules_higher_versions() {
    let fleet = fleet("spread", "[]", true);
    let p = &plan(&fleet, &inventory()).policies[0];
    assert!(p.refused_downgrades.is_empty());
    assert_eq!(p.to_update(), 41);
}

#[test]
fn spread_orders_by_the_stable_hash() {
    let fleet = fleet("spread", "[]", false);
    let p = &plan(&fleet, &inventory()).policies[0];
    let keys: Vec<u64> = p.waves[0].devices.iter().map(|&d| fleet.devices()[d as usize].order_key).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(keys[0], crate::protocol::target::device_order_key(&ids(&fleet, &p.waves[0].devices[..1])[0]));
}

#[test]
fn hierarchy_goes_group_by_group_depth_first() {
    let fleet = fleet("hierarchy", "[]", false);
    let p = &plan(&fleet, &inventory()).policies[0];
    let order = ids(&fleet, &p.waves[0].devices);
    // amsterdam sorts before berlin among eu's children: all of it comes first.
    assert!(order[..20].iter().all(|id| id.starts_with('a')), "{order:?}");
    assert!(order[20..].iter().all(|id| id.starts_with('b') || id.starts_with('c')), "{order:?}");
    // Inside a group, by hash.
    let keys: Vec<u64> =
        p.waves[0].devices[..20].iter().map(|&d| fleet.devices()[d as usize].order_key).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn canaries_go_first_then_sizes_then_the_rest() {
    let waves = "[{name: canary, count: 5, selector: {matchLabels: {tier: canary}}, bake: 1h}, {name: pilot, percent: 10}, {name: rest}]";
    let fleet = fleet("hierarchy", waves, false);
    let p = &plan(&fleet, &inventory()).policies[0];
    let names: Vec<&str> = p.waves.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["canary", "pilot", "rest"]);
    let mut canaries = ids(&fleet, &p.waves[0].devices);
    canaries.sort();
    assert_eq!(canaries, ["c1", "c2"]);
    assert_eq!(p.waves[1].devices.len(), 4, "10% of 40, rounded up");
    assert!(ids(&fleet, &p.waves[1].devices).iter().all(|id| id.starts_with('a')));
    assert_eq!(p.waves[2].devices.len(), 34);
    assert_eq!(p.waves[0].bake.as_ref().map(|b| b.as_str()), Some("1h"));
    let approvals: Vec<bool> = p.waves.iter().map(|w| w.needs_approval).collect();
    assert_eq!(approvals, [false, true, true]);
}

#[test]
fn planning_is_deterministic() {
    let waves = "[{count: 3}, {percent: 50}]";
    let a = plan(&fleet("spread", waves, false), &inventory());
    let b = plan(&fleet("spread", waves, false), &inventory());
    assert_eq!(a, b);
    // The last wave takes what the sizes left over.
    assert_eq!(a.policies[0].waves.iter().map(|w| w.devices.len()).collect::<Vec<_>>(), [3, 37]);
}
