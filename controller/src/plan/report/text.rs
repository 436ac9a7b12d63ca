//! The plan report as plain text for a terminal, and the phrases the Markdown rendering
//! shares with it.

use std::fmt::Write as _;

use super::{
    Discovered, DiscoveredSource, PinnedReport, PlanReport, PolicyReport, ReleaseReport, Sample, Warning,
    WaveReport,
};
use crate::model::{Approval, OnFailure, Order};

pub(super) fn order_name(order: Order) -> &'static str {
    match order {
        Order::Hierarchy => "hierarchy",
        Order::Spread => "spread",
    }
}

pub(super) fn approval_name(approval: Approval) -> &'static str {
    match approval {
        Approval::Auto => "auto",
        Approval::Manual => "manual",
    }
}

pub(super) fn discovered_text(d: &Discovered) -> String {
    match d.source {
        DiscoveredSource::Inventory => format!("inventory snapshot, {} devices reported", d.devices),
        DiscoveredSource::Base => "assumed: every device runs what the base commit wants".to_owned(),
        DiscoveredSource::None => "none: every device counts as never seen".to_owned(),
    }
}

pub(super) fn first_groups(w: &WaveReport) -> String {
    let mut s = w.first_groups.join(", ");
    if w.groups > w.first_groups.len() {
        let _ = write!(s, " (+{} more)", w.groups - w.first_groups.len());
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}

pub(super) fn release_text(r: &Option<ReleaseReport>) -> String {
    r.as_ref().map_or_else(|| "(none)".to_owned(), |r| format!("{} ({})", r.release, r.version))
}

pub(super) fn render_text(r: &PlanReport) -> String {
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
            "\nPolicy {} → {} ({}), priority {}, order {}, approval {}{}{}",
            p.name,
            p.release,
            p.version,
            p.priority,
            order_name(p.order),
            approval_name(p.approval),
            if p.on_failure == OnFailure::Rollback { ", rolls back on failure" } else { "" },
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
pub(super) fn policy_counts(p: &PolicyReport, markdown: bool) -> String {
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
pub(super) fn pinned_counts(p: &PinnedReport) -> String {
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

pub(super) fn examples(s: &Sample) -> String {
    let mut text = s.examples.join(", ");
    if s.count > s.examples.len() {
        let _ = write!(text, ", … ({} in all)", s.count);
    }
    text
}

pub(super) fn warning_text(w: &Warning) -> String {
    match (&w.code, &w.file, w.line) {
        (Some(code), Some(file), Some(line)) => format!("warning[{code}] {file}:{line}: {}", w.message),
        _ => format!("warning: {}", w.message),
    }
}
