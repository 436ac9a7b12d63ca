//! Names, labels and label selectors: the checks every document kind shares.

use super::{Located, Problem};
use crate::compile::diagnostic::{Code, Diagnostic};
use crate::compile::load::{key_segment, AsObject, Documents};
use crate::model::{Labels, Operator, SelectorRequirement};

pub(super) fn check_names(documents: &Documents, out: &mut Vec<Diagnostic>) {
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

/// Invalid label keys (reported at the key) and values (at the value) of the labels map
/// at `path`. `path` is only called when there is a problem, since this runs once per
/// device.
pub(super) fn label_problems(path: impl Fn() -> String, labels: &Labels) -> Vec<Problem> {
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

pub(super) fn check_labels<T>(doc: &Located<T>, path: &str, labels: &Labels, out: &mut Vec<Diagnostic>) {
    for problem in label_problems(|| path.to_owned(), labels) {
        out.push(Diagnostic::new(problem.code, problem.location(doc), problem.message));
    }
}

/// Checks a label selector's keys, values and operator/values pairing.
pub(super) fn check_selector<T>(
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
