//! The open-loop publishing timetable.
//!
//! Message k is due at `start + k / rate`, whatever happened to message k-1: the publisher
//! never waits for the system under test (that would be closed-loop, and hide its stalls), and
//! each message carries its *intended* send time, so latency includes any time it spent
//! waiting to be sent (coordinated-omission correction, as wrk2 does). If the publisher itself
//! falls behind its timetable by more than the tolerance, the run is marked invalid: the
//! numbers would describe the load generator, not the server.

use std::time::Duration;

/// A fixed-rate schedule. Times are nanoseconds from the run's start.
#[derive(Debug, Clone)]
pub struct Timetable {
    period_ns: f64,
    total: u64,
    next: u64,
    /// Largest delay between a message's intended and actual send time seen so far.
    pub max_lag: Duration,
}

impl Timetable {
    /// `rate` messages per second for `duration`.
    pub fn new(rate: f64, duration: Duration) -> Self {
        let total = (rate * duration.as_secs_f64()).round() as u64;
        Self { period_ns: 1e9 / rate.max(1e-9), total, next: 0, max_lag: Duration::ZERO }
    }

    /// Messages in the whole run.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Intended send time of message `k`.
    pub fn due_ns(&self, k: u64) -> u64 {
        (k as f64 * self.period_ns) as u64
    }

    /// The messages due at `now_ns` not yet taken: `(index, intended_ns)` pairs, and records the
    /// lag of the oldest one.
    pub fn take_due(&mut self, now_ns: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self.next;
        while self.next < self.total && self.due_ns(self.next) <= now_ns {
            self.next += 1;
        }
        if first < self.next {
            let lag = Duration::from_nanos(now_ns.saturating_sub(self.due_ns(first)));
            self.max_lag = self.max_lag.max(lag);
        }
        (first..self.next).map(|k| (k, self.due_ns(k)))
    }

    /// When the next message is due, or `None` when the run is over.
    pub fn next_due_ns(&self) -> Option<u64> {
        (self.next < self.total).then(|| self.due_ns(self.next))
    }
}

/// Whether a sender that fell at most `max_lag` behind its timetable kept to it within
/// `tolerance`: the one rule that marks a run invalid (publisher and comment sender alike).
pub fn kept_up(max_lag: Duration, tolerance: Duration) -> bool {
    max_lag <= tolerance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_due_on_a_fixed_grid_and_lag_is_recorded() {
        let mut t = Timetable::new(1000.0, Duration::from_secs(1));
        assert_eq!(t.total(), 1000);
        assert_eq!(t.take_due(0).collect::<Vec<_>>(), [(0, 0)]);
        assert_eq!(t.take_due(2_500_000).map(|(k, _)| k).collect::<Vec<_>>(), [1, 2]);
        assert!(kept_up(t.max_lag, Duration::from_millis(2)), "1.5 ms late for message 1 is within 2 ms");
        assert_eq!(t.max_lag, Duration::from_micros(1500));
        // A stall: the publisher comes back 50 ms late; everything due is sent with its
        // intended time, and the run knows it lagged.
        let due: Vec<_> = t.take_due(53_000_000).collect();
        assert_eq!(due.first(), Some(&(3, 3_000_000)));
        assert_eq!(due.len(), 51);
        assert!(!kept_up(t.max_lag, Duration::from_millis(10)));
        assert_eq!(t.next_due_ns(), Some(54_000_000));
        let _ = t.take_due(u64::MAX).count();
        assert_eq!(t.next_due_ns(), None);
    }
}
