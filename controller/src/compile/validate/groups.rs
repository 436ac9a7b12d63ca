//! Group documents: parents and cycles, labels, caps, enrollment and maintenance windows.

use std::collections::HashMap;
use std::sync::Arc;

use super::labels::check_labels;
use super::releases::sha256_problem;
use super::{unknown, Names};
use crate::compile::diagnostic::{Code, Diagnostic};
use crate::compile::load::{Documents, Located};
use crate::model::Group;
use crate::protocol::{Window, WindowError, Windows};

/// Checks every Group document and returns the maintenance windows each sets, parsed
/// (see [`super::Checked::windows`]).
pub(super) fn check_groups(
    documents: &Documents,
    names: &Names<'_>,
    out: &mut Vec<Diagnostic>,
) -> Vec<Option<Arc<Windows>>> {
    let mut windows = Vec::with_capacity(documents.groups.len());
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
        windows.push(spec.maintenance_windows.as_ref().map(|specs| {
            let mut parsed = Vec::with_capacity(specs.len());
            for (i, window) in specs.iter().enumerate() {
                match Window::parse(window) {
                    Ok(window) => parsed.push(window),
                    Err(errors) => out.extend(errors.into_iter().map(|e| {
                        let code = match e {
                            WindowError::Schedule { .. } => Code::InvalidSchedule,
                            WindowError::TimeZone { .. } => Code::InvalidTimeZone,
                            _ => Code::InvalidDuration,
                        };
                        let at = doc.locate(&format!("spec.maintenanceWindows[{i}].{}", e.field()));
                        Diagnostic::new(code, at, e.to_string())
                    })),
                }
            }
            Arc::new(Windows::from_parsed(parsed))
        }));
    }
    check_cycles(&documents.groups, &names.groups, out);
    windows
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
