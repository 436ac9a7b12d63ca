//! The rollout engine: the stateful part of the rollout stage.
//!
//! One [`Engine::step`] is one level-based pass over the fleet in force: it plans the
//! compiled fleet against the inventory, starts a rollout for each policy whose reporting
//! devices must move to a release no rollout has taken on yet (pinning the release and the
//! wave membership, never-seen devices included in their place), supersedes rollouts whose policy now targets another release, asks the
//! [gates](super::gate) what each active rollout may do, admits devices of the current wave
//! through [admission](super::admission), and publishes every admitted instruction in one
//! publisher commit. Then it records what it published and the rollouts' new state in the
//! inventory.
//!
//! Crash safety comes from that order: the TUF commit comes first and is idempotent (an
//! instruction already published is not written again), the database records it after.
//! A pass interrupted between the two is simply repeated by the next one: the same devices
//! are admitted, the publisher writes nothing new, and the database catches up. A wave is
//! never skipped: the current wave is the last one the database marks as started.
//!
//! A rollout's new state is written with a compare-and-swap on the revision the pass read
//! (see [`Store::update_rollout`]): when an operator acted on the rollout during the pass,
//! the pass's write is dropped rather than undoing the action, and the next pass decides
//! again from what the operator left. What the pass published is recorded all the same.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::admission::{admit, InFlight};
use super::gate::{decide, Gates, Position, Verdict, Wait};
use super::progress::{classify, MemberState, Progress, Target};
use super::window::Windows;
use crate::compile::{CompiledDevice, CompiledFleet, CompiledRelease, DeviceIx, PolicyIx};
use crate::inventory::store::{
    MemberRecord, RolloutPhase, RolloutRecord, Store, StoreError, WaveRecord, WaveState,
};
use crate::inventory::Inventory;
use crate::plan;
use crate::publish::{
    ArtifactRef, Batch, CommitReport, DeviceInstruction, PublishError, ReleaseArtifact, Repository,
};

/// The rollout id written into the instructions of pinned devices.
pub const PIN_ROLLOUT: &str = "pin";

/// Settings of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// How long a device whose instruction is published may stay silent before it counts
    /// as stale.
    pub stale_after: SignedDuration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { stale_after: SignedDuration::from_mins(15) }
    }
}

/// The fleet in force: a compiled commit.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The compiled fleet.
    pub fleet: Arc<CompiledFleet>,
    /// The commit it was compiled from, if it came from Git.
    pub commit: Option<String>,
}

/// Why a pass failed. Nothing half-done is recorded: the next pass starts over.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The inventory database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The publisher failed; the repository still serves its previous state.
    #[error("publishing failed: {0}")]
    Publish(#[from] PublishError),
}

/// Something a pass did, for logs, operators and Kubernetes Events.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Event {
    /// A rollout started, its waves cut.
    #[serde(rename_all = "camelCase")]
    RolloutStarted { rollout: String, policy: String, release: String, waves: Vec<u64> },
    /// Devices of a wave got their instructions (one publisher commit).
    #[serde(rename_all = "camelCase")]
    WavePublished { rollout: String, wave: u32, name: String, devices: u64 },
    /// A wave passed its gates.
    #[serde(rename_all = "camelCase")]
    WaveSucceeded { rollout: String, wave: u32, name: String },
    /// A rollout crossed its failure threshold.
    #[serde(rename_all = "camelCase")]
    RolloutHalted { rollout: String, reason: String },
    /// Every wave of a rollout passed.
    #[serde(rename_all = "camelCase")]
    RolloutCompleted { rollout: String },
    /// A rollout was superseded by a newer commit or its policy removed.
    #[serde(rename_all = "camelCase")]
    RolloutAborted { rollout: String, reason: String },
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct StepReport {
    /// What happened, in order.
    pub events: Vec<Event>,
    /// The publisher commit, when anything was published.
    pub commit: Option<CommitReport>,
    /// Where the pass spent its time.
    pub timings: StepTimings,
}

/// Wall-clock time of each part of a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimings {
    /// Reading the inventory.
    pub inventory: std::time::Duration,
    /// Planning the fleet against it.
    pub plan: std::time::Duration,
    /// Deciding each rollout's step and admitting devices.
    pub rollouts: std::time::Duration,
    /// The publisher commit.
    pub publish: std::time::Duration,
    /// Recording the pass in the inventory.
    pub record: std::time::Duration,
}

