//! FleetRollouts: the engine's rollouts as Kubernetes resources, owned by their Fleet.
//!
//! The controller creates one per rollout and keeps its status current; operators steer
//! it through three spec fields the controller never writes (`paused`, `approvedWaves`,
//! `abort`), which map onto [`control::act`] — the same path as the CLI and the HTTP API.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::crd::{Fleet, FleetRollout, FleetRolloutSpec, FleetRolloutStatus, RolloutWave, RolloutWaveStatus};
use super::fleet::{FLEET_LABEL, MANAGER};
use super::Error;
use crate::inventory::store::{RolloutPhase, Store};
use crate::rollout::control::{self, Action, ControlError, RolloutStatus};

/// The FleetRollout's name for a rollout of a fleet.
pub fn resource_name(fleet: &str, rollout: &str) -> String {
    let mut name: String = format!("{fleet}-{rollout}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .collect();
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_string()
}

/// The actions that bring a rollout to what an operator set in the FleetRollout's spec.
/// Fields left unset leave the rollout alone (the CLI may have paused it).
/// `spec_changed` says the spec's generation is newer than the one the status last
/// acknowledged: setting `paused: false` then also resumes a halted rollout (the engine
/// halted it, not a pause), once, for that change of the spec.
pub fn operator_actions(spec: &FleetRolloutSpec, rollout: &RolloutStatus, spec_changed: bool) -> Vec<Action> {
    if rollout.phase.is_finished() {
        return Vec::new();
    }
    if spec.abort == Some(true) {
        return vec![Action::Abort];
    }
    let mut actions = Vec::new();
    match spec.paused {
        Some(true) if !rollout.paused => actions.push(Action::Pause),
        Some(false) if rollout.paused || (spec_changed && rollout.phase == RolloutPhase::Halted) => {
            actions.push(Action::Resume)
        }
        _ => {}
    }
    for number in spec.approved_waves.iter().flatten() {
        let Some(index) = number.checked_sub(1) else { continue };
        if rollout.waves.get(index as usize).is_some_and(|w| w.approved_at.is_none()) {
            actions.push(Action::Approve(index));
        }
    }
    actions
}

/// An operator's change to a FleetRollout that took effect.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorChange {
    /// The FleetRollout changed.
    pub resource: ObjectReference,
    /// The rollout id.
    pub rollout: String,
    /// What was done.
    pub action: Action,
}

/// Applies what operators changed in FleetRollouts to the engine's rollouts; returns
/// what took effect.
pub async fn apply_operator_changes(
    store: &Store,
    existing: &[FleetRollout],
    now: Timestamp,
) -> Result<Vec<OperatorChange>, Error> {
    let mut changes = Vec::new();
    for resource in existing {
        let id = &resource.spec.rollout_id;
        let Some(rollout) = control::status(store, id, SignedDuration::ZERO, now)
            .await
            .map_err(|e| Error::Rollout { rollout: id.clone(), source: ControlError::Store(e) })?
        else {
            continue;
        };
        let acknowledged = resource.status.as_ref().and_then(|s| s.observed_generation);
        let spec_changed = resource.metadata.generation > acknowledged;
        for action in operator_actions(&resource.spec, &rollout, spec_changed) {
            tracing::info!(rollout = %id, ?action, resource = %resource.name_any(), "operator change");
            match control::act(store, id, action, now).await {
                Ok(_) => changes.push(OperatorChange {
                    resource: resource.object_ref(&()),
                    rollout: id.clone(),
                    action,
                }),
                // Nothing to change any more (finished meanwhile): the status will say so.
                Err(ControlError::Conflict(reason)) => tracing::info!(rollout = %id, "{reason}"),
                Err(e) => return Err(Error::Rollout { rollout: id.clone(), source: e }),
            }
        }
    }
    Ok(changes)
}

