//! The static checks: everything that can be decided from the documents alone, before
//! anything is resolved — names, duplicates, references, the group hierarchy, waves,
//! thresholds, schedules, durations, time zones, versions, selectors, digests and keys.
//!
//! Every check reports with the position of the offending field. Checks that run once
//! per device (a DeviceSet may list 100,000) run in parallel and report at most
//! [`MAX_PER_DOCUMENT`] diagnostics of one code per document, then one summary: a
//! thousand copies of one mistake help nobody, and finding each one's line costs a
//! re-read of the document.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use base64::Engine as _;
use croner::parser::{CronParser, Seconds, Year};
use rayon::prelude::*;

use super::diagnostic::{self, Code, Diagnostic};
use super::load::{key_segment, AsObject, DeviceDocuments, Documents, Located, Location};
use crate::model::{Group, Kind, Labels, Operator, Policy, SelectorRequirement};

/// At most this many diagnostics of one code are reported per document; the rest are
/// counted in one summary diagnostic.
pub const MAX_PER_DOCUMENT: usize = 20;

/// Runs every static check and returns the diagnostics sorted by file and line.
pub fn check(documents: &Documents) -> Vec<Diagnostic> {
    check_cached(documents, &mut CheckCache::default())
}

/// What the device checks found last time, and what their findings depend on: the device
/// documents and the group and release names they refer to.
#[derive(Debug, Default)]
pub struct CheckCache {
    devices: Option<(DeviceCheckInputs, Vec<Diagnostic>)>,
}

/// The device documents, group names and release names, sorted.
type DeviceCheckInputs = (DeviceDocuments, Vec<String>, Vec<String>);

/// [`check`], taking the device checks' findings (a million entries' ids, keys, labels
/// and pins) from `cache` when nothing they depend on changed since.
pub fn check_cached(documents: &Documents, cache: &mut CheckCache) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let names = Names::new(documents, &mut out);
    check_names(documents, &mut out);
    check_groups(documents, &names, &mut out);
    let sorted = |names: &HashMap<&str, usize>| {
        let mut names: Vec<String> = names.keys().map(|n| n.to_string()).collect();
        names.sort_unstable();
        names
    };
    let key = (DeviceDocuments::of(documents), sorted(&names.groups), sorted(&names.releases));
    match &cache.devices {
        Some((inputs, found)) if *inputs == key => out.extend(found.iter().cloned()),
        _ => {
            let mut found = Vec::new();
            check_devices(documents, &names, &mut found);
            check_device_ids(documents, &mut found);
            out.extend(found.iter().cloned());
            cache.devices = Some((key, found));
        }
    }
    check_releases(documents, &mut out);
    check_policies(documents, &names, &mut out);
    diagnostic::sort(&mut out);
    out
}

/// The declared names of groups and releases (the first declaration of each), and the
/// duplicate-name check that builds them.
struct Names<'a> {
    groups: HashMap<&'a str, usize>,
    releases: HashMap<&'a str, usize>,
}

impl<'a> Names<'a> {
    fn new(documents: &'a Documents, out: &mut Vec<Diagnostic>) -> Names<'a> {
        let mut groups = unique_names(&documents.groups, "group", out);
        unique_names(&documents.devices, "device", out);
        unique_names(&documents.device_sets, "device set", out);
        let mut releases = unique_names(&documents.releases, "release", out);
        unique_names(&documents.policies, "policy", out);
        // A document that failed to load is reported already; what refers to it is not
        // wrong as well. It maps to usize::MAX, which no lookup follows.
        for unparsed in &documents.unparsed {
            let names = match unparsed.kind {
                Kind::Group => &mut groups,
                Kind::Release => &mut releases,
                _ => continue,
            };
            names.entry(unparsed.name.as_str()).or_insert(usize::MAX);
        }
        Names { groups, releases }
    }

    fn group_candidates(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.groups.keys().copied()
    }

    fn release_candidates(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.releases.keys().copied()
    }
}

/// Maps each name to its first document, reporting later documents with the same name.
fn unique_names<'a, T: AsObject>(
    docs: &'a [Located<T>],
    what: &str,
    out: &mut Vec<Diagnostic>,
) -> HashMap<&'a str, usize> {
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        if let Some(&j) = first.get(doc.name()) {
            out.push(
                Diagnostic::new(
                    Code::DuplicateName,
                    doc.name_location(),
                    format!("duplicate {what} name {:?}", doc.name()),
                )
                .with_note(
                    docs[j].name_location(),
                    format!("{what} {:?} is first declared here", doc.name()),
                ),
            );
        } else {
            first.insert(doc.name(), i);
        }
    }
    first
}

