//! Where each device of a rollout stands, from what it reported: the tally the gates
//! decide on, and the per-wave progress operators see.

use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

use super::gate::{ClassCounts, WaveTally};
use crate::inventory::DeviceReport;
use crate::protocol::{FailureClass, UpdateState};

/// Where one member of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Its instruction is not published yet (maintenance window, concurrency cap, or its
    /// wave has not started).
    Unpublished,
    /// Published; the device has not reported a result yet.
    InFlight,
    /// Runs the rollout's release, settled and healthy.
    Healthy,
    /// Reported the update failed or rolled back, runs the release but is unhealthy, or
    /// did not finish within the device timeout; with the class of the failure.
    Failed(FailureClass),
    /// Silent for longer than the stale timeout since its instruction was published (or
    /// no longer in the fleet): counted apart, never blocks, never fails a wave.
    Stale,
    /// Failed, but an operator accepted the failure: counted apart like a stale member.
    Accepted,
}

/// What a member is measured against.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The rollout's release.
    pub release: &'a str,
    /// Its version.
    pub version: &'a semver::Version,
    /// How long a published device may stay silent before it counts as stale.
    pub stale_after: SignedDuration,
    /// How long a published device may take to finish before it counts as failed
    /// (class `timeout`); `None`: it may take as long as it keeps reporting.
    pub device_timeout: Option<SignedDuration>,
    /// Now, Unix milliseconds.
    pub now_ms: i64,
}

/// Classifies one member. `published_at` is when its instruction was published;
/// `in_fleet` is false for a device the fleet no longer declares.
pub fn classify(
    target: &Target<'_>,
    published_at: Option<i64>,
    in_fleet: bool,
    report: Option<&DeviceReport>,
) -> MemberState {
    if !in_fleet {
        return MemberState::Stale;
    }
    let Some(published_at) = published_at else { return MemberState::Unpublished };
    let last_seen = report.and_then(|r| r.last_seen).map(|t| t.as_millisecond());
    if let Some(report) = report {
        let on_target =
            report.release.as_deref() == Some(target.release) && &report.version == target.version;
        // On the release, settled, or failed or rolled back from a later instruction (a
        // device that refused or failed what it was told next still runs this release:
        // a rollback's member reports its old failure until it polls the rollback).
        let runs_it = report.state.is_settled()
            || matches!(report.state, UpdateState::Failed | UpdateState::RolledBack);
        if on_target && runs_it {
            return if report.healthy {
                MemberState::Healthy
            } else {
                MemberState::Failed(FailureClass::Health)
            };
        }
        // A failure counts when it was reported after the instruction was published: an
        // older one is about an earlier update. A device that names no class is counted as
        // failing its install (or, rolled back, its health check).
        if last_seen.is_some_and(|seen| seen >= published_at) {
            match report.state {
                UpdateState::Failed => {
                    return MemberState::Failed(report.failure.unwrap_or(FailureClass::Install))
                }
                UpdateState::RolledBack => {
                    return MemberState::Failed(report.failure.unwrap_or(FailureClass::Health))
                }
                _ => {}
            }
        }
    }
    let last_activity = last_seen.map_or(published_at, |seen| seen.max(published_at));
    if target.now_ms - last_activity > target.stale_after.as_millis() as i64 {
        MemberState::Stale
    } else if target.device_timeout.is_some_and(|t| target.now_ms - published_at > t.as_millis() as i64) {
        // Still reporting, but not done in time: stuck downloading, installing or
        // confirming, or never started.
        MemberState::Failed(FailureClass::Timeout)
    } else {
        MemberState::InFlight
    }
}

/// Classifies a member whose wave may count a failure for good (`kept`: it turned
/// unhealthy during the bake): that failure stands whatever the device reported since,
/// unless an operator `accepted` it.
pub fn classify_member(
    target: &Target<'_>,
    published_at: Option<i64>,
    kept: Option<FailureClass>,
    accepted: bool,
    in_fleet: bool,
    report: Option<&DeviceReport>,
) -> MemberState {
    let state = match kept {
        Some(class) if in_fleet && published_at.is_some() => MemberState::Failed(class),
        _ => classify(target, published_at, in_fleet, report),
    };
    match state {
        MemberState::Failed(_) if accepted => MemberState::Accepted,
        state => state,
    }
}

