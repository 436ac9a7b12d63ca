//! Policy documents: references, selectors, waves, thresholds, bake times and the
//! device-health rules (confirmation, device timeout, retries, what a failure does).

use super::labels::check_selector;
use super::{unknown, Names};
use crate::compile::diagnostic::{Code, Diagnostic};
use crate::compile::load::{Documents, Located};
use crate::compile::rules::{FailureRules, Retries, RolloutRules};
use crate::model::Policy;
use crate::protocol::duration::WrittenDuration;

/// The bake times of a policy's waves, parsed.
pub(super) type Bakes = Vec<Option<WrittenDuration>>;

/// Checks every Policy document and returns, per policy, the bake times of its waves and
/// its rollout rules, parsed (see [`super::Checked::bakes`] and [`super::Checked::rules`]).
pub(super) fn check_policies(
    documents: &Documents,
    names: &Names<'_>,
    out: &mut Vec<Diagnostic>,
) -> (Vec<Bakes>, Vec<RolloutRules>) {
    let mut bakes = Vec::with_capacity(documents.policies.len());
    let mut rules = Vec::with_capacity(documents.policies.len());
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
        rules.push(check_rules(doc, out));
    }
    (bakes, rules)
}

/// Checks a policy's device-health rules and returns them parsed.
fn check_rules(doc: &Located<Policy>, out: &mut Vec<Diagnostic>) -> RolloutRules {
    let rollout = &doc.value.spec.rollout;
    let mut duration = |field: &str, text: &Option<String>| {
        text.as_deref()
            .and_then(|text| check_duration(doc, &format!("spec.rollout.{field}"), text, (field, ""), out))
    };
    let confirmation = duration("confirmation", &rollout.confirmation);
    let device_timeout = duration("deviceTimeout", &rollout.device_timeout);
    let retries = rollout.retries.as_ref().map_or_else(Retries::default, |spec| {
        let backoff = duration("retries.backoff", &spec.backoff);
        Retries::of(spec, backoff.map(|b| b.value()))
    });
    if device_timeout.as_ref().is_some_and(|t| t.value().is_zero()) {
        out.push(Diagnostic::new(
            Code::InvalidDuration,
            doc.locate("spec.rollout.deviceTimeout"),
            "deviceTimeout is 0, so every device would time out at once (write e.g. 30m)",
        ));
    }
    if let (Some(timeout), Some(confirmation)) = (&device_timeout, &confirmation) {
        if timeout.value() <= confirmation.value() {
            out.push(Diagnostic::new(
                Code::InvalidDuration,
                doc.locate("spec.rollout.deviceTimeout"),
                format!(
                    "deviceTimeout ({timeout}) must be longer than confirmation ({confirmation}): \
                     every device would time out while it confirms the release"
                ),
            ));
        }
    }
    RolloutRules {
        confirmation,
        device_timeout,
        retries,
        failure: FailureRules::of(&rollout.failure_threshold),
        on_failure: rollout.on_failure,
    }
}

/// Parses a duration field of a policy that must not be negative; reports it at `path`
/// when it does not parse, as `invalid <what.0> "<text>"<what.1>`.
fn check_duration(
    doc: &Located<Policy>,
    path: &str,
    text: &str,
    what: (&str, &str),
    out: &mut Vec<Diagnostic>,
) -> Option<WrittenDuration> {
    match WrittenDuration::parse(text) {
        Ok(duration) if !duration.value().is_negative() => Some(duration),
        result => {
            let reason = result.map_or_else(|e| e.to_string(), |_| "it is negative".to_owned());
            out.push(Diagnostic::new(
                Code::InvalidDuration,
                doc.locate(path),
                format!("invalid {} {text:?}{}: {reason} (write e.g. 30m or 1h)", what.0, what.1),
            ));
            None
        }
    }
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
        let of = format!(" of wave {name:?}");
        let path = format!("{at}.bake");
        bakes.push(
            wave.bake.as_deref().and_then(|text| check_duration(doc, &path, text, ("bake time", &of), out)),
        );
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
    check_thresholds(doc, out);
    bakes
}

/// The success threshold and every failure threshold are percentages, and success must
/// exceed each failure threshold (a wave could otherwise advance with fewer healthy
/// devices than the share of failures that halts it).
fn check_thresholds(doc: &Located<Policy>, out: &mut Vec<Diagnostic>) {
    let rollout = &doc.value.spec.rollout;
    let failure = FailureRules::of(&rollout.failure_threshold);
    let per_class = !matches!(rollout.failure_threshold, crate::model::FailureThreshold::Percent(_));
    let path = |field: &str| match (field, per_class) {
        ("successThreshold", _) | ("failureThreshold", false) => format!("spec.rollout.{field}"),
        ("failureThreshold", true) => "spec.rollout.failureThreshold.percent".to_owned(),
        (class, _) => format!("spec.rollout.failureThreshold.{class}"),
    };
    let mut valid = true;
    for (field, value) in
        std::iter::once(("successThreshold", rollout.success_threshold)).chain(failure.given())
    {
        if !(0.0..=100.0).contains(&value) {
            valid = false;
            out.push(Diagnostic::new(
                Code::InvalidThreshold,
                doc.locate(&path(field)),
                format!("{field} is {value}; it is a percentage between 0 and 100"),
            ));
        }
    }
    let highest = failure.given().max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((field, value)) = highest.filter(|&(_, value)| valid && rollout.success_threshold <= value) {
        let field =
            if field == "failureThreshold" { field.to_owned() } else { format!("failureThreshold.{field}") };
        out.push(Diagnostic::new(
            Code::InvalidThreshold,
            doc.locate("spec.rollout.successThreshold"),
            format!(
                "successThreshold ({}) must be greater than {field} ({value})",
                rollout.success_threshold
            ),
        ));
    }
}
