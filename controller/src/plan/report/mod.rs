//! The plan as a report: a serialisable summary (the stable JSON of `waveguide plan
//! --format json`) and its text and Markdown renderings.
//!
//! The report names things (policies, releases, groups, devices) instead of holding
//! indices, and it samples long device lists, so it stays small for a million devices.

use std::fmt::Write as _;

use serde::Serialize;

use super::diff::{FleetDiff, ReleaseRef};
use super::{Plan, WavePlan};
use crate::compile::{CompiledFleet, Diagnostic, GroupIx};
use crate::model::{Approval, Order};

/// Version of the JSON layout; bumped when a field changes meaning or goes away.
pub const FORMAT_VERSION: u32 = 1;

/// How many example device ids a report lists for a set of devices.
const EXAMPLES: usize = 5;
/// How many groups a wave lists as "first groups".
const FIRST_GROUPS: usize = 3;
/// Markdown lists longer than this are collapsed in `<details>`.
const COLLAPSE_AFTER: usize = 10;

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
        bake: wave.bake.clone(),
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
        Format::Text => render_text(report),
        Format::Markdown => render_markdown(report),
        Format::Json => {
            let mut out = serde_json::to_string_pretty(report).expect("reports serialise to JSON");
            out.push('\n');
            out
        }
    }
}

fn order_name(order: Order) -> &'static str {
    match order {
        Order::Hierarchy => "hierarchy",
        Order::Spread => "spread",
    }
}

fn approval_name(approval: Approval) -> &'static str {
    match approval {
        Approval::Auto => "auto",
        Approval::Manual => "manual",
    }
}

fn discovered_text(d: &Discovered) -> String {
    match d.source {
        DiscoveredSource::Inventory => format!("inventory snapshot, {} devices reported", d.devices),
        DiscoveredSource::Base => "assumed: every device runs what the base commit wants".to_owned(),
        DiscoveredSource::None => "none: every device counts as never seen".to_owned(),
    }
}

