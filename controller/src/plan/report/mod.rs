//! The plan as a report: a serialisable summary (the stable JSON of `waveguide plan
//! --format json`), built here, and its renderings: plain text (`text`) and Markdown
//! (`markdown`).
//!
//! The report names things (policies, releases, groups, devices) instead of holding
//! indices, and it samples long device lists, so it stays small for a million devices.

use serde::Serialize;

mod markdown;
mod text;

use super::diff::{FleetDiff, ReleaseRef};
use super::{Plan, WavePlan};
use crate::compile::{CompiledFleet, Diagnostic, GroupIx};
use crate::model::{Approval, OnFailure, Order};

fn is_halt(on_failure: &OnFailure) -> bool {
    *on_failure == OnFailure::Halt
}

/// Version of the JSON layout; bumped when a field changes meaning or goes away.
pub const FORMAT_VERSION: u32 = 1;

/// How many example device ids a report lists for a set of devices.
const EXAMPLES: usize = 5;
/// How many groups a wave lists as "first groups".
const FIRST_GROUPS: usize = 3;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Where the discovered state came from.
    pub discovered: Discovered,
    /// Totals over the fleet.
    pub summary: Summary,
    /// What the change between two commits does (`--base`/`--head` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeReport>,
    /// One entry per policy, by name.
    pub policies: Vec<PolicyReport>,
    /// Pinned devices.
    pub pinned: PinnedReport,
    /// Compiler warnings and planner warnings.
    pub warnings: Vec<Warning>,
}

/// Where the discovered state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DiscoveredSource {
    /// An inventory snapshot (`--inventory`).
    Inventory,
    /// Assumed: every device runs what the base commit wants.
    Base,
    /// Nothing known: every device counts as never seen.
    None,
}

/// The discovered state the plan was made against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovered {
    /// Inventory, base or none.
    pub source: DiscoveredSource,
    /// Devices with a report.
    pub devices: usize,
}

/// Totals over the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Declared devices.
    pub devices: usize,
    /// Devices the rollouts would publish to (never-seen included), pinned ones too.
    pub to_update: usize,
    /// Devices already on their desired release.
    pub up_to_date: usize,
    /// Devices that never reported (included in `toUpdate`).
    pub never_seen: usize,
    /// Devices left on a higher version.
    pub refused_downgrades: usize,
    /// Pinned devices.
    pub pinned: usize,
    /// Devices with no desired release.
    pub uncovered: usize,
}

/// A count with a few example device ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// How many.
    pub count: usize,
    /// The first few, by id.
    pub examples: Vec<String>,
}

/// What one policy would do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// Policy name.
    pub name: String,
    /// The release it rolls out.
    pub release: String,
    /// That release's version.
    pub version: String,
    /// Its priority.
    pub priority: i32,
    /// Paused policies publish nothing; their waves show what would happen on resume.
    pub paused: bool,
    /// `hierarchy` or `spread`.
    pub order: Order,
    /// `auto` or `manual`.
    pub approval: Approval,
    /// What a halted rollout does: `halt`, or `rollback` (a rollback rollout returns the
    /// devices that took the release); absent when `halt`.
    #[serde(skip_serializing_if = "is_halt")]
    pub on_failure: OnFailure,
    /// Devices it governs.
    pub devices: usize,
    /// Governed devices already on the release.
    pub up_to_date: usize,
    /// Devices it would publish to.
    pub to_update: usize,
    /// Of those, devices that never reported.
    pub never_seen: usize,
    /// Of those, devices whose last update failed.
    pub failed: usize,
    /// Devices left on a higher version.
    pub refused_downgrades: Sample,
    /// The waves, in order.
    pub waves: Vec<WaveReport>,
}