/// A rollout's members, in rollout order (cached: membership never changes).
#[derive(Debug, Clone)]
struct Member {
    wave: u32,
    device: Box<str>,
    published_at: Option<i64>,
}

/// The rollout engine over one inventory and one TUF repository.
pub struct Engine {
    store: Store,
    repo: Repository,
    config: EngineConfig,
    members: HashMap<String, Vec<Member>>,
    /// The inventory as of the last pass, and the newest receive time it includes.
    inventory: Option<(Inventory, i64)>,
}

/// How far back each pass re-reads reports: covers a batch committed just after the
/// previous read with an earlier receive time, and small clock differences between
/// replicas sharing one database. (The device API stamps each batch when it writes it.)
const REREAD_MS: i64 = 2_000;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Changes a pass makes, applied after the publisher commit.
#[derive(Default)]
struct Pending {
    batch: Batch,
    releases: HashSet<String>,
    /// Rollout → devices published by this pass.
    marks: HashMap<String, Vec<String>>,
    /// What the pass decided for each rollout it changed.
    rollouts: Vec<RolloutWrite>,
    events: Vec<Event>,
}

/// One rollout's changes in a pass: its record, the waves that changed, and the events
/// that happen if the write goes through.
struct RolloutWrite {
    record: RolloutRecord,
    waves: Vec<WaveRecord>,
    events: Vec<Event>,
}

impl Engine {
    /// An engine publishing into `repo` and keeping its state in `store`.
    pub fn new(store: Store, repo: Repository, config: EngineConfig) -> Engine {
        Engine { store, repo, config, members: HashMap::new(), inventory: None }
    }

    /// The inventory.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The TUF repository.
    pub fn repository(&mut self) -> &mut Repository {
        &mut self.repo
    }

