//! Reconnect delays.

use std::time::Duration;

/// Exponential backoff with additive jitter: the delay before reconnect attempt `attempt`
/// (0 for the first retry) is `min(max, base · 2^attempt + jitter)`, where the caller draws
/// `jitter` uniformly from `[0, jitter_max)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
    pub(crate) jitter_max: Duration,
}

impl Backoff {
    /// The delay for `attempt` with a given jitter; pure, so the formula can be checked exactly.
    pub(crate) fn delay_with(&self, attempt: u32, jitter: Duration) -> Duration {
        // 2^attempt overflows quickly; saturating keeps a long outage at `max` instead of panicking.
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        let exp = self.base.saturating_mul(factor);
        exp.saturating_add(jitter).min(self.max)
    }

    /// The delay for `attempt`, with jitter drawn from the thread's RNG.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, self.draw_jitter())
    }

    fn draw_jitter(&self) -> Duration {
        use rand::Rng;
        let max_ms = u64::try_from(self.jitter_max.as_millis()).unwrap_or(u64::MAX);
        if max_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::rng().random_range(0..max_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter_max: Duration::from_secs(1),
        }
    }

    #[test]
    fn doubles_per_attempt_plus_jitter_and_caps_at_max() {
        let b = backoff();
        let j = Duration::from_millis(250);
        assert_eq!(b.delay_with(0, j), Duration::from_millis(1250));
        assert_eq!(b.delay_with(1, j), Duration::from_millis(2250));
        assert_eq!(b.delay_with(3, j), Duration::from_millis(8250));
        assert_eq!(b.delay_with(4, j), Duration::from_millis(16250));
        // 32 s + jitter is past the cap.
        assert_eq!(b.delay_with(5, j), Duration::from_secs(30));
        // The cap also holds when the jitter alone pushes past it.
        assert_eq!(
            b.delay_with(4, Duration::from_secs(14)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn huge_attempts_saturate_instead_of_overflowing() {
        let b = backoff();
        assert_eq!(b.delay_with(31, Duration::ZERO), Duration::from_secs(30));
        assert_eq!(
            b.delay_with(200, Duration::from_millis(999)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn drawn_delays_stay_within_the_jitter_range() {
        let b = backoff();
        for attempt in 0..8u32 {
            let low = Duration::from_secs(1 << attempt).min(b.max);
            let high = (Duration::from_secs(1 << attempt) + Duration::from_millis(999)).min(b.max);
            for _ in 0..200 {
                let d = b.delay(attempt);
                assert!(
                    d >= low && d <= high,
                    "attempt {attempt}: {d:?} not in {low:?}..={high:?}"
                );
            }
        }
    }

    #[test]
    fn zero_jitter_is_allowed() {
        let b = Backoff {
            jitter_max: Duration::ZERO,
            ..backoff()
        };
        assert_eq!(b.delay(2), Duration::from_secs(4));
    }
}