fn check_names(documents: &Documents, out: &mut Vec<Diagnostic>) {
    fn each<T: AsObject>(docs: &[Located<T>], out: &mut Vec<Diagnostic>) {
        for doc in docs {
            if let Some(problem) = dns_label_problem(doc.name()) {
                out.push(Diagnostic::new(
                    Code::InvalidName,
                    doc.name_location(),
                    format!("invalid name {:?}: {problem}", doc.name()),
                ));
            }
            check_labels(doc, "metadata.labels", &doc.value.object().metadata.labels, out);
        }
    }
    each(&documents.groups, out);
    each(&documents.devices, out);
    each(&documents.device_sets, out);
    each(&documents.releases, out);
    each(&documents.policies, out);
}

/// Why `name` is not a DNS-1123 label, if it is not one.
pub fn dns_label_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a name must not be empty")
    } else if name.len() > 63 {
        Some("a name must be at most 63 characters")
    } else if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        Some("a name may hold only lower-case letters, digits and '-'")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("a name must start and end with a letter or digit")
    } else {
        None
    }
}

/// Why `id` is not a valid device id, if it is not one: 1–128 letters, digits, `.`, `_`
/// or `-`, starting with a letter or digit (it becomes part of a TUF target path).
pub fn device_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("a device id must not be empty")
    } else if id.len() > 128 {
        Some("a device id must be at most 128 characters")
    } else if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        Some("a device id may hold only letters, digits, '.', '_' and '-'")
    } else if !id.as_bytes()[0].is_ascii_alphanumeric() {
        Some("a device id must start with a letter or digit")
    } else {
        None
    }
}

/// Kubernetes label names and values: at most 63 characters, alphanumerics with `-`,
/// `_`, `.` inside.
fn label_name_problem(s: &str) -> Option<&'static str> {
    if s.len() > 63 {
        Some("must be at most 63 characters")
    } else if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        Some("may hold only letters, digits, '-', '_' and '.'")
    } else if s.starts_with(['-', '_', '.']) || s.ends_with(['-', '_', '.']) {
        Some("must start and end with a letter or digit")
    } else {
        None
    }
}

/// Why `key` is not a valid label key (`[prefix/]name`), if it is not one.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if name.is_empty() {
        return Some("the name part must not be empty".into());
    }
    if let Some(problem) = label_name_problem(name) {
        return Some(format!("the name part {problem}"));
    }
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| dns_label_problem(part).is_none());
        if !valid {
            return Some("the prefix must be a DNS subdomain (lower-case, e.g. example.com)".into());
        }
    }
    None
}

/// Why `value` is not a valid label value, if it is not one.
pub fn label_value_problem(value: &str) -> Option<String> {
    label_name_problem(value).map(|p| format!("a label value {p}"))
}

/// Problems of a label map, as `(path, message)`. `path` gives the map's path; it is
/// only called when there is a problem, since this runs once per device.
/// Invalid label keys (reported at the key) and values (at the value) of the labels map
/// at `path`.
fn label_problems(path: impl Fn() -> String, labels: &Labels) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, value) in labels {
        let at = || format!("{}{}", path(), key_segment(key));
        if let Some(p) = label_key_problem(key) {
            problems.push(Problem::at_key(
                Code::InvalidLabel,
                at(),
                format!("invalid label key {key:?}: {p}"),
            ));
        }
        if let Some(p) = label_value_problem(value) {
            problems.push(Problem::new(
                Code::InvalidLabel,
                at(),
                format!("invalid value {value:?} of label {key:?}: {p}"),
            ));
        }
    }
    problems
}

fn check_labels<T>(doc: &Located<T>, path: &str, labels: &Labels, out: &mut Vec<Diagnostic>) {
    for problem in label_problems(|| path.to_owned(), labels) {
        out.push(Diagnostic::new(problem.code, problem.location(doc), problem.message));
    }
}

/// `unknown group "eu-wst" (did you mean "eu-west"?)`.
fn unknown(what: &str, name: &str, candidates: impl Iterator<Item = impl AsRef<str>>) -> String {
    let best = candidates
        .map(|c| (strsim::levenshtein(name, c.as_ref()), c.as_ref().to_owned()))
        .filter(|(distance, _)| *distance <= 2.max(name.len() / 4))
        .min();
    match best {
        Some((_, suggestion)) => format!("unknown {what} {name:?} (did you mean {suggestion:?}?)"),
        None => format!("unknown {what} {name:?}"),
    }
}

