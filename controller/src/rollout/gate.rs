//! The gates between waves: when a rollout may publish its next wave, must wait, halts,
//! or is done. A pure function of the rollout's state, the current wave's tally and the
//! clock, so that every rule can be tested on its own.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::compile::FailureRules;
use crate::model::Approval;
use crate::protocol::FailureClass;

/// How the devices of a published wave stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaveTally {
    /// Devices pinned to the wave.
    pub size: u64,
    /// Devices whose instructions are not published yet (held back by maintenance
    /// windows or concurrency caps).
    pub unpublished: u64,
    /// Devices that report the wave's release installed and healthy.
    pub healthy: u64,
    /// Devices that report the update failed, or installed but unhealthy.
    pub failed: u64,
    /// The failed devices by failure class.
    pub failed_by: ClassCounts,
    /// Devices that stopped reporting for longer than the stale timeout. They count
    /// neither as healthy nor as failed, and do not hold the rollout back.
    pub stale: u64,
    /// Failed devices whose failures an operator accepted: counted like stale ones.
    pub accepted: u64,
}

impl WaveTally {
    /// Devices that count towards the thresholds: all but the stale and accepted ones.
    pub fn counted(&self) -> u64 {
        self.size.saturating_sub(self.stale + self.accepted)
    }

    /// Failed share of the counted devices, in percent.
    pub fn failed_percent(&self) -> f64 {
        percent(self.failed, self.counted())
    }

    /// Healthy share of the counted devices, in percent. A wave whose devices are all
    /// stale counts as fully healthy: nothing in it can still fail.
    pub fn healthy_percent(&self) -> f64 {
        if self.counted() == 0 {
            100.0
        } else {
            percent(self.healthy, self.counted())
        }
    }
}

/// Failed devices per failure class; `verification` failures count as `download`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassCounts {
    /// Install failures, and failures reported without a class.
    pub install: u64,
    /// Unhealthy on the release, or rolled back.
    pub health: u64,
    /// Not finished within the device timeout.
    pub timeout: u64,
    /// Download and verification failures.
    pub download: u64,
}

impl ClassCounts {
    /// Adds one failure of `class`.
    pub fn add(&mut self, class: FailureClass) {
        *self.get_mut(class) += 1;
    }

    /// The failures counted with `class`.
    pub fn get(&self, class: FailureClass) -> u64 {
        let mut copy = *self;
        *copy.get_mut(class)
    }

    fn get_mut(&mut self, class: FailureClass) -> &mut u64 {
        match class {
            FailureClass::Install => &mut self.install,
            FailureClass::Health => &mut self.health,
            FailureClass::Timeout => &mut self.timeout,
            FailureClass::Download | FailureClass::Verification => &mut self.download,
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The rules of one rollout, from its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    /// Percent of a wave that must be healthy before the next wave.
    pub success_threshold: f64,
    /// When failures halt the rollout: thresholds overall and per class, and the sample
    /// they need.
    pub failure: FailureRules,
    /// Whether each wave after the first waits for an approval.
    pub approval: Approval,
}

/// Where the rollout stands, as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// Index of the current (latest published) wave.
    pub wave: usize,
    /// Number of waves.
    pub waves: usize,
    /// Paused by an operator.
    pub paused: bool,
    /// How long the current wave must stay healthy once it meets the success threshold.
    pub bake: Option<SignedDuration>,
    /// When the current wave first met its success threshold with every device
    /// published, if it has.
    pub healthy_since: Option<Timestamp>,
    /// Whether the next wave has been approved (only asked when approval is manual).
    pub next_approved: bool,
}

/// What the engine should do with a rollout now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Publish the next wave.
    Advance,
    /// The last wave passed its gates: the rollout is complete.
    Complete,
    /// Stop: the failure threshold is crossed.
    Halt {
        /// Why, for operators.
        reason: String,
    },
    /// Nothing to do yet.
    Wait(Wait),
}

/// Why a rollout waits.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// Paused by an operator.
    Paused,
    /// Devices of the wave are still held back by windows or caps.
    Publishing {
        /// Devices not published yet.
        unpublished: u64,
    },
    /// Not enough of the wave is healthy yet.
    Health {
        /// Healthy share now, percent.
        healthy_percent: f64,
        /// Needed share, percent.
        needed_percent: f64,
    },
    /// The wave is healthy and baking.
    Baking {
        /// When the bake ends.
        until: Timestamp,
    },
    /// The next wave needs an operator's approval.
    Approval {
        /// Index of the wave waiting to be approved.
        wave: usize,
    },
}

impl Verdict {
    /// When the wave's success was first seen, given this verdict: the engine persists
    /// it so the bake survives a restart.
    pub fn healthy_since(&self, position: &Position, now: Timestamp) -> Option<Timestamp> {
        match self {
            Verdict::Wait(Wait::Paused | Wait::Publishing { .. } | Wait::Health { .. })
            | Verdict::Halt { .. } => None,
            _ => Some(position.healthy_since.unwrap_or(now)),
        }
    }
}