/// When a member that classified as failed with `class` failed, Unix milliseconds: when
/// its device timed out, else when it reported the failure (now, if it never reported).
pub fn failed_at(
    target: &Target<'_>,
    published_at: i64,
    report: Option<&DeviceReport>,
    class: FailureClass,
) -> i64 {
    match (class, target.device_timeout) {
        (FailureClass::Timeout, Some(timeout)) => published_at.saturating_add(timeout.as_millis() as i64),
        _ => report.and_then(|r| r.last_seen).map_or(target.now_ms, |t| t.as_millisecond()),
    }
}

/// Counts of a wave's members by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Members of the wave.
    pub size: u64,
    /// Not published yet.
    pub unpublished: u64,
    /// Published, no result yet.
    pub in_flight: u64,
    /// Healthy on the release.
    pub healthy: u64,
    /// Failed.
    pub failed: u64,
    /// The failed ones by failure class (absent in statuses written before classes).
    #[serde(default)]
    pub failed_by: ClassCounts,
    /// Silent past the stale timeout.
    pub stale: u64,
    /// Failed, with the failure accepted by an operator.
    #[serde(default)]
    pub accepted: u64,
}

impl Progress {
    /// Adds one member.
    pub fn add(&mut self, state: MemberState) {
        self.size += 1;
        match state {
            MemberState::Unpublished => self.unpublished += 1,
            MemberState::InFlight => self.in_flight += 1,
            MemberState::Healthy => self.healthy += 1,
            MemberState::Failed(class) => {
                self.failed += 1;
                self.failed_by.add(class);
            }
            MemberState::Stale => self.stale += 1,
            MemberState::Accepted => self.accepted += 1,
        }
    }

    /// Members whose instructions are published.
    pub fn published(&self) -> u64 {
        self.size - self.unpublished
    }

