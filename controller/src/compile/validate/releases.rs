//! Release documents: versions, compatibility selectors and artifacts.

use std::collections::HashMap;

use super::labels::check_selector;
use crate::compile::diagnostic::{Code, Diagnostic};
use crate::compile::load::Documents;

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

pub(super) fn check_releases(documents: &Documents, out: &mut Vec<Diagnostic>) {
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