    /// The settings.
    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// One reconcile pass at `now`. See the [module](self) documentation.
    pub async fn step(&mut self, desired: &Desired, now: Timestamp) -> Result<StepReport, EngineError> {
        let fleet = &*desired.fleet;
        let now_ms = now.as_millisecond();
        let mut timings = StepTimings::default();
        let started = std::time::Instant::now();
        let (inventory, newest) = self.refresh_inventory().await?;
        timings.inventory = started.elapsed();
        let plan = plan::plan(fleet, &inventory);
        timings.plan = started.elapsed() - timings.inventory;
        let mut rollouts = self.store.rollouts().await?;
        let mut pending = Pending::default();

        // Rollouts whose policy is gone or now targets another release stop here.
        for rollout in rollouts.iter_mut().filter(|r| is_active(r.phase)) {
            let reason = match fleet.policy_named(&rollout.policy) {
                None => Some(format!("policy {} was removed from the fleet", rollout.policy)),
                Some(p) => {
                    let release = fleet.release(fleet.policy(p).release);
                    (release.name != rollout.release || release.version.to_string() != rollout.version).then(
                        || {
                            format!(
                                "superseded: policy {} now targets {} {}",
                                rollout.policy, release.name, release.version
                            )
                        },
                    )
                }
            };
            if let Some(reason) = reason {
                rollout.phase = RolloutPhase::Aborted;
                rollout.message = Some(reason.clone());
                rollout.updated_at = now_ms;
                // An operator who changed it meanwhile wins; the next pass supersedes it.
                if self.store.update_rollout(rollout, &[]).await? {
                    rollout.revision += 1;
                    self.members.remove(&rollout.id);
                    pending.events.push(Event::RolloutAborted { rollout: rollout.id.clone(), reason });
                }
            }
        }

        // A policy with devices to move to a release that no rollout has taken on yet
        // starts one, with the planner's waves pinned.
        for policy_plan in &plan.policies {
            let policy = fleet.policy(policy_plan.policy);
            let release = fleet.release(policy.release);
            let latest = rollouts.iter().rev().find(|r| r.policy == policy.name);
            // Devices never seen are scheduled in their place, but do not start a rollout
            // on their own: a fleet whose devices have not reported yet has nothing to
            // measure a wave by.
            let reported_to_update = policy_plan.to_update() - policy_plan.never_seen;
            if latest.is_some_and(|r| same_release(r, release)) || reported_to_update == 0 {
                continue;
            }
            let rollout = self.start(fleet, policy_plan, desired.commit.clone(), &rollouts, now_ms).await?;
            pending.events.push(Event::RolloutStarted {
                rollout: rollout.id.clone(),
                policy: policy.name.clone(),
                release: release.name.clone(),
                waves: policy_plan.waves.iter().map(|w| w.devices.len() as u64).collect(),
            });
            rollouts.push(rollout);
        }

        // Tally every active rollout; count what is in flight fleet-wide for the caps.
        let mut active = Vec::new();
        for rollout in rollouts.iter().filter(|r| is_active(r.phase)) {
            let Some(p) = fleet.policy_named(&rollout.policy) else { continue };
            self.load_members(&rollout.id).await?;
            active.push((rollout.clone(), p));
        }
        let mut in_flight_devices = Vec::new();
        let mut policy_in_flight: HashMap<PolicyIx, u32> = HashMap::new();
        for (rollout, policy) in &active {
            let version: semver::Version = rollout.version.parse().unwrap_or(semver::Version::new(0, 0, 0));
            let target = self.target(rollout, &version, now_ms);
            for member in self.members[&rollout.id].iter().filter(|m| m.published_at.is_some()) {
                let ix = fleet.device_index(&member.device);
                let state =
                    classify(&target, member.published_at, ix.is_some(), inventory.get(&member.device));
                if state == MemberState::InFlight {
                    in_flight_devices.extend(ix);
                    *policy_in_flight.entry(*policy).or_default() += 1;
                }
            }
        }
        let mut in_flight = InFlight::new(fleet, in_flight_devices);
        let windows = GroupWindows::new(fleet);

        for (mut rollout, policy) in active {
            if rollout.phase == RolloutPhase::Halted {
                continue;
            }
            let waves = self.store.waves(&rollout.id).await?;
            let step = RolloutStep {
                fleet,
                inventory: &inventory,
                policy,
                members: &self.members[&rollout.id],
                waves,
                now,
                stale_after: self.config.stale_after,
            };
            let admitted = step.run(&mut rollout, &mut pending, &mut in_flight, &policy_in_flight, &windows);
            if let Some((wave, devices)) = admitted {
                self.publish(fleet, &rollout, wave, &devices, &mut pending);
            }
        }

        // A policy whose rollout of its release completed: devices that joined since (new
        // in the fleet, or newly selected) get the release at once, without a new rollout.
        for policy_plan in &plan.policies {
            let policy = fleet.policy(policy_plan.policy);
            let release = fleet.release(policy.release);
            let Some(done) = rollouts.iter().rev().find(|r| r.policy == policy.name) else { continue };
            if done.phase != RolloutPhase::Completed
                || !same_release(done, release)
                || policy_plan.to_update() == 0
            {
                continue;
            }
            self.load_members(&done.id).await?;
            let members: HashSet<&str> = self.members[&done.id].iter().map(|m| &*m.device).collect();
            let joined: Vec<DeviceIx> = policy_plan
                .waves
                .iter()
                .flat_map(|w| w.devices.iter().copied())
                .filter(|&d| !members.contains(&*fleet.devices()[d as usize].id))
                .collect();
            if !joined.is_empty() {
                let last = self.members[&done.id].last().map_or(0, |m| m.wave);
                let done = done.clone();
                for d in joined {
                    pending.batch.upserts.push(instruction(
                        fleet,
                        &fleet.devices()[d as usize],
                        release,
                        &done.id,
                        last,
                    ));
                }
                pending.releases.insert(release.name.clone());
            }
        }

        // Pinned devices get their pin as is.
        for &d in &plan.pinned.to_update {
            let device = &fleet.devices()[d as usize];
            let Some(pin) = device.pin() else { continue };
            let release = fleet.release(pin);
            pending.batch.upserts.push(instruction(fleet, device, release, PIN_ROLLOUT, 0));
            pending.releases.insert(release.name.clone());
        }

        timings.rollouts = started.elapsed() - timings.inventory - timings.plan;
        self.inventory = Some((inventory, newest));
        let mut report = self.commit(fleet, pending, now_ms, &mut timings).await?;
        report.timings = timings;
        Ok(report)
    }

