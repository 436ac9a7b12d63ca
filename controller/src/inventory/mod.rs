//! Discovered state: what each device last reported.
//!
//! For now the inventory is a snapshot file (JSON or YAML) — what the device API would
//! hold — so that `waveguide plan` can diff a fleet against a known state. The embedded
//! database behind the device API will live here too.

mod snapshot;
pub mod store;

pub use snapshot::{parse_snapshot, read_snapshot, InventoryError, SnapshotFormat};

use rayon::slice::ParallelSliceMut;
use serde::{Deserialize, Serialize};

use crate::protocol::{FailureClass, UpdateState};

/// One device's last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceReport {
    /// The release the device runs, when it runs one Waveguide published (a factory image
    /// has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The version the device runs; what downgrades are judged on.
    pub version: semver::Version,
    /// Update progress.
    pub state: UpdateState,
    /// Whether the device's own health checks pass.
    #[serde(default)]
    pub healthy: bool,
    /// With `failed` or `rolled_back`: which step of the update failed, as the device
    /// reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureClass>,
    /// When the device last reported (RFC 3339 in files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<jiff::Timestamp>,
}

/// The discovered state of a fleet: one report per device that has ever reported, sorted
/// by device id so it joins the compiled fleet (also sorted by id) in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// When the snapshot was taken, if it says.
    pub captured_at: Option<jiff::Timestamp>,
    reports: Vec<(Box<str>, DeviceReport)>,
}

impl Inventory {
    /// Builds an inventory from reports in any order. Returns the id of a device reported
    /// twice, if any.
    pub fn new(
        captured_at: Option<jiff::Timestamp>,
        mut reports: Vec<(Box<str>, DeviceReport)>,
    ) -> Result<Inventory, Box<str>> {
        reports.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = reports.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(pair[0].0.clone());
        }
        Ok(Inventory { captured_at, reports })
    }

    /// Applies newer reports: each replaces the device's report, or adds the device.
    pub fn update(&mut self, changed: Vec<(Box<str>, DeviceReport)>) {
        let mut added = Vec::new();
        for (id, report) in changed {
            match self.reports.binary_search_by(|(known, _)| (**known).cmp(&*id)) {
                Ok(i) => self.reports[i].1 = report,
                Err(_) => added.push((id, report)),
            }
        }
        if !added.is_empty() {
            self.reports.extend(added);
            self.reports.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
            self.reports.dedup_by(|b, a| a.0 == b.0);
        }
    }

    /// The reports, sorted by device id.
    pub fn reports(&self) -> &[(Box<str>, DeviceReport)] {
        &self.reports
    }

    /// The report of one device.
    pub fn get(&self, device: &str) -> Option<&DeviceReport> {
        self.reports.binary_search_by(|(id, _)| (**id).cmp(device)).ok().map(|i| &self.reports[i].1)
    }

    /// Number of devices that reported.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// True when no device reported.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(version: &str) -> DeviceReport {
        DeviceReport {
            release: None,
            version: version.parse().unwrap(),
            state: UpdateState::Idle,
            healthy: true,
            failure: None,
            last_seen: None,
        }
    }

    #[test]
    fn updates_replace_reports_and_add_devices_in_order() {
        let mut inventory =
            Inventory::new(None, vec![("b".into(), report("1.0.0")), ("d".into(), report("1.0.0"))]).unwrap();
        inventory.update(vec![
            ("d".into(), report("2.0.0")),
            ("a".into(), report("3.0.0")),
            ("c".into(), report("4.0.0")),
        ]);
        let ids: Vec<&str> = inventory.reports().iter().map(|(id, _)| &**id).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert_eq!(inventory.get("d").unwrap().version.to_string(), "2.0.0");
        assert_eq!(inventory.get("b").unwrap().version.to_string(), "1.0.0");
        inventory.update(Vec::new());
        assert_eq!(inventory.len(), 4);
    }
}
