//! FleetRollouts: the engine's rollouts as Kubernetes resources, owned by their Fleet.
//!
//! The controller creates one per rollout and keeps its status current; operators steer
//! it through spec fields the controller never writes (`paused`, `approvedWaves`, `abort`,
//! `rollback`, and the request tokens `retry` and `accept`), which map onto
//! [`control::act`] — the same path as the CLI and the HTTP API.

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
/// Fields left unset leave the rollout alone (the CLI may have paused it). Setting
/// `paused: false` also resumes a halted rollout (the engine halted it, not a pause), once:
/// for the change of the spec that the status has not acknowledged yet. `retry` and
/// `accept` act once per value: a value the status shows as carried out asks nothing.
pub fn operator_actions(resource: &FleetRollout, rollout: &RolloutStatus) -> Vec<Action> {
    let spec = &resource.spec;
    let status = resource.status.as_ref();
    // A token is always answered, carried out or refused (a finished rollout refuses it),
    // so that the status shows every value as seen.
    let tokens = [Action::Retry, Action::Accept]
        .into_iter()
        .filter(|&action| request_token(resource, action).is_some_and(|(token, last)| Some(token) != last));
    // A rollback may follow the end of a rollout (its release turned out bad after it
    // completed); a rollback rollout has nothing to roll back to.
    if spec.rollback == Some(true) && rollout.rolled_back_at.is_none() && rollout.rollback_of.is_none() {
        return std::iter::once(Action::Rollback).chain(tokens).collect();
    }
    if rollout.phase.is_finished() {
        return tokens.collect();
    }
    if spec.abort == Some(true) {
        return std::iter::once(Action::Abort).chain(tokens).collect();
    }
    let spec_changed = resource.metadata.generation > status.and_then(|s| s.observed_generation);
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
    actions.extend(tokens);
    actions
}

/// For an action asked by a request token (`spec.retry`, `spec.accept`): the value the
/// spec holds and the last one the status shows as carried out.
fn request_token(resource: &FleetRollout, action: Action) -> Option<(&str, Option<&str>)> {
    let status = resource.status.as_ref();
    let (token, last) = match action {
        Action::Retry => (&resource.spec.retry, status.and_then(|s| s.last_retry.as_deref())),
        Action::Accept => (&resource.spec.accept, status.and_then(|s| s.last_accept.as_deref())),
        _ => return None,
    };
    token.as_deref().map(|token| (token, last))
}

/// An operator's change to a FleetRollout that took effect, or that was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorChange {
    /// The FleetRollout changed.
    pub resource: ObjectReference,
    /// The rollout id.
    pub rollout: String,
    /// What was done.
    pub action: Action,
    /// Why the action was refused, when it was. Only a request token's refusal is
    /// reported (once, as its value is then recorded); a refused field that stays set
    /// would be refused again at every pass.
    pub refused: Option<String>,
}

/// Applies what operators changed in FleetRollouts to the engine's rollouts; returns
/// what took effect. A request token carried out is recorded in the FleetRollout's
/// status at once, before the engine's pass carries the request out, so that no restart
/// or other replica acts on it again: an action recorded in the inventory but not yet in
/// the status is asked again, which changes nothing while the request waits for the
/// engine. `existing` is updated with what was recorded.
pub async fn apply_operator_changes(
    api: &Api<FleetRollout>,
    store: &Store,
    existing: &mut [FleetRollout],
    now: Timestamp,
) -> Result<Vec<OperatorChange>, Error> {
    let mut changes = Vec::new();
    for resource in existing.iter_mut() {
        let id = resource.spec.rollout_id.clone();
        let Some(rollout) = control::status(store, &id, SignedDuration::ZERO, now)
            .await
            .map_err(|e| Error::Rollout { rollout: id.clone(), source: ControlError::Store(e) })?
        else {
            continue;
        };
        for action in operator_actions(resource, &rollout) {
            tracing::info!(rollout = %id, ?action, resource = %resource.name_any(), "operator change");
            let token = request_token(resource, action).map(|(token, _)| token.to_owned());
            let refused = match control::act(store, &id, action, now).await {
                Ok(_) => None,
                Err(ControlError::Conflict(reason)) => {
                    tracing::info!(rollout = %id, "{reason}");
                    // Nothing to change any more (finished meanwhile): the status will say
                    // so. A token is recorded all the same: it asked once.
                    if token.is_none() {
                        continue;
                    }
                    Some(reason)
                }
                Err(e) => return Err(Error::Rollout { rollout: id.clone(), source: e }),
            };
            if let Some(token) = token {
                record_token(api, resource, action, token).await?;
            }
            changes.push(OperatorChange {
                resource: resource.object_ref(&()),
                rollout: id.clone(),
                action,
                refused,
            });
        }
    }
    Ok(changes)
}

