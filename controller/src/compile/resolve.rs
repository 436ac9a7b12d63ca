//! Resolving the validated documents into the compiled fleet: the group hierarchy with
//! inherited labels and maintenance windows, and each device's desired release.
//!
//! Built for a million devices:
//! - groups are laid out in depth-first order, so a group's subtree is the index range
//!   `ix..subtree_end` and "is this group under that one" is two comparisons;
//! - inherited labels and maintenance windows are resolved once per group and shared
//!   (`Arc`), never copied per device;
//! - a device is a small fixed-size record: its id, group index, the index of its own
//!   labels in an interned table (or none), pin, governing policy and desired release;
//! - policy selectors are evaluated once per distinct (group, own labels) pair, not per
//!   device: a million devices typically fall into a few thousand such pairs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use super::diagnostic::{Code, Diagnostic};
use super::load::{Documents, Located, Location};
use super::rules::RolloutRules;
use super::validate::Checked;
use crate::model::{Artifact, LabelSelector, Labels, RolloutSpec};
use crate::protocol::duration::WrittenDuration;
use crate::protocol::target::device_order_key;
use crate::protocol::{DeviceId, Windows};

/// Index of a group in [`CompiledFleet::groups`].
pub type GroupIx = u32;
/// Index of a release in [`CompiledFleet::releases`].
pub type ReleaseIx = u32;
/// Index of a policy in [`CompiledFleet::policies`].
pub type PolicyIx = u32;
/// Index of a device in [`CompiledFleet::devices`].
pub type DeviceIx = u32;

/// Marks an absent index in the compact device record.
const NONE: u32 = u32::MAX;

/// A group with everything it inherits resolved.
#[derive(Debug, Clone)]
pub struct CompiledGroup {
    /// `metadata.name`.
    pub name: String,
    /// The parent group; `None` for a root.
    pub parent: Option<GroupIx>,
    /// 0 for a root.
    pub depth: u32,
    /// The subtree of this group is `self_ix..subtree_end` (depth-first layout).
    pub subtree_end: GroupIx,
    /// Own labels over inherited ones: what every device of the group carries.
    pub labels: Arc<Labels>,
    /// The windows in force for the group, parsed: its own, else its nearest ancestor's.
    /// None means "any time".
    pub maintenance_windows: Arc<Windows>,
    /// The group's own `maxConcurrent` (it caps its whole subtree).
    pub max_concurrent: Option<u32>,
    /// Where the group is declared.
    pub location: Location,
}

/// A release, with its version parsed.
#[derive(Debug, Clone)]
pub struct CompiledRelease {
    /// `metadata.name`.
    pub name: String,
    /// The semantic version releases are ordered by.
    pub version: semver::Version,
    /// Devices that can run it; `None`: every device.
    pub compatible: Option<LabelSelector>,
    /// The files devices install.
    pub artifacts: Vec<Artifact>,
    /// Where the release is declared.
    pub location: Location,
}

/// A policy with its references resolved to indices.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// `metadata.name`.
    pub name: String,
    /// The release it rolls out.
    pub release: ReleaseIx,
    /// Higher wins.
    pub priority: i32,
    /// A paused policy publishes nothing new.
    pub paused: bool,
    /// Whether it may move devices to a lower version.
    pub allow_downgrade: bool,
    /// The group subtrees it covers; empty: the whole fleet.
    pub groups: Vec<GroupIx>,
    /// The label part of its selector.
    pub labels: LabelSelector,
    /// How it rolls out.
    pub rollout: RolloutSpec,
    /// The bake time of each of `rollout.waves`, parsed: read bake times from here, not
    /// from the text in `rollout`.
    pub bakes: Vec<Option<WrittenDuration>>,
    /// The rollout's device-health rules, parsed: read them from here, not from
    /// `rollout`.
    pub rules: RolloutRules,
    /// Where the policy is declared.
    pub location: Location,
}

