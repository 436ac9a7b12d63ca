//! The Fleet reconciler: drives one fleet's engine ([`Reconciler`]) from a `Fleet`
//! resource and reports back through its status, Events and FleetRollouts.
//!
//! One pass: hold the fleet's Lease (a standby replica stops here and writes nothing) →
//! ensure the finalizer → build the engine when the spec changed (reading the Secrets the
//! Fleet references) → poll the source when due → apply operators' changes to
//! FleetRollouts → one engine step → write the FleetRollouts, Events and status that
//! differ from what the API server has. Each pass recomputes from current state, so a lost
//! or repeated trigger does no harm, and an idle fleet writes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

use super::crd::{Condition, Fleet, FleetRollout, FleetSpec, FleetStatus, VerifyMode};
use super::lease::{lease_name, Leases};
use super::metrics::Metrics;
use super::rollout;
use super::serve::FleetRoutes;
use super::Error;
use crate::api::{Api as DeviceApi, ApiConfig};
use crate::inventory::store::Store;
use crate::publish::{Expiries, KeyDir};
use crate::reconcile::{Reconciler, RunConfig, SourceOutcome};
use crate::rollout::engine::{EngineConfig, Event as EngineEvent};
use crate::source::{Auth, GitReference, SourceSpec, VerifySpec};

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
    recorder: Recorder,
    engines: Mutex<HashMap<String, Arc<Mutex<FleetEngine>>>>,
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
        let reporter =
            Reporter { controller: "waveguide-controller".into(), instance: Some(leases.identity().into()) };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            leases,
            settings,
            engines: Mutex::new(HashMap::new()),
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
        let engine = self.engines.lock().await.get(&key(namespace, name)).cloned()?;
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