    /// The inventory, taken out of the engine for the pass (and put back at its end): read
    /// whole on the first pass, then only the reports received since.
    async fn refresh_inventory(&mut self) -> Result<(Inventory, i64), EngineError> {
        match self.inventory.take() {
            None => {
                let (changed, newest) = self.store.changed_since(i64::MIN).await?;
                let inventory = Inventory::new(None, changed).map_err(|id| StoreError::Corrupt {
                    what: "duplicate status row",
                    key: id.to_string(),
                    value: String::new(),
                })?;
                Ok((inventory, newest))
            }
            Some((mut inventory, newest)) => {
                let (changed, newer) = self.store.changed_since(newest.saturating_sub(REREAD_MS)).await?;
                inventory.update(changed);
                Ok((inventory, newer.max(newest)))
            }
        }
    }

    /// Creates a rollout from a policy's plan.
    async fn start(
        &mut self,
        fleet: &CompiledFleet,
        policy_plan: &plan::PolicyPlan,
        commit: Option<String>,
        existing: &[RolloutRecord],
        now_ms: i64,
    ) -> Result<RolloutRecord, EngineError> {
        let policy = fleet.policy(policy_plan.policy);
        let release = fleet.release(policy.release);
        let taken: HashSet<&str> = existing.iter().map(|r| r.id.as_str()).collect();
        let mut n = existing.iter().filter(|r| r.policy == policy.name).count() + 1;
        while taken.contains(format!("{}-{n}", policy.name).as_str()) {
            n += 1;
        }
        let record = RolloutRecord {
            id: format!("{}-{n}", policy.name),
            policy: policy.name.clone(),
            release: release.name.clone(),
            version: release.version.to_string(),
            commit,
            phase: RolloutPhase::Progressing,
            paused: false,
            message: Some("started".into()),
            created_at: now_ms,
            updated_at: now_ms,
            revision: 0,
        };
        let waves: Vec<WaveRecord> = policy_plan
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| WaveRecord {
                index: i as u32,
                name: w.name.clone(),
                // The first wave starts with the rollout.
                state: if i == 0 { WaveState::Published } else { WaveState::Pending },
                size: w.devices.len() as u64,
                published_at: (i == 0).then_some(now_ms),
                healthy_at: None,
                approved_at: None,
                finished_at: None,
                bake_ms: w
                    .bake
                    .as_deref()
                    .and_then(|b| humantime::parse_duration(b).ok())
                    .map(|d| d.as_millis() as i64),
            })
            .collect();
        let members: Vec<Vec<String>> = policy_plan
            .waves
            .iter()
            .map(|w| w.devices.iter().map(|&d| fleet.devices()[d as usize].id.to_string()).collect())
            .collect();
        self.store.create_rollout(&record, &waves, &members).await?;
        // The members as the inventory now holds them, without reading them back.
        let members = members
            .into_iter()
            .enumerate()
            .flat_map(|(wave, ids)| {
                ids.into_iter().map(move |id| Member {
                    wave: wave as u32,
                    device: id.into_boxed_str(),
                    published_at: None,
                })
            })
            .collect();
        self.members.insert(record.id.clone(), members);
        tracing::info!(rollout = %record.id, release = %record.release, "rollout started");
        Ok(record)
    }

    async fn load_members(&mut self, rollout: &str) -> Result<(), EngineError> {
        if !self.members.contains_key(rollout) {
            let members = self.store.rollout_members(rollout).await?;
            self.members.insert(
                rollout.to_string(),
                members
                    .into_iter()
                    .map(|m: MemberRecord| Member {
                        wave: m.wave,
                        device: m.device_id.into_boxed_str(),
                        published_at: m.published_at,
                    })
                    .collect(),
            );
        }
        Ok(())
    }

    fn target<'a>(
        &self,
        rollout: &'a RolloutRecord,
        version: &'a semver::Version,
        now_ms: i64,
    ) -> Target<'a> {
        Target { release: &rollout.release, version, stale_after: self.config.stale_after, now_ms }
    }

    /// Adds the instructions of admitted devices of a rollout's wave to the pass's batch.
    fn publish(
        &self,
        fleet: &CompiledFleet,
        rollout: &RolloutRecord,
        wave: u32,
        devices: &[DeviceIx],
        pending: &mut Pending,
    ) {
        let Some(release) = fleet.release_named(&rollout.release).map(|r| fleet.release(r)) else { return };
        for &d in devices {
            let device = &fleet.devices()[d as usize];
            pending.batch.upserts.push(instruction(fleet, device, release, &rollout.id, wave));
            pending.marks.entry(rollout.id.clone()).or_default().push(device.id.to_string());
        }
        pending.releases.insert(release.name.clone());
    }

    /// The publisher commit, then the database.
    async fn commit(
        &mut self,
        fleet: &CompiledFleet,
        mut pending: Pending,
        now_ms: i64,
        timings: &mut StepTimings,
    ) -> Result<StepReport, EngineError> {
        let mut report = StepReport::default();
        let started = std::time::Instant::now();
        if !pending.batch.upserts.is_empty() {
            let mut names: Vec<&String> = pending.releases.iter().collect();
            names.sort();
            for name in names {
                let Some(ix) = fleet.release_named(name) else { continue };
                pending.batch.releases.extend(release_artifacts(fleet.release(ix)));
            }
            let batch = std::mem::take(&mut pending.batch);
            let repo = &mut self.repo;
            let commit = tokio::task::block_in_place(|| repo.commit(batch))?;
            if commit.devices_changed > 0 {
                tracing::info!(
                    devices = commit.devices_changed,
                    snapshot = commit.snapshot_version,
                    "published"
                );
            }
            report.commit = Some(commit);
        }
        timings.publish = started.elapsed();
        for (rollout, devices) in &pending.marks {
            self.store.mark_published(rollout, devices, now_ms).await?;
            if let Some(members) = self.members.get_mut(rollout) {
                let published: HashSet<&str> = devices.iter().map(String::as_str).collect();
                for m in members.iter_mut().filter(|m| m.published_at.is_none()) {
                    if published.contains(&*m.device) {
                        m.published_at = Some(now_ms);
                    }
                }
            }
        }
        report.events = pending.events;
        for write in pending.rollouts {
            // Conditional on the revision the pass read: an operator's action that landed
            // during the pass is kept, and the next pass decides again from it. What was
            // published stays published (recorded above).
            if self.store.update_rollout(&write.record, &write.waves).await? {
                report.events.extend(write.events);
            } else {
                tracing::info!(rollout = %write.record.id, "changed during the pass; deciding again at the next one");
                report
                    .events
                    .extend(write.events.into_iter().filter(|e| matches!(e, Event::WavePublished { .. })));
            }
        }
        timings.record = started.elapsed() - timings.publish;
        Ok(report)
    }
}