/// One device, compactly: 48 bytes plus its id.
#[derive(Debug, Clone)]
pub struct CompiledDevice {
    /// The device id.
    pub id: DeviceId,
    /// [`device_order_key`] of the id, computed once: the planner's stable ordering.
    pub order_key: u64,
    /// The device's group.
    pub group: GroupIx,
    labels: u32,
    pin: u32,
    policy: u32,
    desired: u32,
    source: u32,
}

impl CompiledDevice {
    /// Index of the device's own labels in [`CompiledFleet::label_sets`], if it has any.
    pub fn own_labels(&self) -> Option<u32> {
        some(self.labels)
    }

    /// The release the device is pinned to.
    pub fn pin(&self) -> Option<ReleaseIx> {
        some(self.pin)
    }

    /// The policy that governs the device (none when pinned or uncovered).
    pub fn policy(&self) -> Option<PolicyIx> {
        some(self.policy)
    }

    /// The release the device should run: its pin, else its policy's release.
    pub fn desired(&self) -> Option<ReleaseIx> {
        some(self.desired)
    }
}

fn some(ix: u32) -> Option<u32> {
    (ix != NONE).then_some(ix)
}

/// The resolved fleet: what the planner and the publisher work from.
#[derive(Debug, Clone, Default)]
pub struct CompiledFleet {
    groups: Vec<CompiledGroup>,
    releases: Vec<CompiledRelease>,
    policies: Vec<CompiledPolicy>,
    label_sets: Vec<Labels>,
    devices: Vec<CompiledDevice>,
    device_sources: Vec<Location>,
    id_index: IdIndex,
}

/// Device indices by id hash, in an open-addressing table: finding a device by id costs a
/// hash and a probe or two, where a binary search over a million ids follows twenty
/// pointers to twenty places in memory.
#[derive(Debug, Clone, Default)]
struct IdIndex {
    /// Per slot, the device index in the low 32 bits and the high half of its id's hash
    /// above them (so most mismatches are told without reading the id); `EMPTY` if free.
    slots: Vec<u64>,
}

impl IdIndex {
    const EMPTY: u64 = u64::MAX;

    fn hash(id: &str) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::with_seed(0x7761_7665_6775_6964).hash_one(id)
    }

    fn build(devices: &[CompiledDevice]) -> IdIndex {
        use rayon::prelude::*;
        let hashes: Vec<u64> = devices.par_iter().map(|d| IdIndex::hash(&d.id)).collect();
        // At most half full: short probe runs.
        let mut slots = vec![IdIndex::EMPTY; (devices.len() * 2).next_power_of_two()];
        let mask = slots.len() - 1;
        for (ix, &hash) in hashes.iter().enumerate() {
            let mut slot = hash as usize & mask;
            while slots[slot] != IdIndex::EMPTY {
                slot = (slot + 1) & mask;
            }
            slots[slot] = (hash & 0xffff_ffff_0000_0000) | ix as u64;
        }
        IdIndex { slots }
    }

    fn find(&self, devices: &[CompiledDevice], id: &str) -> Option<DeviceIx> {
        if self.slots.is_empty() {
            return None;
        }
        let hash = IdIndex::hash(id);
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            let entry = self.slots[slot];
            if entry == IdIndex::EMPTY {
                return None;
            }
            let ix = entry as u32;
            if entry >> 32 == hash >> 32 && &*devices[ix as usize].id == id {
                return Some(ix);
            }
            slot = (slot + 1) & mask;
        }
    }
}

impl CompiledFleet {
    /// Groups in depth-first order (roots and siblings by name): the `hierarchy` rollout
    /// order.
    pub fn groups(&self) -> &[CompiledGroup] {
        &self.groups
    }

    /// Releases, by name.
    pub fn releases(&self) -> &[CompiledRelease] {
        &self.releases
    }

    /// Policies, by name.
    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    /// Devices, by id.
    pub fn devices(&self) -> &[CompiledDevice] {
        &self.devices
    }

    /// The interned own-label sets devices refer to.
    pub fn label_sets(&self) -> &[Labels] {
        &self.label_sets
    }

