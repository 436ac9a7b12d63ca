//! What a change to the fleet repository does: documents added, changed and removed,
//! each policy's release change, and the devices whose desired release changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::compile::load::AsObject;
use crate::compile::{CompiledDevice, CompiledFleet, Documents, Located};
use crate::inventory::{DeviceReport, Inventory};
use crate::model::Kind;
use crate::protocol::UpdateState;

/// How a document changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// In head only.
    Added,
    /// In both, with a different content.
    Changed,
    /// In base only.
    Removed,
}

impl ChangeKind {
    /// `added`, `changed` or `removed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Changed => "changed",
            ChangeKind::Removed => "removed",
        }
    }
}

/// One document that differs between base and head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentChange {
    /// Added, changed or removed.
    pub change: ChangeKind,
    /// The document's kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// The file it is in (in head; in base when removed).
    pub file: Arc<str>,
}

/// A release and its version, as a policy's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRef {
    /// The release's name.
    pub name: String,
    /// Its version.
    pub version: semver::Version,
}

/// A policy whose release differs between base and head (or that is new or gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// The policy's name.
    pub policy: String,
    /// Its release in base; `None` when the policy is new.
    pub from: Option<ReleaseRef>,
    /// Its release in head; `None` when the policy is removed.
    pub to: Option<ReleaseRef>,
}

/// Devices of one group whose desired release changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupImpact {
    /// The group (in head; in base for groups that are gone).
    pub group: String,
    /// Devices of the group (not of its subgroups) whose desired release changes, are
    /// added with a desired release, or are removed.
    pub devices: usize,
}

/// The effect of a change to the fleet repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetDiff {
    /// Documents added, changed and removed, by kind, name and change.
    pub documents: Vec<DocumentChange>,
    /// Policies whose release changes, by name.
    pub policies: Vec<PolicyChange>,
    /// Affected devices per group, in head's hierarchy order (groups gone from head last).
    pub groups: Vec<GroupImpact>,
    /// Devices whose desired release changes (including added and removed devices).
    pub devices_changed: usize,
    /// Devices declared in head only.
    pub devices_added: usize,
    /// Devices declared in base only.
    pub devices_removed: usize,
}

/// Compares base and head. Both fleets must have compiled.
pub fn diff(
    base_documents: &Documents,
    base: &CompiledFleet,
    head_documents: &Documents,
    head: &CompiledFleet,
) -> FleetDiff {
    let documents = document_changes(base_documents, head_documents);

    let release_ref = |fleet: &CompiledFleet, ix| {
        let r = fleet.release(ix);
        ReleaseRef { name: r.name.clone(), version: r.version.clone() }
    };
    let mut policies = Vec::new();
    let mut names: Vec<&str> =
        base.policies().iter().chain(head.policies()).map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let from = base.policy_named(name).map(|p| release_ref(base, base.policy(p).release));
        let to = head.policy_named(name).map(|p| release_ref(head, head.policy(p).release));
        if from != to {
            policies.push(PolicyChange { policy: name.to_owned(), from, to });
        }
    }

    // Devices are sorted by id in both fleets: one merge pass.
    fn target<'a>(fleet: &'a CompiledFleet, d: &CompiledDevice) -> Option<(&'a str, &'a semver::Version)> {
        d.desired().map(|r| {
            let r = fleet.release(r);
            (r.name.as_str(), &r.version)
        })
    }
    let mut head_counts = vec![0usize; head.groups().len()];
    let head_groups: HashMap<&str, usize> =
        head.groups().iter().enumerate().map(|(i, g)| (g.name.as_str(), i)).collect();
    let mut base_only_counts: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut changed, mut added, mut removed) = (0, 0, 0);
    let (bd, hd) = (base.devices(), head.devices());
    let (mut i, mut j) = (0, 0);
    while i < bd.len() || j < hd.len() {
        let order = match (bd.get(i), hd.get(j)) {
            (Some(b), Some(h)) => b.id.cmp(&h.id),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let b = &bd[i];
                removed += 1;
                changed += 1;
                let group = &base.group(b.group).name;
                match head_groups.get(group.as_str()) {
                    Some(&g) => head_counts[g] += 1,
                    None => *base_only_counts.entry(group).or_default() += 1,
                }
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let h = &hd[j];
                added += 1;
                if h.desired().is_some() {
                    changed += 1;
                    head_counts[h.group as usize] += 1;
                }
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (b, h) = (&bd[i], &hd[j]);
                if target(base, b) != target(head, h) {
                    changed += 1;
                    head_counts[h.group as usize] += 1;
                }
                i += 1;
                j += 1;
            }
        }
    }
    let mut groups: Vec<GroupImpact> = head
        .groups()
        .iter()
        .zip(&head_counts)
        .filter(|(_, &n)| n > 0)
        .map(|(g, &n)| GroupImpact { group: g.name.clone(), devices: n })
        .collect();
    groups.extend(base_only_counts.into_iter().map(|(g, n)| GroupImpact { group: g.to_owned(), devices: n }));

    FleetDiff {
        documents,
        policies,
        groups,
        devices_changed: changed,
        devices_added: added,
        devices_removed: removed,
    }
}