/// Records in the FleetRollout's status that a request token was acted on, with a merge
/// patch of that one field: the rest of the status is the next [`sync`]'s to write.
async fn record_token(
    api: &Api<FleetRollout>,
    resource: &mut FleetRollout,
    action: Action,
    token: String,
) -> Result<(), Error> {
    let name = resource.name_any();
    let status = resource.status.get_or_insert_with(FleetRolloutStatus::default);
    let field = match action {
        Action::Retry => {
            status.last_retry = Some(token.clone());
            "lastRetry"
        }
        _ => {
            status.last_accept = Some(token.clone());
            "lastAccept"
        }
    };
    let patch = json!({ "status": { field: token } });
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
    api.patch_status(&name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("recording {field} of FleetRollout {name}"), e))?;
    Ok(())
}

/// The status a FleetRollout shows for a rollout; the request tokens carried out stay as
/// the `old` status has them. A finished (completed or aborted) rollout's status, once
/// written, keeps its counts: they describe the rollout, not where its devices went
/// afterwards. Only a rollback asked for later shows.
pub fn rollout_status(
    rollout: &RolloutStatus,
    generation: Option<i64>,
    old: Option<&FleetRolloutStatus>,
) -> FleetRolloutStatus {
    let rolled_back_at = rollout.rolled_back_at.map(|t| t.to_string());
    if let Some(old) = old.filter(|s| s.phase == Some(rollout.phase) && rollout.phase.is_finished()) {
        return FleetRolloutStatus { rolled_back_at, ..old.clone() };
    }
    FleetRolloutStatus {
        phase: Some(rollout.phase),
        wave: format!(
            "{}/{}",
            (rollout.current_wave + 1).min(rollout.waves.len() as u32),
            rollout.waves.len()
        ),
        updated: rollout.total.healthy,
        failed: rollout.total.failed,
        accepted: rollout.total.accepted,
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
                accepted: w.progress.accepted,
                approved_at: w.approved_at.map(|t| t.to_string()),
            })
            .collect(),
        observed_generation: generation,
        last_retry: old.and_then(|s| s.last_retry.clone()),
        last_accept: old.and_then(|s| s.last_accept.clone()),
        rolled_back_at,
    }
}

