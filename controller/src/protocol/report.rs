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
    /// A new release is installed and its health is being confirmed before it is committed
    /// (an A/B update may reboot in this state).
    Confirming,
    /// The new release failed its confirmation and the device went back to `release`, the
    /// one it ran before.
    #[serde(rename = "rolled_back")]
    RolledBack,
}

impl UpdateState {
    /// Every state, in the order of an update's lifecycle.
    pub const ALL: [UpdateState; 7] = [
        UpdateState::Idle,
        UpdateState::Downloading,
        UpdateState::Installing,
        UpdateState::Confirming,
        UpdateState::Installed,
        UpdateState::Failed,
        UpdateState::RolledBack,
    ];

    /// The state named `name` (as [`UpdateState::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<UpdateState> {
        UpdateState::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// The name used in snapshots and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Downloading => "downloading",
            UpdateState::Installing => "installing",
            UpdateState::Installed => "installed",
            UpdateState::Failed => "failed",
            UpdateState::Confirming => "confirming",
            UpdateState::RolledBack => "rolled_back",
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
    /// With `failed` or `rolled_back`: which step of the update failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureClass>,
    /// The fleet repository commit of the instruction behind the release the device runs
    /// (the instruction's `commit`), if it runs one Waveguide published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Which step of an update failed, so that a rollout can retry what is transient and count
/// each class against its own threshold.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FailureClass {
    /// Fetching the release's artifacts failed (network, server).
    Download,
    /// An artifact or the metadata did not verify (hash, length, signature).
    Verification,
    /// The install command failed.
    Install,
    /// The health command failed while the release was being confirmed.
    Health,
    /// The device did not finish in time (decided by the controller, never reported).
    Timeout,
}

impl FailureClass {
    /// Every class.
    pub const ALL: [FailureClass; 5] = [
        FailureClass::Download,
        FailureClass::Verification,
        FailureClass::Install,
        FailureClass::Health,
        FailureClass::Timeout,
    ];

    /// The class named `name` (as [`FailureClass::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|class| class.as_str() == name)
    }

    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Download => "download",
            FailureClass::Verification => "verification",
            FailureClass::Install => "install",
            FailureClass::Health => "health",
            FailureClass::Timeout => "timeout",
        }
    }

    /// Whether a retry may cure it: a download or verification error, or a timeout.
    pub fn is_transient(self) -> bool {
        matches!(self, FailureClass::Download | FailureClass::Verification | FailureClass::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_failure_classes_keep_their_names_on_the_wire() {
        for state in UpdateState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(UpdateState::from_name(state.as_str()), Some(state));
        }
        for class in FailureClass::ALL {
            assert_eq!(serde_json::to_string(&class).unwrap(), format!("\"{}\"", class.as_str()));
            assert_eq!(FailureClass::from_name(class.as_str()), Some(class));
        }
        assert_eq!(UpdateState::from_name("rolledBack"), None);
    }

    #[test]
    fn a_report_without_a_failure_class_reads_as_before() {
        let body: ReportBody =
            serde_json::from_str(r#"{"version": "1.0.0", "state": "failed", "healthy": true}"#).unwrap();
        assert_eq!(body.failure, None);
        let body: ReportBody = serde_json::from_str(
            r#"{"version": "1.0.0", "state": "rolled_back", "healthy": false, "failure": "health"}"#,
        )
        .unwrap();
        assert_eq!((body.state, body.failure), (UpdateState::RolledBack, Some(FailureClass::Health)));
    }
}
