//! The inventory snapshot file.
//!
//! ```yaml
//! capturedAt: 2026-11-20T09:00:00Z        # optional
//! devices:                                # a map from device id to its report ...
//!   berlin-pos-0001: {release: edge-os-1-4-2, version: 1.4.2, state: installed, healthy: true, lastSeen: 2026-11-20T08:55:12Z}
//! ```
//!
//! `devices` may also be a list of reports that each carry an `id`. JSON has the same
//! shape. Devices that never reported are simply absent.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{DeviceReport, Inventory};
use crate::protocol::{FailureClass, UpdateState};

/// The encoding of a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotFormat {
    /// JSON.
    Json,
    /// YAML (of which JSON is a subset, but JSON parses faster as JSON).
    Yaml,
}

impl SnapshotFormat {
    /// By extension (`.json`, `.yaml`, `.yml`), else by content: JSON starts with `{`.
    pub fn detect(path: &Path, bytes: &[u8]) -> SnapshotFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => SnapshotFormat::Json,
            Some("yaml" | "yml") => SnapshotFormat::Yaml,
            _ if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => SnapshotFormat::Json,
            _ => SnapshotFormat::Yaml,
        }
    }
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// The file could not be read.
    #[error("cannot read inventory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid snapshot; line and column are 1-based (0 when the parser
    /// could not tell).
    #[error("{file}:{line}:{column}: invalid inventory snapshot: {message}")]
    Parse { file: String, line: usize, column: usize, message: String },
    /// One device has two reports.
    #[error("{file}: device {device:?} is reported twice")]
    DuplicateDevice { file: String, device: String },
}

/// Reads a snapshot file, choosing JSON or YAML by [`SnapshotFormat::detect`].
pub fn read_snapshot(path: &Path) -> Result<Inventory, InventoryError> {
    let bytes = std::fs::read(path).map_err(|source| InventoryError::Io { path: path.to_owned(), source })?;
    parse_snapshot(&path.display().to_string(), &bytes, SnapshotFormat::detect(path, &bytes))
}

/// Parses a snapshot. `file` names it in errors.
pub fn parse_snapshot(file: &str, bytes: &[u8], format: SnapshotFormat) -> Result<Inventory, InventoryError> {
    let parse_error = |line: usize, column: usize, message: String| InventoryError::Parse {
        file: file.to_owned(),
        line,
        column,
        message,
    };
    let snapshot: Snapshot = match format {
        SnapshotFormat::Json => serde_json::from_slice(bytes)
            .map_err(|e| parse_error(e.line(), e.column(), strip_position(&e.to_string())))?,
        SnapshotFormat::Yaml => serde_yaml::from_slice(bytes).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            parse_error(line, column, strip_position(&e.to_string()))
        })?,
    };
    Inventory::new(snapshot.captured_at, snapshot.devices.0)
        .map_err(|device| InventoryError::DuplicateDevice { file: file.to_owned(), device: device.into() })
}

/// serde_json and serde_yaml append " at line L column C" to their messages; the error
/// carries the position in its own fields.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Snapshot {
    #[serde(default)]
    captured_at: Option<jiff::Timestamp>,
    devices: Reports,
}

/// `devices:` as either a map (id → report) or a list of reports with an `id`, read
/// straight into one vector: a million-device snapshot is never buffered twice.
struct Reports(Vec<(Box<str>, DeviceReport)>);

/// A list entry: a report plus its device id.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListedReport {
    id: String,
    #[serde(default)]
    release: Option<String>,
    version: semver::Version,
    state: UpdateState,
    #[serde(default)]
    healthy: bool,
    #[serde(default)]
    failure: Option<FailureClass>,
    #[serde(default)]
    last_seen: Option<jiff::Timestamp>,
}

