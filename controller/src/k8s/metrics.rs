//! Prometheus metrics of the Kubernetes controller, served at `GET /metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the reconciliations counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `error`.
    pub result: &'static str,
}

/// The controller's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Fleet reconciliations, by result.
    pub reconciliations: Family<ResultLabels, Counter>,
    /// Seconds one Fleet reconciliation took.
    pub reconcile_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("waveguide_controller");
        let reconciliations = Family::<ResultLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register("reconciliations", "Fleet reconciliations by result", reconciliations.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Seconds one Fleet reconciliation took",
            reconcile_duration.clone(),
        );
        Metrics { registry, reconciliations, reconcile_duration }
    }
}

impl Metrics {
    /// Counts one reconciliation.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.reconciliations.get_or_create(&ResultLabels { result }).inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