    /// The group of this index.
    pub fn group(&self, ix: GroupIx) -> &CompiledGroup {
        &self.groups[ix as usize]
    }

    /// The release of this index.
    pub fn release(&self, ix: ReleaseIx) -> &CompiledRelease {
        &self.releases[ix as usize]
    }

    /// The policy of this index.
    pub fn policy(&self, ix: PolicyIx) -> &CompiledPolicy {
        &self.policies[ix as usize]
    }

    /// A device by id.
    pub fn device(&self, id: &str) -> Option<&CompiledDevice> {
        self.device_index(id).map(|i| &self.devices[i as usize])
    }

    /// A device's index in [`CompiledFleet::devices`], by id.
    pub fn device_index(&self, id: &str) -> Option<DeviceIx> {
        self.id_index.find(&self.devices, id)
    }

    /// A group by name. A linear scan (groups are in hierarchy order, not by name): for
    /// occasional lookups; build a map to look many up.
    pub fn group_named(&self, name: &str) -> Option<GroupIx> {
        self.groups.iter().position(|g| g.name == name).map(|i| i as GroupIx)
    }

    /// A release by name.
    pub fn release_named(&self, name: &str) -> Option<ReleaseIx> {
        self.releases.binary_search_by(|r| r.name.as_str().cmp(name)).ok().map(|i| i as ReleaseIx)
    }

    /// A policy by name.
    pub fn policy_named(&self, name: &str) -> Option<PolicyIx> {
        self.policies.binary_search_by(|p| p.name.as_str().cmp(name)).ok().map(|i| i as PolicyIx)
    }

    /// Where a device is declared (its Device or DeviceSet document).
    pub fn device_source(&self, device: &CompiledDevice) -> &Location {
        &self.device_sources[device.source as usize]
    }

    /// A label of a device: its own, else its group's (own and inherited).
    pub fn device_label(&self, device: &CompiledDevice, key: &str) -> Option<&str> {
        label_of(&self.label_sets, &self.groups, device.group, device.labels, key)
    }

    /// Whether a device's labels (own over inherited) satisfy a selector.
    pub fn device_matches(&self, selector: &LabelSelector, device: &CompiledDevice) -> bool {
        selector.matches_with(|key| self.device_label(device, key))
    }

    /// Whether `group` lies in the subtree of `ancestor` (a group is in its own subtree).
    pub fn is_in_subtree(&self, group: GroupIx, ancestor: GroupIx) -> bool {
        ancestor <= group && group < self.groups[ancestor as usize].subtree_end
    }
}

fn label_of<'a>(
    label_sets: &'a [Labels],
    groups: &'a [CompiledGroup],
    group: GroupIx,
    own: u32,
    key: &str,
) -> Option<&'a str> {
    if own != NONE {
        if let Some(v) = label_sets[own as usize].get(key) {
            return Some(v);
        }
    }
    groups[group as usize].labels.get(key).map(String::as_str)
}

/// Resolves validated documents, with the values the checks parsed. References the
/// validator already reported (unknown groups or releases, cycles) are skipped here
/// rather than reported twice; the caller only uses the result when there were no errors.
pub fn resolve(documents: &Documents, checked: &Checked) -> (CompiledFleet, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let (groups, group_ix) = resolve_groups(documents, checked);
    let (releases, release_ix) = resolve_releases(documents, &mut diagnostics);
    let policies = resolve_policies(documents, checked, &group_ix, &release_ix);
    let CollectedDevices { mut devices, label_sets, sources: device_sources, pin_sources } =
        collect_devices(documents, &group_ix, &release_ix);

    let mut fleet = CompiledFleet {
        groups,
        releases,
        policies,
        label_sets,
        devices: Vec::new(),
        device_sources,
        id_index: IdIndex::default(),
    };
    desired::assign_desired_state(&fleet, &mut devices, &pin_sources, documents, &mut diagnostics);
    fleet.id_index = IdIndex::build(&devices);
    fleet.devices = devices;
    (fleet, diagnostics)
}