fn check_groups(documents: &Documents, names: &Names<'_>, out: &mut Vec<Diagnostic>) {
    for doc in &documents.groups {
        let spec = &doc.value.spec;
        if let Some(parent) = &spec.parent {
            if !names.groups.contains_key(parent.as_str()) {
                out.push(Diagnostic::new(
                    Code::UnknownParent,
                    doc.locate("spec.parent"),
                    unknown("parent group", parent, names.group_candidates()),
                ));
            }
        }
        check_labels(doc, "spec.labels", &spec.labels, out);
        if spec.max_concurrent == Some(0) {
            out.push(Diagnostic::new(
                Code::ZeroCount,
                doc.locate("spec.maxConcurrent"),
                "maxConcurrent must be at least 1 (0 would never let a device update)",
            ));
        }
        if let Some(enrollment) = &spec.enrollment {
            if let Some(p) = sha256_problem(&enrollment.token_sha256) {
                out.push(Diagnostic::new(
                    Code::InvalidDigest,
                    doc.locate("spec.enrollment.tokenSha256"),
                    format!("invalid enrollment tokenSha256: {p}"),
                ));
            }
        }
        for (i, window) in spec.maintenance_windows.iter().flatten().enumerate() {
            let path = format!("spec.maintenanceWindows[{i}]");
            if let Some(p) = cron_problem(&window.schedule) {
                out.push(Diagnostic::new(
                    Code::InvalidSchedule,
                    doc.locate(&format!("{path}.schedule")),
                    format!("invalid schedule {:?}: {p}", window.schedule),
                ));
            }
            match humantime::parse_duration(&window.duration) {
                Ok(d) if d.is_zero() => out.push(Diagnostic::new(
                    Code::InvalidDuration,
                    doc.locate(&format!("{path}.duration")),
                    "a maintenance window must last longer than 0",
                )),
                Ok(_) => {}
                Err(e) => out.push(Diagnostic::new(
                    Code::InvalidDuration,
                    doc.locate(&format!("{path}.duration")),
                    format!("invalid duration {:?}: {e} (write e.g. 90m or 2h)", window.duration),
                )),
            }
            if let Some(zone) = &window.time_zone {
                if let Err(e) = jiff::tz::TimeZone::get(zone) {
                    out.push(Diagnostic::new(
                        Code::InvalidTimeZone,
                        doc.locate(&format!("{path}.timeZone")),
                        format!("unknown time zone {zone:?} (write an IANA name such as Europe/Berlin): {e}"),
                    ));
                }
            }
        }
    }
    check_cycles(&documents.groups, &names.groups, out);
}

/// Why `schedule` is not a five-field cron expression, if it is not one.
pub fn cron_problem(schedule: &str) -> Option<String> {
    let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
    parser.parse(schedule).err().map(|e| format!("{e} (write five fields: minute hour day month weekday)"))
}

/// Why `digest` is not a hex SHA-256, if it is not one.
pub fn sha256_problem(digest: &str) -> Option<&'static str> {
    if digest.len() != 64 {
        Some("a SHA-256 digest is 64 hex digits")
    } else if !digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Some("a SHA-256 digest holds only the digits 0-9 and a-f (lower case)")
    } else {
        None
    }
}

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

/// Reports each cycle of the group hierarchy once, at the member declared first.
fn check_cycles(groups: &[Located<Group>], index: &HashMap<&str, usize>, out: &mut Vec<Diagnostic>) {
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    // Unparsed groups are in `index` as usize::MAX: the walk stops at them.
    let parent_of = |i: usize| {
        let parent = groups[i].value.spec.parent.as_deref()?;
        index.get(parent).copied().filter(|&p| p < groups.len())
    };
    let mut state = vec![NEW; groups.len()];
    for start in 0..groups.len() {
        let mut path = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            match state[i] {
                NEW => {
                    state[i] = ON_PATH;
                    path.push(i);
                    at = parent_of(i);
                }
                ON_PATH => {
                    let from = path.iter().position(|&p| p == i).expect("on the path");
                    report_cycle(groups, &path[from..], out);
                    break;
                }
                _ => break,
            }
        }
        for i in path {
            state[i] = DONE;
        }
    }
}

