//! A fleet's rollouts over its inventory and its TUF repository: the read, publish and
//! record of a pass around the pure [decision](super::decide).
//!
//! One [`Rollouts::step`] is one level-based pass over the fleet in force: it reads what
//! devices reported since the last pass (the whole inventory the first time), plans the
//! compiled fleet against it, reads the rollouts with the waves and members the decision
//! needs, [decides](super::decide::decide), publishes every instruction decided in one
//! publisher commit, then records what it published and the rollouts' new state in the
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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::decide::{self, Decision, Member, PassInput, Publication};
use crate::compile::{CompiledDevice, CompiledFleet, CompiledRelease};
use crate::inventory::store::{
    MemberRecord, NewMember, ReleaseRef, RolloutRecord, Store, StoreError, WaveRecord,
};
use crate::inventory::Inventory;
use crate::plan;
use crate::protocol::{ArtifactRef, DeviceInstruction, FailureClass};
use crate::publish::{Batch, CommitReport, PublishError, ReleaseArtifact, Repository};

/// Settings of the rollouts.
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

/// Why a step failed. Nothing half-done is recorded: the next pass starts over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
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

/// What one step did.
#[derive(Debug, Default)]
pub struct StepReport {
    /// What happened, in order.
    pub events: Vec<Event>,
    /// The publisher commit, when anything was published.
    pub commit: Option<CommitReport>,
    /// Where the step spent its time.
    pub timings: StepTimings,
}

/// Wall-clock time of each part of a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimings {
    /// Reading the inventory.
    pub inventory: std::time::Duration,
    /// Planning the fleet against it.
    pub plan: std::time::Duration,
    /// Reading the rollouts and deciding.
    pub rollouts: std::time::Duration,
    /// The publisher commit.
    pub publish: std::time::Duration,
    /// Recording the pass in the inventory.
    pub record: std::time::Duration,
}

