//! Fleets shared by several tests, kept as files under `tests/data/<scenario>/`.
//!
//! A file may hold `${name}` placeholders for what a test chooses at run time (a release,
//! a token hash, generated device lists); [`render`] fills them in.

use std::path::PathBuf;

use crate::repo_root;

/// The directory of a scenario: `tests/data/<scenario>`.
pub fn dir(scenario: &str) -> PathBuf {
    repo_root().join("tests/data").join(scenario)
}

/// The text of `tests/data/<scenario>/<file>` with each `${name}` of `values` replaced.
/// Panics, naming the file, when it cannot be read or a placeholder is left unfilled.
pub fn render(scenario: &str, file: &str, values: &[(&str, &str)]) -> String {
    let path = dir(scenario).join(file);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for (name, value) in values {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = text.find("${") {
        let line = text[..at].lines().count().max(1);
        panic!("{}:{line}: a placeholder is left unfilled", path.display());
    }
    text
}

/// `device_set` (the head of a DeviceSet whose `spec.devices` comes last) with one entry
/// per `(id, public key)` appended.
pub fn with_devices<'a>(
    mut device_set: String,
    devices: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    for (id, key) in devices {
        device_set.push_str(&format!("    - id: {id}\n      publicKey: {key}\n"));
    }
    device_set
}
