//! Exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `base` up to `cap`, each drawn at random from the upper half
/// of its range so that agents failing together do not retry together.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, attempt: 0 }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        random_fraction(ceiling, 0.5, 1.0)
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `d` times a random factor in `[low, high)`.
pub(crate) fn random_fraction(d: Duration, low: f64, high: f64) -> Duration {
    let factor = if high > low { rand::thread_rng().gen_range(low..high) } else { low };
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(500) && delays[0] <= Duration::from_secs(1));
        assert!(delays[3] >= Duration::from_secs(4) && delays[3] <= Duration::from_secs(8));
        assert!(delays[7] >= Duration::from_secs(5) && delays[7] <= Duration::from_secs(10));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
