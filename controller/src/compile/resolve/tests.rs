//! Policy resolution: priorities, pins, subtrees, labels and inheritance.

use super::*;
use crate::compile::load::load;
use crate::source::FleetFiles;

const HIERARCHY: &str = "\
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: eu}
spec:
  labels: {region: eu, hw: rpi4}
  maintenanceWindows: [{schedule: \"0 2 * * *\", duration: 3h, timeZone: Europe/Berlin}]
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: berlin}
spec: {parent: eu, labels: {site: berlin}}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: paris}
spec:
  parent: eu
  labels: {site: paris, hw: cm4}
  maintenanceWindows: []
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: na}
spec: {labels: {region: na}}
---
apiVersion: waveguide.dev/v1alpha1
kind: Group
metadata: {name: chicago}
spec: {parent: na}
---
apiVersion: waveguide.dev/v1alpha1
kind: DeviceSet
metadata: {name: berlin}
spec:
  group: berlin
  devices:
  - {id: b1}
  - {id: b2, labels: {tier: canary}}
  - {id: b3, labels: {hw: x86}}
---
apiVersion: waveguide.dev/v1alpha1
kind: DeviceSet
metadata: {name: paris}
spec: {group: paris, range: {prefix: p, count: 3}}
---
apiVersion: waveguide.dev/v1alpha1
kind: Device
metadata: {name: c1}
spec: {group: chicago}
---
apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata: {name: r1}
spec: {version: 1.0.0}
---
apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata: {name: r2}
spec: {version: 2.0.0}
---
apiVersion: waveguide.dev/v1alpha1
kind: Release
metadata: {name: r3}
spec: {version: 3.0.0, compatible: {matchLabels: {hw: x86}}}
";

fn policy(name: &str, selector: &str, release: &str, priority: i32) -> String {
    format!(
        "---\napiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  selector: {selector}\n  release: {release}\n  priority: {priority}\n"
    )
}

fn compile(extra: &str) -> (CompiledFleet, Vec<Diagnostic>) {
    let text = format!("{HIERARCHY}{extra}");
    let (documents, diagnostics) = load(&FleetFiles::from_pairs([("fleet.yaml", text)]));
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let checked = crate::compile::validate::check_cached(&documents, &mut Default::default());
    resolve(&documents, &checked)
}

/// Each device's desired release name, by id.
fn desired(fleet: &CompiledFleet) -> Vec<(String, String)> {
    fleet
        .devices()
        .iter()
        .map(|d| (d.id.to_string(), d.desired().map_or("-".into(), |r| fleet.release(r).name.clone())))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn groups_are_laid_out_depth_first_with_subtree_ranges() {
    let (fleet, _) = compile("");
    let names: Vec<&str> = fleet.groups().iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["eu", "berlin", "paris", "na", "chicago"]);
    let eu = fleet.group_named("eu").unwrap();
    assert!(fleet.is_in_subtree(fleet.group_named("paris").unwrap(), eu));
    assert!(!fleet.is_in_subtree(fleet.group_named("chicago").unwrap(), eu));
    assert_eq!(fleet.group(fleet.group_named("chicago").unwrap()).depth, 1);
}

#[test]
fn inherited_labels_and_windows_are_shared_per_group() {
    let (fleet, _) = compile("");
    let g = |name| fleet.group(fleet.group_named(name).unwrap());
    // berlin inherits eu's windows: the same allocation, not a copy.
    assert!(Arc::ptr_eq(&g("berlin").maintenance_windows, &g("eu").maintenance_windows));
    assert_eq!(g("berlin").maintenance_windows.as_written()[0].time_zone.as_deref(), Some("Europe/Berlin"));
    // paris overrides with "any time".
    assert!(g("paris").maintenance_windows.is_unrestricted());
    // chicago sets no labels: it shares na's map.
    assert!(Arc::ptr_eq(&g("chicago").labels, &g("na").labels));
    // A child's label overrides the inherited one.
    assert_eq!(g("paris").labels.get("hw").map(String::as_str), Some("cm4"));
    assert_eq!(g("berlin").labels.get("hw").map(String::as_str), Some("rpi4"));
    // Devices without own labels share no label set at all.
    let b1 = fleet.device("b1").unwrap();
    assert_eq!(b1.own_labels(), None);
    assert_eq!(fleet.device_label(b1, "region"), Some("eu"));
    // A device's own label overrides its groups'.
    assert_eq!(fleet.device_label(fleet.device("b3").unwrap(), "hw"), Some("x86"));
}

