//! The custom resources: `Fleet` (what an operator declares) and `FleetRollout` (what the
//! engine creates for every rollout, and operators steer). Their CustomResourceDefinitions
//! are generated from these types into `crds/` by `waveguide crds`.

use std::collections::BTreeMap;

use crate::rollout::state::{RolloutPhase, WaveState};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of Waveguide's resources.
pub const GROUP: &str = "waveguide.dev";

/// A fleet that the controller follows: its Git source, its TUF repository and its
/// inventory. The controller compiles every new commit, rolls releases out in waves and
/// publishes the devices' instructions.
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "waveguide.dev",
    version = "v1alpha1",
    kind = "Fleet",
    doc = "A fleet of edge devices that Waveguide follows from Git, rolls out and publishes.",
    namespaced,
    status = "FleetStatus",
    shortname = "fl",
    category = "waveguide",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Commit","type":"string","jsonPath":".status.lastAppliedCommit"}"#,
    printcolumn = r#"{"name":"Devices","type":"integer","jsonPath":".status.devices"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FleetSpec {
    /// The fleet repository and how to follow it.
    pub source: FleetSource,
    /// The published TUF repository.
    #[serde(default)]
    pub tuf: TufSettings,
    /// The inventory database.
    #[serde(default)]
    pub inventory: InventorySettings,
    /// Stops following the source and publishing; rollouts keep their state.
    #[serde(default)]
    pub suspend: bool,
}

/// The Git source of a fleet.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetSource {
    /// The repository: an `https://`, `ssh://` (or `git@host:path`), `git://` or `file://`
    /// URL, or a path inside the controller's container.
    #[schemars(length(min = 1))]
    pub url: String,
    /// The branch, tag or commit to follow.
    #[serde(rename = "ref")]
    pub reference: SourceRef,
    /// The fleet path inside the repository; the whole tree when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// How often to poll (`30s`, `5m`, `1h`).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: String,
    /// A Secret in the Fleet's namespace with the credentials: `token`, `username` and
    /// `password`, or `identity` (an SSH private key) with an optional `passphrase` and
    /// `known_hosts` (the server's host keys, which are then checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Which commits may be applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<SourceVerify>,
    /// The key of a Secret holding the shared secret of the push webhook (GitHub's
    /// "Secret", GitLab's "Secret token"). With it, the controller receives push events at
    /// `/fleets/<namespace>/<name>/v1/hooks/git` and fetches at once instead of at the
    /// next poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretKeyRef>,
}

fn default_interval() -> String {
    "1m".into()
}

/// A Git reference: exactly one of `branch`, `tag` and `commit`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.branch), has(self.tag), has(self.commit)].filter(x, x).size() == 1",
    "message": "set exactly one of branch, tag and commit"
}]))]
pub struct SourceRef {
    /// The branch to follow (`main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The tag to follow; a moved tag is followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// One fixed commit, by its full id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-f]{40}$"))]
    pub commit: Option<String>,
}

/// Commit signature verification.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceVerify {
    /// `head`: the commit followed must be signed by an allowed signer; `none`: any commit.
    #[serde(default)]
    pub mode: VerifyMode,
    /// A Secret holding `allowedSigners` (git's SSH allowed-signers format) and/or
    /// `openpgpKeys` (ASCII-armored public keys).
    pub secret_ref: SecretRef,
}

/// Whether commit signatures are checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Any commit is applied.
    #[default]
    None,
    /// The commit followed must carry a good signature by an allowed signer.
    Head,
}

/// A Secret in the same namespace.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One key of a Secret in the same namespace.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside it.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The TUF repository of a fleet.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TufSettings {
    /// A Secret with the signing keys: `online.pk8` and every signed root
    /// (`<version>.root.json`); the offline root keys stay out of the cluster. Without it,
    /// the controller creates keys in its data volume (for trials only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_secret_ref: Option<SecretRef>,
    /// How long new metadata is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiries: Option<TufExpiries>,
}

/// Expiries of new TUF metadata (`1h`, `7d`); defaults when absent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct TufExpiries {
    /// `timestamp.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub timestamp: Option<String>,
    /// `snapshot.json` and the device bins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub snapshot: Option<String>,
    /// `targets.json` and the releases role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub targets: Option<String>,
}

/// The inventory database of a fleet.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventorySettings {
    /// The key of a Secret holding a `postgres://` URL. Without it, the inventory is an
    /// SQLite file in the controller's data volume (one replica only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_secret_ref: Option<SecretKeyRef>,
}

/// What the controller last saw of a Fleet.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// `Ready`, `SourceReady`, `Validated` and `Published`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation of the spec these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The commit in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_commit: Option<String>,
    /// The last commit fetched, applied or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_commit: Option<String>,
    /// Devices declared by the commit in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u64>,
    /// Rollouts not yet completed or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_rollouts: Option<u64>,
}

