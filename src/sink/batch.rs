//! When a sink thread commits what has gathered: group commit for the file sink's fsyncs,
//! transactions for Redis, request batching for the webhook, all one rule.
//!
//! A batch is committed when records wait and either `max_records` of them gathered or at
//! least `min_interval` passed since the previous commit started. So a record that comes after
//! a quiet spell is committed at once (no added latency), while under load commits happen at
//! most once per interval and carry everything that gathered meanwhile. Pure: `now` is a
//! parameter.

use std::time::{Duration, Instant};

/// See the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Records that are committed without waiting for the interval (also the size of spool
    /// appends and replays).
    pub max_records: usize,
    /// Most records in one write to the sink: a commit with more is written in slices (a
    /// webhook request, a Redis transaction); `usize::MAX` writes a commit whole (one fsync).
    pub max_write: usize,
    /// Shortest time between the starts of two commits.
    pub min_interval: Duration,
}

impl BatchPolicy {
    /// When the records waiting (`pending`, > 0) must be committed, given the last commit's
    /// start; `None` when nothing waits.
    pub fn due(&self, pending: usize, last_commit: Option<Instant>) -> Option<Option<Instant>> {
        if pending == 0 {
            return None;
        }
        if pending >= self.max_records {
            return Some(None);
        }
        Some(last_commit.map(|at| at + self.min_interval))
    }

    /// Whether the records waiting must be committed at `now`.
    pub fn is_due(&self, pending: usize, last_commit: Option<Instant>, now: Instant) -> bool {
        match self.due(pending, last_commit) {
            None => false,
            Some(None) => true,
            Some(Some(at)) => now >= at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_at_once_after_quiet_then_at_most_once_per_interval() {
        let p = BatchPolicy { max_records: 100, max_write: usize::MAX, min_interval: Duration::from_millis(5) };
        let t0 = Instant::now();
        assert!(!p.is_due(0, None, t0));
        assert!(p.is_due(1, None, t0), "the first record goes at once");
        assert!(p.is_due(1, Some(t0 - Duration::from_secs(1)), t0), "so does one after a quiet spell");
        assert!(!p.is_due(99, Some(t0), t0 + Duration::from_millis(4)));
        assert!(p.is_due(99, Some(t0), t0 + Duration::from_millis(5)));
        assert!(p.is_due(100, Some(t0), t0), "a full batch does not wait");
        assert_eq!(p.due(3, Some(t0)), Some(Some(t0 + Duration::from_millis(5))));
    }
}