/// One rollout's turn in a pass.
struct RolloutStep<'a> {
    fleet: &'a CompiledFleet,
    inventory: &'a Inventory,
    policy: PolicyIx,
    members: &'a [Member],
    waves: Vec<WaveRecord>,
    now: Timestamp,
    stale_after: SignedDuration,
}

impl RolloutStep<'_> {
    /// Decides, records the decision in `pending`, and returns the devices admitted now
    /// and their wave.
    fn run(
        mut self,
        rollout: &mut RolloutRecord,
        pending: &mut Pending,
        in_flight: &mut InFlight,
        policy_in_flight: &HashMap<PolicyIx, u32>,
        windows: &GroupWindows,
    ) -> Option<(u32, Vec<DeviceIx>)> {
        let now_ms = self.now.as_millisecond();
        let policy = self.fleet.policy(self.policy);
        let version: semver::Version = rollout.version.parse().ok()?;
        let target =
            Target { release: &rollout.release, version: &version, stale_after: self.stale_after, now_ms };
        if self.waves.is_empty() {
            return None;
        }
        let mut current = self.waves.iter().rposition(|w| w.state != WaveState::Pending).unwrap_or(0);
        let progress = self.progress(&target, current as u32);
        let paused = rollout.paused || policy.paused;
        let position = Position {
            wave: current,
            waves: self.waves.len(),
            paused,
            bake: self.waves[current].bake_ms.map(SignedDuration::from_millis),
            healthy_since: self.waves[current].healthy_at.and_then(|t| Timestamp::from_millisecond(t).ok()),
            next_approved: self.waves.get(current + 1).is_some_and(|w| w.approved_at.is_some()),
        };
        let gates = Gates {
            success_threshold: policy.rollout.success_threshold,
            failure_threshold: policy.rollout.failure_threshold,
            approval: policy.rollout.approval,
        };
        let verdict = decide(&gates, &position, &progress.tally(), self.now);
        let healthy_since = verdict.healthy_since(&position, self.now).map(|t| t.as_millisecond());
        let before = (rollout.phase, rollout.message.clone());
        let mut waves = Vec::new();
        let mut events = Vec::new();
        let mut admit_wave = None;
        match &verdict {
            Verdict::Halt { reason } => {
                self.finish_wave(rollout, current, WaveState::Failed, now_ms, &mut waves, &mut events);
                rollout.phase = RolloutPhase::Halted;
                rollout.message = Some(reason.clone());
                events.push(Event::RolloutHalted { rollout: rollout.id.clone(), reason: reason.clone() });
                tracing::warn!(rollout = %rollout.id, %reason, "rollout halted");
            }
            Verdict::Complete => {
                self.finish_wave(rollout, current, WaveState::Succeeded, now_ms, &mut waves, &mut events);
                rollout.phase = RolloutPhase::Completed;
                rollout.message = Some(format!("all {} waves succeeded", self.waves.len()));
                events.push(Event::RolloutCompleted { rollout: rollout.id.clone() });
                tracing::info!(rollout = %rollout.id, "rollout completed");
            }
            Verdict::Advance => {
                self.finish_wave(rollout, current, WaveState::Succeeded, now_ms, &mut waves, &mut events);
                current += 1;
                let next = &mut self.waves[current];
                next.state = WaveState::Published;
                next.published_at = Some(now_ms);
                waves.push(next.clone());
                rollout.phase = RolloutPhase::Progressing;
                rollout.message = Some(format!("wave {} ({}) started", current + 1, next.name));
                admit_wave = Some(current);
            }
            Verdict::Wait(wait) => {
                if self.waves[current].healthy_at != healthy_since {
                    self.waves[current].healthy_at = healthy_since;
                    waves.push(self.waves[current].clone());
                }
                rollout.phase = if paused { RolloutPhase::Paused } else { RolloutPhase::Progressing };
                rollout.message = Some(describe(wait, &self.waves, &progress));
                if matches!(wait, Wait::Publishing { .. }) {
                    admit_wave = Some(current);
                }
            }
        }
        let admitted = admit_wave.and_then(|wave| {
            let waiting: Vec<DeviceIx> = self
                .members
                .iter()
                .filter(|m| m.wave == wave as u32 && m.published_at.is_none())
                .filter_map(|m| self.fleet.device_index(&m.device))
                .collect();
            let admission = admit(
                self.fleet,
                &waiting,
                policy.rollout.max_concurrent,
                policy_in_flight.get(&self.policy).copied().unwrap_or(0),
                in_flight,
                |g| windows.is_open(g, self.now),
            );
            if !admission.admitted.is_empty() {
                events.push(Event::WavePublished {
                    rollout: rollout.id.clone(),
                    wave: wave as u32,
                    name: self.waves[wave].name.clone(),
                    devices: admission.admitted.len() as u64,
                });
            }
            let held = admission.outside_window + admission.capped;
            if held > 0 {
                rollout.message = Some(format!(
                    "wave {} ({}): {} devices wait ({} outside their maintenance window, {} over a concurrency cap)",
                    wave + 1,
                    self.waves[wave].name,
                    held,
                    admission.outside_window,
                    admission.capped
                ));
            }
            (!admission.admitted.is_empty()).then_some((wave as u32, admission.admitted))
        });
        let changed = (rollout.phase, rollout.message.clone()) != before;
        if changed {
            rollout.updated_at = now_ms;
        }
        if changed || !waves.is_empty() {
            pending.rollouts.push(RolloutWrite { record: rollout.clone(), waves, events });
        } else {
            pending.events.extend(events);
        }
        admitted
    }

    fn progress(&self, target: &Target<'_>, wave: u32) -> Progress {
        let mut progress = Progress::default();
        for m in self.members.iter().filter(|m| m.wave == wave) {
            let in_fleet = self.fleet.device(&m.device).is_some();
            progress.add(classify(target, m.published_at, in_fleet, self.inventory.get(&m.device)));
        }
        progress
    }

    fn finish_wave(
        &mut self,
        rollout: &RolloutRecord,
        index: usize,
        state: WaveState,
        now_ms: i64,
        waves: &mut Vec<WaveRecord>,
        events: &mut Vec<Event>,
    ) {
        let wave = &mut self.waves[index];
        wave.state = state;
        wave.finished_at = Some(now_ms);
        wave.healthy_at = wave.healthy_at.or((state == WaveState::Succeeded).then_some(now_ms));
        waves.push(wave.clone());
        if state == WaveState::Succeeded {
            events.push(Event::WaveSucceeded {
                rollout: rollout.id.clone(),
                wave: index as u32,
                name: wave.name.clone(),
            });
        }
    }
}

