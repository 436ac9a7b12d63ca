//! The Fleet reconciler: drives one fleet's [`Engine`] from a `Fleet` resource and
//! reports back through its status, Events and FleetRollouts.
//!
//! One reconcile: hold the fleet's Lease (a standby replica stops here and writes
//! nothing) → ensure the finalizer → build the engine when the spec changed (reading the
//! Secrets the Fleet references) → the engine's read half ([`Engine::read`]: the source
//! polled when due) → check the Lease again → apply operators' changes to FleetRollouts →
//! the engine's writing half ([`Engine::advance`]) → write the FleetRollouts, Events and
//! status that differ from what the API server has. Each pass recomputes from current
//! state, so a lost or repeated trigger does no harm, and an idle fleet writes nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{Mutex, Notify};

use super::crd::{Fleet, FleetRollout, FleetSpec};
use super::events::{EventType, Events};
use super::lease::{lease_name, Leases};
use super::metrics::{FleetGauges, Metrics, RolloutGauges, Stage};
use super::rollout::{self, OperatorChange};
use super::serve::FleetRoutes;
use super::settings::{self, database_url};
use super::status::{fleet_status, not_ready_status, suspended_status, write_status, Outcome};
use super::Error;
use crate::api::{Api as DeviceApi, ApiConfig};
use crate::engine::{Engine, EngineConfig, Event as EngineEvent, SourceOutcome};
use crate::inventory::store::Store;
use crate::rollout::control::{Action as RolloutAction, RolloutStatus};
use crate::source::webhook::Webhook;

/// The finalizer the controller puts on every Fleet it manages.
pub const FINALIZER: &str = "waveguide.dev/cleanup";
/// The field manager of the controller's server-side applies.
pub const MANAGER: &str = "waveguide";
/// The label that ties a FleetRollout to its Fleet.
pub const FLEET_LABEL: &str = "waveguide.dev/fleet";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Each fleet's data (source mirror, TUF repository, SQLite inventory, keys) lives in
    /// `<data>/<namespace>/<name>/`.
    pub data: PathBuf,
    /// How often a fleet's engine makes a pass when nothing else wakes it.
    pub step_interval: Duration,
    /// How long a standby replica waits before trying a Lease again.
    pub standby_retry: Duration,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The inventory database of Fleets that name none (`spec.inventory`); an SQLite file
    /// in each fleet's data directory when `None`.
    pub database: Option<String>,
}

impl Settings {
    /// Defaults over a data directory.
    pub fn new(data: impl Into<PathBuf>) -> Settings {
        Settings {
            data: data.into(),
            step_interval: Duration::from_secs(5),
            standby_retry: Duration::from_secs(5),
            engine: EngineConfig::default(),
            database: None,
        }
    }
}

/// What the reconcilers share.
pub struct Context {
    client: Client,
    leases: Leases,
    settings: Settings,
    events: Events,
    active: Mutex<HashMap<String, Arc<Mutex<ActiveFleet>>>>,
    standby: Mutex<HashMap<String, StandbyApi>>,
    routes: FleetRoutes,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Context {
    /// The shared state of the reconcilers of one replica.
    pub fn new(
        client: Client,
        leases: Leases,
        settings: Settings,
        routes: FleetRoutes,
        metrics: Arc<Metrics>,
    ) -> Arc<Context> {
        Arc::new(Context {
            events: Events::new(client.clone(), "waveguide-controller", leases.identity()),
            client,
            leases,
            settings,
            active: Mutex::new(HashMap::new()),
            standby: Mutex::new(HashMap::new()),
            routes,
            metrics,
        })
    }

    /// This replica's Leases.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The inventory of a fleet whose engine runs on this replica.
    pub async fn store(&self, namespace: &str, name: &str) -> Option<Store> {
        let engine = self.active.lock().await.get(&key(namespace, name)).cloned()?;
        let store = engine.lock().await.store.clone();
        Some(store)
    }

    fn data_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.settings.data.join(namespace).join(name)
    }
}

