//! Each device's desired state: its pin, else the release of the highest-priority policy
//! that selects it; and the findings about policies that only the whole fleet shows
//! (conflicts, incompatible releases and pins, policies that select nothing, devices no
//! policy covers).

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;

use super::{label_of, CompiledDevice, CompiledFleet, GroupIx, PinSource, PolicyIx, ReleaseIx, NONE};
use crate::compile::diagnostic::{Code, Diagnostic};
use crate::compile::load::Documents;

/// Devices sharing a group and own labels: policies are evaluated once per such class.
#[derive(Default)]
struct Class {
    devices: usize,
    /// The first device (by id) of the class, for messages.
    example: u32,
    /// The governing policy.
    policy: u32,
}

/// Counts and one example device, for a finding that concerns many devices.
#[derive(Default)]
struct Tally {
    devices: usize,
    example: Option<u32>,
}

impl Tally {
    fn add(&mut self, devices: usize, example: u32) {
        self.devices += devices;
        self.example = Some(self.example.map_or(example, |e| e.min(example)));
    }
}

/// Picks each device's governing policy and desired release, and reports conflicts,
/// incompatible releases, policies that select nothing and uncovered devices.
pub(super) fn assign_desired_state(
    fleet: &CompiledFleet,
    devices: &mut [CompiledDevice],
    pin_sources: &HashMap<Box<str>, PinSource>,
    documents: &Documents,
    diagnostics: &mut Vec<Diagnostic>,
) {
    // Group devices into classes of equal (group, own labels).
    let mut class_of: FxHashMap<(GroupIx, u32), u32> = FxHashMap::default();
    let mut classes: Vec<Class> = Vec::new();
    let mut device_class: Vec<u32> = Vec::with_capacity(devices.len());
    for (ix, d) in devices.iter().enumerate() {
        let class = *class_of.entry((d.group, d.labels)).or_insert_with(|| {
            classes.push(Class { devices: 0, example: ix as u32, policy: NONE });
            (classes.len() - 1) as u32
        });
        // Pinned devices do not count toward what their policies govern.
        if d.pin == NONE {
            classes[class as usize].devices += 1;
        }
        device_class.push(class);
    }
    // The example device of a class should be one its policies govern: the first unpinned.
    for (ix, d) in devices.iter().enumerate().rev() {
        if d.pin == NONE {
            classes[device_class[ix] as usize].example = ix as u32;
        }
    }

    // Policies by priority (highest first), then name: the first match wins.
    let mut by_priority: Vec<PolicyIx> = (0..fleet.policies.len() as PolicyIx).collect();
    by_priority.sort_by_key(|&p| (std::cmp::Reverse(fleet.policies[p as usize].priority), p));

    let mut selects = vec![false; fleet.policies.len()];
    let mut conflicts: BTreeMap<(PolicyIx, PolicyIx), Tally> = BTreeMap::new();
    let mut incompatible: BTreeMap<PolicyIx, Tally> = BTreeMap::new();
    let mut uncovered = Tally::default();
    let class_keys: Vec<(GroupIx, u32)> = {
        let mut keys = vec![(0, 0); classes.len()];
        for (&key, &class) in &class_of {
            keys[class as usize] = key;
        }
        keys
    };

    for (class_ix, class) in classes.iter_mut().enumerate() {
        let (group, own) = class_keys[class_ix];
        let get = |key: &str| label_of(&fleet.label_sets, &fleet.groups, group, own, key);
        let matching: Vec<PolicyIx> = by_priority
            .iter()
            .copied()
            .filter(|&p| {
                let policy = &fleet.policies[p as usize];
                (policy.groups.is_empty() || policy.groups.iter().any(|&g| fleet.is_in_subtree(group, g)))
                    && policy.labels.matches_with(get)
            })
            .collect();
        if class.devices == 0 {
            // Every device of the class is pinned: policies select them but govern none.
            for &p in &matching {
                selects[p as usize] = true;
            }
            continue;
        }
        let Some(&winner) = matching.first() else {
            uncovered.add(class.devices, class.example);
            continue;
        };
        for &p in &matching {
            selects[p as usize] = true;
        }
        let top = &fleet.policies[winner as usize];
        for &other in matching.iter().skip(1) {
            let other_policy = &fleet.policies[other as usize];
            if other_policy.priority != top.priority {
                break;
            }
            if other_policy.release != top.release {
                conflicts.entry((winner, other)).or_default().add(class.devices, class.example);
            }
        }
        let release = &fleet.releases[top.release as usize];
        if let Some(compatible) = &release.compatible {
            if !compatible.matches_with(get) {
                incompatible.entry(winner).or_default().add(class.devices, class.example);
            }
        }
        class.policy = winner;
    }

    // Pins: each pinned release must be compatible with the device.
    let mut bad_pins: BTreeMap<(PinSource, ReleaseIx), Tally> = BTreeMap::new();
    for (ix, d) in devices.iter_mut().enumerate() {
        if d.pin != NONE {
            d.desired = d.pin;
            let release = &fleet.releases[d.pin as usize];
            if let Some(compatible) = &release.compatible {
                let get = |key: &str| label_of(&fleet.label_sets, &fleet.groups, d.group, d.labels, key);
                if !compatible.matches_with(get) {
                    let source = pin_sources.get(&*d.id).copied().unwrap_or(PinSource::Device(usize::MAX));
                    bad_pins.entry((source, d.pin)).or_default().add(1, ix as u32);
                }
            }
        } else {
            let policy = classes[device_class[ix] as usize].policy;
            d.policy = policy;
            if policy != NONE {
                d.desired = fleet.policies[policy as usize].release;
            }
        }
    }

    let name = |ix: Option<u32>| ix.map_or_else(String::new, |ix| devices[ix as usize].id.to_string());
    let policy_doc = |p: PolicyIx| {
        let name = &fleet.policies[p as usize].name;
        documents.policies.iter().find(|d| d.name() == name).expect("compiled policies come from documents")
    };
    for ((a, b), tally) in &conflicts {
        let (pa, pb) = (&fleet.policies[*a as usize], &fleet.policies[*b as usize]);
        diagnostics.push(
            Diagnostic::new(
                Code::PolicyConflict,
                policy_doc(*a).locate("spec.release"),
                format!(
                    "policies {:?} and {:?} both have priority {} and give {} {} different releases ({:?} and {:?}), e.g. device {:?}",
                    pa.name,
                    pb.name,
                    pa.priority,
                    tally.devices,
                    plural(tally.devices, "device"),
                    fleet.releases[pa.release as usize].name,
                    fleet.releases[pb.release as usize].name,
                    name(tally.example),
                ),
            )
            .with_note(policy_doc(*b).locate("spec.release"), format!("policy {:?} is declared here", pb.name)),
        );
    }
    for (p, tally) in &incompatible {
        let policy = &fleet.policies[*p as usize];
        let release = &fleet.releases[policy.release as usize];
        diagnostics.push(
            Diagnostic::new(
                Code::IncompatibleRelease,
                policy_doc(*p).locate("spec.release"),
                format!(
                    "release {:?} is not compatible with {} {} that policy {:?} selects, e.g. device {:?}",
                    release.name,
                    tally.devices,
                    plural(tally.devices, "device"),
                    policy.name,
                    name(tally.example),
                ),
            )
            .with_note(
                release.location.clone(),
                format!("release {:?} and its `compatible` selector", release.name),
            ),
        );
    }
    for ((source, release_ix), tally) in &bad_pins {
        let release = &fleet.releases[*release_ix as usize];
        let location = match *source {
            PinSource::Device(d) => documents.devices.get(d).map(|doc| doc.locate("spec.pin")),
            PinSource::Set(s) => documents.device_sets.get(s).map(|doc| doc.locate("spec.pin")),
            PinSource::SetEntry(s, e) => {
                documents.device_sets.get(s).map(|doc| doc.locate(&format!("spec.devices[{e}].pin")))
            }
        };
        let location = location.unwrap_or_else(|| release.location.clone());
        diagnostics.push(
            Diagnostic::new(
                Code::IncompatibleRelease,
                location,
                format!(
                    "{} {} pinned to release {:?}, which is not compatible with {}, e.g. device {:?}",
                    tally.devices,
                    if tally.devices == 1 { "device is" } else { "devices are" },
                    release.name,
                    if tally.devices == 1 { "it" } else { "them" },
                    name(tally.example),
                ),
            )
            .with_note(
                release.location.clone(),
                format!("release {:?} and its `compatible` selector", release.name),
            ),
        );
    }
    for (p, policy) in fleet.policies.iter().enumerate() {
        if !selects[p] {
            diagnostics.push(Diagnostic::new(
                Code::PolicySelectsNothing,
                policy_doc(p as PolicyIx).locate("spec.selector"),
                format!("policy {:?} selects no device", policy.name),
            ));
        }
    }
    if uncovered.devices > 0 {
        let examples: Vec<String> = devices
            .iter()
            .filter(|d| d.pin == NONE && d.policy == NONE)
            .take(3)
            .map(|d| format!("{:?}", d.id))
            .collect();
        let first = &devices[uncovered.example.expect("uncovered devices have an example") as usize];
        diagnostics.push(Diagnostic::new(
            Code::DeviceNotCovered,
            fleet.device_sources[first.source as usize].clone(),
            format!(
                "{} {} covered by no policy and not pinned, so {} no desired release (e.g. {})",
                uncovered.devices,
                if uncovered.devices == 1 { "device is" } else { "devices are" },
                if uncovered.devices == 1 { "it has" } else { "they have" },
                examples.join(", "),
            ),
        ));
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}