fn report_cycle(groups: &[Located<Group>], cycle: &[usize], out: &mut Vec<Diagnostic>) {
    // Start the description at the member declared first, so the message is stable.
    let first = (0..cycle.len()).min_by_key(|&k| &groups[cycle[k]].location).expect("non-empty cycle");
    let ordered: Vec<usize> = cycle[first..].iter().chain(&cycle[..first]).copied().collect();
    let mut names: Vec<&str> = ordered.iter().map(|&i| groups[i].name()).collect();
    names.push(names[0]);
    let head = &groups[ordered[0]];
    let mut diagnostic = Diagnostic::new(
        Code::GroupCycle,
        head.locate("spec.parent"),
        format!("the group hierarchy has a cycle: {} (each arrow points to the parent)", names.join(" → ")),
    );
    for &i in &ordered[1..] {
        let g = &groups[i];
        diagnostic = diagnostic.with_note(
            g.locate("spec.parent"),
            format!(
                "group {:?} has parent {:?}",
                g.name(),
                g.value.spec.parent.as_deref().unwrap_or_default()
            ),
        );
    }
    out.push(diagnostic);
}

/// A problem found in one document, to be reported at `path` inside it.
struct Problem {
    code: Code,
    path: String,
    /// Whether the key at the end of `path` is wrong, rather than its value.
    at_key: bool,
    message: String,
}

impl Problem {
    fn new(code: Code, path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { code, path: path.into(), at_key: false, message: message.into() }
    }

    fn at_key(code: Code, path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { at_key: true, ..Problem::new(code, path, message) }
    }

    fn location<T>(&self, doc: &Located<T>) -> Location {
        if self.at_key {
            doc.locate_key(&self.path, 0)
        } else {
            doc.locate(&self.path)
        }
    }
}

/// Reports problems of one document, at most [`MAX_PER_DOCUMENT`] per code, then a
/// summary of the rest at the document.
fn report_capped<T>(doc: &Located<T>, problems: Vec<Problem>, out: &mut Vec<Diagnostic>) {
    let mut per_code: BTreeMap<Code, usize> = BTreeMap::new();
    for problem in problems {
        let n = per_code.entry(problem.code).or_default();
        *n += 1;
        if *n <= MAX_PER_DOCUMENT {
            out.push(Diagnostic::new(problem.code, problem.location(doc), problem.message));
        }
    }
    for (code, n) in per_code {
        if n > MAX_PER_DOCUMENT {
            out.push(Diagnostic::new(
                code,
                doc.location.clone(),
                format!("{} more {code} problems in this document are not shown", n - MAX_PER_DOCUMENT),
            ));
        }
    }
}

