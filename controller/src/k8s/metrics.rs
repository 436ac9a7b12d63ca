//! Prometheus metrics of the Kubernetes controller, served at `GET /metrics`.
//!
//! Counters and histograms count what the reconcilers did; each fleet's gauges (rollouts
//! by phase, devices by state and release, wave progress, the last successful fetch) are a
//! snapshot that the fleet's last pass replaced whole, so a finished rollout or a deleted
//! Fleet leaves no stale series behind. Seconds until each TUF role expires are read from
//! the published files when scraped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::rollout::state::RolloutPhase;
use jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Labels of the reconciliations counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `error`.
    pub result: &'static str,
}

/// Labels of the reconcile errors counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The Fleet's namespace.
    pub namespace: String,
    /// The Fleet's name.
    pub fleet: String,
    /// Where the pass failed.
    pub stage: Stage,
}

/// The stage of a Fleet's pass that failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)] // The label values, as Prometheus users write them.
pub enum Stage {
    /// Taking or renewing the Lease.
    lease,
    /// The Fleet's settings or the Secrets they name.
    settings,
    /// Fetching the Git source.
    source,
    /// Compiling a commit (a refused commit).
    compile,
    /// The engine's pass: rollouts and publishing.
    engine,
    /// Writing status, FleetRollouts or the finalizer to the API server.
    kubernetes,
}

/// One rollout's progress, as its fleet's last pass saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutGauges {
    /// The rollout id.
    pub rollout: String,
    /// `progressing`, `paused`, `halted`, `completed` or `aborted`.
    pub phase: RolloutPhase,
    /// The wave in progress, from 1.
    pub wave: u64,
    /// Its waves.
    pub waves: u64,
    /// Devices of the rollout by progress: `healthy`, `in_flight`, `failed`, `stale`,
    /// `accepted`, `unpublished`.
    pub devices: Vec<(&'static str, u64)>,
}

/// What one fleet's last pass measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetGauges {
    /// Its rollouts.
    pub rollouts: Vec<RolloutGauges>,
    /// Devices by (update state, release) of their latest report; devices that never
    /// reported count as state `unknown` with no release.
    pub devices: Vec<(String, String, u64)>,
    /// When the source was last fetched without error.
    pub last_fetch: Option<Timestamp>,
    /// The fleet's TUF repository, whose role expiries are read when scraped.
    pub tuf_dir: Option<PathBuf>,
}

type FleetKey = (String, String);

/// The fleets' gauges, encoded on every scrape.
#[derive(Debug, Clone, Default)]
struct FleetCollector(Arc<RwLock<BTreeMap<FleetKey, FleetGauges>>>);

/// The controller's counters, histograms and gauges.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Fleet reconciliations, by result.
    pub reconciliations: Family<ResultLabels, Counter>,
    /// Seconds one Fleet reconciliation took.
    pub reconcile_duration: Histogram,
    /// Failed Fleet passes, by fleet and stage.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    fleets: FleetCollector,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("waveguide_controller");
        let reconciliations = Family::<ResultLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register("reconciliations", "Fleet reconciliations by result", reconciliations.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Seconds one Fleet reconciliation took",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed Fleet passes by fleet and stage (lease, settings, source, compile, engine, kubernetes)",
            reconcile_errors.clone(),
        );
        let fleets = FleetCollector::default();
        registry.register_collector(Box::new(fleets.clone()));
        Metrics { registry, reconciliations, reconcile_duration, reconcile_errors, fleets }
    }
}