/// A fleet's rollouts: the inventory and the TUF repository they are kept in, with what
/// a pass keeps in memory between passes (the rollouts' members, which never change once
/// pinned, and the inventory as last read).
pub struct Rollouts {
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

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A rollout's write, applied after the publisher commit: its record, the waves that
/// changed, and the events that happen if the write goes through.
struct RolloutWrite {
    record: RolloutRecord,
    waves: Vec<WaveRecord>,
    events: Vec<Event>,
}

impl Rollouts {
    /// Rollouts publishing into `repo` and keeping their state in `store`.
    pub fn new(store: Store, repo: Repository, config: EngineConfig) -> Rollouts {
        Rollouts { store, repo, config, members: HashMap::new(), inventory: None }
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

    /// One step over the fleet in force at `now`: read, decide, publish, record. See the
    /// [module](self) documentation.
    pub async fn step(&mut self, desired: &Desired, now: Timestamp) -> Result<StepReport, StepError> {
        let fleet = &*desired.fleet;
        let mut timings = StepTimings::default();
        let started = std::time::Instant::now();
        let (inventory, newest) = self.refresh_inventory().await?;
        timings.inventory = started.elapsed();
        let plan = plan::plan(fleet, &inventory);
        timings.plan = started.elapsed() - timings.inventory;

        // What the decision needs of the rollouts: members are cached (pinned at start),
        // waves read afresh (operators approve them).
        let rollouts = self.store.rollouts().await?;
        let mut waves = HashMap::new();
        for rollout in &rollouts {
            if decide::needs_members(fleet, &rollouts, &plan.policies, rollout) {
                self.load_members(&rollout.id).await?;
            }
            if decide::needs_waves(fleet, &rollouts, rollout) {
                waves.insert(rollout.id.clone(), self.store.waves(&rollout.id).await?);
            }
        }
        let decisions = decide::decide(&PassInput {
            fleet,
            commit: desired.commit.as_deref(),
            plan: &plan,
            inventory: &inventory,
            rollouts: &rollouts,
            waves: &waves,
            members: &self.members,
            now,
            stale_after: self.config.stale_after,
        });
        timings.rollouts = started.elapsed() - timings.inventory - timings.plan;
        self.inventory = Some((inventory, newest));
        let mut report = self.carry_out(fleet, decisions, now.as_millisecond(), &mut timings).await?;
        report.timings = timings;
        Ok(report)
    }

    /// The inventory, taken out of the cache for the pass (and put back at its end): read
    /// whole on the first pass, then only the reports received since.
    async fn refresh_inventory(&mut self) -> Result<(Inventory, i64), StepError> {
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

    async fn load_members(&mut self, rollout: &str) -> Result<(), StepError> {
        if !self.members.contains_key(rollout) {
            let members = self.store.rollout_members(rollout).await?;
            let mut previous: HashMap<ReleaseRef, Arc<ReleaseRef>> = HashMap::new();
            self.members.insert(
                rollout.to_string(),
                members
                    .into_iter()
                    .map(|m: MemberRecord| Member {
                        wave: m.wave,
                        device: m.device_id.into_boxed_str(),
                        published_at: m.published_at,
                        attempt: m.attempt,
                        failure: m.failure,
                        // One shared copy per release: a rollout's members mostly ran the same.
                        previous: m
                            .previous
                            .map(|p| previous.entry(p).or_insert_with_key(|p| Arc::new(p.clone())).clone()),
                        accepted: m.accepted,
                    })
                    .collect(),
            );
        }
        Ok(())
    }

    /// Carries the decisions out: supersedes and starts first, then the publisher commit,
    /// then the database records what was published and the rollouts' new state.
    async fn carry_out(
        &mut self,
        fleet: &CompiledFleet,
        decisions: Vec<Decision>,
        now_ms: i64,
        timings: &mut StepTimings,
    ) -> Result<StepReport, StepError> {
        let mut report = StepReport::default();
        let mut batch = Batch::default();
        let mut releases = BTreeSet::new();
        // Rollout → devices published by this pass; (rollout, attempt) → devices retried.
        let mut marks: HashMap<String, Vec<String>> = HashMap::new();
        let mut retried: HashMap<(String, u32), Vec<String>> = HashMap::new();
        let mut failed = Vec::new();
        let mut accepted = Vec::new();
        let mut writes = Vec::new();
        for decision in decisions {
            match decision {
                Decision::Supersede { rollout, reason } => {
                    // An operator who changed it meanwhile wins; the next pass supersedes it.
                    if self.store.update_rollout(&rollout, &[]).await? {
                        self.members.remove(&rollout.id);
                        report.events.push(Event::RolloutAborted { rollout: rollout.id, reason });
                    }
                }
                Decision::Start { rollout, waves, members } => {
                    let mut ids: Vec<Vec<NewMember>> = vec![Vec::new(); waves.len()];
                    for m in &members {
                        if let Some(wave) = ids.get_mut(m.wave as usize) {
                            wave.push(NewMember {
                                device_id: m.device.to_string(),
                                previous: m.previous.as_deref().cloned(),
                            });
                        }
                    }
                    self.store.create_rollout(&rollout, &waves, &ids).await?;
                    tracing::info!(rollout = %rollout.id, release = %rollout.release, "rollout started");
                    report.events.push(Event::RolloutStarted {
                        rollout: rollout.id.clone(),
                        policy: rollout.policy.clone(),
                        release: rollout.release.clone(),
                        waves: ids.iter().map(|w| w.len() as u64).collect(),
                    });
                    // The members as the inventory now holds them, without reading them back.
                    self.members.insert(rollout.id, members);
                }
                Decision::Publish(publication) => {
                    let release = fleet.release(publication.release);
                    for &d in &publication.devices {
                        let device = &fleet.devices()[d as usize];
                        batch.upserts.push(instruction(fleet, device, release, &publication));
                        if publication.members && publication.attempt > 0 {
                            retried
                                .entry((publication.rollout.clone(), publication.attempt))
                                .or_default()
                                .push(device.id.to_string());
                        } else if publication.members {
                            marks.entry(publication.rollout.clone()).or_default().push(device.id.to_string());
                        }
                    }
                    releases.insert(release.name.as_str());
                }
                Decision::Record { rollout, waves, events } => {
                    writes.push(RolloutWrite { record: rollout, waves, events })
                }
                Decision::MembersFailed { rollout, members } => failed.push((rollout, members)),
                Decision::MembersAccepted { rollout, members } => accepted.push((rollout, members)),
                Decision::Announce(event) => report.events.push(event),
            }
        }

        let started = std::time::Instant::now();
        if !batch.upserts.is_empty() {
            for name in releases {
                let Some(ix) = fleet.release_named(name) else { continue };
                batch.releases.extend(release_artifacts(fleet.release(ix)));
            }
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
        for (rollout, devices) in &marks {
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
        for ((rollout, attempt), devices) in &retried {
            self.store.mark_retried(rollout, devices, *attempt, now_ms).await?;
            tracing::info!(%rollout, attempt, devices = devices.len(), "failed devices retried");
            if let Some(members) = self.members.get_mut(rollout) {
                let retried: HashSet<&str> = devices.iter().map(String::as_str).collect();
                for m in members.iter_mut().filter(|m| m.attempt < *attempt && retried.contains(&*m.device)) {
                    m.attempt = *attempt;
                    m.published_at = Some(now_ms);
                    m.failure = None;
                    m.accepted = false;
                }
            }
        }
        for (rollout, failures) in failed {
            let mut by_class: HashMap<FailureClass, Vec<String>> = HashMap::new();
            for (device, class) in &failures {
                by_class.entry(*class).or_default().push(device.to_string());
            }
            for (class, devices) in &by_class {
                self.store.mark_failed(&rollout, devices, *class).await?;
                tracing::warn!(%rollout, devices = devices.len(), class = class.as_str(), "members failed during the bake");
            }
            if let Some(members) = self.members.get_mut(&rollout) {
                let classes: HashMap<&str, FailureClass> = failures.iter().map(|(d, c)| (&**d, *c)).collect();
                for m in members.iter_mut() {
                    if let Some(class) = classes.get(&*m.device) {
                        m.failure = Some(*class);
                    }
                }
            }
        }
        for (rollout, devices) in accepted {
            let ids: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
            self.store.mark_accepted(&rollout, &ids).await?;
            tracing::info!(%rollout, devices = ids.len(), "failures accepted by an operator");
            if let Some(members) = self.members.get_mut(&rollout) {
                let accepted: HashSet<&str> = devices.iter().map(|d| &**d).collect();
                for m in members.iter_mut().filter(|m| accepted.contains(&*m.device)) {
                    m.accepted = true;
                }
            }
        }
        for write in writes {
            // Conditional on the revision the pass read: an operator's action that landed
            // during the pass is kept, and the next pass decides again from it. What was
            // published stays published (recorded above).
            if self.store.update_rollout(&write.record, &write.waves).await? {
                for event in &write.events {
                    match event {
                        Event::RolloutHalted { rollout, reason } => {
                            tracing::warn!(%rollout, %reason, "rollout halted")
                        }
                        Event::RolloutCompleted { rollout } => tracing::info!(%rollout, "rollout completed"),
                        _ => {}
                    }
                }
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

/// The instruction `publication` publishes for one of its devices.
pub fn instruction(
    fleet: &CompiledFleet,
    device: &CompiledDevice,
    release: &CompiledRelease,
    publication: &Publication,
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
        rollout: publication.rollout.clone(),
        wave: publication.wave,
        maintenance_windows: fleet.group(device.group).maintenance_windows.as_written().to_vec(),
        confirmation_secs: publication.confirmation_secs,
        attempt: publication.attempt,
        commit: publication.commit.clone(),
        allow_downgrade: publication.allow_downgrade,
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
