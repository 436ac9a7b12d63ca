//! The static checks: everything that can be decided from the documents alone, before
//! anything is resolved — names, duplicates, references, the group hierarchy, waves,
//! thresholds, schedules, durations, time zones, versions, selectors, digests and keys.
//! One file per document kind ([`groups`], [`devices`], [`releases`], [`policies`]), and
//! [`labels`] for the names, labels and selectors every kind has.
//!
//! Every check reports with the position of the offending field. Checks that run once
//! per device (a DeviceSet may list 100,000) run in parallel and report at most
//! [`MAX_PER_DOCUMENT`] diagnostics of one code per document, then one summary: a
//! thousand copies of one mistake help nobody, and finding each one's line costs a
//! re-read of the document.
//!
//! What a check parses (maintenance windows, bake times) it hands on parsed, in
//! [`Checked`], so no later stage reads the text again.

mod devices;
mod groups;
mod labels;
mod policies;
mod releases;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::diagnostic::{self, Code, Diagnostic};
use super::load::{AsObject, DeviceDocuments, Documents, Located, Location};
use super::rules::RolloutRules;
use crate::model::Kind;
use crate::protocol::duration::WrittenDuration;
use crate::protocol::Windows;

pub use devices::public_key_problem;
pub use labels::{dns_label_problem, label_key_problem, label_value_problem};
pub use releases::sha256_problem;

/// At most this many diagnostics of one code are reported per document; the rest are
/// counted in one summary diagnostic.
pub const MAX_PER_DOCUMENT: usize = 20;

/// What the checks found, and the values they parsed on the way.
#[derive(Debug, Default)]
pub struct Checked {
    /// Every error and warning, sorted by file and line.
    pub diagnostics: Vec<Diagnostic>,
    /// Per Group document (in [`Documents::groups`] order), the maintenance windows it
    /// sets: `None` when it inherits its parent's. Windows that do not parse are reported
    /// and left out.
    pub windows: Vec<Option<Arc<Windows>>>,
    /// Per Policy document (in [`Documents::policies`] order), the bake time of each of
    /// its waves. Bake times that do not parse are reported and left out.
    pub bakes: Vec<Vec<Option<WrittenDuration>>>,
    /// Per Policy document, its rollout's device-health rules. Durations that do not
    /// parse are reported and left out.
    pub rules: Vec<RolloutRules>,
}

/// Runs every static check and returns the diagnostics sorted by file and line.
pub fn check(documents: &Documents) -> Vec<Diagnostic> {
    check_cached(documents, &mut CheckCache::default()).diagnostics
}

/// What the device checks found last time, and what their findings depend on: the device
/// documents and the group and release names they refer to.
#[derive(Debug, Default)]
pub struct CheckCache {
    devices: Option<(DeviceCheckInputs, Vec<Diagnostic>)>,
}

/// The device documents, group names and release names, sorted.
type DeviceCheckInputs = (DeviceDocuments, Vec<String>, Vec<String>);

/// Every static check, taking the device checks' findings (a million entries' ids, keys,
/// labels and pins) from `cache` when nothing they depend on changed since.
pub fn check_cached(documents: &Documents, cache: &mut CheckCache) -> Checked {
    let mut out = Vec::new();
    let names = Names::new(documents, &mut out);
    labels::check_names(documents, &mut out);
    let windows = groups::check_groups(documents, &names, &mut out);
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
            devices::check_devices(documents, &names, &mut found);
            devices::check_duplicate_ids(documents, &mut found);
            out.extend(found.iter().cloned());
            cache.devices = Some((key, found));
        }
    }
    releases::check_releases(documents, &mut out);
    let (bakes, rules) = policies::check_policies(documents, &names, &mut out);
    diagnostic::sort(&mut out);
    Checked { diagnostics: out, windows, bakes, rules }
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