fn first_groups(w: &WaveReport) -> String {
    let mut s = w.first_groups.join(", ");
    if w.groups > w.first_groups.len() {
        let _ = write!(s, " (+{} more)", w.groups - w.first_groups.len());
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}

fn release_text(r: &Option<ReleaseReport>) -> String {
    r.as_ref().map_or_else(|| "(none)".to_owned(), |r| format!("{} ({})", r.release, r.version))
}

fn render_text(r: &PlanReport) -> String {
    let mut out = String::new();
    let s = &r.summary;
    let _ = writeln!(out, "Discovered state: {}", discovered_text(&r.discovered));
    let _ = writeln!(
        out,
        "Fleet: {} devices, {} to update, {} up to date, {} never seen, {} downgrades refused, {} pinned, {} uncovered",
        s.devices, s.to_update, s.up_to_date, s.never_seen, s.refused_downgrades, s.pinned, s.uncovered
    );

    if let Some(c) = &r.change {
        let _ = writeln!(out, "\nChange {} → {}", c.base, c.head);
        if c.documents.is_empty() {
            let _ = writeln!(out, "  no document changed");
        }
        for d in &c.documents {
            let _ = writeln!(out, "  {:<8} {} {} ({})", d.change, d.kind, d.name, d.file);
        }
        for p in &c.policies {
            let _ =
                writeln!(out, "  policy {}: {} → {}", p.policy, release_text(&p.from), release_text(&p.to));
        }
        let _ = writeln!(
            out,
            "  devices whose desired release changes: {} ({} added, {} removed)",
            c.devices_changed, c.devices_added, c.devices_removed
        );
        for g in &c.groups {
            let _ = writeln!(out, "    {:<24} {:>8}", g.group, g.devices);
        }
    }

    for p in &r.policies {
        let _ = writeln!(
            out,
            "\nPolicy {} → {} ({}), priority {}, order {}, approval {}{}",
            p.name,
            p.release,
            p.version,
            p.priority,
            order_name(p.order),
            approval_name(p.approval),
            if p.paused { ", PAUSED" } else { "" }
        );
        let _ = writeln!(out, "  {}", policy_counts(p, false));
        if !p.refused_downgrades.examples.is_empty() {
            let _ = writeln!(out, "  refused downgrades: {}", examples(&p.refused_downgrades));
        }
        if p.to_update > 0 {
            let _ = writeln!(
                out,
                "  {:<12} {:>8} {:>7}  {:<48} {:<6} approval",
                "wave", "devices", "groups", "first groups", "bake"
            );
            for w in &p.waves {
                let _ = writeln!(
                    out,
                    "  {:<12} {:>8} {:>7}  {:<48} {:<6} {}",
                    w.name,
                    w.devices,
                    w.groups,
                    first_groups(w),
                    w.bake.as_deref().unwrap_or("-"),
                    if w.needs_approval { "manual" } else { "auto" }
                );
            }
        }
    }

    if r.pinned.devices > 0 {
        let _ = writeln!(out, "\nPinned: {}", pinned_counts(&r.pinned));
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for w in &r.warnings {
            let _ = writeln!(out, "  {}", warning_text(w));
        }
    }
    out
}

/// `556 devices: 212 up to date, 344 to update (55 never seen, 0 failed), 0 downgrades
/// refused`, the to-update count in bold for Markdown.
fn policy_counts(p: &PolicyReport, markdown: bool) -> String {
    let to_update = if markdown {
        format!("**{} to update**", p.to_update)
    } else {
        format!("{} to update", p.to_update)
    };
    format!(
        "{}: {} up to date, {to_update} ({} never seen, {} failed), {} downgrades refused",
        devices(p.devices),
        p.up_to_date,
        p.never_seen,
        p.failed,
        p.refused_downgrades.count
    )
}

/// `1 device, 1 up to date, 0 to update (0 never seen)`, with examples when some are to
/// update.
fn pinned_counts(p: &PinnedReport) -> String {
    let mut text = format!(
        "{}, {} up to date, {} to update ({} never seen)",
        devices(p.devices),
        p.up_to_date,
        p.to_update.count,
        p.never_seen
    );
    if p.to_update.count > 0 {
        let _ = write!(text, ": {}", examples(&p.to_update));
    }
    text
}

/// `1 device`, `2 devices`.
fn devices(n: usize) -> String {
    if n == 1 {
        "1 device".to_owned()
    } else {
        format!("{n} devices")
    }
}

fn examples(s: &Sample) -> String {
    let mut text = s.examples.join(", ");
    if s.count > s.examples.len() {
        let _ = write!(text, ", … ({} in all)", s.count);
    }
    text
}

fn warning_text(w: &Warning) -> String {
    match (&w.code, &w.file, w.line) {
        (Some(code), Some(file), Some(line)) => format!("warning[{code}] {file}:{line}: {}", w.message),
        _ => format!("warning: {}", w.message),
    }
}

/// Escapes text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn render_markdown(r: &PlanReport) -> String {
    let mut out = String::new();
    let s = &r.summary;
    let _ = writeln!(out, "### Waveguide plan\n");
    let _ = writeln!(
        out,
        "| Devices | To update | Up to date | Never seen | Downgrades refused | Pinned | Uncovered |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} |\n",
        s.devices, s.to_update, s.up_to_date, s.never_seen, s.refused_downgrades, s.pinned, s.uncovered
    );
    let _ = writeln!(out, "| Policy | Release | Devices | To update | Up to date | Waves | Approval |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
    for p in &r.policies {
        let _ = writeln!(
            out,
            "| `{}`{} | `{}` ({}) | {} | {} | {} | {} | {} |",
            p.name,
            if p.paused { " (paused)" } else { "" },
            p.release,
            p.version,
            p.devices,
            p.to_update,
            p.up_to_date,
            p.waves.len(),
            approval_name(p.approval)
        );
    }
    let _ = writeln!(out, "\nDiscovered state: {}.", discovered_text(&r.discovered));

    if let Some(c) = &r.change {
        let _ = writeln!(out, "\n#### Change `{}` → `{}`\n", c.base, c.head);
        if c.documents.is_empty() {
            let _ = writeln!(out, "No document changed.");
        } else {
            let mut table = String::from("| Change | Kind | Name | File |\n|---|---|---|---|\n");
            for d in &c.documents {
                let _ = writeln!(table, "| {} | {} | `{}` | `{}` |", d.change, d.kind, d.name, cell(&d.file));
            }
            collapsible(
                &mut out,
                &format!("{} documents changed", c.documents.len()),
                c.documents.len(),
                &table,
            );
        }
        if !c.policies.is_empty() {
            let _ = writeln!(out, "\n| Policy | From | To |\n|---|---|---|");
            for p in &c.policies {
                let _ =
                    writeln!(out, "| `{}` | {} | {} |", p.policy, release_text(&p.from), release_text(&p.to));
            }
        }
        let _ = writeln!(
            out,
            "\n**{}** devices change their desired release ({} added, {} removed).",
            c.devices_changed, c.devices_added, c.devices_removed
        );
        if !c.groups.is_empty() {
            let mut table = String::from("| Group | Devices |\n|---|---:|\n");
            for g in &c.groups {
                let _ = writeln!(table, "| `{}` | {} |", g.group, g.devices);
            }
            out.push('\n');
            collapsible(
                &mut out,
                &format!("Affected devices in {} groups", c.groups.len()),
                c.groups.len(),
                &table,
            );
        }
    }

    for p in &r.policies {
        let _ = writeln!(
            out,
            "\n#### Policy `{}` → `{}` ({}){}\n",
            p.name,
            p.release,
            p.version,
            if p.paused { " — paused" } else { "" }
        );
        let _ = writeln!(
            out,
            "{}. Order `{}`, priority {}, approval {}.",
            policy_counts(p, true),
            order_name(p.order),
            p.priority,
            approval_name(p.approval)
        );
        if p.refused_downgrades.count > 0 {
            let _ = writeln!(out, "\nRefused downgrades: {}.", examples(&p.refused_downgrades));
        }
        if p.to_update > 0 {
            let mut table = String::from(
                "| Wave | Devices | Groups | First groups | Bake | Approval |\n|---|---:|---:|---|---|---|\n",
            );
            for w in &p.waves {
                let _ = writeln!(
                    table,
                    "| {} | {} | {} | {} | {} | {} |",
                    cell(&w.name),
                    w.devices,
                    w.groups,
                    cell(&first_groups(w)),
                    w.bake.as_deref().unwrap_or("-"),
                    if w.needs_approval { "manual" } else { "auto" }
                );
            }
            out.push('\n');
            collapsible(&mut out, &format!("{} waves", p.waves.len()), p.waves.len(), &table);
        }
    }

    if r.pinned.devices > 0 {
        let _ = writeln!(out, "\n#### Pinned devices\n\n{}.", pinned_counts(&r.pinned));
    }
    if !r.warnings.is_empty() {
        let mut list = String::new();
        for w in &r.warnings {
            let _ = writeln!(list, "- {}", warning_text(w).replace('|', "\\|"));
        }
        let _ = writeln!(out, "\n#### Warnings\n");
        collapsible(&mut out, &format!("{} warnings", r.warnings.len()), r.warnings.len(), &list);
    }
    out
}

/// Writes `body`, folded into `<details>` when it has more than [`COLLAPSE_AFTER`] rows.
fn collapsible(out: &mut String, summary: &str, rows: usize, body: &str) {
    if rows > COLLAPSE_AFTER {
        let _ = write!(out, "<details><summary>{summary}</summary>\n\n{body}\n</details>\n");
    } else {
        out.push_str(body);
    }
}