/// The status a FleetRollout shows for a rollout.
pub fn rollout_status(rollout: &RolloutStatus, generation: Option<i64>) -> FleetRolloutStatus {
    FleetRolloutStatus {
        phase: Some(rollout.phase),
        wave: format!(
            "{}/{}",
            (rollout.current_wave + 1).min(rollout.waves.len() as u32),
            rollout.waves.len()
        ),
        updated: rollout.total.healthy,
        failed: rollout.total.failed,
        devices: rollout.total.size,
        message: rollout.message.clone(),
        waves: rollout
            .waves
            .iter()
            .map(|w| RolloutWaveStatus {
                number: w.index + 1,
                name: w.name.clone(),
                state: w.state,
                devices: w.progress.size,
                healthy: w.progress.healthy,
                in_flight: w.progress.in_flight,
                failed: w.progress.failed,
                stale: w.progress.stale,
                approved_at: w.approved_at.map(|t| t.to_string()),
            })
            .collect(),
        observed_generation: generation,
    }
}

/// Creates the FleetRollouts of new rollouts, gives FleetRollouts left by an earlier Fleet
/// of the same name to this one, and writes the status of those that changed. A finished
/// (completed or aborted) rollout's status is written once and then kept: its counts
/// describe the rollout, not where its devices went afterwards. Returns every rollout.
pub async fn sync(
    api: &Api<FleetRollout>,
    fleet: &Fleet,
    store: &Store,
    existing: &[FleetRollout],
    stale_after: SignedDuration,
) -> Result<Vec<RolloutStatus>, Error> {
    let fleet_name = fleet.name_any();
    let rollouts = control::list(store, stale_after, Timestamp::now())
        .await
        .map_err(|e| Error::Rollout { rollout: "*".into(), source: ControlError::Store(e) })?;
    let mut owner = fleet.controller_owner_ref(&()).ok_or_else(|| Error::Spec {
        namespace: fleet.namespace().unwrap_or_default(),
        name: fleet_name.clone(),
        reason: "has no uid".into(),
    })?;
    // The Fleet cannot be deleted in the foreground before its FleetRollouts are.
    owner.block_owner_deletion = Some(true);
    let params = PatchParams::apply(MANAGER).force();
    for rollout in &rollouts {
        let name = resource_name(&fleet_name, &rollout.id);
        let current = existing.iter().find(|r| r.spec.rollout_id == rollout.id);
        let owned = current.is_some_and(|r| r.owner_references().iter().any(|o| o.uid == owner.uid));
        if current.is_none() {
            let spec = FleetRolloutSpec {
                fleet: fleet_name.clone(),
                rollout_id: rollout.id.clone(),
                policy: rollout.policy.clone(),
                release: rollout.release.clone(),
                version: rollout.version.clone(),
                commit: rollout.commit.clone(),
                waves: rollout
                    .waves
                    .iter()
                    .map(|w| RolloutWave {
                        name: w.name.clone(),
                        devices: w.progress.size,
                        bake: w.bake.clone(),
                    })
                    .collect(),
                paused: None,
                approved_waves: None,
                abort: None,
            };
            let patch = json!({
                "apiVersion": FleetRollout::api_version(&()),
                "kind": FleetRollout::kind(&()),
                "metadata": {
                    "name": name,
                    "labels": { FLEET_LABEL: fleet_name },
                    "ownerReferences": [owner],
                },
                "spec": spec,
            });
            api.patch(&name, &params, &Patch::Apply(&patch))
                .await
                .map_err(|e| Error::kube(format!("creating FleetRollout {name}"), e))?;
        } else if !owned {
            // Left by a deleted Fleet of this name (its uid is gone): owned by this one now,
            // with a merge patch so that the operators' spec fields stay as they are.
            let patch = json!({"metadata": {"ownerReferences": [owner]}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| Error::kube(format!("adopting FleetRollout {name}"), e))?;
        }
        let old = current.and_then(|r| r.status.as_ref());
        if old.is_some_and(|s| s.phase == Some(rollout.phase) && rollout.phase.is_finished()) {
            continue;
        }
        let generation = current.and_then(|r| r.metadata.generation).or(Some(1));
        let status = rollout_status(rollout, generation);
        if old == Some(&status) {
            continue;
        }
        let patch = json!({
            "apiVersion": FleetRollout::api_version(&()),
            "kind": FleetRollout::kind(&()),
            "status": status,
        });
        api.patch_status(&name, &params, &Patch::Apply(&patch))
            .await
            .map_err(|e| Error::kube(format!("writing the status of FleetRollout {name}"), e))?;
    }
    Ok(rollouts)
}
