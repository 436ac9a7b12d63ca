//! The fleet repository's document kinds (`waveguide.dev/v1alpha1`): `Group`, `Device`,
//! `DeviceSet`, `Release` and `Policy`.
//!
//! These are plain data types with serde and schemars derives: what an operator writes
//! in YAML, nothing resolved. Every document has the same envelope,
//! `{apiVersion, kind, metadata: {name, labels?, annotations?}, spec}`; the kinds differ
//! only in their spec. Checking references, cycles and conflicts is the compiler's job.

pub mod schema;
mod selector;
mod spec;

pub use selector::{LabelSelector, Operator, SelectorRequirement};
pub use spec::*;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API version every fleet document carries.
pub const API_VERSION: &str = "waveguide.dev/v1alpha1";

/// Labels and annotations: string keys to string values, ordered for deterministic output.
pub type Labels = BTreeMap<String, String>;

/// Reads a [`Labels`] map, refusing a key written twice: a plain map would keep the last
/// value silently, and other YAML tools might keep the first.
pub(crate) fn unique_labels<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Labels, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Labels;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of string keys to string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
            let mut labels = Labels::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if labels.contains_key(&key) {
                    return Err(serde::de::Error::custom(format_args!("duplicate entry with key `{key}`")));
                }
                labels.insert(key, value);
            }
            Ok(labels)
        }
    }
    deserializer.deserialize_map(Visitor)
}

/// The `metadata` block of every document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Unique per kind; a DNS-1123 label (lower-case alphanumerics and `-`, at most 63).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(min = 1, max = 63))]
    pub name: String,
    /// Labels on the document itself, for your own tooling, in Kubernetes label syntax
    /// (not inherited, not seen by selectors; see `spec.labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "unique_labels")]
    pub labels: Labels,
    /// Annotations: any string keys and values, ignored by Waveguide.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "unique_labels")]
    pub annotations: Labels,
}

/// A document of one kind: the common envelope around its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S> {
    /// Always `waveguide.dev/v1alpha1`.
    pub api_version: String,
    /// The document kind, e.g. `Group`.
    pub kind: String,
    /// Name, labels and annotations.
    pub metadata: Metadata,
    /// The kind-specific content.
    pub spec: S,
}

/// A node of the fleet hierarchy (region, site, ...).
pub type Group = Object<GroupSpec>;
/// One declared device.
pub type Device = Object<DeviceSpec>;
/// Many declared devices of one group, written compactly.
pub type DeviceSet = Object<DeviceSetSpec>;
/// A version of the software that devices run.
pub type Release = Object<ReleaseSpec>;
/// Which release a part of the fleet should run, and how to roll it out.
pub type Policy = Object<PolicySpec>;

/// The document kinds of a fleet repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Group,
    Device,
    DeviceSet,
    Release,
    Policy,
}

impl Kind {
    /// Every kind, in the order documents are reported.
    pub const ALL: [Kind; 5] = [Kind::Group, Kind::Device, Kind::DeviceSet, Kind::Release, Kind::Policy];

    /// The name as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Group => "Group",
            Kind::Device => "Device",
            Kind::DeviceSet => "DeviceSet",
            Kind::Release => "Release",
            Kind::Policy => "Policy",
        }
    }

    /// Parses the `kind:` field.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_reads_from_yaml_with_defaults() {
        let p: Policy = serde_yaml::from_str(
            "apiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata: {name: stable}\nspec:\n  selector: {groups: [eu], matchLabels: {hw: rpi4}}\n  release: v2\n  rollout:\n    waves: [{count: 10, selector: {matchLabels: {tier: canary}}}, {percent: 50}, {}]\n",
        )
        .unwrap();
        assert_eq!(p.spec.selector.groups, vec!["eu"]);
        assert_eq!(p.spec.selector.label_selector().match_labels["hw"], "rpi4");
        assert_eq!(p.spec.rollout.order, Order::Spread);
        assert_eq!(p.spec.rollout.success_threshold, 95.0);
        assert_eq!(p.spec.rollout.waves.len(), 3);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_yaml::from_str::<Group>(
            "apiVersion: waveguide.dev/v1alpha1\nkind: Group\nmetadata: {name: eu}\nspec: {parnet: x}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("parnet"), "{err}");
    }

    #[test]
    fn device_range_ids() {
        let r = DeviceRange { prefix: "store-".into(), start: 8, count: 3, width: 4 };
        assert_eq!(r.ids().collect::<Vec<_>>(), ["store-0008", "store-0009", "store-0010"]);
    }
}
