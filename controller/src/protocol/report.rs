//! The report a device sends to `POST /v1/devices/{id}/reports`, and the update states
//! it reports.

use serde::{Deserialize, Serialize};

/// Where a device is in installing its desired release, as it last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpdateState {
    /// Running its current release, nothing in progress.
    Idle,
    /// Fetching a new release.
    Downloading,
    /// Installing a downloaded release.
    Installing,
    /// The last update installed successfully.
    Installed,
    /// The last update failed; the device still runs `release`.
    Failed,
}

impl UpdateState {
    /// The name used in snapshots and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Downloading => "downloading",
            UpdateState::Installing => "installing",
            UpdateState::Installed => "installed",
            UpdateState::Failed => "failed",
        }
    }

    /// True when the device is settled on what it runs: nothing in progress, nothing failed.
    pub fn is_settled(self) -> bool {
        matches!(self, UpdateState::Idle | UpdateState::Installed)
    }
}

/// The JSON body of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportBody {
    /// The release the device runs, if it runs one Waveguide published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The version it runs.
    pub version: semver::Version,
    /// Update progress.
    pub state: UpdateState,
    /// Whether its health checks pass.
    pub healthy: bool,
    /// Free-form detail, e.g. an installer's error output (at most 4 KiB is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