/// Why the wave's failures halt the rollout, if they do: a threshold is crossed, overall
/// or for one class, and at least the minimum sample of the wave finished (or the whole
/// wave, when it is smaller than the sample).
fn halt_reason(rules: &FailureRules, wave: usize, tally: &WaveTally) -> Option<String> {
    if tally.failed == 0 || tally.healthy + tally.failed < rules.minimum_sample.min(tally.counted()) {
        return None;
    }
    let crossed = |failed: u64, threshold: Option<f64>| {
        threshold.filter(|&t| failed > 0 && percent(failed, tally.counted()) >= t)
    };
    let (what, failed, threshold) = if let Some(t) = crossed(tally.failed, rules.any) {
        (String::new(), tally.failed, t)
    } else {
        let (class, t) =
            [FailureClass::Install, FailureClass::Health, FailureClass::Timeout, FailureClass::Download]
                .into_iter()
                .find_map(|class| {
                    Some((class, crossed(tally.failed_by.get(class), rules.of_class(class))?))
                })?;
        (format!(" {}", class.as_str()), tally.failed_by.get(class), t)
    };
    Some(format!(
        "wave {} crossed the{what} failure threshold: {failed} of {} devices failed{what} ({:.1}% ≥ {threshold}%)",
        wave + 1,
        tally.counted(),
        percent(failed, tally.counted()),
    ))
}