/// Creates the FleetRollouts of new rollouts, gives FleetRollouts left by an earlier Fleet
/// of the same name to this one, and writes the status of those that changed (see
/// [`rollout_status`]: a finished rollout's counts are kept). Returns every rollout.
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
                rollback_of: rollout.rollback_of.clone(),
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
                rollback: None,
                retry: None,
                accept: None,
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
        let generation = current.and_then(|r| r.metadata.generation).or(Some(1));
        let status = rollout_status(rollout, generation, old);
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// A rollout of two waves, the first published, as `control::status` shows it.
    fn rollout() -> RolloutStatus {
        let progress = |size: u64, unpublished: u64| {
            json!({"size": size, "unpublished": unpublished, "inFlight": size - unpublished,
                   "healthy": 0, "failed": 0, "stale": 0})
        };
        let wave = |index: u32, name: &str, state: &str, size: u64, unpublished: u64| {
            json!({"index": index, "name": name, "state": state, "bake": null, "publishedAt": null,
                   "healthyAt": null, "approvedAt": null, "finishedAt": null,
                   "progress": progress(size, unpublished)})
        };
        serde_json::from_value(json!({
            "id": "stable-1", "policy": "stable", "release": "r", "version": "1.0.0", "commit": null,
            "phase": "progressing", "paused": false, "message": null, "currentWave": 0,
            "createdAt": null, "updatedAt": null,
            "waves": [wave(0, "canary", "published", 1, 0), wave(1, "rest", "pending", 4, 4)],
            "total": progress(5, 4),
        }))
        .unwrap()
    }

    /// The FleetRollout of `stable-1` with `extra` in its spec, at `generation`, its status
    /// acknowledging `observed` and showing `status`.
    fn resource(extra: Value, generation: i64, observed: i64, status: Value) -> FleetRollout {
        let mut spec = json!({"fleet": "edge", "rolloutId": "stable-1", "policy": "stable",
                              "release": "r", "version": "1.0.0"});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let mut status = status;
        status["observedGeneration"] = json!(observed);
        serde_json::from_value(json!({
            "apiVersion": "waveguide.dev/v1alpha1", "kind": "FleetRollout",
            "metadata": {"name": "edge-stable-1", "generation": generation},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    /// A FleetRollout whose spec changed since the status last acknowledged it.
    fn changed(extra: Value) -> FleetRollout {
        resource(extra, 2, 1, json!({}))
    }

    /// One whose spec the status acknowledged.
    fn seen(extra: Value) -> FleetRollout {
        resource(extra, 2, 2, json!({}))
    }

    #[test]
    fn pause_approve_and_abort_map_onto_rollout_actions() {
        let status = rollout();
        assert_eq!(operator_actions(&changed(json!({})), &status), vec![], "unset fields leave it alone");
        assert_eq!(operator_actions(&changed(json!({"paused": true})), &status), vec![Action::Pause]);
        assert_eq!(operator_actions(&changed(json!({"paused": false})), &status), vec![]);
        assert_eq!(
            operator_actions(&seen(json!({"approvedWaves": [2, 7, 0]})), &status),
            vec![Action::Approve(1)]
        );
        assert_eq!(
            operator_actions(&seen(json!({"abort": true, "paused": true})), &status),
            vec![Action::Abort]
        );
        let mut done = status.clone();
        done.phase = RolloutPhase::Completed;
        assert_eq!(operator_actions(&changed(json!({"abort": true})), &done), vec![]);
        // A halted rollout (not paused) resumes when an operator sets `paused: false`, once:
        // for the change of the spec, not at every pass after it.
        let mut halted = status.clone();
        halted.phase = RolloutPhase::Halted;
        assert_eq!(operator_actions(&changed(json!({"paused": false})), &halted), vec![Action::Resume]);
        assert_eq!(operator_actions(&seen(json!({"paused": false})), &halted), vec![]);
        assert_eq!(operator_actions(&changed(json!({})), &halted), vec![]);
        assert_eq!(resource_name("edge", "stable-1"), "edge-stable-1");
        assert_eq!(resource_name("Edge", "a_b"), "edge-a-b");
    }

    #[test]
    fn a_request_token_asks_once_per_value() {
        let mut halted = rollout();
        halted.phase = RolloutPhase::Halted;
        let retry = json!({"retry": "2026-11-29T23:40:00Z"});
        assert_eq!(operator_actions(&seen(retry.clone()), &halted), vec![Action::Retry]);
        // Carried out: the status shows the value, which then asks nothing more, whatever
        // the generations say (a restarted controller or another replica reads the same).
        let done = resource(retry.clone(), 2, 2, json!({"lastRetry": "2026-11-29T23:40:00Z"}));
        assert_eq!(operator_actions(&done, &halted), vec![]);
        let again = resource(json!({"retry": "2"}), 3, 2, json!({"lastRetry": "2026-11-29T23:40:00Z"}));
        assert_eq!(operator_actions(&again, &halted), vec![Action::Retry], "a new value asks again");

        let accept = json!({"accept": "a"});
        assert_eq!(operator_actions(&seen(accept.clone()), &halted), vec![Action::Accept]);
        let done = resource(accept, 2, 2, json!({"lastAccept": "a"}));
        assert_eq!(operator_actions(&done, &halted), vec![]);
        // Tokens are independent: the last retry says nothing of an acceptance.
        let both = resource(json!({"retry": "x", "accept": "x"}), 2, 2, json!({"lastRetry": "x"}));
        assert_eq!(operator_actions(&both, &halted), vec![Action::Accept]);
        // A finished rollout refuses them, and the refusal answers the values.
        let mut done = rollout();
        done.phase = RolloutPhase::Completed;
        let tokens = json!({"retry": "x", "accept": "y", "abort": true});
        assert_eq!(operator_actions(&seen(tokens.clone()), &done), vec![Action::Retry, Action::Accept]);
        let answered = resource(tokens, 2, 2, json!({"lastRetry": "x", "lastAccept": "y"}));
        assert_eq!(operator_actions(&answered, &done), vec![]);
    }

    #[test]
    fn rollback_is_asked_until_the_rollout_shows_it() {
        let status = rollout();
        let rollback = json!({"rollback": true, "abort": true, "retry": "x"});
        // Asked in the same change, the retry comes after the rollback (which refuses it).
        assert_eq!(operator_actions(&seen(rollback.clone()), &status), vec![Action::Rollback, Action::Retry]);
        assert_eq!(operator_actions(&seen(json!({"rollback": false})), &status), vec![]);
        // A completed rollout can still be rolled back (its release turned bad later).
        let mut completed = status.clone();
        completed.phase = RolloutPhase::Completed;
        assert_eq!(operator_actions(&seen(json!({"rollback": true})), &completed), vec![Action::Rollback]);
        // Asked for already (here or through the CLI): nothing more, and nothing else.
        let mut rolled_back = status.clone();
        rolled_back.phase = RolloutPhase::Aborted;
        rolled_back.rolled_back_at = Some(Timestamp::UNIX_EPOCH);
        let answered = resource(rollback, 2, 2, json!({"lastRetry": "x"}));
        assert_eq!(operator_actions(&answered, &rolled_back), vec![]);
        // A rollback rollout has no previous release to return to.
        let mut rollback_rollout = status.clone();
        rollback_rollout.rollback_of = Some("stable-0".into());
        assert_eq!(operator_actions(&seen(json!({"rollback": true})), &rollback_rollout), vec![]);
    }

    #[test]
    fn the_status_keeps_the_tokens_carried_out_and_shows_the_rollback() {
        let mut status = rollout();
        status.rolled_back_at = Some(Timestamp::UNIX_EPOCH);
        status.total.accepted = 2;
        let old = FleetRolloutStatus {
            last_retry: Some("r".into()),
            last_accept: Some("a".into()),
            ..FleetRolloutStatus::default()
        };
        let new = rollout_status(&status, Some(3), Some(&old));
        assert_eq!((new.last_retry.as_deref(), new.last_accept.as_deref()), (Some("r"), Some("a")));
        assert_eq!(new.rolled_back_at.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!((new.accepted, new.observed_generation), (2, Some(3)));
        assert_eq!(rollout_status(&status, Some(3), None).last_retry, None);
    }

    #[test]
    fn a_finished_rollout_keeps_its_counts_and_shows_a_later_rollback() {
        let mut aborted = rollout();
        aborted.phase = RolloutPhase::Aborted;
        let finished = rollout_status(&aborted, Some(2), None);
        assert_eq!(finished.rolled_back_at, None);
        // Its devices moved on since; then an operator rolled it back.
        aborted.total.healthy = 5;
        aborted.message = Some("rolled back by an operator".into());
        aborted.rolled_back_at = Some(Timestamp::UNIX_EPOCH);
        let kept = rollout_status(&aborted, Some(3), Some(&finished));
        assert_eq!(kept.rolled_back_at.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(FleetRolloutStatus { rolled_back_at: None, ..kept }, finished);
    }
}
