//! The open-loop publishing timetable.
//!
//! Message k is due at `start + k / rate`, whatever happened to message k-1: the publisher
//! never waits for the system under test (that would be closed-loop, and hide its stalls), and
//! each message carries its *intended* send time, so latency includes any time it spent
//! waiting to be sent (coordinated-omission correction, as wrk2 does). A sender that falls
//! behind its own timetable adds its delay to every latency measured, so [`Lateness`] counts the
//! messages sent a tolerance or more late, and a run where more than
//! [`LATE_SHARE_LIMIT`] of them were late is invalid: the numbers would describe the load
//! generator, not the server. The limit is a share, not the single worst message: on a shared
//! 2-core machine one scheduler stall of 15 ms happens in most runs and delays a handful of
//! messages (their latency is then in the tail above p99, which the note in the report says),
//! while a publisher that cannot keep its rate is late for most of them.

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

/// Share of late messages above which a run is invalid.
pub const LATE_SHARE_LIMIT: f64 = 0.01;

/// How late a sender was: the one rule that marks a run invalid for lag (publisher and comment
/// sender alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lateness {
    /// A message this far behind its timetable or more is late.
    pub tolerance: Duration,
    /// Messages sent.
    pub sent: u64,
    /// Messages sent `tolerance` or more late.
    pub late: u64,
    /// The largest delay seen.
    pub max: Duration,
}

impl Lateness {
    /// Nothing sent yet.
    pub fn new(tolerance: Duration) -> Self {
        Self { tolerance, sent: 0, late: 0, max: Duration::ZERO }
    }

    /// One message was sent `lag` behind its timetable.
    pub fn record(&mut self, lag: Duration) {
        self.sent += 1;
        if lag >= self.tolerance {
            self.late += 1;
        }
        self.max = self.max.max(lag);
    }

    /// Whether the sender kept to its timetable: at most [`LATE_SHARE_LIMIT`] of its messages
    /// late.
    pub fn kept_up(&self) -> bool {
        self.late as f64 <= self.sent as f64 * LATE_SHARE_LIMIT
    }

    /// Why `who` did not keep up, for the report; `None` when it did.
    pub fn failure(&self, who: &str) -> Option<String> {
        (!self.kept_up()).then(|| {
            format!(
                "{who} sent {} of {} ({:.1}%) {} ms or more behind its timetable (worst {:.1} ms), more than {}%: \
                 its own delay would count as the server's latency (lower --rate, or raise --lag-tolerance-ms)",
                self.late,
                self.sent,
                100.0 * self.late as f64 / self.sent.max(1) as f64,
                self.tolerance.as_millis(),
                self.max.as_secs_f64() * 1000.0,
                LATE_SHARE_LIMIT * 100.0
            )
        })
    }

    /// A note when some messages were late but not enough to invalidate the run.
    pub fn note(&self, who: &str) -> Option<String> {
        (self.kept_up() && self.late > 0).then(|| {
            format!(
                "{who} sent {} of {} messages {} ms or more late (worst {:.1} ms): latency above p{:.1} may include its delay",
                self.late,
                self.sent,
                self.tolerance.as_millis(),
                self.max.as_secs_f64() * 1000.0,
                100.0 * (1.0 - self.late as f64 / self.sent.max(1) as f64)
            )
        })
    }
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
        assert_eq!(t.max_lag, Duration::from_micros(1500));
        // A stall: the publisher comes back 50 ms late; everything due is sent with its
        // intended time, and the run knows it lagged.
        let due: Vec<_> = t.take_due(53_000_000).collect();
        assert_eq!(due.first(), Some(&(3, 3_000_000)));
        assert_eq!(due.len(), 51);
        assert_eq!(t.next_due_ns(), Some(54_000_000));
        let _ = t.take_due(u64::MAX).count();
        assert_eq!(t.next_due_ns(), None);
    }

    #[test]
    fn a_few_late_messages_are_a_note_and_many_make_the_run_invalid() {
        let mut l = Lateness::new(Duration::from_millis(10));
        for _ in 0..995 {
            l.record(Duration::from_micros(200));
        }
        for _ in 0..5 {
            l.record(Duration::from_millis(15));
        }
        assert!(l.kept_up(), "0.5% late is one stall, not a publisher that cannot keep up");
        assert!(l.failure("publisher").is_none());
        let note = l.note("publisher").expect("the late ones are noted");
        assert!(note.contains("5 of 1000") && note.contains("15.0 ms"), "{note}");
        for _ in 0..10 {
            l.record(Duration::from_millis(40));
        }
        assert!(!l.kept_up());
        let why = l.failure("publisher").expect("invalid");
        assert!(why.contains("15 of 1010") && why.contains("worst 40.0 ms"), "{why}");
        assert_eq!(Lateness::new(Duration::from_millis(10)).failure("x"), None, "nothing sent is not late");
    }
}
