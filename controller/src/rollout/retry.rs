//! Retrying a member's failure: a failure of a class the policy retries, on an attempt
//! below `retries.max`, re-publishes the member's instruction with the next attempt once
//! the backoff since the failure has passed. Until then the member is still in flight;
//! only an exhausted (or not retried) failure counts against the thresholds.

use crate::compile::Retries;
use crate::protocol::FailureClass;

/// What becomes of a failed member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not retried: the failure counts.
    No,
    /// Retried once the backoff has passed; in flight until then.
    Backoff,
    /// Re-publish now, with this attempt.
    Now(u32),
}

/// What becomes of a member that failed with `class` on `attempt`, at `failed_at_ms`.
pub fn retry(retries: &Retries, class: FailureClass, attempt: u32, failed_at_ms: i64, now_ms: i64) -> Retry {
    if !retries.covers(class) || attempt >= retries.max {
        return Retry::No;
    }
    if now_ms.saturating_sub(failed_at_ms) < retries.backoff.as_millis() as i64 {
        Retry::Backoff
    } else {
        Retry::Now(attempt + 1)
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    #[test]
    fn transient_failures_are_retried_after_the_backoff_until_the_retries_are_used_up() {
        let retries =
            Retries { max: 2, backoff: SignedDuration::from_secs(60), on: Retries::TRANSIENT.to_vec() };
        let download = FailureClass::Download;
        assert_eq!(retry(&retries, download, 0, 1_000, 30_000), Retry::Backoff);
        assert_eq!(retry(&retries, download, 0, 1_000, 61_000), Retry::Now(1));
        assert_eq!(retry(&retries, download, 1, 1_000, 61_000), Retry::Now(2));
        assert_eq!(retry(&retries, download, 2, 1_000, 61_000), Retry::No, "retries used up");
        assert_eq!(retry(&retries, FailureClass::Install, 0, 1_000, 61_000), Retry::No, "not transient");
        assert_eq!(
            retry(&Retries::default(), download, 0, 1_000, 61_000),
            Retry::No,
            "no retries by default"
        );
        let install = Retries { on: vec![FailureClass::Install], ..retries };
        assert_eq!(retry(&install, FailureClass::Install, 0, 1_000, 61_000), Retry::Now(1));
    }
}