impl<'de> Deserialize<'de> for Reports {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Reports, D::Error> {
        struct ReportsVisitor;
        impl<'de> Visitor<'de> for ReportsVisitor {
            type Value = Reports;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from device id to report, or a list of reports with an `id`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Reports, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((id, report)) = map.next_entry::<String, DeviceReport>()? {
                    out.push((id.into_boxed_str(), report));
                }
                Ok(Reports(out))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Reports, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(r) = seq.next_element::<ListedReport>()? {
                    let report = DeviceReport {
                        release: r.release,
                        version: r.version,
                        state: r.state,
                        healthy: r.healthy,
                        failure: r.failure,
                        last_seen: r.last_seen,
                    };
                    out.push((r.id.into_boxed_str(), report));
                }
                Ok(Reports(out))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Reports, E> {
                Ok(Reports(Vec::new()))
            }
        }
        deserializer.deserialize_any(ReportsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<Inventory, InventoryError> {
        parse_snapshot("inv.yaml", text.as_bytes(), SnapshotFormat::Yaml)
    }

    #[test]
    fn reads_a_yaml_map_sorted_by_id() {
        let inv = yaml(
            "capturedAt: 2026-11-20T09:00:00Z\ndevices:\n  b: {release: r2, version: 1.5.0, state: installed, healthy: true}\n  a: {version: 1.0.0, state: failed, lastSeen: 2026-11-20T08:00:00Z}\n",
        )
        .unwrap();
        let ids: Vec<&str> = inv.reports().iter().map(|(id, _)| &**id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(inv.get("a").unwrap().state, UpdateState::Failed);
        assert!(!inv.get("a").unwrap().healthy);
        assert_eq!(inv.get("b").unwrap().version, semver::Version::new(1, 5, 0));
        assert_eq!(inv.captured_at.unwrap().to_string(), "2026-11-20T09:00:00Z");
        assert_eq!(inv.get("a").unwrap().last_seen.unwrap().as_second(), 1_795_161_600);
    }

    #[test]
    fn reads_a_json_list() {
        let text = r#"{"devices": [{"id": "x", "release": "r", "version": "2.0.0", "state": "downloading", "healthy": true}]}"#;
        let inv = parse_snapshot("inv.json", text.as_bytes(), SnapshotFormat::Json).unwrap();
        assert_eq!(inv.get("x").unwrap().release.as_deref(), Some("r"));
        assert_eq!(inv.len(), 1);
    }

    #[test]
    fn a_failure_class_is_read_in_both_forms() {
        let inv = yaml("devices:\n  a: {version: 1.0.0, state: rolled_back, failure: health}\n").unwrap();
        assert_eq!(inv.get("a").unwrap().failure, Some(FailureClass::Health));
        let text =
            r#"{"devices": [{"id": "x", "version": "1.0.0", "state": "failed", "failure": "download"}]}"#;
        let inv = parse_snapshot("inv.json", text.as_bytes(), SnapshotFormat::Json).unwrap();
        assert_eq!(inv.get("x").unwrap().failure, Some(FailureClass::Download));
    }

    #[test]
    fn errors_carry_file_and_line() {
        let err = yaml(
            "devices:\n  a: {version: 1.0.0, state: installed}\n  b: {version: one, state: installed}\n",
        )
        .unwrap_err();
        match &err {
            InventoryError::Parse { file, line, .. } => assert_eq!((file.as_str(), *line), ("inv.yaml", 3)),
            other => panic!("unexpected {other}"),
        }
        let err = parse_snapshot(
            "i.json",
            b"{\"devices\": {\n\"a\": {\"version\": \"1.0.0\", \"state\": \"gone\"}}}",
            SnapshotFormat::Json,
        )
        .unwrap_err();
        assert!(matches!(err, InventoryError::Parse { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn timestamps_are_checked() {
        let err = yaml("devices:\n  a: {version: 1.0.0, state: idle, lastSeen: yesterday}\n").unwrap_err();
        assert!(matches!(err, InventoryError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn a_device_reported_twice_is_an_error() {
        let err = yaml(
            "devices:\n- {id: a, version: 1.0.0, state: idle}\n- {id: a, version: 1.0.0, state: idle}\n",
        )
        .unwrap_err();
        assert!(matches!(err, InventoryError::DuplicateDevice { ref device, .. } if device == "a"), "{err}");
    }

    #[test]
    fn format_by_extension_then_content() {
        assert_eq!(SnapshotFormat::detect(Path::new("x.json"), b"a: 1"), SnapshotFormat::Json);
        assert_eq!(SnapshotFormat::detect(Path::new("x"), b"  {\"devices\": {}}"), SnapshotFormat::Json);
        assert_eq!(SnapshotFormat::detect(Path::new("x"), b"devices: {}"), SnapshotFormat::Yaml);
    }
}
