//! The plan report as GitHub-flavoured Markdown, for a pull-request comment.

use std::fmt::Write as _;

use super::text::{
    approval_name, discovered_text, examples, first_groups, order_name, pinned_counts, policy_counts,
    release_text, warning_text,
};
use super::PlanReport;
use crate::model::OnFailure;

/// Markdown lists longer than this are collapsed in `<details>`.
const COLLAPSE_AFTER: usize = 10;

/// Escapes text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

pub(super) fn render_markdown(r: &PlanReport) -> String {
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
            "{}. Order `{}`, priority {}, approval {}{}.",
            policy_counts(p, true),
            order_name(p.order),
            p.priority,
            approval_name(p.approval),
            if p.on_failure == OnFailure::Rollback {
                "; a halted rollout rolls back (`onFailure: rollback`)"
            } else {
                ""
            }
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
