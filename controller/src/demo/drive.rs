//! The demo's driving: start the controller over the demo fleet, bring the simulated
//! devices online, commit the change, and follow its rollouts — and the rollback of a
//! halted one — until every one has ended (or the timeout), approving each manual wave a
//! moment after it starts waiting, as `waveguide rollout approve` would.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use super::{
    commit_change, prepare, BetaWatch, DemoError, DemoFleet, DemoOptions, BETA_POLICY, BETA_RELEASE,
    OLD_RELEASE, OLD_VERSION,
};
use crate::agent::simulate::{device_key, SimConfig, Simulation};
use crate::engine::EngineConfig;
use crate::files::FileError;
use crate::model::OnFailure;
use crate::rollout::control::{self, Action, RolloutStatus};
use crate::rollout::state::RolloutPhase;
use crate::standalone::{self, Controller, RunConfig};

/// The seed the simulated devices' keys are derived from.
const KEY_SEED: &str = "waveguide-demo";

/// How long a wave waits for approval before the demo approves it.
const APPROVE_AFTER: Duration = Duration::from_secs(2);

/// The bake of every wave but the beta policy's.
const BAKE: &str = "3s";

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The example fleet to start from.
    pub example: PathBuf,
    /// Where the demo's files go (fleet repository, data directory, artifacts).
    pub work: PathBuf,
    /// How many simulated devices (a sample of the example fleet's).
    pub devices: usize,
    /// Share of the devices whose health turns bad after they install the beta release.
    pub unhealthy_rate: f64,
    /// How long after installing the beta those devices turn unhealthy: past the beta
    /// policy's confirmation, they do during its bake.
    pub unhealthy_after: Duration,
    /// How long a simulated install takes (±50%).
    pub install_time: Duration,
    /// Give up following the rollouts after this long (from the start).
    pub timeout: Duration,
}

/// What the demo shows as it goes; `waveguide demo` prints it.
pub trait Show {
    /// The fleet repository is ready.
    fn fleet(&mut self, fleet: &DemoFleet);
    /// The controller serves its first commit at `addr`.
    fn controller(&mut self, addr: SocketAddr);
    /// `seen` of `total` devices have reported.
    fn online(&mut self, seen: u64, total: u64);
    /// Every device reports, all up to date.
    fn all_online(&mut self);
    /// The change was committed.
    fn committed(&mut self, commit: &str, config: &DemoConfig);
    /// A rollout of the change started (or the rollback of one).
    fn started(&mut self, rollout: &RolloutStatus);
    /// The rollouts of the change as they stand now (called at every look).
    fn rollouts(&mut self, rollouts: &[&RolloutStatus]);
    /// A rollout of the change ended: completed, halted or aborted.
    fn ended(&mut self, rollout: &RolloutStatus);
    /// `wave` of `rollout` waited for approval long enough: the demo approves it.
    fn approving(&mut self, rollout: &RolloutStatus, wave: u32);
    /// A stop was asked for (`signal`); the devices and the controller stop.
    fn stopping(&mut self, signal: &str);
}

/// How the demo ended.
#[derive(Debug)]
pub enum Outcome {
    /// It ran its course: `ended` says whether every rollout completed or halted before
    /// the timeout.
    Finished {
        /// Every rollout completed or halted in time.
        ended: bool,
        /// Every rollout, at the end.
        rollouts: Vec<RolloutStatus>,
    },
    /// A signal stopped it.
    Interrupted,
}

/// Runs the demo; `signal` (SIGTERM, SIGINT) stops it cleanly at any point after the
/// controller started: the devices and the controller stop.
pub async fn run(
    config: &DemoConfig,
    show: &mut impl Show,
    signal: impl Future<Output = &'static str>,
) -> Result<Outcome, DemoError> {
    let started = Instant::now();
    let fleet = prepare(
        &config.example,
        &config.work,
        &DemoOptions { devices: config.devices, bake: BAKE.into(), beta: BetaWatch::default() },
        |id| device_key(KEY_SEED, id).public_key_b64(),
    )?;
    show.fleet(&fleet);

    let mut run = RunConfig::new(fleet.repo.display().to_string(), config.work.join("data"));
    run.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    run.poll_interval = Duration::from_secs(1);
    run.step_interval = Duration::from_millis(500);
    run.engine = EngineConfig { stale_after: SignedDuration::from_secs(30) };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (controller, task) = standalone::start(run.clone(), async move {
        let _ = stop_rx.await;
    })
    .await?;
    let mut simulation = None;
    let followed = {
        let follow = follow(config, &run, &controller, &fleet, started, &mut simulation, show);
        tokio::select! {
            followed = follow => Some(followed),
            name = signal => {
                show.stopping(name);
                None
            }
        }
    };
    if let Some(simulation) = simulation {
        simulation.stop().await;
    }
    let _ = stop_tx.send(());
    let _ = task.await;
    match followed {
        Some(followed) => followed.map(|(ended, rollouts)| Outcome::Finished { ended, rollouts }),
        None => Ok(Outcome::Interrupted),
    }
}

