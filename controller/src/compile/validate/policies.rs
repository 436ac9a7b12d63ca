//! Policy documents: references, selectors, waves, thresholds and bake times.

use super::labels::check_selector;
use super::{unknown, Names};
use crate::compile::diagnostic::{Code, Diagnostic};
use crate::compile::load::{Documents, Located};
use crate::model::Policy;
use crate::protocol::duration::WrittenDuration;

/// Checks every Policy document and returns the bake times of each one's waves, parsed
/// (see [`super::Checked::bakes`]).
pub(super) fn check_policies(
    documents: &Documents,
    names: &Names<'_>,
    out: &mut Vec<Diagnostic>,
) -> Vec<Vec<Option<WrittenDuration>>> {
    let mut bakes = Vec::with_capacity(documents.policies.len());
    for doc in &documents.policies {
        let spec = &doc.value.spec;
        if !names.releases.contains_key(spec.release.as_str()) {
            out.push(Diagnostic::new(
                Code::UnknownRelease,
                doc.locate("spec.release"),
                unknown("release", &spec.release, names.release_candidates()),
            ));
        }
        for (i, group) in spec.selector.groups.iter().enumerate() {
            if !names.groups.contains_key(group.as_str()) {
                out.push(Diagnostic::new(
                    Code::UnknownGroup,
                    doc.locate(&format!("spec.selector.groups[{i}]")),
                    unknown("group", group, names.group_candidates()),
                ));
            }
        }
        check_selector(
            doc,
            "spec.selector",
            &spec.selector.match_labels,
            &spec.selector.match_expressions,
            out,
        );
        bakes.push(check_rollout(doc, out));
    }
    bakes
}

/// Checks a policy's rollout and returns the bake time of each wave.
fn check_rollout(doc: &Located<Policy>, out: &mut Vec<Diagnostic>) -> Vec<Option<WrittenDuration>> {
    let rollout = &doc.value.spec.rollout;
    let waves = &rollout.waves;
    let mut bakes = Vec::with_capacity(waves.len());
    let mut percent_sum = 0.0;
    for (i, wave) in waves.iter().enumerate() {
        let at = format!("spec.rollout.waves[{i}]");
        let name = wave.display_name(i);
        match (wave.count, wave.percent) {
            (Some(_), Some(_)) => out.push(Diagnostic::new(
                Code::AmbiguousWave,
                doc.locate(&at),
                format!("wave {name:?} sets both count and percent; keep one"),
            )),
            // A wave with a selector but no size takes every matching device (all the
            // canaries), which later waves can follow; without a selector it takes all
            // remaining devices, which leaves nothing for later waves.
            (None, None) if wave.selector.is_none() && i + 1 < waves.len() => out.push(Diagnostic::new(
                Code::OpenWaveNotLast,
                doc.locate(&at),
                format!(
                    "wave {name:?} has neither count nor percent, so it takes all remaining devices, \
                     but {} more wave(s) follow it",
                    waves.len() - i - 1
                ),
            )),
            _ => {}
        }
        if wave.count == Some(0) {
            out.push(Diagnostic::new(
                Code::EmptyWave,
                doc.locate(&format!("{at}.count")),
                format!("wave {name:?} has count 0 and would hold no device"),
            ));
        }
        if let Some(percent) = wave.percent {
            if percent.is_nan() || percent <= 0.0 {
                out.push(Diagnostic::new(
                    Code::EmptyWave,
                    doc.locate(&format!("{at}.percent")),
                    format!("wave {name:?} has percent {percent} and would hold no device"),
                ));
            } else if percent > 100.0 {
                out.push(Diagnostic::new(
                    Code::WavePercentOverflow,
                    doc.locate(&format!("{at}.percent")),
                    format!("wave {name:?} has percent {percent}, more than 100"),
                ));
            } else {
                percent_sum += percent;
            }
        }
        let bake = wave.bake.as_deref().map(|text| (text, WrittenDuration::parse(text)));
        bakes.push(match bake {
            Some((_, Ok(bake))) if !bake.value().is_negative() => Some(bake),
            Some((text, result)) => {
                let reason = result.map_or_else(|e| e.to_string(), |_| "it is negative".to_owned());
                out.push(Diagnostic::new(
                    Code::InvalidDuration,
                    doc.locate(&format!("{at}.bake")),
                    format!("invalid bake time {text:?} of wave {name:?}: {reason} (write e.g. 30m or 1h)"),
                ));
                None
            }
            None => None,
        });
        if let Some(selector) = &wave.selector {
            let path = format!("{at}.selector");
            check_selector(doc, &path, &selector.match_labels, &selector.match_expressions, out);
        }
    }
    // Allow for the rounding of decimal percentages such as 33.3 + 33.3 + 33.4.
    if percent_sum > 100.0 + 1e-9 {
        out.push(Diagnostic::new(
            Code::WavePercentOverflow,
            doc.locate("spec.rollout.waves"),
            format!(
                "the waves' percentages add up to {}, more than 100",
                (percent_sum * 1000.0).round() / 1000.0
            ),
        ));
    }
    if rollout.max_concurrent == Some(0) {
        out.push(Diagnostic::new(
            Code::ZeroCount,
            doc.locate("spec.rollout.maxConcurrent"),
            "maxConcurrent must be at least 1 (0 would never let a device update)",
        ));
    }
    let mut thresholds_valid = true;
    for (field, value) in
        [("successThreshold", rollout.success_threshold), ("failureThreshold", rollout.failure_threshold)]
    {
        if !(0.0..=100.0).contains(&value) {
            thresholds_valid = false;
            out.push(Diagnostic::new(
                Code::InvalidThreshold,
                doc.locate(&format!("spec.rollout.{field}")),
                format!("{field} is {value}; it is a percentage between 0 and 100"),
            ));
        }
    }
    if thresholds_valid && rollout.success_threshold <= rollout.failure_threshold {
        out.push(Diagnostic::new(
            Code::InvalidThreshold,
            doc.locate("spec.rollout.successThreshold"),
            format!(
                "successThreshold ({}) must be greater than failureThreshold ({})",
                rollout.success_threshold, rollout.failure_threshold
            ),
        ));
    }
    bakes
}
