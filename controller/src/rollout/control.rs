//! What operators see of rollouts and how they steer them: status with per-wave progress,
//! and pause, resume, approve, abort, retry, accept and rollback. The CLI, the HTTP API and the Kubernetes
//! controller all go through here; the engine picks the change up at its next pass.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::progress::{classify_member, Progress, Target};
use crate::inventory::store::{
    RolloutPhase, RolloutRecord, Store, StoreError, Waiting, WaveRecord, WaveState,
};

/// An operator's action on a rollout. Each names what it acts on and is idempotent:
/// applying it again (a retry, a second click) changes nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop publishing; devices already told keep going.
    Pause,
    /// Undo a pause. A halted rollout is re-evaluated: it goes on when its wave is back
    /// under the failure threshold (failed devices fixed and reporting healthy), and halts
    /// again otherwise.
    Resume,
    /// Approve one wave (its index, from 0) that waits, or will wait, for manual approval.
    /// Approving a wave that is already approved changes nothing, so approving twice
    /// never approves the wave after it.
    Approve(u32),
    /// Give the rollout up. Published instructions stay; nothing more is published.
    Abort,
    /// Publish the failed members' instructions again, with the next attempt, whatever
    /// the policy's `retries` say; a halted rollout is re-evaluated, the retried members
    /// counting as in flight. Carried out by the engine's next pass; asking again before
    /// then changes nothing more.
    Retry,
    /// Count the failures of the members failed now as accepted: their waves no longer
    /// count them (neither healthy nor failed), so a halted rollout can go on. Carried out
    /// by the engine's next pass.
    Accept,
    /// Return the rollout's devices that took its release to the release they ran before,
    /// through a rollback rollout of their own (`<id>-rollback`), gated like any other.
    /// The rollout itself publishes nothing more (a halted one stays halted, any other is
    /// aborted).
    Rollback,
}

impl Action {
    /// The action's name, as the CLI and the HTTP API spell it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Approve(_) => "approve",
            Action::Abort => "abort",
            Action::Retry => "retry",
            Action::Accept => "accept",
            Action::Rollback => "rollback",
        }
    }
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No such rollout.
    #[error("no rollout {0:?}")]
    NotFound(String),
    /// The action makes no sense in the rollout's state.
    #[error("{0}")]
    Conflict(String),
    /// Other writers changed the rollout every time the action was about to be written.
    #[error("rollout {0} kept changing while the action was applied; try again")]
    Contended(String),
    /// The inventory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often [`act`] reads the rollout again when another writer changed it between its
/// read and its write. The engine writes a rollout at most once per pass, so a few
/// attempts are plenty.
const ATTEMPTS: usize = 8;

/// Applies an operator's action and returns the rollout as it now is. The write is a
/// compare-and-swap on the rollout's revision: when the engine (or another operator)
/// wrote in between, the action is decided again on what they wrote, so neither undoes
/// the other.
pub async fn act(
    store: &Store,
    id: &str,
    action: Action,
    now: Timestamp,
) -> Result<RolloutRecord, ControlError> {
    for _ in 0..ATTEMPTS {
        let rollout = store.rollout(id).await?.ok_or_else(|| ControlError::NotFound(id.to_string()))?;
        let waves = match action {
            Action::Approve(_) => store.waves(id).await?,
            _ => Vec::new(),
        };
        if action == Action::Rollback && rollout.requests.rollback_at.is_none() {
            refuse_superseded_rollback(store, &rollout).await?;
        }
        let Some((changed, waves)) = apply(action, &rollout, &waves, now.as_millisecond())? else {
            return Ok(rollout);
        };
        if store.update_rollout(&changed, &waves).await? {
            return Ok(RolloutRecord { revision: changed.revision + 1, ..changed });
        }
    }
    Err(ControlError::Contended(id.to_string()))
}

/// Refuses to roll back a rollout that a newer rollout of its policy replaced: its devices
/// are that rollout's now, and rolling them back would fight it.
async fn refuse_superseded_rollback(store: &Store, rollout: &RolloutRecord) -> Result<(), ControlError> {
    let newer = store
        .rollouts()
        .await?
        .into_iter()
        .rfind(|r| r.policy == rollout.policy && r.rollback_of.is_none())
        .filter(|latest| latest.id != rollout.id);
    match newer {
        Some(latest) => Err(ControlError::Conflict(format!(
            "rollout {} of policy {} started after {}; roll that one back instead",
            latest.id, rollout.policy, rollout.id
        ))),
        None => Ok(()),
    }
}

