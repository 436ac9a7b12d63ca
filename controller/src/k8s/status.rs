//! A Fleet's status: its four conditions (`Ready`, `SourceReady`, `Validated`,
//! `Published`) computed from what the source and the engine last did, and written with
//! server-side apply only when it differs from what the API server has.

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::crd::{Condition, Fleet, FleetStatus};
use super::fleet::MANAGER;
use super::Error;
use crate::source::SourceStatus;

/// What the last passes of a fleet's engine left to report.
#[derive(Debug, Clone, Default)]
pub(super) struct Outcome {
    /// The last refused commit and its errors, while the source's head is not in force.
    pub refused: Option<(String, Vec<String>)>,
    /// The last engine error, if the last pass failed.
    pub step_error: Option<String>,
    /// Why the last poll of the source failed (fetch, reference, signature).
    pub fetch_error: Option<String>,
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

pub(super) fn fleet_status(
    fleet: &Fleet,
    source: &SourceStatus,
    outcome: &Outcome,
    devices: Option<u64>,
    active: u64,
) -> FleetStatus {
    let applied = source.last_applied.as_ref().map(|r| r.commit.to_string());
    let attempted = source.last_attempted.as_ref().map(|r| r.commit.to_string());
    let source_ready = match (&outcome.fetch_error, &attempted) {
        (Some(e), _) => condition("SourceReady", false, "FetchFailed", e.clone()),
        (None, Some(commit)) => condition("SourceReady", true, "Fetched", format!("fetched commit {commit}")),
        (None, None) => unknown("SourceReady", "Fetching", "the source has not been fetched yet"),
    };
    let validated = match (&outcome.refused, &applied) {
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
    let published = match (&outcome.step_error, &applied) {
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
    FleetStatus {
        conditions: vec![ready, source_ready, validated, published],
        observed_generation: fleet.metadata.generation,
        last_applied_commit: applied,
        last_attempted_commit: attempted,
        devices,
        active_rollouts: Some(active),
    }
}

pub(super) fn suspended_status(fleet: &Fleet) -> FleetStatus {
    let mut status = fleet.status.clone().unwrap_or_default();
    status.observed_generation = fleet.metadata.generation;
    let suspended = condition("Ready", false, "Suspended", "spec.suspend is set".into());
    status.conditions.retain(|c| c.type_ != "Ready");
    status.conditions.insert(0, suspended);
    status
}

pub(super) fn not_ready_status(fleet: &Fleet, reason: &str, message: &str) -> FleetStatus {
    let mut status = fleet.status.clone().unwrap_or_default();
    status.observed_generation = fleet.metadata.generation;
    status.conditions.retain(|c| c.type_ != "Ready");
    status.conditions.insert(0, condition("Ready", false, reason, message.into()));
    status
}

/// Writes the status with server-side apply when it differs from the one the API server
/// has. A condition keeps its transition time while its status stays.
pub(super) async fn write_status(
    api: &Api<Fleet>,
    fleet: &Fleet,
    mut status: FleetStatus,
) -> Result<(), Error> {
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
