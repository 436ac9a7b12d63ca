//! A policy's rollout rules as the compiler hands them on: durations parsed, thresholds
//! resolved to their defaults, so the rollout decision never reads the policy's text.

use jiff::SignedDuration;

use crate::model::{FailureThreshold, OnFailure, RetriesSpec, DEFAULT_FAILURE_THRESHOLD};
use crate::protocol::duration::WrittenDuration;
use crate::protocol::FailureClass;

/// The device-health rules of a policy's rollout (`rollout.confirmation`,
/// `deviceTimeout`, `retries`, `failureThreshold`).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRules {
    /// How long a device confirms a new release's health before committing it.
    pub confirmation: Option<WrittenDuration>,
    /// How long a published device may take to finish before it counts as timed out.
    pub device_timeout: Option<WrittenDuration>,
    /// Which failures are retried.
    pub retries: Retries,
    /// When failures halt a wave.
    pub failure: FailureRules,
    /// What a halted rollout does.
    pub on_failure: OnFailure,
}

impl Default for RolloutRules {
    fn default() -> Self {
        RolloutRules {
            confirmation: None,
            device_timeout: None,
            retries: Retries::default(),
            failure: FailureRules::of(&FailureThreshold::default()),
            on_failure: OnFailure::default(),
        }
    }
}

/// Which failures are retried, how often and after how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retries {
    /// Retries per device; 0: none.
    pub max: u32,
    /// Wait after a failure before re-publishing.
    pub backoff: SignedDuration,
    /// The classes retried.
    pub on: Vec<FailureClass>,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { max: 0, backoff: SignedDuration::ZERO, on: Retries::TRANSIENT.to_vec() }
    }
}

impl Retries {
    /// The classes retried when the policy does not list them: those a retry may cure.
    pub const TRANSIENT: [FailureClass; 3] =
        [FailureClass::Download, FailureClass::Verification, FailureClass::Timeout];

    /// The policy's retries; `backoff` is its parsed `backoff` (None when absent or
    /// invalid, which the validator reports).
    pub fn of(spec: &RetriesSpec, backoff: Option<SignedDuration>) -> Retries {
        Retries {
            max: spec.max,
            backoff: backoff.unwrap_or(SignedDuration::ZERO),
            on: spec.on.clone().unwrap_or_else(|| Retries::TRANSIENT.to_vec()),
        }
    }

    /// Whether a failure of `class` is retried at all.
    pub fn covers(&self, class: FailureClass) -> bool {
        self.max > 0 && self.on.contains(&class)
    }
}

/// The failure thresholds, percent of a wave's counted devices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRules {
    /// Every failure together.
    pub any: Option<f64>,
    /// Install failures (and failures without a class).
    pub install: Option<f64>,
    /// Health failures.
    pub health: Option<f64>,
    /// Timeouts.
    pub timeout: Option<f64>,
    /// Download and verification failures.
    pub download: Option<f64>,
    /// No threshold halts a wave before this many of its devices finished.
    pub minimum_sample: u64,
}

impl FailureRules {
    /// The rules a policy's `failureThreshold` writes.
    pub fn of(threshold: &FailureThreshold) -> FailureRules {
        match threshold {
            FailureThreshold::Percent(percent) => FailureRules {
                any: Some(*percent),
                install: None,
                health: None,
                timeout: None,
                download: None,
                minimum_sample: 1,
            },
            FailureThreshold::PerClass(t) => {
                let no_class = [t.install, t.health, t.timeout, t.download].iter().all(Option::is_none);
                FailureRules {
                    any: t.percent.or(no_class.then_some(DEFAULT_FAILURE_THRESHOLD)),
                    install: t.install,
                    health: t.health,
                    timeout: t.timeout,
                    download: t.download,
                    minimum_sample: t.minimum_sample.unwrap_or(1),
                }
            }
        }
    }

    /// The threshold that counts failures of `class` (verification counts as download).
    pub fn of_class(&self, class: FailureClass) -> Option<f64> {
        match class {
            FailureClass::Install => self.install,
            FailureClass::Health => self.health,
            FailureClass::Timeout => self.timeout,
            FailureClass::Download | FailureClass::Verification => self.download,
        }
    }

    /// Every threshold given, with the field that writes it.
    pub fn given(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("failureThreshold", self.any),
            ("install", self.install),
            ("health", self.health),
            ("timeout", self.timeout),
            ("download", self.download),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}