#[test]
fn higher_priority_wins() {
    let (fleet, diagnostics) =
        compile(&(policy("all", "{}", "r1", 0) + &policy("eu", "{groups: [eu]}", "r2", 5)));
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    assert_eq!(
        desired(&fleet),
        pairs(&[
            ("b1", "r2"),
            ("b2", "r2"),
            ("b3", "r2"),
            ("c1", "r1"),
            ("p0", "r2"),
            ("p1", "r2"),
            ("p2", "r2")
        ])
    );
    let eu = fleet.policy_named("eu").unwrap();
    assert_eq!(fleet.device("p1").unwrap().policy(), Some(eu));
}

#[test]
fn pins_override_every_policy() {
    let pinned = "---\napiVersion: waveguide.dev/v1alpha1\nkind: Device\nmetadata: {name: pinned}\nspec: {group: berlin, pin: r1}\n";
    let (fleet, diagnostics) = compile(&(policy("eu", "{groups: [eu]}", "r2", 100) + pinned));
    assert!(!diagnostics.iter().any(Diagnostic::is_error), "{diagnostics:?}");
    let d = fleet.device("pinned").unwrap();
    assert_eq!(d.desired(), fleet.release_named("r1"));
    assert_eq!(d.policy(), None);
}

#[test]
fn subtrees_and_labels_narrow_the_selection() {
    // Label selectors see inherited labels (site from the group) and own labels.
    let extra = policy("base", "{}", "r1", 0)
        + &policy("canaries", "{groups: [eu], matchLabels: {tier: canary}}", "r2", 10)
        + &policy("cm4", "{matchExpressions: [{key: hw, operator: In, values: [cm4]}]}", "r2", 10);
    let (fleet, diagnostics) = compile(&extra);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    assert_eq!(
        desired(&fleet),
        pairs(&[
            ("b1", "r1"),
            ("b2", "r2"),
            ("b3", "r1"),
            ("c1", "r1"),
            ("p0", "r2"),
            ("p1", "r2"),
            ("p2", "r2")
        ])
    );
}

#[test]
fn equal_priority_with_the_same_release_is_not_a_conflict() {
    let extra = policy("a", "{groups: [eu]}", "r2", 1) + &policy("b", "{groups: [berlin]}", "r2", 1);
    let (fleet, diagnostics) = compile(&extra);
    assert!(!diagnostics.iter().any(Diagnostic::is_error), "{diagnostics:?}");
    // Ties go to the first policy by name.
    assert_eq!(fleet.device("b1").unwrap().policy(), fleet.policy_named("a"));
}

#[test]
fn equal_priority_conflict_names_both_policies_a_count_and_an_example() {
    let extra =
        policy("a", "{groups: [eu]}", "r1", 1) + &policy("b", "{matchLabels: {site: berlin}}", "r2", 1);
    let (_, diagnostics) = compile(&(extra + &policy("na", "{groups: [na]}", "r1", 0)));
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    let d = &diagnostics[0];
    assert_eq!(d.code, Code::PolicyConflict);
    assert_eq!(
        d.message,
        "policies \"a\" and \"b\" both have priority 1 and give 3 devices different releases (\"r1\" and \"r2\"), e.g. device \"b1\""
    );
    // Both policies' `spec.release` lines.
    let release_line = HIERARCHY.lines().count() as u32 + 7;
    assert_eq!(d.location.to_string(), format!("fleet.yaml:{release_line}:12"));
    assert_eq!(d.notes[0].location.to_string(), format!("fleet.yaml:{}:12", release_line + 8));
}

#[test]
fn incompatible_release_is_an_error_with_count_and_example() {
    let (_, diagnostics) = compile(&policy("next", "{groups: [berlin]}", "r3", 0));
    let errors: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1, "{diagnostics:?}");
    assert_eq!(errors[0].code, Code::IncompatibleRelease);
    assert_eq!(
        errors[0].message,
        "release \"r3\" is not compatible with 2 devices that policy \"next\" selects, e.g. device \"b1\""
    );
    // b3 (hw: x86) is compatible, so a policy narrowed to it is fine.
    let (_, diagnostics) = compile(&policy("next", "{groups: [berlin], matchLabels: {hw: x86}}", "r3", 0));
    assert!(!diagnostics.iter().any(Diagnostic::is_error), "{diagnostics:?}");
}