/// Lays groups out depth first (roots, then each group's children, by name) and resolves
/// inherited labels and windows once per group.
fn resolve_groups<'a>(
    documents: &'a Documents,
    checked: &Checked,
) -> (Vec<CompiledGroup>, HashMap<&'a str, GroupIx>) {
    let docs = &documents.groups;
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in docs.iter().enumerate() {
        by_name.entry(g.name()).or_insert(i);
    }
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (&name, &i) in &by_name {
        match docs[i].value.spec.parent.as_deref() {
            Some(parent) if by_name.contains_key(parent) => children.entry(parent).or_default().push(name),
            _ => roots.push(name),
        }
    }

    let mut groups: Vec<CompiledGroup> = Vec::with_capacity(by_name.len());
    let mut group_ix: HashMap<&str, GroupIx> = HashMap::with_capacity(by_name.len());
    let empty_labels: Arc<Labels> = Arc::default();
    let no_windows: Arc<Windows> = Arc::default();
    // Explicit stack of (name, parent index); children pushed in reverse so they pop in
    // name order. Groups caught in a cycle are never reached from a root.
    let mut stack: Vec<(&str, Option<GroupIx>)> = roots.iter().rev().map(|&r| (r, None)).collect();
    while let Some((name, parent)) = stack.pop() {
        let doc_ix = by_name[name];
        let doc = &docs[doc_ix];
        let spec = &doc.value.spec;
        let (inherited_labels, inherited_windows, depth) = match parent {
            Some(p) => {
                let p = &groups[p as usize];
                (p.labels.clone(), p.maintenance_windows.clone(), p.depth + 1)
            }
            None => (empty_labels.clone(), no_windows.clone(), 0),
        };
        let labels = if spec.labels.is_empty() {
            inherited_labels
        } else {
            let mut merged = (*inherited_labels).clone();
            merged.extend(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            Arc::new(merged)
        };
        let maintenance_windows = match checked.windows.get(doc_ix) {
            Some(Some(own)) => own.clone(),
            _ => inherited_windows,
        };
        let ix = groups.len() as GroupIx;
        group_ix.insert(name, ix);
        groups.push(CompiledGroup {
            name: name.to_owned(),
            parent,
            depth,
            subtree_end: ix + 1,
            labels,
            maintenance_windows,
            max_concurrent: spec.max_concurrent,
            location: doc.location.clone(),
        });
        if let Some(kids) = children.get(name) {
            stack.extend(kids.iter().rev().map(|&k| (k, Some(ix))));
        }
    }
    // Children come after their parent, so one backward pass widens every ancestor's
    // range to cover its descendants.
    for ix in (0..groups.len()).rev() {
        if let Some(p) = groups[ix].parent {
            let end = groups[ix].subtree_end;
            let parent = &mut groups[p as usize];
            parent.subtree_end = parent.subtree_end.max(end);
        }
    }
    (groups, group_ix)
}

fn resolve_releases<'a>(
    documents: &'a Documents,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Vec<CompiledRelease>, HashMap<&'a str, ReleaseIx>) {
    let mut sorted: Vec<&Located<crate::model::Release>> = documents.releases.iter().collect();
    sorted.sort_by(|a, b| a.name().cmp(b.name()));
    sorted.dedup_by(|a, b| a.name() == b.name());
    let mut releases = Vec::with_capacity(sorted.len());
    let mut release_ix = HashMap::with_capacity(sorted.len());
    for doc in sorted {
        let spec = &doc.value.spec;
        let version = match semver::Version::parse(&spec.version) {
            Ok(v) => v,
            Err(e) => {
                // The validator reports this too; resolving must not invent an order.
                diagnostics.push(Diagnostic::new(
                    Code::InvalidVersion,
                    doc.locate("spec.version"),
                    format!(
                        "release {:?}: version {:?} is not a semantic version: {e}",
                        doc.name(),
                        spec.version
                    ),
                ));
                continue;
            }
        };
        release_ix.insert(doc.name(), releases.len() as ReleaseIx);
        releases.push(CompiledRelease {
            name: doc.name().to_owned(),
            version,
            compatible: spec.compatible.clone(),
            artifacts: spec.artifacts.clone(),
            location: doc.location.clone(),
        });
    }
    (releases, release_ix)
}