/// What `action` changes: the rollout's new record and the waves to write with it, or
/// `None` when it is already in effect.
pub(crate) fn apply(
    action: Action,
    rollout: &RolloutRecord,
    waves: &[WaveRecord],
    now_ms: i64,
) -> Result<Option<(RolloutRecord, Vec<WaveRecord>)>, ControlError> {
    let id = &rollout.id;
    let finished = rollout.phase.is_finished();
    let refuse_finished =
        || ControlError::Conflict(format!("rollout {id} is {}; nothing to change", rollout.phase));
    let mut changed = rollout.clone();
    let mut changed_waves = Vec::new();
    let rolled_back = rollout.requests.rollback_at.is_some();
    match action {
        Action::Rollback if rolled_back => return Ok(None),
        Action::Rollback => {
            if let Some(of) = &rollout.rollback_of {
                return Err(ControlError::Conflict(format!(
                    "rollout {id} is the rollback of {of}; abort it, or change the fleet, instead"
                )));
            }
            changed.requests.rollback_at = Some(now_ms);
            changed.waiting = None;
            if rollout.phase == RolloutPhase::Halted {
                changed.message = Some(format!(
                    "{}; rolled back by an operator",
                    rollout.message.as_deref().unwrap_or("halted")
                ));
            } else {
                changed.phase = RolloutPhase::Aborted;
                changed.message = Some("rolled back by an operator".into());
            }
            changed.updated_at = now_ms;
            return Ok(Some((changed, changed_waves)));
        }
        Action::Resume | Action::Approve(_) | Action::Retry | Action::Accept if rolled_back => {
            return Err(ControlError::Conflict(format!(
                "rollout {id} was rolled back; steer its rollback rollout instead"
            )))
        }
        Action::Retry if rollout.requests.retry_at.is_some() => return Ok(None),
        Action::Accept if rollout.requests.accept_at.is_some() => return Ok(None),
        Action::Pause if rollout.paused => return Ok(None),
        Action::Resume if !rollout.paused && rollout.phase == RolloutPhase::Progressing => return Ok(None),
        Action::Abort if rollout.phase == RolloutPhase::Aborted => return Ok(None),
        Action::Approve(index) => {
            let wave = waves.get(index as usize).ok_or_else(|| {
                ControlError::Conflict(format!(
                    "rollout {id} has {} waves; there is no wave {}",
                    waves.len(),
                    u64::from(index) + 1
                ))
            })?;
            if wave.approved_at.is_some() {
                return Ok(None);
            }
            if finished {
                return Err(refuse_finished());
            }
            if wave.state != WaveState::Pending {
                return Err(ControlError::Conflict(format!(
                    "wave {} ({}) of rollout {id} has already started",
                    index + 1,
                    wave.name
                )));
            }
            changed_waves.push(WaveRecord { approved_at: Some(now_ms), ..wave.clone() });
            changed.message = Some(format!("wave {} ({}) approved", index + 1, wave.name));
            if changed.waiting == Some(Waiting::Approval) {
                changed.waiting = None;
            }
        }
        _ if finished => return Err(refuse_finished()),
        Action::Pause => {
            changed.paused = true;
            if changed.phase == RolloutPhase::Progressing {
                changed.phase = RolloutPhase::Paused;
            }
            changed.message = Some("paused by an operator".into());
            changed.waiting = Some(Waiting::Paused);
        }
        Action::Resume => {
            changed.paused = false;
            changed.phase = RolloutPhase::Progressing;
            changed.message = Some("resumed by an operator".into());
            changed.waiting = None;
        }
        Action::Abort => {
            changed.phase = RolloutPhase::Aborted;
            changed.message = Some("aborted by an operator".into());
            changed.waiting = None;
        }
        Action::Retry | Action::Accept => {
            let (request, what) = if action == Action::Retry {
                (&mut changed.requests.retry_at, "retry of the failed devices")
            } else {
                (&mut changed.requests.accept_at, "acceptance of the current failures")
            };
            *request = Some(now_ms);
            changed.message = Some(format!("{what} asked by an operator"));
            // A halted rollout is decided again: the retried members count as in flight,
            // the accepted ones no longer count.
            if changed.phase == RolloutPhase::Halted {
                changed.phase = if changed.paused { RolloutPhase::Paused } else { RolloutPhase::Progressing };
                changed.waiting = None;
            }
        }
    }
    changed.updated_at = now_ms;
    Ok(Some((changed, changed_waves)))
}