/// One fleet's engine on this replica, with what the status is computed from.
struct FleetEngine {
    spec: FleetSpec,
    reconciler: Reconciler,
    store: Store,
    /// The last refused commit and its errors.
    refused: Option<(String, Vec<String>)>,
    /// The last engine error, if the last pass failed.
    step_error: Option<String>,
    /// Why the last poll of the source failed (fetch, reference, signature).
    fetch_error: Option<String>,
    /// The source is polled when this has passed.
    next_poll: SystemTime,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Reconciles one Fleet.
pub async fn reconcile(fleet: Arc<Fleet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(fleet, &ctx).await;
    ctx.metrics.reconciled(started.elapsed(), result.is_ok());
    result
}

async fn reconcile_inner(fleet: Arc<Fleet>, ctx: &Context) -> Result<Action, Error> {
    let namespace = fleet.namespace().unwrap_or_else(|| "default".into());
    let name = fleet.name_any();
    // Only the Lease holder writes anything for this fleet: the API server, the TUF
    // repository and the inventory.
    let held = ctx
        .leases
        .hold(&namespace, &lease_name(&name))
        .await
        .map_err(|e| Error::kube(format!("holding the Lease of Fleet {namespace}/{name}"), e))?;
    if !held {
        // A replica that lost the Lease drops its engine: it must not publish.
        if ctx.engines.lock().await.remove(&key(&namespace, &name)).is_some() {
            ctx.routes.remove(&namespace, &name);
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
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// What the controller does after a failed pass: retry with a delay.
pub fn error_policy(fleet: Arc<Fleet>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(fleet = %fleet.name_any(), "reconcile failed: {error}");
    Action::requeue(ctx.settings.step_interval.max(Duration::from_secs(5)))
}

async fn apply(fleet: &Fleet, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let name = fleet.name_any();
    let api: Api<Fleet> = Api::namespaced(ctx.client.clone(), namespace);
    if fleet.spec.suspend {
        let status = suspended_status(fleet);
        write_status(&api, fleet, status).await?;
        return Ok(Action::await_change());
    }
    let engine = match engine(fleet, ctx, namespace).await {
        Ok(engine) => engine,
        Err(e @ (Error::Secret { .. } | Error::Spec { .. })) => {
            let status = not_ready_status(fleet, "InvalidSettings", &e.to_string());
            write_status(&api, fleet, status).await?;
            return Ok(Action::requeue(ctx.settings.step_interval.max(Duration::from_secs(30))));
        }
        Err(e) => return Err(e),
    };
    let mut engine = engine.lock().await;
    let fleet_ref = fleet.object_ref(&());

    // The source, when due.
    let now = SystemTime::now();
    if now >= engine.next_poll {
        let outcome = engine.reconciler.sync_source().await.map_err(|e| Error::run(namespace, &name, e))?;
        engine.fetch_error = match &outcome {
            SourceOutcome::Failed(e) => Some(e.clone()),
            _ => None,
        };
        match outcome {
            SourceOutcome::Applied { commit, devices } => {
                engine.refused = None;
                let note = format!("commit {commit} applied: {devices} devices");
                publish(ctx, &fleet_ref, EventType::Normal, "CommitApplied", "Apply", note).await;
            }
            SourceOutcome::Refused { commit, errors } => {
                let note = format!(
                    "commit {commit} refused ({} errors); the last good commit stays in force. First: {}",
                    errors.len(),
                    errors.first().map_or("", String::as_str)
                );
                engine.refused = Some((commit, errors));
                publish(ctx, &fleet_ref, EventType::Warning, "CommitRefused", "Apply", note).await;
            }
            SourceOutcome::Unchanged => {}
            SourceOutcome::Failed(e) => tracing::warn!(fleet = %name, "fleet source: {e}"),
        }
        let wait = engine.reconciler.source().status().wait(SystemTime::now());
        engine.next_poll = SystemTime::now() + wait;
    }

    // Operators' changes and the engine's pass write the inventory and publish: the Lease
    // is checked again just before (a long poll may have outlasted it).
    if !ctx.leases.holds(namespace, &lease_name(&name)) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // Operators' changes to FleetRollouts, before the engine's pass picks them up.
    let rollouts: Api<FleetRollout> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = rollouts
        .list(&ListParams::default().labels(&format!("{FLEET_LABEL}={name}")))
        .await
        .map_err(|e| Error::kube(format!("listing the FleetRollouts of Fleet {namespace}/{name}"), e))?
        .items;
    rollout::apply_operator_changes(&engine.store, &existing, Timestamp::now()).await?;

    // One engine pass.
    match engine.reconciler.step(Timestamp::now()).await {
        Ok(report) => {
            engine.step_error = None;
            for event in &report.events {
                let (kind, reason, note) = describe(event);
                publish(ctx, &fleet_ref, kind, reason, "Rollout", note).await;
            }
        }
        Err(e) => {
            tracing::error!(fleet = %name, "engine pass failed: {e}");
            engine.step_error = Some(e.to_string());
        }
    }
    // As `waveguide run` does: expiring roles re-signed, old versions pruned, when due.
    engine.reconciler.maintain_repository();

    let active =
        rollout::sync(&rollouts, fleet, &engine.store, &existing, ctx.settings.engine.stale_after).await?;
    let status = fleet_status(fleet, &engine, active);
    write_status(&api, fleet, status).await?;
    let until_poll = engine
        .next_poll
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100));
    // Back before the next poll, the next gate check, and the Lease renewal, whichever
    // comes first.
    let next = ctx.settings.step_interval.min(until_poll).min(ctx.leases.renew_interval());
    Ok(Action::requeue(next))
}

async fn cleanup(fleet: &Fleet, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let name = fleet.name_any();
    // The FleetRollouts go with their owner (garbage collection). The TUF repository and
    // the inventory stay in the data volume: devices keep their verified instructions, and
    // a Fleet created again under this name resumes where this one stopped.
    ctx.engines.lock().await.remove(&key(namespace, &name));
    ctx.standby.lock().await.remove(&key(namespace, &name));
    ctx.routes.remove(namespace, &name);
    let mirror = ctx.data_dir(namespace, &name).join("source");
    if let Err(e) = std::fs::remove_dir_all(&mirror) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %mirror.display(), "cannot remove the source mirror: {e}");
        }
    }
    ctx.leases
        .release(namespace, &lease_name(&name))
        .await
        .map_err(|e| Error::kube(format!("deleting the Lease of Fleet {namespace}/{name}"), e))?;
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
    let Some(url) = database_url(fleet, ctx, &secrets, namespace).await? else { return Ok(()) };
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

/// The inventory database of a fleet: its Secret's URL, else the controller's default.
async fn database_url(
    fleet: &Fleet,
    ctx: &Context,
    secrets: &Api<Secret>,
    namespace: &str,
) -> Result<Option<String>, Error> {
    match &fleet.spec.inventory.database_secret_ref {
        Some(r) => {
            let data = secret_data(secrets, namespace, &r.name).await?;
            let url = data.get(&r.key).map(|b| text(b)).ok_or_else(|| Error::Secret {
                namespace: namespace.into(),
                name: r.name.clone(),
                reason: format!("has no key {:?}", r.key),
            })?;
            Ok(Some(url.trim().to_string()))
        }
        None => Ok(ctx.settings.database.clone()),
    }
}