/// A fleet's device API on a replica that stands by: over a shared (PostgreSQL)
/// inventory and the shared TUF files, so every replica behind the Service answers devices.
struct StandbyApi {
    spec: FleetSpec,
    api: Arc<DeviceApi>,
    commit: Option<String>,
}

/// A fleet whose engine runs on this replica, with what the status is computed from.
struct ActiveFleet {
    spec: FleetSpec,
    engine: Engine,
    store: Store,
    outcome: Outcome,
    /// The source is polled when this has passed.
    next_poll: SystemTime,
    /// When the source was last fetched without error.
    last_fetch: Option<Timestamp>,
    /// Set by the push webhook: poll the source at the next pass (within the step
    /// interval), whatever the poll interval.
    poll_now: Arc<AtomicBool>,
    /// Turns the webhook's wake-ups into `poll_now`.
    webhook_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ActiveFleet {
    fn drop(&mut self) {
        if let Some(task) = &self.webhook_task {
            task.abort();
        }
    }
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Reconciles one Fleet.
pub async fn reconcile(fleet: Arc<Fleet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let namespace = fleet.namespace().unwrap_or_else(|| "default".into());
    let name = fleet.name_any();
    let result = reconcile_inner(fleet, &ctx).await;
    ctx.metrics.reconciled(started.elapsed(), result.is_ok());
    if let Err(e) = &result {
        let stage = match e {
            Error::Lease { .. } => Stage::lease,
            Error::Secret { .. } | Error::Spec { .. } => Stage::settings,
            Error::Engine { .. } | Error::Rollout { .. } => Stage::engine,
            _ => Stage::kubernetes,
        };
        ctx.metrics.failed(&namespace, &name, stage);
    }
    result
}

async fn reconcile_inner(fleet: Arc<Fleet>, ctx: &Context) -> Result<Action, Error> {
    let namespace = fleet.namespace().unwrap_or_else(|| "default".into());
    let name = fleet.name_any();
    // Only the Lease holder writes anything for this fleet: the API server, the TUF
    // repository and the inventory.
    let held = ctx.leases.hold(&namespace, &lease_name(&name)).await.map_err(|source| Error::Lease {
        namespace: namespace.clone(),
        name: lease_name(&name),
        source,
    })?;
    if !held {
        // A replica that lost the Lease drops its engine: it must not publish.
        if ctx.active.lock().await.remove(&key(&namespace, &name)).is_some() {
            ctx.routes.remove(&namespace, &name);
            ctx.metrics.remove_fleet(&namespace, &name);
            tracing::info!(fleet = %name, namespace, "engine stopped: another replica holds the Lease");
        }
        if fleet.spec.suspend || fleet.metadata.deletion_timestamp.is_some() {
            if ctx.standby.lock().await.remove(&key(&namespace, &name)).is_some() {
                ctx.routes.remove(&namespace, &name);
            }
        } else if let Err(e) = serve_standby(&fleet, ctx, &namespace).await {
            tracing::warn!(fleet = %name, "cannot serve the device API while standing by: {e}");
        }
        return Ok(Action::requeue(ctx.settings.standby_retry));
    }
    let api: Api<Fleet> = Api::namespaced(ctx.client.clone(), &namespace);
    let ns = namespace.as_str();
    finalizer(&api, FINALIZER, fleet, |event| async move {
        match event {
            Finalizer::Apply(fleet) => apply(&fleet, ctx, ns).await,
            Finalizer::Cleanup(fleet) => cleanup(&fleet, ctx, ns).await,
        }
    })
    .await
    .map_err(|e| match e {
        // The pass's own error keeps its type (and its stage in the metrics).
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        e => Error::Finalizer(Box::new(e)),
    })
}

/// What the controller does after a failed pass: retry with a delay.
pub fn error_policy(fleet: Arc<Fleet>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(fleet = %fleet.name_any(), "reconcile failed: {error}");
    Action::requeue(ctx.settings.step_interval.max(Duration::from_secs(5)))
}

async fn apply(fleet: &Fleet, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let name = fleet.name_any();
    let api: Api<Fleet> = Api::namespaced(ctx.client.clone(), namespace);
    let active = match engine(fleet, ctx, namespace).await {
        Ok(active) => active,
        Err(e @ (Error::Secret { .. } | Error::Spec { .. })) => {
            ctx.metrics.failed(namespace, &name, Stage::settings);
            let status = not_ready_status(fleet, "InvalidSettings", &e.to_string());
            write_status(&api, fleet, status).await?;
            return Ok(Action::requeue(ctx.settings.step_interval.max(Duration::from_secs(30))));
        }
        Err(e) => return Err(e),
    };
    let mut active = active.lock().await;
    if fleet.spec.suspend {
        // No fetch and no rollout pass, but the published metadata stays signed: a fleet
        // suspended for longer than the timestamp's expiry must not strand its devices.
        active.engine.maintain_repository();
        write_status(&api, fleet, suspended_status(fleet)).await?;
        return Ok(Action::requeue(ctx.settings.step_interval.min(ctx.leases.renew_interval())));
    }
    let fleet_ref = fleet.object_ref(&());

    // The engine's pass, in its two halves. First the source, when due or when a push
    // webhook asked.
    let poll = SystemTime::now() >= active.next_poll || active.poll_now.swap(false, Ordering::Relaxed);
    if let Some(outcome) = active.engine.read(poll).await {
        let outcome = outcome.map_err(|e| Error::engine(namespace, &name, e))?;
        active.outcome.fetch_error = match &outcome {
            SourceOutcome::Failed(e) => Some(e.clone()),
            _ => None,
        };
        if !matches!(outcome, SourceOutcome::Failed(_)) {
            active.last_fetch = Some(Timestamp::now());
        }
        match outcome {
            SourceOutcome::Applied { commit, devices } => {
                let note = format!("commit {commit} applied: {devices} devices");
                ctx.events.publish(&fleet_ref, EventType::Normal, "CommitApplied", "Apply", note).await;
            }
            SourceOutcome::Refused { commit, errors } => {
                ctx.metrics.failed(namespace, &name, Stage::compile);
                let note = format!(
                    "commit {commit} refused ({} errors); the last good commit stays in force. First: {}",
                    errors.len(),
                    errors.first().map_or("", String::as_str)
                );
                active.outcome.refused = Some((commit, errors));
                ctx.events.publish(&fleet_ref, EventType::Warning, "CommitRefused", "Apply", note).await;
            }
            SourceOutcome::Unchanged => {}
            SourceOutcome::Failed(e) => {
                ctx.metrics.failed(namespace, &name, Stage::source);
                tracing::warn!(fleet = %name, "fleet source: {e}");
            }
        }
        // A refusal stands only while the source's head is not in force: a revert to the
        // fleet in force (which the source reports as unchanged) clears it.
        let source = active.engine.source().status();
        let head_in_force = source.last_attempted.is_some() && source.last_attempted == source.last_applied;
        let wait = source.wait(SystemTime::now());
        if head_in_force {
            active.outcome.refused = None;
        }
        active.next_poll = SystemTime::now() + wait;
    }

    // Operators' changes and the engine's step write the inventory and publish: the Lease
    // is checked again just before (a long poll may have outlasted it).
    if !ctx.leases.holds(namespace, &lease_name(&name)) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // Operators' changes to FleetRollouts, before the engine's step picks them up.
    let rollouts: Api<FleetRollout> = Api::namespaced(ctx.client.clone(), namespace);
    let mut existing = rollouts
        .list(&ListParams::default().labels(&format!("{FLEET_LABEL}={name}")))
        .await
        .map_err(|e| Error::kube(format!("listing the FleetRollouts of Fleet {namespace}/{name}"), e))?
        .items;
    let changes =
        rollout::apply_operator_changes(&rollouts, &active.store, &mut existing, Timestamp::now()).await?;
    for change in changes {
        let (kind, reason, note) = describe_change(&change);
        ctx.events.publish(&change.resource, kind, reason, "Operate", note).await;
    }

    // The writing half: decide, publish, record, and the repository's upkeep.
    match active.engine.advance(Timestamp::now()).await {
        Ok(report) => {
            active.outcome.step_error = None;
            for event in &report.events {
                let (kind, reason, note) = describe(event);
                ctx.events.publish(&fleet_ref, kind, reason, "Rollout", note).await;
            }
        }
        Err(e) => {
            ctx.metrics.failed(namespace, &name, Stage::engine);
            tracing::error!(fleet = %name, "engine pass failed: {e}");
            active.outcome.step_error = Some(e.to_string());
        }
    }

    let statuses =
        rollout::sync(&rollouts, fleet, &active.store, &existing, ctx.settings.engine.stale_after).await?;
    let unfinished = statuses.iter().filter(|r| !is_finished(r)).count() as u64;
    let devices = active.engine.desired().map(|d| d.fleet.devices().len() as u64);
    let status = fleet_status(fleet, active.engine.source().status(), &active.outcome, devices, unfinished);
    write_status(&api, fleet, status).await?;
    record_gauges(ctx, namespace, &name, &active, &statuses).await;
    let until_poll = active
        .next_poll
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100));
    // Back before the next poll, the next gate check, and the Lease renewal, whichever
    // comes first.
    let next = ctx.settings.step_interval.min(until_poll).min(ctx.leases.renew_interval());
    Ok(Action::requeue(next))
}

