//! Exponential backoff with jitter for a failing sink.
//!
//! Delay `n` (from 0) is `min(max, initial * 2^n)`, of which a random half is taken off
//! ("equal jitter"): many roomcast nodes that lost the same Redis at the same moment do not come
//! back in lockstep, and no delay is ever shorter than half the nominal one. Pure: the caller
//! supplies the random number; this module never sleeps or reads a clock.

use std::time::Duration;

/// The backoff state of one sink.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), failures: 0 }
    }

    /// The nominal delay after the current run of failures (before jitter).
    pub fn nominal(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Count a failure and return the delay before the next attempt; `unit` is a random
    /// number in `[0, 1)`.
    pub fn fail(&mut self, unit: f64) -> Duration {
        let nominal = self.nominal();
        self.failures = self.failures.saturating_add(1);
        let half = nominal / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// A success: the next failure starts again at `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1_000));
        let lows: Vec<u128> = (0..6).map(|_| b.fail(0.0).as_millis()).collect();
        assert_eq!(lows, [50, 100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.fail(0.999_999).as_millis(), 99);
        assert_eq!(b.failures(), 1);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(3600));
        for _ in 0..100 {
            assert!(b.fail(0.5) <= Duration::from_secs(3600));
        }
    }
}
