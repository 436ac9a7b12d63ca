//! The device instruction: what the controller publishes for one device, as the TUF
//! target `devices/<device-id>.json`, and what the agent verifies and acts on.

use serde::{Deserialize, Serialize};

use super::window::MaintenanceWindow;

/// What one device should run: the content of its target `devices/<device-id>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInstruction {
    /// The device id. The publisher refuses an id that breaks the rule of
    /// [`DeviceId`](super::DeviceId).
    pub device: String,
    /// The release the device should run.
    pub release: String,
    /// That release's version.
    pub version: String,
    /// The artifacts to install, as targets of the `releases` role.
    pub artifacts: Vec<ArtifactRef>,
    /// The rollout that published this instruction.
    pub rollout: String,
    /// The wave of that rollout, from 0.
    pub wave: u32,
    /// When the device may install: its group's maintenance windows (inherited), empty
    /// for "any time". The agent checks them against its own clock before installing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// How long, in seconds, the device confirms the new release's health after installing
    /// it before it commits it (the policy's `rollout.confirmation`); absent: commit at once
    /// after one passing health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation_secs: Option<u64>,
    /// The attempt of this instruction, from 0. A retry re-publishes the same release with
    /// the next attempt, which tells a device that failed it to try again.
    #[serde(default, skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
    /// The fleet repository commit the instruction came from (the commit that started its
    /// rollout); the device reports it with the release it runs. Absent for a fleet not
    /// read from Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Whether the device may move to a lower version than the one it runs: the policy's
    /// `allowDowngrade`, or a rollback. Absent (false): a device refuses a downgrade.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_downgrade: bool,
}

/// Whether a flag is off, left out of the instruction's JSON.
pub(crate) fn is_false(flag: &bool) -> bool {
    !*flag
}

/// Whether an instruction's `attempt` is the first one, left out of its JSON. The
/// publisher's borrowed copy of the instruction writes it the same way.
pub(crate) fn is_first_attempt(n: &u32) -> bool {
    *n == 0
}

/// An artifact a device instruction points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// Target path, `releases/<release>/<file>`.
    pub target: String,
    /// Hex SHA-256 of the artifact.
    pub sha256: String,
    /// Length in bytes.
    pub length: u64,
}
