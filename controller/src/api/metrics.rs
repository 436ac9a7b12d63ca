//! Prometheus metrics of the device API, served at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the refused-reports counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Why: `malformed`, `unknown_device`, `bad_signature`, `replay`, `stale_timestamp`.
    pub reason: &'static str,
}

/// The API's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reports stored.
    pub reports_stored: Counter,
    /// Reports refused, by reason.
    pub reports_refused: Family<RefusalLabels, Counter>,
    /// Devices enrolled.
    pub enrollments: Counter,
    /// Enrollments refused.
    pub enrollments_refused: Counter,
    /// Reports per database write.
    pub report_batch_size: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("waveguide_api");
        let reports_stored = Counter::default();
        let reports_refused = Family::<RefusalLabels, Counter>::default();
        let enrollments = Counter::default();
        let enrollments_refused = Counter::default();
        let report_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register("reports_stored", "Device reports stored", reports_stored.clone());
        registry.register("reports_refused", "Device reports refused", reports_refused.clone());
        registry.register("enrollments", "Devices enrolled", enrollments.clone());
        registry.register("enrollments_refused", "Enrollments refused", enrollments_refused.clone());
        registry.register("report_batch_size", "Reports per inventory write", report_batch_size.clone());
        Metrics {
            registry,
            reports_stored,
            reports_refused,
            enrollments,
            enrollments_refused,
            report_batch_size,
        }
    }
}

impl Metrics {
    /// Counts a refused report.
    pub fn refuse(&self, reason: &'static str) {
        self.reports_refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
