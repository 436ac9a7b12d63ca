//! The Git source's status: which commit is in force, what was last tried, what went wrong,
//! and when to try again.
//!
//! Pure bookkeeping: every transition takes the current time and the jitter drawn by the
//! caller, so the rules are tested without clocks or randomness.

use std::time::{Duration, SystemTime};

use super::fetch::Revision;
use super::spec::Retry;

/// What the source has applied, attempted and failed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// The commit whose fleet is in force. A later commit that fails (fetch, signature,
    /// compilation) leaves it in force.
    pub last_applied: Option<Revision>,
    /// The latest commit the source tried to apply, good or not.
    pub last_attempted: Option<Revision>,
    /// Why the last attempt failed; `None` after a success.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// When the next attempt is due (a trigger may bring it forward).
    pub next_attempt: SystemTime,
    /// Polls (each one a fetch) since the source was created: an idle source polls once
    /// per interval, so a count that races says something wakes it for nothing.
    pub polls: u64,
}

impl SourceStatus {
    /// The status before the first attempt: due now.
    pub fn new(now: SystemTime) -> SourceStatus {
        SourceStatus {
            last_applied: None,
            last_attempted: None,
            last_error: None,
            consecutive_failures: 0,
            next_attempt: now,
            polls: 0,
        }
    }

    /// `revision` is now in force (applied, or the same fleet tree as the one in force).
    pub(super) fn succeeded(
        &mut self,
        revision: Revision,
        interval: Duration,
        jitter: Duration,
        now: SystemTime,
    ) {
        self.last_applied = Some(revision.clone());
        self.last_attempted = Some(revision);
        self.last_error = None;
        self.consecutive_failures = 0;
        self.next_attempt = now + interval + jitter;
    }

    /// An attempt failed before anything could be applied (fetch, reference, signature):
    /// the next one backs off exponentially.
    pub(super) fn failed(
        &mut self,
        attempted: Option<Revision>,
        error: String,
        retry: Retry,
        jitter: Duration,
        now: SystemTime,
    ) {
        if attempted.is_some() {
            self.last_attempted = attempted;
        }
        self.last_error = Some(error);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.next_attempt = now + backoff(retry, self.consecutive_failures) + jitter;
    }

    /// The fleet of `revision` was fetched but not applied (it does not compile, or the
    /// caller could not publish it). Polling goes on at the normal interval rather than
    /// backing off: the fix is a new commit, and it should be picked up as fast as any.
    pub(super) fn rejected(
        &mut self,
        revision: Revision,
        error: String,
        interval: Duration,
        jitter: Duration,
        now: SystemTime,
    ) {
        self.last_attempted = Some(revision);
        self.last_error = Some(error);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.next_attempt = now + interval + jitter;
    }

    /// Nothing new to apply: the head's fleet tree is the one already rejected. The error
    /// stays, and polling goes on at the normal interval.
    pub(super) fn still_rejected(&mut self, interval: Duration, jitter: Duration, now: SystemTime) {
        self.next_attempt = now + interval + jitter;
    }

    /// How long until the next attempt is due, from `now` (zero when overdue).
    pub fn wait(&self, now: SystemTime) -> Duration {
        self.next_attempt.duration_since(now).unwrap_or(Duration::ZERO)
    }
}

/// The wait after `failures` consecutive failures (at least 1): `initial` doubled for each
/// failure after the first, capped at `max`.
pub fn backoff(retry: Retry, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    retry.initial.saturating_mul(1 << doublings).min(retry.max)
}

/// A random wait in `[0, max]`, to spread polls of many sources over time.
pub(super) fn jitter(max: Duration) -> Duration {
    use rand::Rng;
    if max.is_zero() {
        return Duration::ZERO;
    }
    rand::thread_rng().gen_range(Duration::ZERO..=max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::Oid;

    fn revision(n: u8) -> Revision {
        Revision {
            commit: Oid::from_bytes(&[n; 20]).unwrap(),
            tree: Oid::from_bytes(&[n + 100; 20]).unwrap(),
        }
    }

    const RETRY: Retry = Retry { initial: Duration::from_secs(1), max: Duration::from_secs(60) };

    #[test]
    fn backoff_doubles_and_is_capped() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(RETRY, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // No overflow however long the server stays down.
        assert_eq!(backoff(RETRY, u32::MAX), Duration::from_secs(60));
        assert_eq!(backoff(RETRY, 0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_millis(50);
        assert!((0..1000).map(|_| jitter(max)).all(|j| j <= max));
    }

    #[test]
    fn failures_keep_the_last_good_commit_and_back_off_until_a_success() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let interval = Duration::from_secs(30);
        let jitter = Duration::from_millis(500);
        let mut status = SourceStatus::new(t0);
        assert_eq!(status.wait(t0), Duration::ZERO);

        status.succeeded(revision(1), interval, jitter, t0);
        assert_eq!(status.next_attempt, t0 + interval + jitter);
        assert_eq!(status.wait(t0 + Duration::from_secs(10)), Duration::from_millis(20_500));

        // The server goes away: three failures, each waiting twice as long.
        for (n, wait) in [(1, 1), (2, 2), (3, 4)] {
            status.failed(None, "cannot fetch".into(), RETRY, Duration::ZERO, t0);
            assert_eq!(status.consecutive_failures, n);
            assert_eq!(status.next_attempt, t0 + Duration::from_secs(wait));
        }
        assert_eq!(status.last_applied, Some(revision(1)));
        assert_eq!(status.last_attempted, Some(revision(1)));
        assert_eq!(status.last_error.as_deref(), Some("cannot fetch"));

        // A refused commit is attempted but not applied.
        status.failed(Some(revision(2)), "unsigned".into(), RETRY, Duration::ZERO, t0);
        assert_eq!(
            (status.last_applied.clone(), status.last_attempted.clone()),
            (Some(revision(1)), Some(revision(2)))
        );
        assert_eq!(status.next_attempt, t0 + Duration::from_secs(8));

        // An invalid commit: not applied, but no backoff either.
        status.rejected(revision(3), "does not compile".into(), interval, Duration::ZERO, t0);
        assert_eq!(status.consecutive_failures, 5);
        assert_eq!(status.next_attempt, t0 + interval);
        assert_eq!(status.last_applied, Some(revision(1)));
        status.still_rejected(interval, Duration::ZERO, t0 + interval);
        assert_eq!(status.last_error.as_deref(), Some("does not compile"));
        assert_eq!(status.next_attempt, t0 + interval * 2);

        // Recovery clears the error and the failure count.
        status.succeeded(revision(4), interval, Duration::ZERO, t0);
        assert_eq!(status.last_applied, Some(revision(4)));
        assert_eq!(status.last_error, None);
        assert_eq!(status.consecutive_failures, 0);
        status.failed(None, "cannot fetch".into(), RETRY, Duration::ZERO, t0);
        assert_eq!(status.next_attempt, t0 + Duration::from_secs(1), "backoff starts over");
    }
}