/// Decides what to do with a rollout whose current wave is published (possibly only in
/// part). The failure thresholds are checked first, even when paused: a paused rollout
/// still halts when its devices fail.
pub fn decide(gates: &Gates, position: &Position, tally: &WaveTally, now: Timestamp) -> Verdict {
    if let Some(reason) = halt_reason(&gates.failure, position.wave, tally) {
        return Verdict::Halt { reason };
    }
    if position.paused {
        return Verdict::Wait(Wait::Paused);
    }
    if tally.unpublished > 0 {
        return Verdict::Wait(Wait::Publishing { unpublished: tally.unpublished });
    }
    if tally.healthy_percent() < gates.success_threshold {
        return Verdict::Wait(Wait::Health {
            healthy_percent: tally.healthy_percent(),
            needed_percent: gates.success_threshold,
        });
    }
    let since = position.healthy_since.unwrap_or(now);
    if let Some(bake) = position.bake {
        let until = since.checked_add(bake).unwrap_or(Timestamp::MAX);
        if now < until {
            return Verdict::Wait(Wait::Baking { until });
        }
    }
    if position.wave + 1 >= position.waves {
        return Verdict::Complete;
    }
    if gates.approval == Approval::Manual && !position.next_approved {
        return Verdict::Wait(Wait::Approval { wave: position.wave + 1 });
    }
    Verdict::Advance
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates() -> Gates {
        Gates { success_threshold: 90.0, failure: rules(10.0), approval: Approval::Auto }
    }

    fn rules(percent: f64) -> FailureRules {
        FailureRules::of(&crate::model::FailureThreshold::Percent(percent))
    }

    fn position() -> Position {
        Position { wave: 0, waves: 3, paused: false, bake: None, healthy_since: None, next_approved: false }
    }

    fn tally(size: u64, healthy: u64, failed: u64, stale: u64) -> WaveTally {
        let failed_by = ClassCounts { install: failed, ..ClassCounts::default() };
        WaveTally { size, unpublished: 0, healthy, failed, failed_by, stale, accepted: 0 }
    }

    fn now() -> Timestamp {
        "2026-06-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn advances_when_healthy_enough() {
        assert_eq!(decide(&gates(), &position(), &tally(10, 9, 0, 0), now()), Verdict::Advance);
    }

    #[test]
    fn waits_below_the_success_threshold() {
        let v = decide(&gates(), &position(), &tally(10, 8, 0, 0), now());
        assert_eq!(v, Verdict::Wait(Wait::Health { healthy_percent: 80.0, needed_percent: 90.0 }));
    }

    #[test]
    fn halts_at_the_failure_threshold() {
        let v = decide(&gates(), &position(), &tally(10, 9, 1, 0), now());
        assert!(
            matches!(v, Verdict::Halt { ref reason } if reason.contains("1 of 10 devices failed")),
            "{v:?}"
        );
        // Below it, failures alone do not halt.
        let v = decide(&gates(), &position(), &tally(20, 18, 1, 0), now());
        assert_eq!(v, Verdict::Advance);
    }

    #[test]
    fn a_zero_failure_threshold_halts_on_the_first_failure_only() {
        let g = Gates { failure: rules(0.0), ..gates() };
        assert_eq!(decide(&g, &position(), &tally(10, 10, 0, 0), now()), Verdict::Advance);
        assert!(matches!(decide(&g, &position(), &tally(100, 99, 1, 0), now()), Verdict::Halt { .. }));
    }

    #[test]
    fn no_threshold_halts_before_the_minimum_sample_finished() {
        let g = Gates { failure: FailureRules { minimum_sample: 5, ..rules(10.0) }, ..gates() };
        // 1 of 3 canaries failed, 1 healthy, 1 still in flight: 2 finished of the 5 needed.
        assert_eq!(
            decide(&g, &position(), &tally(3, 1, 1, 0), now()),
            Verdict::Wait(Wait::Health { healthy_percent: 100.0 / 3.0, needed_percent: 90.0 })
        );
        // A wave smaller than the sample halts once all of it finished.
        assert!(matches!(decide(&g, &position(), &tally(3, 2, 1, 0), now()), Verdict::Halt { .. }));
        assert!(matches!(decide(&g, &position(), &tally(10, 4, 1, 0), now()), Verdict::Halt { .. }));
    }

    #[test]
    fn thresholds_per_class_count_their_class_only() {
        let per_class = crate::model::FailureThresholds {
            install: Some(10.0),
            timeout: Some(50.0),
            ..Default::default()
        };
        let g = Gates {
            failure: FailureRules::of(&crate::model::FailureThreshold::PerClass(Box::new(per_class))),
            ..gates()
        };
        assert_eq!(g.failure.any, None, "no overall threshold once classes are given");
        let timeouts = |n: u64| WaveTally {
            failed_by: ClassCounts { timeout: n, ..ClassCounts::default() },
            ..tally(10, 10 - n, n, 0)
        };
        assert!(matches!(decide(&g, &position(), &timeouts(2), now()), Verdict::Wait(Wait::Health { .. })));
        let v = decide(&g, &position(), &timeouts(5), now());
        assert!(
            matches!(v, Verdict::Halt { ref reason } if reason.contains("timeout failure threshold")),
            "{v:?}"
        );
        let v = decide(&g, &position(), &tally(10, 9, 1, 0), now());
        assert!(
            matches!(v, Verdict::Halt { ref reason } if reason.contains("1 of 10 devices failed install")),
            "{v:?}"
        );
    }

    #[test]
    fn a_paused_rollout_waits_but_still_halts_on_failures() {
        let p = Position { paused: true, ..position() };
        assert_eq!(decide(&gates(), &p, &tally(10, 10, 0, 0), now()), Verdict::Wait(Wait::Paused));
        assert!(matches!(decide(&gates(), &p, &tally(10, 5, 5, 0), now()), Verdict::Halt { .. }));
    }

    #[test]
    fn stale_devices_neither_block_nor_fail() {
        // 10 devices, 3 stopped reporting, the other 7 healthy: 100% of those counted.
        assert_eq!(decide(&gates(), &position(), &tally(10, 7, 0, 3), now()), Verdict::Advance);
        // Every device stale: nothing can still fail, the rollout moves on.
        assert_eq!(decide(&gates(), &position(), &tally(4, 0, 0, 4), now()), Verdict::Advance);
    }

    #[test]
    fn devices_held_back_by_windows_or_caps_keep_the_wave_open() {
        let t = WaveTally { unpublished: 5, ..tally(10, 5, 0, 0) };
        assert_eq!(
            decide(&gates(), &position(), &t, now()),
            Verdict::Wait(Wait::Publishing { unpublished: 5 })
        );
    }

    #[test]
    fn bake_time_counts_from_first_health() {
        let since: Timestamp = "2026-06-01T11:30:00Z".parse().unwrap();
        let p =
            Position { bake: Some(SignedDuration::from_hours(1)), healthy_since: Some(since), ..position() };
        let until: Timestamp = "2026-06-01T12:30:00Z".parse().unwrap();
        assert_eq!(decide(&gates(), &p, &tally(10, 10, 0, 0), now()), Verdict::Wait(Wait::Baking { until }));
        assert_eq!(decide(&gates(), &p, &tally(10, 10, 0, 0), until), Verdict::Advance);
        // First seen healthy now: the bake starts now, and the engine persists that.
        let fresh = Position { healthy_since: None, ..p.clone() };
        let v = decide(&gates(), &fresh, &tally(10, 10, 0, 0), now());
        assert!(matches!(v, Verdict::Wait(Wait::Baking { .. })));
        assert_eq!(v.healthy_since(&fresh, now()), Some(now()));
        let unhealthy = decide(&gates(), &fresh, &tally(10, 1, 0, 0), now());
        assert_eq!(unhealthy.healthy_since(&fresh, now()), None);
    }

    #[test]
    fn manual_approval_holds_each_next_wave() {
        let g = Gates { approval: Approval::Manual, ..gates() };
        assert_eq!(
            decide(&g, &position(), &tally(10, 10, 0, 0), now()),
            Verdict::Wait(Wait::Approval { wave: 1 })
        );
        let approved = Position { next_approved: true, ..position() };
        assert_eq!(decide(&g, &approved, &tally(10, 10, 0, 0), now()), Verdict::Advance);
    }

    #[test]
    fn the_last_wave_completes_without_approval() {
        let g = Gates { approval: Approval::Manual, ..gates() };
        let last = Position { wave: 2, ..position() };
        assert_eq!(decide(&g, &last, &tally(10, 10, 0, 0), now()), Verdict::Complete);
    }
}