    /// The tally the gates decide on.
    pub fn tally(&self) -> WaveTally {
        WaveTally {
            size: self.size,
            unpublished: self.unpublished,
            healthy: self.healthy,
            failed: self.failed,
            failed_by: self.failed_by,
            stale: self.stale,
            accepted: self.accepted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn target(version: &semver::Version) -> Target<'_> {
        Target {
            release: "v2",
            version,
            stale_after: SignedDuration::from_mins(10),
            device_timeout: None,
            now_ms: 100 * MIN,
        }
    }

    fn report(release: &str, version: &str, state: UpdateState, healthy: bool, seen: i64) -> DeviceReport {
        DeviceReport {
            release: Some(release.into()),
            version: version.parse().unwrap(),
            state,
            healthy,
            failure: None,
            last_seen: Some(jiff::Timestamp::from_millisecond(seen).unwrap()),
        }
    }

    #[test]
    fn a_member_on_the_release_that_failed_a_later_instruction_runs_the_release() {
        // A rollback's member: it runs v2 (the rollback's release) and still reports the
        // failure of what it was told before, until it polls the rollback's instruction.
        let v2: semver::Version = "2.0.0".parse().unwrap();
        let t = target(&v2);
        for state in [UpdateState::Failed, UpdateState::RolledBack] {
            let failed_later = report("v2", "2.0.0", state, true, 99 * MIN);
            assert_eq!(classify(&t, Some(95 * MIN), true, Some(&failed_later)), MemberState::Healthy);
        }
    }

    #[test]
    fn rolled_back_and_failed_members_count_with_their_class() {
        let v2: semver::Version = "2.0.0".parse().unwrap();
        let t = target(&v2);
        let c = |r: &DeviceReport| classify(&t, Some(95 * MIN), true, Some(r));
        let rolled_back = report("v1", "1.0.0", UpdateState::RolledBack, false, 99 * MIN);
        assert_eq!(c(&rolled_back), MemberState::Failed(FailureClass::Health));
        let download = DeviceReport {
            failure: Some(FailureClass::Download),
            ..report("v1", "1.0.0", UpdateState::Failed, true, 99 * MIN)
        };
        assert_eq!(c(&download), MemberState::Failed(FailureClass::Download));
    }

    #[test]
    fn a_member_not_done_within_the_device_timeout_fails_with_class_timeout() {
        let v2: semver::Version = "2.0.0".parse().unwrap();
        let t = Target { device_timeout: Some(SignedDuration::from_mins(4)), ..target(&v2) };
        let installing = report("v1", "1.0.0", UpdateState::Installing, true, 99 * MIN);
        assert_eq!(classify(&t, Some(97 * MIN), true, Some(&installing)), MemberState::InFlight);
        assert_eq!(
            classify(&t, Some(95 * MIN), true, Some(&installing)),
            MemberState::Failed(FailureClass::Timeout),
            "published five minutes ago, still installing"
        );
        let idle = report("v1", "1.0.0", UpdateState::Idle, true, 99 * MIN);
        assert_eq!(
            classify(&t, Some(95 * MIN), true, Some(&idle)),
            MemberState::Failed(FailureClass::Timeout),
            "never moved"
        );
        let done = report("v2", "2.0.0", UpdateState::Installed, true, 99 * MIN);
        assert_eq!(classify(&t, Some(95 * MIN), true, Some(&done)), MemberState::Healthy);
        let silent = report("v1", "1.0.0", UpdateState::Idle, true, 2 * MIN);
        assert_eq!(
            classify(&t, Some(MIN), true, Some(&silent)),
            MemberState::Stale,
            "silent: stale, not timed out"
        );
    }

    #[test]
    fn members_are_classified_by_what_they_last_reported() {
        let v2: semver::Version = "2.0.0".parse().unwrap();
        let t = target(&v2);
        let published = Some(95 * MIN);
        let c = |r: Option<&DeviceReport>| classify(&t, published, true, r);
        assert_eq!(classify(&t, None, true, None), MemberState::Unpublished);
        assert_eq!(c(None), MemberState::InFlight, "published five minutes ago, not stale yet");
        assert_eq!(
            c(Some(&report("v2", "2.0.0", UpdateState::Installed, true, 99 * MIN))),
            MemberState::Healthy
        );
        assert_eq!(c(Some(&report("v2", "2.0.0", UpdateState::Idle, true, 99 * MIN))), MemberState::Healthy);
        assert_eq!(
            c(Some(&report("v2", "2.0.0", UpdateState::Installed, false, 99 * MIN))),
            MemberState::Failed(FailureClass::Health)
        );
        assert_eq!(
            c(Some(&report("v1", "1.0.0", UpdateState::Failed, true, 99 * MIN))),
            MemberState::Failed(FailureClass::Install)
        );
        assert_eq!(
            c(Some(&report("v1", "1.0.0", UpdateState::Failed, true, 90 * MIN))),
            MemberState::InFlight,
            "a failure reported before the instruction was published is about an older update"
        );
        assert_eq!(
            c(Some(&report("v1", "1.0.0", UpdateState::Installing, true, 99 * MIN))),
            MemberState::InFlight
        );
        assert_eq!(classify(&t, Some(MIN), true, None), MemberState::Stale, "silent since publication");
        assert_eq!(
            classify(
                &t,
                Some(MIN),
                true,
                Some(&report("v1", "1.0.0", UpdateState::Downloading, true, 2 * MIN))
            ),
            MemberState::Stale
        );
        assert_eq!(
            classify(
                &t,
                Some(MIN),
                true,
                Some(&report("v2", "2.0.0", UpdateState::Installed, true, 2 * MIN))
            ),
            MemberState::Healthy,
            "a healthy device that went quiet afterwards stays healthy"
        );
        assert_eq!(classify(&t, published, false, None), MemberState::Stale, "removed from the fleet");
    }

    #[test]
    fn progress_counts_and_tallies() {
        let mut p = Progress::default();
        for s in [MemberState::Unpublished, MemberState::InFlight, MemberState::Healthy, MemberState::Healthy]
        {
            p.add(s);
        }
        p.add(MemberState::Failed(FailureClass::Timeout));
        p.add(MemberState::Stale);
        assert_eq!(p.published(), 5);
        let failed_by = ClassCounts { timeout: 1, ..ClassCounts::default() };
        assert_eq!(
            p.tally(),
            WaveTally { size: 6, unpublished: 1, healthy: 2, failed: 1, failed_by, stale: 1, accepted: 0 }
        );
    }
}