/// Operators' one-line account of why a rollout waits.
fn describe(wait: &Wait, waves: &[WaveRecord], progress: &Progress) -> String {
    let name = |i: usize| waves.get(i).map_or("?", |w| w.name.as_str());
    match wait {
        Wait::Paused => "paused".into(),
        Wait::Publishing { unpublished } => format!("{unpublished} devices not published yet"),
        Wait::Health { healthy_percent, needed_percent } => format!(
            "waiting for health: {healthy_percent:.1}% healthy of {needed_percent}% needed ({} in flight, {} failed, {} stale)",
            progress.in_flight, progress.failed, progress.stale
        ),
        Wait::Baking { until } => format!("baking until {}", until.strftime("%Y-%m-%dT%H:%M:%SZ")),
        Wait::Approval { wave } => format!("wave {} ({}) waits for approval", wave + 1, name(*wave)),
    }
}

fn is_active(phase: RolloutPhase) -> bool {
    matches!(phase, RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Halted)
}

fn same_release(rollout: &RolloutRecord, release: &CompiledRelease) -> bool {
    rollout.release == release.name && rollout.version == release.version.to_string()
}

/// The instruction published for one device.
pub fn instruction(
    fleet: &CompiledFleet,
    device: &CompiledDevice,
    release: &CompiledRelease,
    rollout: &str,
    wave: u32,
) -> DeviceInstruction {
    DeviceInstruction {
        device: device.id.to_string(),
        release: release.name.clone(),
        version: release.version.to_string(),
        artifacts: release
            .artifacts
            .iter()
            .map(|a| ArtifactRef {
                target: format!("releases/{}/{}", release.name, a.name),
                sha256: a.sha256.clone(),
                length: a.length,
            })
            .collect(),
        rollout: rollout.to_string(),
        wave,
        maintenance_windows: fleet.group(device.group).maintenance_windows.to_vec(),
    }
}