fn is_finished(rollout: &RolloutStatus) -> bool {
    rollout.phase.is_finished()
}

/// The fleet's gauges after a pass. A failed count is logged and leaves the device
/// gauges out of this snapshot.
async fn record_gauges(
    ctx: &Context,
    namespace: &str,
    name: &str,
    active: &ActiveFleet,
    rollouts: &[RolloutStatus],
) {
    let mut devices = Vec::new();
    match active.store.device_counts().await {
        Ok(counts) => {
            let reported: i64 = counts.iter().map(|(_, _, n)| n).sum();
            for (state, release, count) in counts {
                devices.push((state, release.unwrap_or_default(), count.max(0) as u64));
            }
            if let Ok(known) = active.store.devices_count().await {
                if known > reported {
                    devices.push(("unknown".into(), String::new(), (known - reported) as u64));
                }
            }
        }
        Err(e) => tracing::warn!(fleet = %name, "cannot count devices for the metrics: {e}"),
    }
    let rollouts = rollouts
        .iter()
        .map(|r| RolloutGauges {
            rollout: r.id.clone(),
            phase: r.phase,
            wave: u64::from(r.current_wave + 1).min(r.waves.len() as u64),
            waves: r.waves.len() as u64,
            devices: vec![
                ("healthy", r.total.healthy),
                ("in_flight", r.total.in_flight),
                ("failed", r.total.failed),
                ("stale", r.total.stale),
                ("accepted", r.total.accepted),
                ("unpublished", r.total.unpublished),
            ],
        })
        .collect();
    let gauges = FleetGauges {
        rollouts,
        devices,
        last_fetch: active.last_fetch,
        tuf_dir: Some(ctx.data_dir(namespace, name).join("tuf")),
    };
    ctx.metrics.set_fleet(namespace, name, gauges);
}