/// Documents added, changed and removed, sorted by kind, name and change.
pub fn document_changes(base: &Documents, head: &Documents) -> Vec<DocumentChange> {
    let mut changes = Vec::new();
    compare(Kind::Group, &base.groups, &head.groups, &mut changes);
    compare(Kind::Device, &base.devices, &head.devices, &mut changes);
    compare(Kind::DeviceSet, &base.device_sets, &head.device_sets, &mut changes);
    compare(Kind::Release, &base.releases, &head.releases, &mut changes);
    compare(Kind::Policy, &base.policies, &head.policies, &mut changes);
    changes
}

fn compare<T: AsObject + PartialEq>(
    kind: Kind,
    base: &[Located<T>],
    head: &[Located<T>],
    out: &mut Vec<DocumentChange>,
) {
    let index = |docs: &'_ [Located<T>]| -> BTreeMap<String, usize> {
        docs.iter().enumerate().map(|(i, d)| (d.name().to_owned(), i)).rev().collect()
    };
    let (b, h) = (index(base), index(head));
    let names: std::collections::BTreeSet<&String> = b.keys().chain(h.keys()).collect();
    for name in names {
        let change = match (b.get(name), h.get(name)) {
            (None, Some(&j)) => Some((ChangeKind::Added, &head[j])),
            (Some(&i), None) => Some((ChangeKind::Removed, &base[i])),
            (Some(&i), Some(&j)) if base[i].value != head[j].value => Some((ChangeKind::Changed, &head[j])),
            _ => None,
        };
        if let Some((change, doc)) = change {
            out.push(DocumentChange { change, kind, name: name.clone(), file: doc.location.file.clone() });
        }
    }
}

/// The discovered state to assume when there is no inventory: every device of `base`
/// runs its desired release there, settled and healthy. Planning head against it shows
/// exactly the rollout the change starts.
pub fn assumed_inventory(base: &CompiledFleet) -> Inventory {
    let reports = base
        .devices()
        .iter()
        .filter_map(|d| {
            let release = base.release(d.desired()?);
            let report = DeviceReport {
                release: Some(release.name.clone()),
                version: release.version.clone(),
                state: UpdateState::Installed,
                healthy: true,
                failure: None,
                last_seen: None,
            };
            Some((d.id.clone().into(), report))
        })
        .collect();
    Inventory::new(None, reports).expect("compiled device ids are unique")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, Compilation};
    use crate::source::FleetFiles;

    const BASE: &str = "\
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
kind: DeviceSet
metadata: {name: berlin}
spec: {group: berlin, devices: [{id: b1}, {id: b2}, {id: b3, pin: r1}]}
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
kind: Policy
metadata: {name: all}
spec: {selector: {}, release: r1}
";

    fn compiled(text: &str) -> Compilation {
        let c = compile(&FleetFiles::from_pairs([("fleet.yaml", text)]));
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
        c
    }

    #[test]
    fn reports_documents_policies_and_affected_groups() {
        let head_text = BASE
            .replace("spec: {selector: {}, release: r1}", "spec: {selector: {}, release: r2}")
            .replace("{id: b1}, {id: b2}", "{id: b2}, {id: b4}")
            .replace("metadata: {name: eu}\nspec: {}", "metadata: {name: eu}\nspec: {labels: {region: eu}}");
        let (base, head) = (compiled(BASE), compiled(&head_text));
        let d = diff(
            &base.documents,
            base.fleet.as_ref().unwrap(),
            &head.documents,
            head.fleet.as_ref().unwrap(),
        );
        let docs: Vec<(ChangeKind, Kind, &str)> =
            d.documents.iter().map(|c| (c.change, c.kind, c.name.as_str())).collect();
        assert_eq!(
            docs,
            [
                (ChangeKind::Changed, Kind::Group, "eu"),
                (ChangeKind::Changed, Kind::DeviceSet, "berlin"),
                (ChangeKind::Changed, Kind::Policy, "all"),
            ]
        );
        let r = |name: &str, v: u64| {
            Some(ReleaseRef { name: name.into(), version: semver::Version::new(v, 0, 0) })
        };
        assert_eq!(d.policies, [PolicyChange { policy: "all".into(), from: r("r1", 1), to: r("r2", 2) }]);
        // b1 removed, b2 moves to r2, b4 added; b3 stays on its pin.
        assert_eq!((d.devices_changed, d.devices_added, d.devices_removed), (3, 1, 1));
        assert_eq!(d.groups, [GroupImpact { group: "berlin".into(), devices: 3 }]);
    }

    #[test]
    fn no_change_means_an_empty_diff() {
        let (base, head) = (compiled(BASE), compiled(BASE));
        let d = diff(
            &base.documents,
            base.fleet.as_ref().unwrap(),
            &head.documents,
            head.fleet.as_ref().unwrap(),
        );
        assert_eq!(d, FleetDiff::default());
    }

    #[test]
    fn assumed_inventory_reports_the_base_desired_state() {
        let base = compiled(BASE);
        let inventory = assumed_inventory(base.fleet.as_ref().unwrap());
        assert_eq!(inventory.len(), 3);
        let b3 = inventory.get("b3").unwrap();
        assert_eq!((b3.release.as_deref(), b3.state), (Some("r1"), UpdateState::Installed));
    }
}