/// One wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveReport {
    /// Wave name.
    pub name: String,
    /// Devices in the wave.
    pub devices: usize,
    /// Distinct groups the wave touches.
    pub groups: usize,
    /// The first groups in rollout order.
    pub first_groups: Vec<String>,
    /// Bake time, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bake: Option<String>,
    /// Whether the wave waits for an operator's approval before it starts.
    pub needs_approval: bool,
}

/// Pinned devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedReport {
    /// Pinned devices.
    pub devices: usize,
    /// On their pinned release.
    pub up_to_date: usize,
    /// Never reported.
    pub never_seen: usize,
    /// To move to their pinned release.
    pub to_update: Sample,
}

/// A release as a policy target, in a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseReport {
    /// Release name.
    pub release: String,
    /// Its version.
    pub version: String,
}

/// What the change between two commits does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeReport {
    /// The base revision as given.
    pub base: String,
    /// The head revision as given.
    pub head: String,
    /// Documents added, changed, removed.
    pub documents: Vec<DocumentReport>,
    /// Policies whose release changes.
    pub policies: Vec<PolicyChangeReport>,
    /// Devices whose desired release changes, per group.
    pub groups: Vec<GroupReport>,
    /// Devices whose desired release changes.
    pub devices_changed: usize,
    /// Devices declared in head only.
    pub devices_added: usize,
    /// Devices declared in base only.
    pub devices_removed: usize,
}

/// A document that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentReport {
    /// `added`, `changed` or `removed`.
    pub change: &'static str,
    /// Document kind.
    pub kind: &'static str,
    /// Document name.
    pub name: String,
    /// File (in head; in base when removed).
    pub file: String,
}

/// A policy's release change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyChangeReport {
    /// Policy name.
    pub policy: String,
    /// Release in base (`null`: new policy).
    pub from: Option<ReleaseReport>,
    /// Release in head (`null`: removed policy).
    pub to: Option<ReleaseReport>,
}

/// Affected devices of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupReport {
    /// Group name.
    pub group: String,
    /// Devices whose desired release changes.
    pub devices: usize,
}

/// A warning: from the compiler (with a code and position) or from the planner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The diagnostic code, for compiler warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// File, for compiler warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Line, for compiler warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// What is wrong.
    pub message: String,
}