async fn cleanup(fleet: &Fleet, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let name = fleet.name_any();
    // The TUF repository and the inventory stay in the data volume: devices keep their
    // verified instructions, and a Fleet created again under this name resumes where
    // this one stopped.
    ctx.active.lock().await.remove(&key(namespace, &name));
    ctx.standby.lock().await.remove(&key(namespace, &name));
    ctx.routes.remove(namespace, &name);
    ctx.metrics.remove_fleet(namespace, &name);
    let mirror = ctx.data_dir(namespace, &name).join("source");
    if let Err(e) = std::fs::remove_dir_all(&mirror) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %mirror.display(), "cannot remove the source mirror: {e}");
        }
    }
    // The FleetRollouts are deleted here rather than left to the garbage collector: a
    // cluster without one (or one that lags) would otherwise keep them, still owned by
    // this Fleet's uid, when a Fleet of the same name is created again.
    let rollouts: Api<FleetRollout> = Api::namespaced(ctx.client.clone(), namespace);
    let owned = rollouts
        .list(&ListParams::default().labels(&format!("{FLEET_LABEL}={name}")))
        .await
        .map_err(|e| Error::kube(format!("listing the FleetRollouts of Fleet {namespace}/{name}"), e))?;
    for resource in owned.items {
        let resource_name = resource.name_any();
        match rollouts.delete(&resource_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(format!("deleting FleetRollout {namespace}/{resource_name}"), e))
            }
        }
    }
    ctx.leases.release(namespace, &lease_name(&name)).await.map_err(|source| Error::Lease {
        namespace: namespace.into(),
        name: lease_name(&name),
        source,
    })?;
    tracing::info!(fleet = %name, namespace, "fleet deleted; engine stopped");
    Ok(Action::await_change())
}

