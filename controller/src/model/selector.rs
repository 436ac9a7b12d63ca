//! Kubernetes-style label selectors, used by policies, wave selectors and release
//! compatibility.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Labels;

/// Selects by labels: every `matchLabels` pair and every `matchExpressions` requirement
/// must hold. An empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "Labels::is_empty", deserialize_with = "super::unique_labels")]
    pub match_labels: Labels,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One set-based requirement: `key` `operator` `values`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the label's value is compared with `values`.
    pub operator: Operator,
    /// Values for `In` and `NotIn`; must be empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Set-based selector operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// True when the selector has no requirement (and so selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy every requirement. `get` looks a label up; it lets callers
    /// match against layered (inherited) labels without materialising them.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.match_labels.iter().all(|(k, v)| get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| {
                let value = get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
                    Operator::NotIn => value.is_none_or(|v| r.values.iter().all(|x| x != v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    /// Whether a flat label map satisfies the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn empty_selects_everything() {
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn match_labels_and_expressions() {
        let sel: LabelSelector = serde_yaml::from_str(
            "matchLabels: {hw: rpi4}\nmatchExpressions:\n- {key: tier, operator: In, values: [canary, beta]}\n- {key: broken, operator: DoesNotExist}\n",
        )
        .unwrap();
        assert!(sel.matches(&labels(&[("hw", "rpi4"), ("tier", "canary")])));
        assert!(!sel.matches(&labels(&[("hw", "rpi4"), ("tier", "stable")])));
        assert!(!sel.matches(&labels(&[("hw", "rpi4"), ("tier", "beta"), ("broken", "")])));
        assert!(!sel.matches(&labels(&[("tier", "beta")])));
        let not_in: LabelSelector =
            serde_yaml::from_str("matchExpressions: [{key: tier, operator: NotIn, values: [canary]}]")
                .unwrap();
        assert!(not_in.matches(&labels(&[])));
        assert!(!not_in.matches(&labels(&[("tier", "canary")])));
    }
}
