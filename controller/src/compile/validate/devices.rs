//! Device and DeviceSet documents: ids (valid, and unique across the fleet), groups,
//! pins, keys and labels. These checks run once per device, in parallel.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use base64::Engine as _;
use rayon::prelude::*;

use super::labels::label_problems;
use super::{report_capped, unknown, Names, Problem, MAX_PER_DOCUMENT};
use crate::compile::diagnostic::{Code, Diagnostic};
use crate::compile::load::{Documents, Location};
use crate::protocol::DeviceId;

/// Why `key` is not a base64 ed25519 public key, if it is not one.
pub fn public_key_problem(key: &str) -> Option<String> {
    use base64::DecodeSliceError;
    // Decoded into a stack buffer: this runs once per device.
    let mut buffer = [0u8; 64];
    match base64::engine::general_purpose::STANDARD.decode_slice(key, &mut buffer) {
        Ok(32) => None,
        Ok(n) => Some(format!("an ed25519 public key is 32 bytes, this one is {n}")),
        Err(DecodeSliceError::OutputSliceTooSmall) => {
            Some("an ed25519 public key is 32 bytes, this one is more than 64".to_owned())
        }
        Err(DecodeSliceError::DecodeError(e)) => Some(format!("not base64: {e}")),
    }
}

pub(super) fn check_devices(documents: &Documents, names: &Names<'_>, out: &mut Vec<Diagnostic>) {
    let pin_problem = |path: &str, pin: &Option<String>| {
        let pin = pin.as_deref()?;
        (!names.releases.contains_key(pin)).then(|| {
            Problem::new(Code::UnknownRelease, path, unknown("release", pin, names.release_candidates()))
        })
    };
    let group_problem = |group: &str| {
        (!names.groups.contains_key(group)).then(|| {
            Problem::new(Code::UnknownGroup, "spec.group", unknown("group", group, names.group_candidates()))
        })
    };

    for doc in &documents.devices {
        let spec = &doc.value.spec;
        let mut problems: Vec<Problem> = Vec::new();
        problems.extend(group_problem(&spec.group));
        problems.extend(pin_problem("spec.pin", &spec.pin));
        if let Some(id) = &spec.id {
            if let Err(p) = DeviceId::check(id) {
                problems.push(Problem::new(
                    Code::InvalidDeviceId,
                    "spec.id",
                    format!("invalid device id {id:?}: {p}"),
                ));
            }
        }
        if let Some(key) = &spec.public_key {
            if let Some(p) = public_key_problem(key) {
                problems.push(Problem::new(
                    Code::InvalidPublicKey,
                    "spec.publicKey",
                    format!("invalid publicKey: {p}"),
                ));
            }
        }
        problems.extend(label_problems(|| "spec.labels".to_owned(), &spec.labels));
        report_capped(doc, problems, out);
    }

    let per_set: Vec<Vec<Problem>> = documents
        .device_sets
        .par_iter()
        .map(|doc| {
            let spec = &doc.value.spec;
            let mut problems: Vec<Problem> = Vec::new();
            problems.extend(group_problem(&spec.group));
            problems.extend(pin_problem("spec.pin", &spec.pin));
            problems.extend(label_problems(|| "spec.labels".to_owned(), &spec.labels));
            if let Some(range) = &spec.range {
                if range.count == 0 {
                    problems.push(Problem::new(
                        Code::ZeroCount,
                        "spec.range.count",
                        "a device range must hold at least 1 device",
                    ));
                } else if let Some(last) = range.last_number().map(|n| range.id(n)) {
                    // Every id of a range differs only in its digits: checking the
                    // longest (the last) checks them all.
                    if let Err(p) = DeviceId::check(&last) {
                        problems.push(Problem::new(
                            Code::InvalidDeviceId,
                            "spec.range.prefix",
                            format!("device range makes invalid ids such as {last:?}: {p}"),
                        ));
                    }
                }
            }
            let entries: Vec<Problem> = spec
                .devices
                .par_iter()
                .enumerate()
                .flat_map_iter(|(i, entry)| {
                    let mut problems = Vec::new();
                    if let Err(p) = DeviceId::check(&entry.id) {
                        problems.push(Problem::new(
                            Code::InvalidDeviceId,
                            format!("spec.devices[{i}].id"),
                            format!("invalid device id {:?}: {p}", entry.id),
                        ));
                    }
                    if let Some(key) = &entry.public_key {
                        if let Some(p) = public_key_problem(key) {
                            problems.push(Problem::new(
                                Code::InvalidPublicKey,
                                format!("spec.devices[{i}].publicKey"),
                                format!("invalid publicKey of device {:?}: {p}", entry.id),
                            ));
                        }
                    }
                    if let Some(mut problem) = pin_problem("", &entry.pin) {
                        problem.path = format!("spec.devices[{i}].pin");
                        problems.push(problem);
                    }
                    problems.extend(label_problems(|| format!("spec.devices[{i}].labels"), &entry.labels));
                    problems
                })
                .collect();
            problems.extend(entries);
            problems
        })
        .collect();
    for (doc, problems) in documents.device_sets.iter().zip(per_set) {
        report_capped(doc, problems, out);
    }
}