impl Metrics {
    /// Counts one reconciliation.
    pub fn reconciled(&self, took: Duration, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.reconciliations.get_or_create(&ResultLabels { result }).inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Counts a failed stage of a fleet's pass.
    pub fn failed(&self, namespace: &str, fleet: &str, stage: Stage) {
        let labels = ErrorLabels { namespace: namespace.into(), fleet: fleet.into(), stage };
        self.reconcile_errors.get_or_create(&labels).inc();
    }

    /// Replaces a fleet's gauges with what its last pass measured.
    pub fn set_fleet(&self, namespace: &str, fleet: &str, gauges: FleetGauges) {
        let mut fleets = self.fleets.0.write().expect("fleet gauges");
        fleets.insert((namespace.into(), fleet.into()), gauges);
    }

    /// The gauges of a fleet, as last set.
    pub fn fleet(&self, namespace: &str, fleet: &str) -> Option<FleetGauges> {
        self.fleets.0.read().expect("fleet gauges").get(&(namespace.into(), fleet.into())).cloned()
    }

    /// Drops a fleet's gauges: it is deleted, or another replica runs it now.
    pub fn remove_fleet(&self, namespace: &str, fleet: &str) {
        self.fleets.0.write().expect("fleet gauges").remove(&(namespace.into(), fleet.into()));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One gauge family: its samples, by label set.
fn gauge<T: prometheus_client::encoding::EncodeGaugeValue + Copy + std::fmt::Debug + Send + Sync + 'static>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels<'_>, T)],
) -> Result<(), std::fmt::Error>
where
    ConstGauge<T>: EncodeMetric,
{
    if samples.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fleets = self.0.read().expect("fleet gauges");
        let now = Timestamp::now();
        let mut phases = Vec::new();
        let mut waves = Vec::new();
        let mut wave_counts = Vec::new();
        let mut rollout_devices = Vec::new();
        let mut devices = Vec::new();
        let mut fetches = Vec::new();
        let mut expiries = Vec::new();
        for ((namespace, fleet), gauges) in fleets.iter() {
            let base: Labels<'_> = vec![("namespace", namespace.as_str()), ("fleet", fleet.as_str())];
            let mut by_phase: BTreeMap<&str, i64> = RolloutPhase::ALL.map(|p| (p.as_str(), 0)).into();
            for rollout in &gauges.rollouts {
                *by_phase.entry(rollout.phase.as_str()).or_default() += 1;
                let mut labels = base.clone();
                labels.push(("rollout", rollout.rollout.as_str()));
                waves.push((labels.clone(), rollout.wave as i64));
                wave_counts.push((labels.clone(), rollout.waves as i64));
                for (progress, count) in &rollout.devices {
                    let mut labels = labels.clone();
                    labels.push(("progress", progress));
                    rollout_devices.push((labels, *count as i64));
                }
            }
            for (phase, count) in by_phase {
                let mut labels = base.clone();
                labels.push(("phase", phase));
                phases.push((labels, count));
            }
            for (state, release, count) in &gauges.devices {
                let mut labels = base.clone();
                labels.push(("state", state.as_str()));
                labels.push(("release", release.as_str()));
                devices.push((labels, *count as i64));
            }
            if let Some(at) = gauges.last_fetch {
                fetches.push((base.clone(), at.as_millisecond() as f64 / 1000.0));
            }
            if let Some(dir) = &gauges.tuf_dir {
                for (role, expires) in tuf_expiries(dir) {
                    let mut labels = base.clone();
                    labels.push(("role", role));
                    expiries.push((labels, expires.duration_since(now).as_secs_f64()));
                }
            }
        }
        gauge(&mut encoder, "rollouts", "Rollouts by fleet and phase", &phases)?;
        gauge(&mut encoder, "rollout_wave", "The wave a rollout is at, from 1", &waves)?;
        gauge(&mut encoder, "rollout_waves", "Waves of a rollout", &wave_counts)?;
        gauge(
            &mut encoder,
            "rollout_devices",
            "Devices of a rollout by progress (healthy, in_flight, failed, stale, accepted, unpublished)",
            &rollout_devices,
        )?;
        gauge(
            &mut encoder,
            "devices",
            "Devices by fleet, update state and release of their latest report",
            &devices,
        )?;
        gauge(
            &mut encoder,
            "source_last_fetch_timestamp_seconds",
            "When the fleet's Git source was last fetched without error (Unix time)",
            &fetches,
        )?;
        gauge(
            &mut encoder,
            "tuf_expiry_seconds",
            "Seconds until the fleet's published TUF role expires (negative once expired)",
            &expiries,
        )
    }
}

/// When the published top-level roles expire: `timestamp`, the `snapshot` it names, the
/// `targets` and `releases` roles that snapshot names, and the newest `root`. A role whose
/// file cannot be read is left out (nothing published yet).
pub fn tuf_expiries(tuf_dir: &Path) -> Vec<(&'static str, Timestamp)> {
    #[derive(serde::Deserialize)]
    struct Meta {
        version: u64,
    }
    #[derive(serde::Deserialize)]
    struct Signed {
        expires: Timestamp,
        #[serde(default)]
        meta: BTreeMap<String, Meta>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        signed: Signed,
    }
    let metadata = tuf_dir.join("metadata");
    let read = |name: &str| -> Option<Signed> {
        let bytes = std::fs::read(metadata.join(name)).ok()?;
        serde_json::from_slice::<File>(&bytes).ok().map(|f| f.signed)
    };
    let mut out = Vec::new();
    let Some(timestamp) = read("timestamp.json") else { return out };
    out.push(("timestamp", timestamp.expires));
    if let Some(snapshot) =
        timestamp.meta.get("snapshot.json").and_then(|m| read(&format!("{}.snapshot.json", m.version)))
    {
        out.push(("snapshot", snapshot.expires));
        for role in ["targets", "releases"] {
            let file = format!("{role}.json");
            if let Some(signed) =
                snapshot.meta.get(&file).and_then(|m| read(&format!("{}.{file}", m.version)))
            {
                out.push((role, signed.expires));
            }
        }
    }
    let newest_root = std::fs::read_dir(&metadata)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".root.json")?.parse::<u64>().ok()
        })
        .max();
    if let Some(root) = newest_root.and_then(|v| read(&format!("{v}.root.json"))) {
        out.push(("root", root.expires));
    }
    out
}
