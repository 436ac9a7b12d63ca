//! How the standalone controller's loop is doing: when a pass last completed, which stage
//! of it failed and since when. `GET /healthz` answers from it (unhealthy only when no
//! pass completed for a long time: a stuck loop, not a failing one), `GET /v1/status`
//! shows the failure, and `GET /metrics` counts passes and failures by stage.
//!
//! A failing pass is not a dead process: a database outage makes every pass fail until
//! the database is back, and restarting the controller would not bring it back sooner.
//! So failures are reported (status, metrics, logs) and retried with a backoff, and only
//! a loop that stops completing passes at all counts as unhealthy.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// The stage of a pass that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// Fetching or verifying the fleet repository (the last good commit stays in force).
    Source,
    /// Applying a new commit: recording its devices in the inventory, opening the TUF
    /// repository.
    Apply,
    /// The engine's pass: reading the inventory, deciding, publishing, recording.
    Rollout,
}

impl Stage {
    /// The stage's name, as logs, the status and the metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Apply => "apply",
            Stage::Rollout => "rollout",
        }
    }
}

impl EncodeLabelValue for Stage {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Why the last pass failed, as `GET /v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PassFailure {
    /// The stage that failed.
    pub stage: Stage,
    /// The error.
    pub error: String,
    /// When the first of the passes failing in a row failed.
    pub since: Timestamp,
    /// Passes failed in a row.
    pub consecutive: u32,
}

/// What `GET /healthz` says of the loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoopVerdict {
    /// No pass completed for longer than the limit.
    pub stuck: bool,
    /// Seconds since the last pass completed (or since the start, before the first).
    pub seconds_since_pass: u64,
    /// Why the last pass failed, if it did.
    pub failure: Option<PassFailure>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: Stage,
}

#[derive(Debug)]
struct State {
    /// When the last pass completed, failed or not (the start before the first).
    last_pass: Instant,
    failure: Option<PassFailure>,
}

/// The loop's health, shared by the loop (which records each pass) and the HTTP
/// handlers (which read it).
#[derive(Debug)]
pub struct LoopHealth {
    stuck_after: Duration,
    state: Mutex<State>,
    registry: Registry,
    passes: Counter,
    failures: Family<StageLabels, Counter>,
    failing: Gauge,
    last_success: Gauge,
}

impl LoopHealth {
    /// Health of a loop that counts as stuck when no pass completes for `stuck_after`.
    pub fn new(stuck_after: Duration) -> LoopHealth {
        let mut registry = Registry::with_prefix("waveguide_run");
        let passes = Counter::default();
        let failures = Family::<StageLabels, Counter>::default();
        let failing = Gauge::default();
        let last_success = Gauge::default();
        registry.register("passes", "Passes of the controller's loop, failed or not", passes.clone());
        registry.register(
            "pass_failures",
            "Failed passes of the controller's loop, by stage",
            failures.clone(),
        );
        registry.register("failing_passes", "Passes failed in a row (0 after a good pass)", failing.clone());
        registry.register(
            "last_successful_pass_timestamp_seconds",
            "When a pass last completed without error (Unix seconds)",
            last_success.clone(),
        );
        LoopHealth {
            stuck_after,
            state: Mutex::new(State { last_pass: Instant::now(), failure: None }),
            registry,
            passes,
            failures,
            failing,
            last_success,
        }
    }

    /// Records a completed pass and what failed in it (nothing, or the stages that failed;
    /// the last one is reported). Returns why it failed, if it did.
    pub fn pass_completed(&self, failed: &[(Stage, String)], now: Timestamp) -> Option<PassFailure> {
        self.passes.inc();
        for (stage, _) in failed {
            self.failures.get_or_create(&StageLabels { stage: *stage }).inc();
        }
        // A fetch failure is the source's own state (it keeps the last good commit, backs
        // off, and shows its error in the status until a poll succeeds): it is counted,
        // but does not make the pass a failed one, which passes that do not poll would
        // then clear at once.
        let failed = failed.iter().rfind(|(stage, _)| *stage != Stage::Source);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last_pass = Instant::now();
        state.failure = match (failed, state.failure.take()) {
            (None, _) => None,
            (Some((stage, error)), previous) => Some(PassFailure {
                stage: *stage,
                error: error.clone(),
                since: previous.as_ref().map_or(now, |p| p.since),
                consecutive: previous.map_or(1, |p| p.consecutive.saturating_add(1)),
            }),
        };
        match &state.failure {
            None => {
                self.failing.set(0);
                self.last_success.set(now.as_second());
            }
            Some(failure) => {
                self.failing.set(i64::from(failure.consecutive));
            }
        }
        state.failure.clone()
    }

    /// The loop's health at `now`.
    pub fn verdict(&self, now: Instant) -> LoopVerdict {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let since = now.saturating_duration_since(state.last_pass);
        LoopVerdict {
            stuck: since > self.stuck_after,
            seconds_since_pass: since.as_secs(),
            failure: state.failure.clone(),
        }
    }

    /// Appends the loop's metrics, in the Prometheus text format, to `out`.
    pub fn encode_metrics(&self, out: &mut String) {
        // The device API's metrics end with `# EOF`; only the last block may carry it.
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_ok() {
            if let Some(body) = out.strip_suffix("# EOF\n") {
                out.truncate(body.len());
            }
            out.push_str(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_in_a_row_and_cleared_by_a_good_pass() {
        let health = LoopHealth::new(Duration::from_secs(60));
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        assert_eq!(health.pass_completed(&[], t0), None);
        let down = [(Stage::Apply, "database down".to_string())];
        let first = health.pass_completed(&down, t0).unwrap();
        assert_eq!((first.stage, first.consecutive, first.since), (Stage::Apply, 1, t0));
        let t1 = Timestamp::from_second(1_700_000_010).unwrap();
        let rollout = [(Stage::Rollout, "still down".to_string())];
        let second = health.pass_completed(&rollout, t1).unwrap();
        assert_eq!((second.stage, second.consecutive, second.since), (Stage::Rollout, 2, t0));
        let mut metrics = String::new();
        health.encode_metrics(&mut metrics);
        assert!(metrics.contains("waveguide_run_pass_failures_total{stage=\"apply\"} 1"), "{metrics}");
        assert!(metrics.contains("waveguide_run_failing_passes 2"), "{metrics}");
        let fetch = [(Stage::Source, "cannot fetch".to_string())];
        assert_eq!(health.pass_completed(&fetch, t1), None, "the source reports its own failures");
        assert_eq!(health.verdict(Instant::now()).failure, None);
        let mut metrics = String::new();
        health.encode_metrics(&mut metrics);
        assert!(metrics.contains("waveguide_run_passes_total 4"), "{metrics}");
        assert!(metrics.contains("waveguide_run_last_successful_pass_timestamp_seconds 1700000010"));
    }

    #[test]
    fn only_a_loop_that_completes_no_pass_is_stuck() {
        let health = LoopHealth::new(Duration::from_secs(60));
        let now = Instant::now();
        assert!(!health.verdict(now).stuck, "a new loop has time for its first pass");
        assert!(health.verdict(now + Duration::from_secs(61)).stuck);
        // Failed passes still complete: the loop is alive.
        health.pass_completed(&[(Stage::Rollout, "database down".into())], Timestamp::now());
        let verdict = health.verdict(Instant::now() + Duration::from_secs(30));
        assert!(!verdict.stuck);
        assert_eq!(verdict.failure.map(|f| f.stage), Some(Stage::Rollout));
    }
}