/// Where a device id is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum IdSource {
    /// A Device document.
    Device(u32),
    /// Entry `.1` of DeviceSet `.0`'s `devices`.
    Entry(u32, u32),
    /// Number `.1` of DeviceSet `.0`'s `range`.
    Range(u32, u32),
}

/// Reports device ids declared more than once, across Devices and DeviceSets, each at
/// the later declaration with a note at the first.
///
/// Built for a million ids: ids are hashed in parallel, the hashes sorted, and strings
/// compared only where hashes collide.
pub(super) fn check_duplicate_ids(documents: &Documents, out: &mut Vec<Diagnostic>) {
    let ranges: Vec<Vec<String>> = documents
        .device_sets
        .par_iter()
        .map(|s| s.value.spec.range.as_ref().map(|r| r.ids().collect()).unwrap_or_default())
        .collect();
    let id_of = |source: IdSource| -> &str {
        match source {
            IdSource::Device(d) => {
                let doc = &documents.devices[d as usize].value;
                doc.spec.id.as_deref().unwrap_or(&doc.metadata.name)
            }
            IdSource::Entry(s, e) => &documents.device_sets[s as usize].value.spec.devices[e as usize].id,
            IdSource::Range(s, n) => &ranges[s as usize][n as usize],
        }
    };
    let hash = |id: &str| {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    };

    let mut keyed: Vec<(u64, IdSource)> = (0..documents.devices.len() as u32)
        .into_par_iter()
        .map(IdSource::Device)
        .chain(documents.device_sets.par_iter().enumerate().flat_map_iter(|(s, set)| {
            let s = s as u32;
            let entries = (0..set.value.spec.devices.len() as u32).map(move |e| IdSource::Entry(s, e));
            let range = (0..ranges[s as usize].len() as u32).map(move |n| IdSource::Range(s, n));
            entries.chain(range)
        }))
        .map(|source| (hash(id_of(source)), source))
        .collect();
    keyed.par_sort_unstable_by_key(|&(h, _)| h);

    // Runs of equal hashes hold the candidates; group them by actual id.
    let mut duplicates: Vec<(IdSource, IdSource)> = Vec::new();
    for run in keyed.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
        let mut by_id: BTreeMap<&str, Vec<IdSource>> = BTreeMap::new();
        for &(_, source) in run {
            by_id.entry(id_of(source)).or_default().push(source);
        }
        for mut sources in by_id.into_values().filter(|s| s.len() > 1) {
            let position = |s: &IdSource| source_position(documents, *s);
            sources.sort_by(|a, b| position(a).cmp(&position(b)));
            duplicates.extend(sources[1..].iter().map(|&later| (later, sources[0])));
        }
    }

    // Report per document of the later declaration, capped like other per-device checks.
    let mut per_doc: BTreeMap<(u8, u32), Vec<(IdSource, IdSource)>> = BTreeMap::new();
    for (later, first) in duplicates {
        let doc = match later {
            IdSource::Device(d) => (0, d),
            IdSource::Entry(s, _) | IdSource::Range(s, _) => (1, s),
        };
        per_doc.entry(doc).or_default().push((later, first));
    }
    for ((_, index), mut pairs) in per_doc {
        pairs.sort();
        let total = pairs.len();
        for (later, first) in pairs.iter().take(MAX_PER_DOCUMENT) {
            let id = id_of(*later);
            out.push(
                Diagnostic::new(
                    Code::DuplicateDeviceId,
                    id_location(documents, *later),
                    format!("duplicate device id {id:?}"),
                )
                .with_note(id_location(documents, *first), format!("device {id:?} is first declared here")),
            );
        }
        if total > MAX_PER_DOCUMENT {
            let location = match pairs[0].0 {
                IdSource::Device(_) => documents.devices[index as usize].location.clone(),
                _ => documents.device_sets[index as usize].location.clone(),
            };
            out.push(Diagnostic::new(
                Code::DuplicateDeviceId,
                location,
                format!(
                    "{} more duplicate device ids in this document are not shown",
                    total - MAX_PER_DOCUMENT
                ),
            ));
        }
    }
}

/// Document order of an id's declaration, without re-reading any document.
fn source_position(documents: &Documents, source: IdSource) -> (&Location, u32) {
    match source {
        IdSource::Device(d) => (&documents.devices[d as usize].location, 0),
        IdSource::Entry(s, e) => (&documents.device_sets[s as usize].location, e),
        IdSource::Range(s, n) => (&documents.device_sets[s as usize].location, u32::MAX / 2 + n),
    }
}

fn id_location(documents: &Documents, source: IdSource) -> Location {
    match source {
        IdSource::Device(d) => {
            let doc = &documents.devices[d as usize];
            if doc.value.spec.id.is_some() {
                doc.locate("spec.id")
            } else {
                doc.name_location()
            }
        }
        IdSource::Entry(s, e) => documents.device_sets[s as usize].locate(&format!("spec.devices[{e}].id")),
        IdSource::Range(s, _) => documents.device_sets[s as usize].locate("spec.range"),
    }
}