/// The demo once the controller runs: waits for the first commit to be published, starts
/// the simulated devices (into `simulation`, for the caller to stop), commits the change
/// and follows its rollouts until they end or the timeout. Returns whether they ended,
/// and every rollout.
async fn follow(
    config: &DemoConfig,
    run: &RunConfig,
    controller: &Controller,
    fleet: &DemoFleet,
    started: Instant,
    simulation: &mut Option<Simulation>,
    show: &mut impl Show,
) -> Result<(bool, Vec<RolloutStatus>), DemoError> {
    let stale_after = run.engine.stale_after;
    let addr = controller.status.borrow().listening.ok_or(DemoError::Timeout("the controller's address"))?;
    let root = run.tuf_dir().join("metadata/1.root.json");
    wait_for("the first commit to be published", Duration::from_secs(30), || root.exists()).await?;
    show.controller(addr);

    let server = format!("http://{addr}").parse().expect("an HTTP URL from a socket address");
    let mut sim = SimConfig::new(server, std::fs::read(&root).map_err(FileError::on("read", &root))?);
    sim.key_seed = KEY_SEED.into();
    sim.initial_release = Some(OLD_RELEASE.into());
    sim.initial_version = OLD_VERSION.parse().expect("a valid version");
    sim.unhealthy_rate = config.unhealthy_rate;
    sim.unhealthy_after = config.unhealthy_after;
    sim.fail_release = Some(BETA_RELEASE.into());
    sim.install_time = config.install_time;
    sim.poll_interval = Duration::from_secs(1);
    sim.report_interval = Duration::from_secs(5);
    // Checked every second, a device that turns unhealthy says so within a second.
    sim.health_interval = Duration::from_secs(1);
    *simulation = Some(Simulation::start(sim, fleet.devices.clone()).map_err(DemoError::Simulation)?);

    let store = controller.store.clone();
    let deadline = started + config.timeout;
    let total = fleet.devices.len() as u64;
    loop {
        let seen = store.inventory().await?.len() as u64;
        show.online(seen, total);
        if seen >= total {
            break;
        }
        if Instant::now() > deadline {
            return Err(DemoError::Offline { seen, total });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    show.all_online();

    let commit = commit_change(fleet)?;
    show.committed(&commit, config);

    let mut waiting_since: HashMap<String, Instant> = HashMap::new();
    let mut phases: HashMap<String, RolloutPhase> = HashMap::new();
    let ended = loop {
        let list = control::list(&store, stale_after, Timestamp::now()).await?;
        let current = of_change(&list, &commit);
        // Said in the order it happens: a rollout starts, its waves move, it ends.
        let before: Vec<Option<RolloutPhase>> =
            current.iter().map(|r| phases.insert(r.id.clone(), r.phase)).collect();
        for (r, before) in current.iter().zip(&before) {
            if before.is_none() {
                show.started(r);
            }
        }
        show.rollouts(&current);
        for (r, before) in current.iter().zip(&before) {
            if has_ended(r.phase) && !before.is_some_and(has_ended) {
                show.ended(r);
            }
        }
        for r in &current {
            let Some(wave) = r.awaits_approval() else { continue };
            let since = *waiting_since.entry(r.id.clone()).or_insert_with(Instant::now);
            if since.elapsed() >= APPROVE_AFTER {
                show.approving(r, wave);
                control::act(&store, &r.id, Action::Approve(wave), Timestamp::now()).await?;
                controller.wake.notify_one();
                waiting_since.remove(&r.id);
            }
        }
        let finished =
            current.len() >= 3 && current.iter().all(|r| has_ended(r.phase) && !awaits_rollback(r, &current));
        if finished {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let list = control::list(&store, stale_after, Timestamp::now()).await?;
    Ok((ended, list))
}

/// The rollouts of the change `commit`, and the rollbacks of those.
fn of_change<'a>(list: &'a [RolloutStatus], commit: &str) -> Vec<&'a RolloutStatus> {
    let of_commit = |r: &RolloutStatus| r.commit.as_deref() == Some(commit);
    list.iter()
        .filter(|r| {
            of_commit(r)
                || r.rollback_of.as_ref().is_some_and(|of| list.iter().any(|o| &o.id == of && of_commit(o)))
        })
        .collect()
}

/// Whether `rollout`'s rollback was asked for — or will be: it halted, and the beta
/// policy answers a halt with a rollback — and has not started yet.
fn awaits_rollback(rollout: &RolloutStatus, current: &[&RolloutStatus]) -> bool {
    let asked = rollout.rolled_back_at.is_some()
        || (rollout.phase == RolloutPhase::Halted
            && rollout.policy == BETA_POLICY
            && BetaWatch::default().on_failure == OnFailure::Rollback);
    asked && !current.iter().any(|r| r.rollback_of.as_ref() == Some(&rollout.id))
}

/// Where the demo stops following a rollout: over for good, or halted.
fn has_ended(phase: RolloutPhase) -> bool {
    phase.is_finished() || phase == RolloutPhase::Halted
}

async fn wait_for(what: &'static str, timeout: Duration, ready: impl Fn() -> bool) -> Result<(), DemoError> {
    let until = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > until {
            return Err(DemoError::Timeout(what));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