#[test]
fn pins_to_incompatible_releases_are_errors() {
    let pinned = "---\napiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: lab}\nspec:\n  group: chicago\n  devices:\n  - {id: l1, pin: r3}\n  - {id: l2, pin: r3, labels: {hw: x86}}\n";
    let (_, diagnostics) = compile(&(policy("all", "{}", "r1", 0) + pinned));
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0].code, Code::IncompatibleRelease);
    assert!(
        diagnostics[0].message.contains("1 device is pinned to release \"r3\""),
        "{}",
        diagnostics[0].message
    );
    let pin_line = HIERARCHY.lines().count() as u32 + 8 + 8;
    assert_eq!(diagnostics[0].location.line, pin_line);
}

#[test]
fn warnings_for_empty_policies_and_uncovered_devices_come_once() {
    let extra =
        policy("eu", "{groups: [eu]}", "r1", 0) + &policy("nobody", "{matchLabels: {tier: gold}}", "r2", 0);
    let (fleet, diagnostics) = compile(&extra);
    let summary: Vec<(Code, &str)> = diagnostics.iter().map(|d| (d.code, d.message.as_str())).collect();
    assert_eq!(
        summary,
        [
            (Code::PolicySelectsNothing, "policy \"nobody\" selects no device"),
            (
                Code::DeviceNotCovered,
                "1 device is covered by no policy and not pinned, so it has no desired release (e.g. \"c1\")"
            ),
        ]
    );
    assert_eq!(fleet.device("c1").unwrap().desired(), None);
}

#[test]
fn resolution_is_deterministic() {
    let extra = policy("all", "{}", "r1", 0) + &policy("eu", "{groups: [eu]}", "r2", 5);
    let (a, _) = compile(&extra);
    let (b, _) = compile(&extra);
    assert_eq!(desired(&a), desired(&b));
    let keys = |f: &CompiledFleet| f.devices().iter().map(|d| (d.order_key, d.group)).collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b));
}

#[test]
fn devices_are_found_by_id() {
    // A range of 5,000 ids shares long prefixes and fills many probe runs.
    let (fleet, _) = compile(
        "---\napiVersion: waveguide.dev/v1alpha1\nkind: DeviceSet\nmetadata: {name: many}\nspec:\n  group: berlin\n  range: {prefix: node-, count: 5000, width: 4}\n",
    );
    assert!(fleet.devices().len() > 5000);
    for (ix, device) in fleet.devices().iter().enumerate() {
        assert_eq!(fleet.device_index(&device.id), Some(ix as DeviceIx), "{}", device.id);
    }
    for missing in ["", "node-", "node-5000", "node-00000", "NODE-0001", "node-0001 "] {
        assert_eq!(fleet.device_index(missing), None, "{missing:?}");
    }
    assert_eq!(CompiledFleet::default().device_index("node-0001"), None);
}

#[test]
fn bake_times_and_windows_come_parsed() {
    let extra = "---\napiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec:\n  selector: {}\n  release: r1\n  rollout:\n    waves: [{count: 1, bake: 90m}, {}]\n";
    let (fleet, _) = compile(extra);
    let policy = fleet.policy(fleet.policy_named("p").unwrap());
    let bakes: Vec<Option<(&str, jiff::SignedDuration)>> =
        policy.bakes.iter().map(|b| b.as_ref().map(|b| (b.as_str(), b.value()))).collect();
    assert_eq!(bakes, [Some(("90m", jiff::SignedDuration::from_mins(90))), None]);
    // eu's nightly window, 02:00 Berlin time for 3 hours: parsed, and open at 02:30.
    let eu = fleet.group(fleet.group_named("eu").unwrap());
    assert!(eu.maintenance_windows.is_open("2026-01-10T01:30:00Z".parse().unwrap()));
    assert!(!eu.maintenance_windows.is_open("2026-01-10T12:00:00Z".parse().unwrap()));
}