fn resolve_policies(
    documents: &Documents,
    checked: &Checked,
    group_ix: &HashMap<&str, GroupIx>,
    release_ix: &HashMap<&str, ReleaseIx>,
) -> Vec<CompiledPolicy> {
    let mut sorted: Vec<(usize, &Located<crate::model::Policy>)> =
        documents.policies.iter().enumerate().collect();
    sorted.sort_by(|(_, a), (_, b)| a.name().cmp(b.name()));
    sorted.dedup_by(|(_, a), (_, b)| a.name() == b.name());
    sorted
        .into_iter()
        .filter_map(|(doc_ix, doc)| {
            let spec = &doc.value.spec;
            let release = *release_ix.get(spec.release.as_str())?;
            let mut groups: Vec<GroupIx> =
                spec.selector.groups.iter().filter_map(|g| group_ix.get(g.as_str()).copied()).collect();
            groups.sort_unstable();
            groups.dedup();
            if groups.is_empty() && !spec.selector.groups.is_empty() {
                // Every named group is unknown (reported by the validator): select nothing
                // rather than the whole fleet.
                return None;
            }
            Some(CompiledPolicy {
                name: doc.name().to_owned(),
                release,
                priority: spec.priority,
                paused: spec.paused,
                allow_downgrade: spec.allow_downgrade,
                groups,
                labels: spec.selector.label_selector(),
                rollout: spec.rollout.clone(),
                bakes: checked.bakes.get(doc_ix).cloned().unwrap_or_default(),
                rules: checked.rules.get(doc_ix).cloned().unwrap_or_default(),
                location: doc.location.clone(),
            })
        })
        .collect()
}

/// Where a pin was written: the document and, for a DeviceSet entry, its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum PinSource {
    Device(usize),
    SetEntry(usize, usize),
    Set(usize),
}

