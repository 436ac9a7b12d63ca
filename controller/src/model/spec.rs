//! The `spec` of each document kind.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{LabelSelector, Labels, SelectorRequirement};
use crate::protocol::{FailureClass, MaintenanceWindow};

/// `Group.spec`: a node of the hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    /// The parent group's name; absent for a root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Labels inherited by descendant groups and their devices. A descendant's own label
    /// overrides an inherited one with the same key.
    #[serde(default, skip_serializing_if = "Labels::is_empty", deserialize_with = "super::unique_labels")]
    pub labels: Labels,
    /// When devices of this subtree may install updates. Inherited by descendants unless
    /// they set their own list (an empty list means "any time").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_windows: Option<Vec<MaintenanceWindow>>,
    /// At most this many devices of this subtree update at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
    /// Devices that enroll with this group's token join this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
}

/// How devices enroll into a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Enrollment {
    /// Hex SHA-256 of the enrollment token. The token itself never goes into Git.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub token_sha256: String,
}

/// `Device.spec`: one declared device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceSpec {
    /// The device id the agent reports with. Defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
    pub id: Option<String>,
    /// The group the device belongs to.
    pub group: String,
    /// The device's own labels, on top of those it inherits from its group.
    #[serde(default, skip_serializing_if = "Labels::is_empty", deserialize_with = "super::unique_labels")]
    pub labels: Labels,
    /// Base64 ed25519 public key that authenticates the device's reports. Devices without
    /// one get theirs through enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Pins the device to this release, overriding every policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

/// `DeviceSet.spec`: many devices of one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceSetSpec {
    /// The group every device of the set belongs to.
    pub group: String,
    /// Labels every device of the set carries, on top of inherited ones.
    #[serde(default, skip_serializing_if = "Labels::is_empty", deserialize_with = "super::unique_labels")]
    pub labels: Labels,
    /// Pins every device of the set to this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// Devices listed one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSetEntry>,
    /// Devices named by a numbered range, e.g. `store-0000` … `store-0499`. They have no
    /// declared key and authenticate through enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<DeviceRange>,
}

/// One device of a [`DeviceSetSpec`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceSetEntry {
    /// The device id.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
    pub id: String,
    /// Base64 ed25519 public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Labels of this device only.
    #[serde(default, skip_serializing_if = "Labels::is_empty", deserialize_with = "super::unique_labels")]
    pub labels: Labels,
    /// Pins this device to a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

/// Device ids `prefix` + zero-padded numbers `start .. start + count`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceRange {
    /// Text before the number, e.g. `store-`.
    pub prefix: String,
    /// First number.
    #[serde(default)]
    pub start: u64,
    /// How many devices.
    #[schemars(range(min = 1))]
    pub count: u64,
    /// Zero-pad numbers to this many digits.
    #[serde(default)]
    pub width: u8,
}

impl DeviceRange {
    /// The number of the range's last device; `None` when the range is empty or its
    /// numbers would run past `u64::MAX` (the compiler refuses such a range).
    pub fn last_number(&self) -> Option<u64> {
        self.start.checked_add(self.count.checked_sub(1)?)
    }

    /// The id of device number `n`.
    pub fn id(&self, n: u64) -> String {
        format!("{}{:0width$}", self.prefix, n, width = self.width as usize)
    }

    /// The device ids of the range, in order; numbers past `u64::MAX` are not made up.
    pub fn ids(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.count).map_while(|i| self.start.checked_add(i)).map(|n| self.id(n))
    }
}

/// `Release.spec`: a version of the software.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseSpec {
    /// Semantic version (`1.4.2`); releases are ordered by it and downgrades are refused
    /// unless a policy allows them.
    pub version: String,
    /// Devices that can run this release. Absent: every device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible: Option<LabelSelector>,
    /// The files a device downloads and installs.
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
}

/// A file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    /// File name, published as the TUF target `releases/<release>/<name>`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    pub name: String,
    /// Where the file can be fetched from.
    pub url: String,
    /// Hex SHA-256 of the file.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
    /// Size in bytes.
    pub length: u64,
}

/// `Policy.spec`: who runs which release, and how it rolls out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// The devices the policy covers.
    pub selector: PolicySelector,
    /// The release those devices should run.
    pub release: String,
    /// Higher wins when several policies select a device. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// A paused policy publishes nothing new.
    #[serde(default)]
    pub paused: bool,
    /// Allow moving devices to a lower version.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// How the release rolls out.
    #[serde(default)]
    pub rollout: RolloutSpec,
}

/// A policy's selector: devices in any of `groups` (whole subtrees), further narrowed by
/// the label requirements. No groups means the whole fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySelector {
    /// Group subtrees the policy covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Labels the devices (own and inherited labels) must have with exactly these values.
    #[serde(default, skip_serializing_if = "Labels::is_empty", deserialize_with = "super::unique_labels")]
    pub match_labels: Labels,
    /// Set-based label requirements on the devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