fn check_devices(documents: &Documents, names: &Names<'_>, out: &mut Vec<Diagnostic>) {
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
            if let Some(p) = device_id_problem(id) {
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
                    if let Some(p) = device_id_problem(&last) {
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
                    if let Some(p) = device_id_problem(&entry.id) {
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
fn check_device_ids(documents: &Documents, out: &mut Vec<Diagnostic>) {
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

fn check_releases(documents: &Documents, out: &mut Vec<Diagnostic>) {
    for doc in &documents.releases {
        let spec = &doc.value.spec;
        if let Err(e) = semver::Version::parse(&spec.version) {
            let hint = if spec.version.starts_with('v') { " (write it without the leading 'v')" } else { "" };
            out.push(Diagnostic::new(
                Code::InvalidVersion,
                doc.locate("spec.version"),
                format!("invalid version {:?}: {e}{hint}", spec.version),
            ));
        }
        if let Some(compatible) = &spec.compatible {
            check_selector(
                doc,
                "spec.compatible",
                &compatible.match_labels,
                &compatible.match_expressions,
                out,
            );
        }
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, artifact) in spec.artifacts.iter().enumerate() {
            let path = format!("spec.artifacts[{i}]");
            if let Some(&j) = first.get(artifact.name.as_str()) {
                out.push(
                    Diagnostic::new(
                        Code::DuplicateArtifact,
                        doc.locate(&format!("{path}.name")),
                        format!("duplicate artifact {:?} in release {:?}", artifact.name, doc.name()),
                    )
                    .with_note(doc.locate(&format!("spec.artifacts[{j}].name")), "first listed here"),
                );
            } else {
                first.insert(&artifact.name, i);
            }
            if let Some(p) = artifact_name_problem(&artifact.name) {
                out.push(Diagnostic::new(
                    Code::InvalidValue,
                    doc.locate(&format!("{path}.name")),
                    format!("invalid artifact name {:?}: {p}", artifact.name),
                ));
            }
            if let Some(p) = sha256_problem(&artifact.sha256) {
                out.push(Diagnostic::new(
                    Code::InvalidDigest,
                    doc.locate(&format!("{path}.sha256")),
                    format!("invalid sha256 of artifact {:?}: {p}", artifact.name),
                ));
            }
            if let Err(e) = url::Url::parse(&artifact.url) {
                out.push(Diagnostic::new(
                    Code::InvalidUrl,
                    doc.locate(&format!("{path}.url")),
                    format!("invalid url {:?} of artifact {:?}: {e}", artifact.url, artifact.name),
                ));
            }
        }
    }
}

/// Artifact names become TUF target paths (`releases/<release>/<name>`).
fn artifact_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name == "." || name == ".." {
        Some("an artifact name must be a file name")
    } else if !name.as_bytes()[0].is_ascii_alphanumeric() {
        Some("an artifact name must start with a letter or digit")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        Some("an artifact name may hold only letters, digits, '.', '_' and '-'")
    } else {
        None
    }
}

/// Checks a label selector's keys, values and operator/values pairing.
fn check_selector<T>(
    doc: &Located<T>,
    path: &str,
    match_labels: &Labels,
    match_expressions: &[SelectorRequirement],
    out: &mut Vec<Diagnostic>,
) {
    check_labels(doc, &format!("{path}.matchLabels"), match_labels, out);
    for (i, requirement) in match_expressions.iter().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        if let Some(p) = label_key_problem(&requirement.key) {
            out.push(Diagnostic::new(
                Code::InvalidLabel,
                doc.locate(&format!("{at}.key")),
                format!("invalid label key {:?}: {p}", requirement.key),
            ));
        }
        let op = requirement.operator;
        match op {
            Operator::In | Operator::NotIn if requirement.values.is_empty() => out.push(Diagnostic::new(
                Code::InvalidSelector,
                doc.locate(&at),
                format!("operator {op:?} needs at least one value (key {:?})", requirement.key),
            )),
            Operator::Exists | Operator::DoesNotExist if !requirement.values.is_empty() => {
                out.push(Diagnostic::new(
                    Code::InvalidSelector,
                    doc.locate(&format!("{at}.values")),
                    format!("operator {op:?} takes no values (key {:?})", requirement.key),
                ))
            }
            _ => {
                for (j, value) in requirement.values.iter().enumerate() {
                    if let Some(p) = label_value_problem(value) {
                        out.push(Diagnostic::new(
                            Code::InvalidLabel,
                            doc.locate(&format!("{at}.values[{j}]")),
                            format!("invalid value {value:?}: {p}"),
                        ));
                    }
                }
            }
        }
    }
}

fn check_policies(documents: &Documents, names: &Names<'_>, out: &mut Vec<Diagnostic>) {
    for doc in &documents.policies {
        let spec = &doc.value.spec;
        if !names.releases.contains_key(spec.release.as_str()) {
            out.push(Diagnostic::new(
                Code::UnknownRelease,
                doc.locate("spec.release"),
                unknown("release", &spec.release, names.release_candidates()),
            ));
        }
        for (i, group) in spec.selector.groups.iter().enumerate() {
            if !names.groups.contains_key(group.as_str()) {
                out.push(Diagnostic::new(
                    Code::UnknownGroup,
                    doc.locate(&format!("spec.selector.groups[{i}]")),
                    unknown("group", group, names.group_candidates()),
                ));
            }
        }
        check_selector(
            doc,
            "spec.selector",
            &spec.selector.match_labels,
            &spec.selector.match_expressions,
            out,
        );
        check_rollout(doc, out);
    }
}

fn check_rollout(doc: &Located<Policy>, out: &mut Vec<Diagnostic>) {
    let rollout = &doc.value.spec.rollout;
    let waves = &rollout.waves;
    let mut percent_sum = 0.0;
    for (i, wave) in waves.iter().enumerate() {
        let at = format!("spec.rollout.waves[{i}]");
        let name = wave.display_name(i);
        match (wave.count, wave.percent) {
            (Some(_), Some(_)) => out.push(Diagnostic::new(
                Code::AmbiguousWave,
                doc.locate(&at),
                format!("wave {name:?} sets both count and percent; keep one"),
            )),
            // A wave with a selector but no size takes every matching device (all the
            // canaries), which later waves can follow; without a selector it takes all
            // remaining devices, which leaves nothing for later waves.
            (None, None) if wave.selector.is_none() && i + 1 < waves.len() => out.push(Diagnostic::new(
                Code::OpenWaveNotLast,
                doc.locate(&at),
                format!(
                    "wave {name:?} has neither count nor percent, so it takes all remaining devices, \
                     but {} more wave(s) follow it",
                    waves.len() - i - 1
                ),
            )),
            _ => {}
        }
        if wave.count == Some(0) {
            out.push(Diagnostic::new(
                Code::EmptyWave,
                doc.locate(&format!("{at}.count")),
                format!("wave {name:?} has count 0 and would hold no device"),
            ));
        }
        if let Some(percent) = wave.percent {
            if percent.is_nan() || percent <= 0.0 {
                out.push(Diagnostic::new(
                    Code::EmptyWave,
                    doc.locate(&format!("{at}.percent")),
                    format!("wave {name:?} has percent {percent} and would hold no device"),
                ));
            } else if percent > 100.0 {
                out.push(Diagnostic::new(
                    Code::WavePercentOverflow,
                    doc.locate(&format!("{at}.percent")),
                    format!("wave {name:?} has percent {percent}, more than 100"),
                ));
            } else {
                percent_sum += percent;
            }
        }
        if let Some(bake) = &wave.bake {
            if let Err(e) = humantime::parse_duration(bake) {
                out.push(Diagnostic::new(
                    Code::InvalidDuration,
                    doc.locate(&format!("{at}.bake")),
                    format!("invalid bake time {bake:?} of wave {name:?}: {e} (write e.g. 30m or 1h)"),
                ));
            }
        }
        if let Some(selector) = &wave.selector {
            let path = format!("{at}.selector");
            check_selector(doc, &path, &selector.match_labels, &selector.match_expressions, out);
        }
    }
    // Allow for the rounding of decimal percentages such as 33.3 + 33.3 + 33.4.
    if percent_sum > 100.0 + 1e-9 {
        out.push(Diagnostic::new(
            Code::WavePercentOverflow,
            doc.locate("spec.rollout.waves"),
            format!(
                "the waves' percentages add up to {}, more than 100",
                (percent_sum * 1000.0).round() / 1000.0
            ),
        ));
    }
    if rollout.max_concurrent == Some(0) {
        out.push(Diagnostic::new(
            Code::ZeroCount,
            doc.locate("spec.rollout.maxConcurrent"),
            "maxConcurrent must be at least 1 (0 would never let a device update)",
        ));
    }
    let mut thresholds_valid = true;
    for (field, value) in
        [("successThreshold", rollout.success_threshold), ("failureThreshold", rollout.failure_threshold)]
    {
        if !(0.0..=100.0).contains(&value) {
            thresholds_valid = false;
            out.push(Diagnostic::new(
                Code::InvalidThreshold,
                doc.locate(&format!("spec.rollout.{field}")),
                format!("{field} is {value}; it is a percentage between 0 and 100"),
            ));
        }
    }
    if thresholds_valid && rollout.success_threshold <= rollout.failure_threshold {
        out.push(Diagnostic::new(
            Code::InvalidThreshold,
            doc.locate("spec.rollout.successThreshold"),
            format!(
                "successThreshold ({}) must be greater than failureThreshold ({})",
                rollout.success_threshold, rollout.failure_threshold
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::load::load;
    use crate::source::FleetFiles;

    const HEADER: &str = "apiVersion: waveguide.dev/v1alpha1\n";

    /// Loads `(file, yaml)` pairs (each document without its apiVersion line, which is
    /// added) and checks them; answers `CODE file:line:col message` lines.
    fn run(files: &[(&str, &str)]) -> Vec<String> {
        let fleet = FleetFiles::from_pairs(files.iter().map(|(path, text)| {
            let text: Vec<String> = text.split("---\n").map(|doc| format!("{HEADER}{doc}")).collect();
            (*path, text.join("---\n").into_bytes())
        }));
        let (documents, load_errors) = load(&fleet);
        assert!(load_errors.is_empty(), "{load_errors:#?}");
        check(&documents).iter().map(|d| format!("{} {} {}", d.code, d.location, d.message)).collect()
    }

    const BASE: &str = "\
kind: Group
metadata: {name: eu}
spec: {}
---
kind: Release
metadata: {name: v1}
spec: {version: 1.0.0}
";

    #[test]
    fn a_valid_fleet_has_no_diagnostics() {
        let devices = "\
kind: Device
metadata: {name: dev-1}
spec: {group: eu, labels: {hw: rpi4}, pin: v1, publicKey: \"MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\"}
";
        // That key is the 44-byte DER (SubjectPublicKeyInfo) form, not a raw ed25519 key.
        assert_eq!(run(&[("base.yaml", BASE)]), Vec::<String>::new());
        let out = run(&[("base.yaml", BASE), ("d.yaml", devices)]);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].starts_with("WG213 d.yaml:4:59"), "{out:?}");
    }

    #[test]
    fn names_and_duplicates() {
        let groups = "\
kind: Group
metadata: {name: EU_West}
spec: {}
---
kind: Group
metadata: {name: eu}
spec: {labels: {\"-bad\": x, ok: \"no spaces\", example.com/t: \"a b\"}}
";
        let out = run(&[("base.yaml", BASE), ("groups.yaml", groups)]);
        assert_eq!(
            out,
            [
                "WG101 groups.yaml:3:18 invalid name \"EU_West\": a name may hold only lower-case letters, digits and '-'",
                "WG102 groups.yaml:8:18 duplicate group name \"eu\"",
                "WG109 groups.yaml:9:17 invalid label key \"-bad\": the name part must start and end with a letter or digit",
                "WG109 groups.yaml:9:32 invalid value \"no spaces\" of label \"ok\": a label value may hold only letters, digits, '-', '_' and '.'",
                "WG109 groups.yaml:9:60 invalid value \"a b\" of label \"example.com/t\": a label value may hold only letters, digits, '-', '_' and '.'",
            ]
        );
    }

    #[test]
    fn references_suggest_close_names() {
        let docs = "\
kind: Group
metadata: {name: eu-west}
spec:
  parent: eu-wst
---
kind: Device
metadata: {name: d1}
spec: {group: eu-west, pin: v2}
---
kind: Policy
metadata: {name: p}
spec:
  selector: {groups: [eu, asia]}
  release: v1
";
        let out = run(&[("base.yaml", BASE), ("x.yaml", docs)]);
        assert_eq!(
            out,
            [
                "WG104 x.yaml:5:11 unknown parent group \"eu-wst\" (did you mean \"eu-west\"?)",
                "WG106 x.yaml:10:29 unknown release \"v2\" (did you mean \"v1\"?)",
                "WG105 x.yaml:16:27 unknown group \"asia\"",
            ]
        );
    }

    #[test]
    fn references_to_documents_that_failed_to_load_are_not_reported_again() {
        let docs = "\
kind: Group
metadata: {name: eu}
spec: {parnet: x}
---
kind: Group
metadata: {name: berlin}
spec: {parent: eu}
---
kind: Device
metadata: {name: d1}
spec: {group: eu}
";
        let fleet = FleetFiles::from_pairs([(
            "g.yaml",
            docs.split("---\n").map(|d| format!("{HEADER}{d}")).collect::<Vec<_>>().join("---\n"),
        )]);
        let (documents, load_errors) = load(&fleet);
        assert_eq!(load_errors.len(), 1);
        assert_eq!(documents.unparsed.len(), 1);
        assert_eq!(documents.unparsed[0].name, "eu");
        assert_eq!(check(&documents), Vec::new());
    }

    #[test]
    fn cycles_are_named_once() {
        let docs = "\
kind: Group
metadata: {name: a}
spec: {parent: c}
---
kind: Group
metadata: {name: b}
spec: {parent: a}
---
kind: Group
metadata: {name: c}
spec: {parent: b}
---
kind: Group
metadata: {name: d}
spec: {parent: d}
---
kind: Group
metadata: {name: e}
spec: {parent: a}
";
        let out = run(&[("cycle.yaml", docs)]);
        assert_eq!(
            out,
            [
                "WG107 cycle.yaml:4:16 the group hierarchy has a cycle: a → c → b → a (each arrow points to the parent)",
                "WG107 cycle.yaml:19:16 the group hierarchy has a cycle: d → d (each arrow points to the parent)",
            ]
        );
    }

    #[test]
    fn duplicate_device_ids_across_devices_and_sets() {
        let docs = "\
kind: Device
metadata: {name: store-0002}
spec: {group: eu}
---
kind: DeviceSet
metadata: {name: stores}
spec:
  group: eu
  range: {prefix: store-, start: 0, count: 5, width: 4}
---
kind: DeviceSet
metadata: {name: more}
spec:
  group: eu
  devices:
    - id: x1
    - id: store-0004
    - id: x1
";
        let (documents, _) = load(&FleetFiles::from_pairs([
            ("base.yaml", format!("{HEADER}{}", BASE.replace("---\n", &format!("---\n{HEADER}")))),
            ("d.yaml", format!("{HEADER}{}", docs.replace("---\n", &format!("---\n{HEADER}")))),
        ]));
        let diagnostics = check(&documents);
        let out: Vec<String> = diagnostics
            .iter()
            .map(|d| format!("{} {} {} / {}", d.code, d.location, d.message, d.notes[0].location))
            .collect();
        assert_eq!(
            out,
            [
                "WG103 d.yaml:11:10 duplicate device id \"store-0002\" / d.yaml:3:18",
                "WG103 d.yaml:20:11 duplicate device id \"store-0004\" / d.yaml:11:10",
                "WG103 d.yaml:21:11 duplicate device id \"x1\" / d.yaml:19:11",
            ]
        );
    }

    #[test]
    fn waves_that_do_not_add_up() {
        let policy = "\
kind: Policy
metadata: {name: p}
spec:
  release: v1
  selector: {}
  rollout:
    successThreshold: 5
    failureThreshold: 10
    maxConcurrent: 0
    waves:
      - {name: canary, count: 0}
      - {percent: 60, count: 3}
      - {}
      - {percent: 50, bake: soon}
      - {percent: 0}
      - {name: canaries, selector: {matchLabels: {tier: canary}}}
      - {}
";
        let out = run(&[("base.yaml", BASE), ("p.yaml", policy)]);
        assert_eq!(
            out,
            [
                "WG210 p.yaml:8:23 successThreshold (5) must be greater than failureThreshold (10)",
                "WG214 p.yaml:10:20 maxConcurrent must be at least 1 (0 would never let a device update)",
                "WG206 p.yaml:12:7 the waves' percentages add up to 110, more than 100",
                "WG207 p.yaml:12:31 wave \"canary\" has count 0 and would hold no device",
                "WG209 p.yaml:13:9 wave \"wave-2\" sets both count and percent; keep one",
                "WG208 p.yaml:14:9 wave \"wave-3\" has neither count nor percent, so it takes all remaining devices, but 4 more wave(s) follow it",
                "WG203 p.yaml:15:29 invalid bake time \"soon\" of wave \"wave-4\": expected number at 0 (write e.g. 30m or 1h)",
                "WG207 p.yaml:16:19 wave \"wave-5\" has percent 0 and would hold no device",
            ]
        );
    }

    #[test]
    fn windows_versions_selectors_and_artifacts() {
        let docs = "\
kind: Group
metadata: {name: eu-west}
spec:
  parent: eu
  maintenanceWindows:
    - {schedule: \"0 2 * * *\", duration: 2h, timeZone: Europe/Berlin}
    - {schedule: \"0 25 * * *\", duration: 0s, timeZone: Mars/Olympus}
---
kind: Release
metadata: {name: v2}
spec:
  version: v2.0
  compatible:
    matchExpressions:
      - {key: hw, operator: In}
      - {key: hw, operator: Exists, values: [x]}
  artifacts:
    - {name: os.img, url: \"https://example.com/os.img\", length: 1, sha256: \"00000000000000000000000000000000000000000000000000000000000000ff\"}
    - {name: os.img, url: \"not a url\", length: 1, sha256: \"ABC\"}
";
        let out = run(&[("base.yaml", BASE), ("x.yaml", docs)]);
        let codes: Vec<&str> = out.iter().map(|l| &l[..l.find(' ').unwrap()]).collect();
        let at: Vec<&str> = out.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
        assert_eq!(
            codes,
            ["WG202", "WG203", "WG204", "WG201", "WG205", "WG205", "WG211", "WG215", "WG212"],
            "{out:#?}"
        );
        assert_eq!(
            at,
            [
                "x.yaml:8:18",
                "x.yaml:8:42",
                "x.yaml:8:56",
                "x.yaml:14:12",
                "x.yaml:17:9",
                "x.yaml:18:45",
                "x.yaml:21:14",
                "x.yaml:21:27",
                "x.yaml:21:59",
            ]
        );
        assert!(out[3].contains("without the leading 'v'"), "{}", out[3]);
    }

    #[test]
    fn per_device_problems_are_capped() {
        let mut set = String::from("kind: DeviceSet\nmetadata: {name: s}\nspec:\n  group: eu\n  devices:\n");
        for i in 0..(MAX_PER_DOCUMENT + 5) {
            set.push_str(&format!("    - {{id: \"bad id {i}\"}}\n"));
        }
        let out = run(&[("base.yaml", BASE), ("s.yaml", &set)]);
        assert_eq!(out.len(), MAX_PER_DOCUMENT + 1);
        assert!(out[0].starts_with("WG108 s.yaml:1:1 5 more WG108 problems"), "{}", out[0]);
        assert!(out[1].starts_with("WG108 s.yaml:7:12 invalid device id \"bad id 0\""), "{}", out[1]);
    }
}