/// Devices from Device and DeviceSet documents, sorted by id, with own labels interned.
/// Also returns each document's location (indexed by `CompiledDevice::source`: Device
/// documents first, then DeviceSets, in document order) and, per pinned device, where its
/// pin was written.
///
/// DeviceSets are expanded in parallel, each interning its own label sets; the per-set
/// tables are then merged into one.
fn collect_devices(
    documents: &Documents,
    group_ix: &HashMap<&str, GroupIx>,
    release_ix: &HashMap<&str, ReleaseIx>,
) -> CollectedDevices {
    let sources: Vec<Location> = documents
        .devices
        .iter()
        .map(|d| d.location.clone())
        .chain(documents.device_sets.iter().map(|d| d.location.clone()))
        .collect();
    let release =
        |pin: &Option<String>| pin.as_deref().and_then(|p| release_ix.get(p).copied()).unwrap_or(NONE);
    // The checks refused every id that breaks the rule, and resolving only runs without
    // errors: the ids are taken as checked.
    let device = |id: DeviceId, group, labels, pin, source: usize| CompiledDevice {
        id,
        order_key: 0,
        group,
        labels,
        pin,
        policy: NONE,
        desired: NONE,
        source: source as u32,
    };

    // Each part: its devices (labels as indices into the part's own table), that table,
    // and where its pins were written.
    type Part = (Vec<CompiledDevice>, Vec<Labels>, Vec<(Box<str>, PinSource)>);
    let single_devices: Part = {
        let mut part: Part = Default::default();
        let mut interner = Interner::default();
        for (doc_ix, doc) in documents.devices.iter().enumerate() {
            let spec = &doc.value.spec;
            let Some(&group) = group_ix.get(spec.group.as_str()) else { continue };
            let id = spec.id.as_deref().unwrap_or(doc.name());
            let pin = release(&spec.pin);
            if pin != NONE {
                part.2.push((Box::from(id), PinSource::Device(doc_ix)));
            }
            part.0.push(device(
                DeviceId::checked(id),
                group,
                interner.intern(spec.labels.clone()),
                pin,
                doc_ix,
            ));
        }
        part.1 = interner.sets;
        part
    };
    let set_parts: Vec<Part> = documents
        .device_sets
        .par_iter()
        .enumerate()
        .map(|(set_ix, doc)| {
            let mut part: Part = Default::default();
            let spec = &doc.value.spec;
            let Some(&group) = group_ix.get(spec.group.as_str()) else { return part };
            let source = documents.devices.len() + set_ix;
            let mut interner = Interner::default();
            let set_labels = interner.intern(spec.labels.clone());
            let set_pin = release(&spec.pin);
            part.0.reserve(spec.devices.len() + range_len(spec));
            for (entry_ix, entry) in spec.devices.iter().enumerate() {
                let labels = if entry.labels.is_empty() {
                    set_labels
                } else {
                    let mut own = spec.labels.clone();
                    own.extend(entry.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                    interner.intern(own)
                };
                let (pin, pin_source) = match &entry.pin {
                    Some(_) => (release(&entry.pin), PinSource::SetEntry(set_ix, entry_ix)),
                    None => (set_pin, PinSource::Set(set_ix)),
                };
                if pin != NONE {
                    part.2.push((Box::from(entry.id.as_str()), pin_source));
                }
                part.0.push(device(DeviceId::checked(entry.id.as_str()), group, labels, pin, source));
            }
            if let Some(range) = &spec.range {
                for id in range.ids() {
                    if set_pin != NONE {
                        part.2.push((id.clone().into_boxed_str(), PinSource::Set(set_ix)));
                    }
                    part.0.push(device(DeviceId::checked(id), group, set_labels, set_pin, source));
                }
            }
            part.1 = interner.sets;
            part
        })
        .collect();

    // Merge the parts: one label table, label indices remapped.
    let total = single_devices.0.len() + set_parts.iter().map(|p| p.0.len()).sum::<usize>();
    let mut devices = Vec::with_capacity(total);
    let mut interner = Interner::default();
    let mut pin_sources = HashMap::new();
    for (mut part_devices, part_labels, part_pins) in std::iter::once(single_devices).chain(set_parts) {
        let remap: Vec<u32> = part_labels.into_iter().map(|l| interner.intern(l)).collect();
        for d in &mut part_devices {
            if d.labels != NONE {
                d.labels = remap[d.labels as usize];
            }
        }
        devices.append(&mut part_devices);
        pin_sources.extend(part_pins);
    }
    devices.par_iter_mut().for_each(|d| d.order_key = device_order_key(&d.id));
    devices.par_sort_unstable_by(|a, b| a.id.cmp(&b.id));
    CollectedDevices { devices, label_sets: interner.sets, sources, pin_sources }
}

/// What [`collect_devices`] gathers.
struct CollectedDevices {
    /// Every device, by id.
    devices: Vec<CompiledDevice>,
    /// Own-label sets, interned.
    label_sets: Vec<Labels>,
    /// Device and DeviceSet document locations.
    sources: Vec<Location>,
    /// Where each pinned device's pin was written.
    pin_sources: HashMap<Box<str>, PinSource>,
}

/// Interns label sets: equal sets get one index. Empty sets are "no own labels".
#[derive(Default)]
struct Interner {
    index: FxHashMap<Labels, u32>,
    sets: Vec<Labels>,
}

impl Interner {
    fn intern(&mut self, labels: Labels) -> u32 {
        if labels.is_empty() {
            return NONE;
        }
        if let Some(&ix) = self.index.get(&labels) {
            return ix;
        }
        let ix = self.sets.len() as u32;
        self.sets.push(labels.clone());
        self.index.insert(labels, ix);
        ix
    }
}

fn range_len(spec: &crate::model::DeviceSetSpec) -> usize {
    spec.range.as_ref().map_or(0, |r| usize::try_from(r.count).unwrap_or(0))
}

mod desired;
#[cfg(test)]
mod tests;