/// A condition, as Kubernetes conventions shape them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `SourceReady`, `Validated` or `Published`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// What happened, for people.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A rollout of one policy to one release, created by the controller. Operators pause it
/// (`spec.paused`), approve waves (`spec.approvedWaves`), abort it (`spec.abort`), roll it
/// back (`spec.rollback`), and ask for a retry of its failed devices (`spec.retry`) or the
/// acceptance of its current failures (`spec.accept`).
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "waveguide.dev",
    version = "v1alpha1",
    kind = "FleetRollout",
    doc = "A rollout of one policy to one release, created by Waveguide and steered by operators.",
    namespaced,
    status = "FleetRolloutStatus",
    shortname = "fr",
    category = "waveguide",
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".spec.policy"}"#,
    printcolumn = r#"{"name":"Release","type":"string","jsonPath":".spec.release"}"#,
    printcolumn = r#"{"name":"Wave","type":"string","jsonPath":".status.wave"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","jsonPath":".status.updated"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Rollback-Of","type":"string","jsonPath":".spec.rollbackOf","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FleetRolloutSpec {
    /// The Fleet it belongs to.
    #[schemars(length(min = 1))]
    pub fleet: String,
    /// The rollout's id in the inventory.
    #[schemars(length(min = 1))]
    pub rollout_id: String,
    /// The policy rolling out.
    pub policy: String,
    /// The release it moves to.
    pub release: String,
    /// That release's version.
    pub version: String,
    /// The commit that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// For a rollback rollout: the id of the rollout whose devices it returns to the
    /// release they ran before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    /// Its waves, in order.
    #[serde(default)]
    pub waves: Vec<RolloutWave>,
    /// Set by an operator: publish nothing more until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Set by an operator: the waves (numbered from 1) approved to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub approved_waves: Option<Vec<u32>>,
    /// Set by an operator: give the rollout up. Published instructions stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<bool>,
    /// Set by an operator: return the devices that took the release to the one they ran
    /// before, through a rollback rollout (`<id>-rollback`). Publishes nothing more itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
    /// Set by an operator to a new value (a timestamp, say) to publish the failed devices'
    /// instructions again, once per value; `status.lastRetry` shows the value carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub retry: Option<String>,
    /// Set by an operator to a new value to count the failures of the devices failed now
    /// as accepted, once per value; `status.lastAccept` shows the value carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub accept: Option<String>,
}

/// One wave of a rollout, as cut when it started.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutWave {
    /// Its name (`canary`).
    pub name: String,
    /// Devices in it.
    pub devices: u64,
    /// Bake time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<String>,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRolloutStatus {
    /// `progressing`, `paused`, `halted`, `completed` or `aborted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// The wave in progress, as `<number>/<waves>`.
    #[serde(default)]
    pub wave: String,
    /// Devices healthy on the release.
    #[serde(default)]
    pub updated: u64,
    /// Devices that failed.
    #[serde(default)]
    pub failed: u64,
    /// Devices whose failures an operator accepted: counted neither as updated nor as
    /// failed.
    #[serde(default)]
    pub accepted: u64,
    /// Devices in the rollout.
    #[serde(default)]
    pub devices: u64,
    /// Why it is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Every wave.
    #[serde(default)]
    pub waves: Vec<RolloutWaveStatus>,
    /// The generation of the spec whose operator changes took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last `spec.retry` value carried out (or refused): a value is acted on once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retry: Option<String>,
    /// The last `spec.accept` value carried out (or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accept: Option<String>,
    /// When its rollback was asked for (by `spec.rollback`, the CLI, the API or the
    /// policy's `onFailure: rollback`), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<String>,
}

/// One wave's progress.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutWaveStatus {
    /// Its number, from 1.
    pub number: u32,
    /// Its name.
    pub name: String,
    /// `pending`, `published`, `succeeded` or `failed`.
    pub state: WaveState,
    /// Devices in it.
    pub devices: u64,
    /// Healthy on the release.
    pub healthy: u64,
    /// Published, no result yet.
    pub in_flight: u64,
    /// Failed.
    pub failed: u64,
    /// Silent past the stale timeout.
    pub stale: u64,
    /// Failed, with the failure accepted by an operator.
    #[serde(default)]
    pub accepted: u64,
    /// When it was approved (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
}

/// The generated CustomResourceDefinitions, by file name under `crds/`, as YAML.
pub fn files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for crd in [Fleet::crd(), FleetRollout::crd()] {
        let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default());
        let yaml = serde_yaml::to_string(&crd).expect("a CRD serialises to YAML");
        out.insert(name, format!("# Generated by `waveguide crds`; do not edit.\n{yaml}"));
    }
    out
}