/// A rollout as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The rollout id.
    pub id: String,
    /// Its policy.
    pub policy: String,
    /// The release it moves to.
    pub release: String,
    /// That release's version.
    pub version: String,
    /// The commit that started it.
    pub commit: Option<String>,
    /// For a rollback rollout: the rollout whose devices it returns to their previous
    /// release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    /// When a rollback of this rollout was asked for (by its policy's `onFailure:
    /// rollback` or an operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<Timestamp>,
    /// Where it is.
    pub phase: RolloutPhase,
    /// Paused by an operator.
    pub paused: bool,
    /// Why it is where it is.
    pub message: Option<String>,
    /// What it waits for before its next wave, as the engine's last pass decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// The wave in progress (the last one started), from 0.
    pub current_wave: u32,
    /// Started.
    pub created_at: Option<Timestamp>,
    /// Last changed.
    pub updated_at: Option<Timestamp>,
    /// Every wave, in order.
    pub waves: Vec<WaveStatus>,
    /// All waves together.
    pub total: Progress,
    /// The members by the fleet commit of the release they run, as they report it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub devices_by_commit: BTreeMap<String, u64>,
}

impl RolloutStatus {
    /// The wave (index, from 0) that waits for an operator's approval, if one does.
    pub fn awaits_approval(&self) -> Option<u32> {
        (self.phase == RolloutPhase::Progressing && self.waiting == Some(Waiting::Approval))
            .then_some(self.current_wave + 1)
    }
}

/// One wave as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveStatus {
    /// Position, from 0.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Where it is.
    pub state: WaveState,
    /// Bake time, as written.
    pub bake: Option<String>,
    /// When it started.
    pub published_at: Option<Timestamp>,
    /// When it first met its success threshold.
    pub healthy_at: Option<Timestamp>,
    /// When it was approved.
    pub approved_at: Option<Timestamp>,
    /// When it passed or failed.
    pub finished_at: Option<Timestamp>,
    /// Its devices by state.
    pub progress: Progress,
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.and_then(|ms| Timestamp::from_millisecond(ms).ok())
}

/// The status of one rollout, with its devices' progress from the inventory.
pub async fn status(
    store: &Store,
    id: &str,
    stale_after: SignedDuration,
    now: Timestamp,
) -> Result<Option<RolloutStatus>, StoreError> {
    let Some(rollout) = store.rollout(id).await? else { return Ok(None) };
    describe(store, rollout, stale_after, now).await.map(Some)
}

/// Every rollout, oldest first, with progress.
pub async fn list(
    store: &Store,
    stale_after: SignedDuration,
    now: Timestamp,
) -> Result<Vec<RolloutStatus>, StoreError> {
    let mut out = Vec::new();
    for rollout in store.rollouts().await? {
        out.push(describe(store, rollout, stale_after, now).await?);
    }
    Ok(out)
}

/// A rollout's status; only its members' reports are read.
async fn describe(
    store: &Store,
    rollout: RolloutRecord,
    stale_after: SignedDuration,
    now: Timestamp,
) -> Result<RolloutStatus, StoreError> {
    let waves: Vec<WaveRecord> = store.waves(&rollout.id).await?;
    let members = store.member_reports(&rollout.id).await?;
    let devices_by_commit = store.member_commits(&rollout.id).await?.into_iter().collect();
    let version: semver::Version = rollout.version.parse().unwrap_or(semver::Version::new(0, 0, 0));
    let target = Target {
        release: &rollout.release,
        version: &version,
        stale_after,
        device_timeout: None,
        now_ms: now.as_millisecond(),
    };
    let mut progress = vec![Progress::default(); waves.len()];
    let mut total = Progress::default();
    for (m, report) in &members {
        let state = classify_member(&target, m.published_at, m.failure, m.accepted, true, report.as_ref());
        if let Some(p) = progress.get_mut(m.wave as usize) {
            p.add(state);
        }
        total.add(state);
    }
    let current_wave = waves.iter().rposition(|w| w.state != WaveState::Pending).unwrap_or(0) as u32;
    Ok(RolloutStatus {
        rollback_of: rollout.rollback_of,
        rolled_back_at: ts(rollout.requests.rollback_at),
        phase: rollout.phase,
        paused: rollout.paused,
        message: rollout.message,
        waiting: rollout.waiting,
        current_wave,
        created_at: ts(Some(rollout.created_at)),
        updated_at: ts(Some(rollout.updated_at)),
        waves: waves
            .iter()
            .zip(progress)
            .map(|(w, progress)| WaveStatus {
                index: w.index,
                name: w.name.clone(),
                state: w.state,
                bake: w.bake_ms.map(|ms| {
                    humantime::format_duration(std::time::Duration::from_millis(ms as u64)).to_string()
                }),
                published_at: ts(w.published_at),
                healthy_at: ts(w.healthy_at),
                approved_at: ts(w.approved_at),
                finished_at: ts(w.finished_at),
                progress,
            })
            .collect(),
        total,
        devices_by_commit,
        id: rollout.id,
        policy: rollout.policy,
        release: rollout.release,
        version: rollout.version,
        commit: rollout.commit,
    })
}