/// Serves the device API of a fleet whose engine runs on another replica, when the
/// inventory is shared (PostgreSQL; an SQLite inventory belongs to one replica). Reports
/// land in the shared inventory; cached device keys are dropped whenever the Fleet's
/// status shows a new commit. Enrollment tokens are only known to the active replica.
async fn serve_standby(fleet: &Fleet, ctx: &Context, namespace: &str) -> Result<(), Error> {
    let name = fleet.name_any();
    let key = key(namespace, &name);
    let commit = fleet.status.as_ref().and_then(|s| s.last_applied_commit.clone());
    if let Some(standby) = ctx.standby.lock().await.get_mut(&key) {
        if standby.spec == fleet.spec {
            if standby.commit != commit {
                standby.api.forget_keys();
                standby.commit = commit;
            }
            return Ok(());
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(url) = database_url(fleet, &ctx.settings.database, &secrets, namespace).await? else {
        return Ok(());
    };
    if !url.starts_with("postgres") {
        return Ok(());
    }
    let store = Store::open(&url)
        .await
        .map_err(|e| Error::spec(namespace, &name, format!("cannot open the inventory: {e}")))?;
    let tuf_dir = ctx.data_dir(namespace, &name).join("tuf");
    let api = DeviceApi::new(store, ApiConfig { tuf_dir: Some(tuf_dir), ..ApiConfig::default() });
    ctx.routes.insert(namespace, &name, api.router());
    ctx.standby.lock().await.insert(key, StandbyApi { spec: fleet.spec.clone(), api, commit });
    tracing::info!(fleet = %name, namespace, "standing by; serving the device API over the shared inventory");
    Ok(())
}

/// The engine of a fleet, built (or rebuilt when the spec changed) from its spec and the
/// Secrets it references.
async fn engine(fleet: &Fleet, ctx: &Context, namespace: &str) -> Result<Arc<Mutex<ActiveFleet>>, Error> {
    let name = fleet.name_any();
    let key = key(namespace, &name);
    if let Some(engine) = ctx.active.lock().await.get(&key) {
        // Suspending or resuming keeps the engine: it only changes what a pass does.
        let spec = &engine.lock().await.spec;
        let unchanged = FleetSpec { suspend: fleet.spec.suspend, ..spec.clone() } == fleet.spec;
        if unchanged {
            return Ok(engine.clone());
        }
    }
    let settings::FleetSettings { config, source, keys, webhook_secret } =
        settings::read(fleet, &ctx.client, &ctx.settings, namespace).await?;
    let store = Store::open(&config.database_url())
        .await
        .map_err(|e| Error::spec(namespace, &name, format!("cannot open the inventory: {e}")))?;
    let device_api =
        DeviceApi::new(store.clone(), ApiConfig { tuf_dir: Some(config.tuf_dir()), ..ApiConfig::default() });
    let mut router = device_api.router();
    let poll_now = Arc::new(AtomicBool::new(false));
    let mut webhook_task = None;
    if let Some(secret) = webhook_secret {
        let wake = Arc::new(Notify::new());
        let hook =
            Webhook::new(secret, wake.clone()).map_err(|e| Error::spec(namespace, &name, e.to_string()))?;
        router = router.merge(hook.router());
        // A push event makes the next pass (due within the step interval) poll the source.
        let poll_now = poll_now.clone();
        webhook_task = Some(tokio::spawn(async move {
            loop {
                wake.notified().await;
                poll_now.store(true, Ordering::Relaxed);
            }
        }));
    }
    // The source in full, credentials and verification included.
    let fleet_engine = Engine::new(config.setup(), source, keys, store.clone(), Some(device_api.clone()))
        .map_err(|e| Error::engine(namespace, &name, e))?;
    ctx.standby.lock().await.remove(&key);
    ctx.routes.insert(namespace, &name, router);
    let engine = Arc::new(Mutex::new(ActiveFleet {
        spec: fleet.spec.clone(),
        engine: fleet_engine,
        store,
        outcome: Outcome::default(),
        next_poll: SystemTime::UNIX_EPOCH,
        last_fetch: None,
        poll_now,
        webhook_task,
    }));
    ctx.active.lock().await.insert(key, engine.clone());
    tracing::info!(fleet = %name, namespace, "engine started");
    Ok(engine)
}

/// The Event of an operator's change to a FleetRollout: Normal when it took effect, a
/// Warning with the reason when it was refused.
fn describe_change(change: &OperatorChange) -> (EventType, &'static str, String) {
    let rollout = &change.rollout;
    if let Some(reason) = &change.refused {
        // Only request tokens are reported refused (see `OperatorChange::refused`).
        let (event, field) = match change.action {
            RolloutAction::Retry => ("RetryRefused", "spec.retry"),
            _ => ("AcceptRefused", "spec.accept"),
        };
        return (EventType::Warning, event, format!("rollout {rollout}: {field} refused: {reason}"));
    }
    let (reason, note) = match change.action {
        RolloutAction::Pause => ("RolloutPaused", format!("rollout {rollout} paused (spec.paused)")),
        RolloutAction::Resume => {
            ("RolloutResumed", format!("rollout {rollout} resumed (spec.paused: false)"))
        }
        RolloutAction::Approve(index) => {
            ("WaveApproved", format!("rollout {rollout}: wave {} approved (spec.approvedWaves)", index + 1))
        }
        RolloutAction::Abort => ("RolloutAborted", format!("rollout {rollout} aborted (spec.abort)")),
        RolloutAction::Retry => {
            ("RetryRequested", format!("rollout {rollout}: failed devices to be retried (spec.retry)"))
        }
        RolloutAction::Accept => {
            ("FailuresAccepted", format!("rollout {rollout}: current failures accepted (spec.accept)"))
        }
        RolloutAction::Rollback => {
            ("RollbackRequested", format!("rollout {rollout}: rollback requested (spec.rollback)"))
        }
    };
    (EventType::Normal, reason, note)
}

/// The Kubernetes Event for an engine event: halts are Warnings, the rest Normal.
fn describe(event: &EngineEvent) -> (EventType, &'static str, String) {
    match event {
        EngineEvent::RolloutStarted { rollout, policy, release, waves } => (
            EventType::Normal,
            "RolloutStarted",
            format!("rollout {rollout}: policy {policy} to release {release} in {} waves", waves.len()),
        ),
        EngineEvent::WavePublished { rollout, wave, name, devices } => (
            EventType::Normal,
            "WavePublished",
            format!("rollout {rollout}: wave {} ({name}) published to {devices} devices", wave + 1),
        ),
        EngineEvent::WaveSucceeded { rollout, wave, name } => (
            EventType::Normal,
            "WaveSucceeded",
            format!("rollout {rollout}: wave {} ({name}) succeeded", wave + 1),
        ),
        EngineEvent::RolloutHalted { rollout, reason } => {
            (EventType::Warning, "RolloutHalted", format!("rollout {rollout} halted: {reason}"))
        }
        EngineEvent::RolloutCompleted { rollout } => {
            (EventType::Normal, "RolloutCompleted", format!("rollout {rollout} completed"))
        }
        EngineEvent::RolloutAborted { rollout, reason } => {
            (EventType::Normal, "RolloutAborted", format!("rollout {rollout} aborted: {reason}"))
        }
    }
}