/// A release's artifacts as the publisher records them. An artifact whose URL is a
/// `file://` URL is published with its content, so devices download it from the TUF
/// repository itself.
pub fn release_artifacts(release: &CompiledRelease) -> Vec<ReleaseArtifact> {
    release
        .artifacts
        .iter()
        .map(|a| ReleaseArtifact {
            release: release.name.clone(),
            name: a.name.clone(),
            url: a.url.clone(),
            sha256: a.sha256.clone(),
            length: a.length,
            file: a.url.strip_prefix("file://").map(Into::into),
        })
        .collect()
}

/// Each group's maintenance windows, parsed once per pass.
struct GroupWindows {
    windows: Vec<Option<Windows>>,
}

impl GroupWindows {
    fn new(fleet: &CompiledFleet) -> GroupWindows {
        let windows = fleet
            .groups()
            .iter()
            .map(|g| match Windows::new(&g.maintenance_windows) {
                Ok(w) => Some(w),
                Err(e) => {
                    // Validation refuses bad windows; should one get here, the group is
                    // held back rather than updated outside its window.
                    tracing::error!(group = %g.name, "invalid maintenance window: {e:?}");
                    None
                }
            })
            .collect();
        GroupWindows { windows }
    }

    fn is_open(&self, group: u32, now: Timestamp) -> bool {
        self.windows[group as usize].as_ref().is_some_and(|w| w.is_open(now))
    }
}