impl PolicySelector {
    /// The label part of the selector.
    pub fn label_selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: self.match_labels.clone(),
            match_expressions: self.match_expressions.clone(),
        }
    }
}

/// How a policy's release rolls out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// How devices are ordered after the wave selectors. Default `spread`.
    #[serde(default)]
    pub order: Order,
    /// The waves, in order. No waves: one wave with every device.
    #[serde(default)]
    pub waves: Vec<WaveSpec>,
    /// At most this many devices of the policy update at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
    /// Percent of a wave that must report installed and healthy before the next wave.
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub success_threshold: f64,
    /// Percent of a wave failing that halts the rollout: one share for every failure
    /// (`5`), or a share per failure class with a minimum sample.
    #[serde(default)]
    pub failure_threshold: FailureThreshold,
    /// Whether each wave after the first waits for an operator's approval.
    #[serde(default)]
    pub approval: Approval,
    /// How long a device confirms a new release's health before it commits it, e.g.
    /// `5m`; absent: it commits at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<String>,
    /// A device still downloading, installing or confirming this long after its
    /// instruction was published counts as failed (class `timeout`), e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_timeout: Option<String>,
    /// Failures retried by re-publishing the instruction before they count as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
    /// What a halted rollout does. Default `halt`.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// A rollout's failure threshold, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FailureThreshold {
    /// Percent of a wave failing, whatever the failure, that halts the rollout.
    Percent(#[schemars(range(min = 0.0, max = 100.0))] f64),
    /// Thresholds per failure class, and the sample they need.
    PerClass(Box<FailureThresholds>),
}

impl Default for FailureThreshold {
    fn default() -> Self {
        FailureThreshold::Percent(DEFAULT_FAILURE_THRESHOLD)
    }
}

/// The failure threshold written as a map. Each share is a percent of the wave's counted
/// devices; a class's share counts that class's failures only (`verification` failures
/// count as `download`, and a failure reported without a class as `install`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureThresholds {
    /// Every failure together. Default 5 when no class is given, else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// Install failures (and failures reported without a class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub install: Option<f64>,
    /// Health failures: unhealthy on the release, or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub health: Option<f64>,
    /// Devices that did not finish within `deviceTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub timeout: Option<f64>,
    /// Download and verification failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub download: Option<f64>,
    /// No threshold halts a wave before this many of its devices finished (healthy or
    /// failed). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_sample: Option<u64>,
}

/// Which failures are retried, how often, and after how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetriesSpec {
    /// Retries per device before its failure counts.
    pub max: u32,
    /// How long after the failure the instruction is re-published, e.g. `1m`. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// The failure classes retried. Default `[download, verification, timeout]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<FailureClass>>,
}

/// What a rollout does when a wave crosses its failure threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Stop publishing; devices stay where they are.
    #[default]
    Halt,
    /// Stop publishing, and return the devices that took the release to the release they
    /// ran before, through a rollback rollout of their own.
    Rollback,
}

fn default_success_threshold() -> f64 {
    95.0
}

/// The failure threshold when the policy gives none, percent.
pub const DEFAULT_FAILURE_THRESHOLD: f64 = 5.0;

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            order: Order::default(),
            waves: Vec::new(),
            max_concurrent: None,
            success_threshold: default_success_threshold(),
            failure_threshold: FailureThreshold::default(),
            approval: Approval::default(),
            confirmation: None,
            device_timeout: None,
            retries: None,
            on_failure: OnFailure::default(),
        }
    }
}

/// Device order within a rollout, after wave selectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Order {
    /// Group by group, depth first, so a wave touches as few sites as possible.
    Hierarchy,
    /// By a stable hash of the device id, so every wave samples the whole fleet.
    #[default]
    Spread,
}

/// Whether waves wait for an operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Approval {
    /// Waves advance on health alone.
    #[default]
    Auto,
    /// Every wave after the first also waits for an approval.
    Manual,
}

/// One wave of a rollout: a `count` or a `percent` of the policy's devices, or, when both
/// are absent, all remaining devices (only the last wave may do that).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaveSpec {
    /// A name for reports, e.g. `canary`. Default `wave-<n>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Number of devices in the wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<u64>,
    /// Percent of the policy's devices in the wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
    /// Devices matching this selector are taken first (e.g. canaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// How long the wave must stay healthy before the next one, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<String>,
}

impl WaveSpec {
    /// The wave's name for reports: its `name`, else `wave-<n>` with `index` counted
    /// from 0.
    pub fn display_name(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("wave-{}", index + 1))
    }
}