/// The engine of a fleet, built (or rebuilt when the spec changed) from its spec and the
/// Secrets it references.
async fn engine(fleet: &Fleet, ctx: &Context, namespace: &str) -> Result<Arc<Mutex<FleetEngine>>, Error> {
    let name = fleet.name_any();
    let key = key(namespace, &name);
    if let Some(engine) = ctx.engines.lock().await.get(&key) {
        if engine.lock().await.spec == fleet.spec {
            return Ok(engine.clone());
        }
    }
    let data = ctx.data_dir(namespace, &name);
    std::fs::create_dir_all(&data)
        .map_err(|e| Error::spec(namespace, &name, format!("cannot create {}: {e}", data.display())))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let spec = &fleet.spec;

    let reference =
        match (&spec.source.reference.branch, &spec.source.reference.tag, &spec.source.reference.commit) {
            (Some(b), None, None) => GitReference::Branch(b.clone()),
            (None, Some(t), None) => GitReference::Tag(t.clone()),
            (None, None, Some(c)) => GitReference::Commit(c.clone()),
            _ => {
                return Err(Error::spec(
                    namespace,
                    &name,
                    "source.ref: set exactly one of branch, tag and commit",
                ))
            }
        };
    let interval = parse_duration(&spec.source.interval)
        .map_err(|e| Error::spec(namespace, &name, format!("source.interval: {e}")))?;
    let mut source = SourceSpec::new(spec.source.url.clone(), reference.clone());
    source.path = spec.source.path.clone();
    source.interval = interval;
    source.jitter = Duration::ZERO;
    if let Some(secret) = &spec.source.secret_ref {
        let data = secret_data(&secrets, namespace, &secret.name).await?;
        source.auth = git_auth(&data, &ctx.data_dir(namespace, &name)).map_err(|reason| Error::Secret {
            namespace: namespace.into(),
            name: secret.name.clone(),
            reason,
        })?;
    }
    if let Some(verify) = &spec.source.verify {
        let data = secret_data(&secrets, namespace, &verify.secret_ref.name).await?;
        source.verify = VerifySpec {
            mode: match verify.mode {
                VerifyMode::None => crate::source::VerifyMode::None,
                VerifyMode::Head => crate::source::VerifyMode::Head,
            },
            allowed_signers: data.get("allowedSigners").map(|b| text(b)).unwrap_or_default(),
            openpgp_keys: data.get("openpgpKeys").map(|b| vec![text(b)]).unwrap_or_default(),
        };
    }

    let keys_dir = data.join("keys");
    let keys = match &spec.tuf.keys_secret_ref {
        Some(secret) => {
            let files = secret_data(&secrets, namespace, &secret.name).await?;
            write_keys(&keys_dir, &files).map_err(|reason| Error::Secret {
                namespace: namespace.into(),
                name: secret.name.clone(),
                reason,
            })?;
            KeyDir::open(&keys_dir).map_err(|e| Error::spec(namespace, &name, format!("TUF keys: {e}")))?
        }
        None if keys_dir.join("roots").is_dir() => {
            KeyDir::open(&keys_dir).map_err(|e| Error::spec(namespace, &name, format!("TUF keys: {e}")))?
        }
        None => {
            tracing::warn!(fleet = %name, "no tuf.keysSecretRef: creating keys in the data volume (trials only)");
            KeyDir::init(&keys_dir, 1, 1, SignedDuration::from_hours(24 * 365))
                .map_err(|e| Error::spec(namespace, &name, format!("creating TUF keys: {e}")))?
                .0
        }
    };
    let database = database_url(fleet, ctx, &secrets, namespace).await?;
    let expiries = expiries(spec).map_err(|e| Error::spec(namespace, &name, e))?;

    let mut config = RunConfig::new(spec.source.url.clone(), data.clone());
    config.reference = reference;
    config.path = spec.source.path.clone();
    config.poll_interval = interval;
    config.database = database;
    config.keys = Some(keys_dir);
    config.engine = ctx.settings.engine;
    config.expiries = expiries;
    let store = Store::open(&config.database_url())
        .await
        .map_err(|e| Error::spec(namespace, &name, format!("cannot open the inventory: {e}")))?;
    let device_api =
        DeviceApi::new(store.clone(), ApiConfig { tuf_dir: Some(config.tuf_dir()), ..ApiConfig::default() });
    let reconciler = Reconciler::with_source(config, source, keys, store.clone(), Some(device_api.clone()))
        .map_err(|e| Error::run(namespace, &name, e))?;
    ctx.standby.lock().await.remove(&key);
    ctx.routes.insert(namespace, &name, device_api.router());
    let engine = Arc::new(Mutex::new(FleetEngine {
        spec: fleet.spec.clone(),
        reconciler,
        store,
        refused: None,
        step_error: None,
        fetch_error: None,
        next_poll: SystemTime::UNIX_EPOCH,
    }));
    ctx.engines.lock().await.insert(key, engine.clone());
    tracing::info!(fleet = %name, namespace, "engine started");
    Ok(engine)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

fn expiries(spec: &FleetSpec) -> Result<Expiries, String> {
    let mut out = Expiries::default();
    if let Some(e) = &spec.tuf.expiries {
        for (field, value, slot) in [
            ("timestamp", &e.timestamp, &mut out.timestamp),
            ("snapshot", &e.snapshot, &mut out.snapshot),
            ("targets", &e.targets, &mut out.targets),
        ] {
            if let Some(text) = value {
                let d = parse_duration(text).map_err(|e| format!("tuf.expiries.{field}: {e}"))?;
                *slot = SignedDuration::try_from(d).map_err(|e| format!("tuf.expiries.{field}: {e}"))?;
            }
        }
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn secret_data(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<HashMap<String, Vec<u8>>, Error> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading Secret {namespace}/{name}"), e))?
        .ok_or_else(|| Error::Secret {
            namespace: namespace.into(),
            name: name.into(),
            reason: "not found".into(),
        })?;
    let mut out: HashMap<String, Vec<u8>> =
        secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    Ok(out)
}

/// Git credentials from a Secret's keys: `token`; `username` and `password`; or
/// `identity` (an SSH private key, written to the fleet's data directory), `passphrase`
/// and `known_hosts` (the server's host keys, checked when given).
fn git_auth(data: &HashMap<String, Vec<u8>>, dir: &Path) -> Result<Auth, String> {
    if let Some(token) = data.get("token") {
        return Ok(Auth::Token(text(token).trim().to_string()));
    }
    if let (Some(user), Some(password)) = (data.get("username"), data.get("password")) {
        return Ok(Auth::Basic { user: text(user), password: text(password) });
    }
    if let Some(identity) = data.get("identity") {
        let path = dir.join("git-identity");
        write_private(&path, identity).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let known_hosts = match data.get("known_hosts") {
            Some(hosts) => {
                let file = dir.join("git-known-hosts");
                write_private(&file, hosts).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
                Some(file)
            }
            None => None,
        };
        return Ok(Auth::SshKey { path, passphrase: data.get("passphrase").map(|p| text(p)), known_hosts });
    }
    Err("has none of `token`, `username` and `password`, or `identity`".into())
}

/// Writes the key directory from a Secret: `online.pk8`, `online.next.pk8`, and
/// `<version>.root.json` files into `roots/`.
fn write_keys(dir: &Path, files: &HashMap<String, Vec<u8>>) -> Result<(), String> {
    if !files.contains_key("online.pk8") {
        return Err("has no `online.pk8` (the online TUF key)".into());
    }
    if !files.keys().any(|k| k.ends_with(".root.json")) {
        return Err("has no `<version>.root.json` (the signed roots)".into());
    }
    let roots = dir.join("roots");
    std::fs::create_dir_all(&roots).map_err(|e| format!("cannot create {}: {e}", roots.display()))?;
    for (name, bytes) in files {
        let path = match name.as_str() {
            "online.pk8" | "online.next.pk8" => dir.join(name),
            n if n.ends_with(".root.json") => roots.join(n),
            _ => continue,
        };
        if std::fs::read(&path).is_ok_and(|old| old == *bytes) {
            continue;
        }
        let _ = std::fs::remove_file(&path);
        write_private(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(bytes)
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

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let mut note = note;
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let event =
        KubeEvent { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    // An Event that cannot be written is logged, never fatal: Events are for people.
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(reason, "cannot publish a Kubernetes Event: {e}");
    }
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

fn unknown(type_: &str, reason: &str, message: &str) -> Condition {
    Condition { status: "Unknown".into(), ..condition(type_, false, reason, message.into()) }
}

fn fleet_status(fleet: &Fleet, engine: &FleetEngine, active: u64) -> FleetStatus {
    let source = engine.reconciler.source().status();
    let applied = source.last_applied.as_ref().map(|r| r.commit.to_string());
    let attempted = source.last_attempted.as_ref().map(|r| r.commit.to_string());
    let source_ready = match (&engine.fetch_error, &attempted) {
        (Some(e), _) => condition("SourceReady", false, "FetchFailed", e.clone()),
        (None, Some(commit)) => condition("SourceReady", true, "Fetched", format!("fetched commit {commit}")),
        (None, None) => unknown("SourceReady", "Fetching", "the source has not been fetched yet"),
    };
    let validated = match (&engine.refused, &applied) {
        (Some((commit, errors)), _) => condition(
            "Validated",
            false,
            "CommitRefused",
            format!(
                "commit {commit} refused with {} errors; the last good commit stays in force:\n{}",
                errors.len(),
                errors.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
            ),
        ),
        (None, Some(commit)) => condition("Validated", true, "Compiled", format!("commit {commit} compiles")),
        (None, None) => unknown("Validated", "Pending", "no commit compiled yet"),
    };
    let published = match (&engine.step_error, &applied) {
        (Some(e), _) => condition("Published", false, "PublishFailed", e.clone()),
        (None, Some(commit)) => condition(
            "Published",
            true,
            "Published",
            format!("instructions of commit {commit} published; {active} active rollouts"),
        ),
        (None, None) => unknown("Published", "Pending", "nothing published yet"),
    };
    let parts = [&source_ready, &validated, &published];
    let ready = match parts.iter().find(|c| c.status != "True") {
        None => condition("Ready", true, "Reconciled", "the fleet is reconciled".into()),
        Some(c) => Condition { type_: "Ready".into(), ..(*c).clone() },
    };
    let devices = engine.reconciler.desired().map(|d| d.fleet.devices().len() as u64);
    FleetStatus {
        conditions: vec![ready, source_ready, validated, published],
        observed_generation: fleet.metadata.generation,
        last_applied_commit: applied,
        last_attempted_commit: attempted,
        devices,
        active_rollouts: Some(active),
    }
}

fn suspended_status(fleet: &Fleet) -> FleetStatus {
    let mut status = fleet.status.clone().unwrap_or_default();
    status.observed_generation = fleet.metadata.generation;
    let suspended = condition("Ready", false, "Suspended", "spec.suspend is set".into());
    status.conditions.retain(|c| c.type_ != "Ready");
    status.conditions.insert(0, suspended);
    status
}

fn not_ready_status(fleet: &Fleet, reason: &str, message: &str) -> FleetStatus {
    let mut status = fleet.status.clone().unwrap_or_default();
    status.observed_generation = fleet.metadata.generation;
    status.conditions.retain(|c| c.type_ != "Ready");
    status.conditions.insert(0, condition("Ready", false, reason, message.into()));
    status
}

/// Writes the status with server-side apply when it differs from the one the API server
/// has. A condition keeps its transition time while its status stays.
async fn write_status(api: &Api<Fleet>, fleet: &Fleet, mut status: FleetStatus) -> Result<(), Error> {
    let old = fleet.status.clone().unwrap_or_default();
    let now = Timestamp::now().to_string();
    for c in &mut status.conditions {
        c.observed_generation = fleet.metadata.generation;
        c.last_transition_time = match old.conditions.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => now.clone(),
        };
    }
    if status == old {
        return Ok(());
    }
    let name = fleet.name_any();
    let patch = json!({
        "apiVersion": Fleet::api_version(&()),
        "kind": Fleet::kind(&()),
        "status": status,
    });
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(format!("writing the status of Fleet {name}"), e))?;
    Ok(())
}

#[cfg(test)]
mod git_auth_tests {
    use super::*;

    #[test]
    fn secrets_map_to_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let data = |pairs: &[(&str, &str)]| -> HashMap<String, Vec<u8>> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
        };
        assert_eq!(git_auth(&data(&[("token", "t0ken\n")]), dir.path()), Ok(Auth::Token("t0ken".into())));
        let ssh = git_auth(
            &data(&[
                ("identity", "KEY"),
                ("passphrase", "p"),
                ("known_hosts", "example.com ssh-ed25519 AAAA"),
            ]),
            dir.path(),
        )
        .unwrap();
        let Auth::SshKey { path, passphrase, known_hosts: Some(known_hosts) } = ssh else {
            panic!("{ssh:?}")
        };
        assert_eq!(std::fs::read_to_string(path).unwrap(), "KEY");
        assert_eq!(passphrase.as_deref(), Some("p"));
        assert_eq!(std::fs::read_to_string(known_hosts).unwrap(), "example.com ssh-ed25519 AAAA");
        assert!(git_auth(&data(&[("user", "x")]), dir.path()).is_err());
    }
}