/// Builds the report. `diagnostics` are the compiler's (only warnings remain when there is
/// a plan); `change` is the diff with the base and head revisions as given.
pub fn build(
    fleet: &CompiledFleet,
    plan: &Plan,
    discovered: Discovered,
    diagnostics: &[Diagnostic],
    change: Option<(&FleetDiff, &str, &str)>,
) -> PlanReport {
    let id = |d: u32| fleet.devices()[d as usize].id.to_string();
    let sample = |devices: &[u32]| Sample {
        count: devices.len(),
        examples: devices.iter().take(EXAMPLES).map(|&d| id(d)).collect(),
    };

    let policies: Vec<PolicyReport> = plan
        .policies
        .iter()
        .map(|p| {
            let policy = fleet.policy(p.policy);
            let release = fleet.release(policy.release);
            PolicyReport {
                name: policy.name.clone(),
                release: release.name.clone(),
                version: release.version.to_string(),
                priority: policy.priority,
                paused: policy.paused,
                order: policy.rollout.order,
                approval: policy.rollout.approval,
                on_failure: policy.rules.on_failure,
                devices: p.devices,
                up_to_date: p.up_to_date,
                to_update: p.to_update(),
                never_seen: p.never_seen,
                failed: p.failed,
                refused_downgrades: sample(&p.refused_downgrades),
                waves: p.waves.iter().map(|w| wave_report(fleet, w)).collect(),
            }
        })
        .collect();

    let pinned = PinnedReport {
        devices: plan.pinned.devices,
        up_to_date: plan.pinned.up_to_date,
        never_seen: plan.pinned.never_seen,
        to_update: sample(&plan.pinned.to_update),
    };
    let summary = Summary {
        devices: fleet.devices().len(),
        to_update: policies.iter().map(|p| p.to_update).sum::<usize>() + pinned.to_update.count,
        up_to_date: policies.iter().map(|p| p.up_to_date).sum::<usize>() + pinned.up_to_date,
        never_seen: policies.iter().map(|p| p.never_seen).sum::<usize>() + pinned.never_seen,
        refused_downgrades: policies.iter().map(|p| p.refused_downgrades.count).sum(),
        pinned: pinned.devices,
        uncovered: plan.uncovered,
    };

    let mut warnings: Vec<Warning> = diagnostics
        .iter()
        .map(|d| Warning {
            code: Some(d.code.to_string()),
            file: Some(d.location.file.to_string()),
            line: Some(d.location.line),
            message: d.message.clone(),
        })
        .collect();
    if !plan.unknown_devices.is_empty() {
        let n = plan.unknown_devices.len();
        let examples: Vec<String> =
            plan.unknown_devices.iter().take(EXAMPLES).map(|d| format!("{d:?}")).collect();
        warnings.push(Warning {
            code: None,
            file: None,
            line: None,
            message: format!(
                "{n} {} in the inventory {} not declared in the fleet and {} ignored: {}{}",
                if n == 1 { "device" } else { "devices" },
                if n == 1 { "is" } else { "are" },
                if n == 1 { "is" } else { "are" },
                examples.join(", "),
                if n > EXAMPLES { ", …" } else { "" },
            ),
        });
    }

    let change = change.map(|(diff, base, head)| ChangeReport {
        base: base.to_owned(),
        head: head.to_owned(),
        documents: diff
            .documents
            .iter()
            .map(|d| DocumentReport {
                change: d.change.as_str(),
                kind: d.kind.as_str(),
                name: d.name.clone(),
                file: d.file.to_string(),
            })
            .collect(),
        policies: diff
            .policies
            .iter()
            .map(|p| {
                let release = |r: &Option<ReleaseRef>| {
                    r.as_ref()
                        .map(|r| ReleaseReport { release: r.name.clone(), version: r.version.to_string() })
                };
                PolicyChangeReport { policy: p.policy.clone(), from: release(&p.from), to: release(&p.to) }
            })
            .collect(),
        groups: diff
            .groups
            .iter()
            .map(|g| GroupReport { group: g.group.clone(), devices: g.devices })
            .collect(),
        devices_changed: diff.devices_changed,
        devices_added: diff.devices_added,
        devices_removed: diff.devices_removed,
    });

    PlanReport { format_version: FORMAT_VERSION, discovered, summary, change, policies, pinned, warnings }
}

fn wave_report(fleet: &CompiledFleet, wave: &WavePlan) -> WaveReport {
    let mut seen = vec![false; fleet.groups().len()];
    let mut first_groups = Vec::new();
    let mut groups = 0;
    for &d in &wave.devices {
        let g: GroupIx = fleet.devices()[d as usize].group;
        if !std::mem::replace(&mut seen[g as usize], true) {
            groups += 1;
            if first_groups.len() < FIRST_GROUPS {
                first_groups.push(fleet.group(g).name.clone());
            }
        }
    }
    WaveReport {
        name: wave.name.clone(),
        devices: wave.devices.len(),
        groups,
        first_groups,
        bake: wave.bake.as_ref().map(ToString::to_string),
        needs_approval: wave.needs_approval,
    }
}

/// How `waveguide plan` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Plain text for a terminal.
    #[default]
    Text,
    /// GitHub-flavoured Markdown for a pull-request comment.
    Markdown,
    /// The report as pretty-printed JSON.
    Json,
}

/// Renders a report.
pub fn render(report: &PlanReport, format: Format) -> String {
    match format {
        Format::Text => text::render_text(report),
        Format::Markdown => markdown::render_markdown(report),
        Format::Json => {
            let mut out = serde_json::to_string_pretty(report).expect("reports serialise to JSON");
            out.push('\n');
            out
        }
    }
}
