//! Sink metrics as plain numbers, read on request (by the admin thread, `/metrics`, tests).
//!
//! Each sink thread updates its own counters once per batch under a mutex nobody holds for
//! longer than a copy, so the homes' path never touches it. Lag is "records handed to the sink
//! that it does not hold yet" (queued, gathering, or spooled) and the age of the oldest of them;
//! the age is approximate (it is refreshed per batch). Must never be on a per-record path.

use std::sync::{Mutex, PoisonError};

/// A snapshot of every sink and the spool (also `GET /api/sinks`'s body).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkMetrics {
    /// One entry per configured sink, in configuration order (file, redis, webhook).
    pub sinks: Vec<SinkStats>,
    /// Undelivered bytes in all spools.
    pub spool_bytes: u64,
    /// Undelivered records in all spools.
    pub spool_records: u64,
    /// `sink.spool.max_bytes`.
    pub spool_max_bytes: u64,
    /// Records waiting between the homes and the runner.
    pub queued_records: usize,
    /// Whether new comments are taken (false: spool full or stopped).
    pub accepting: bool,
}

/// One sink's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    /// `file`, `redis` or `webhook`.
    pub name: &'static str,
    /// Whether acks wait for it.
    pub durable: bool,
    /// False from a failed write (or start check) until a write succeeds again.
    pub healthy: bool,
    /// Records the sink acknowledged (directly or replayed from the spool).
    pub records_written: u64,
    /// Successful writes (fsyncs, pipelines, requests).
    pub batches: u64,
    /// Failed attempts that will be retried.
    pub retries: u64,
    /// Records ever put in its spool.
    pub spooled_records: u64,
    /// Records it refused for good, kept in the spool's `rejected.jsonl`.
    pub rejected_records: u64,
    /// Records lost at shutdown because neither the sink nor a full spool took them (they
    /// were never reported durable).
    pub abandoned_records: u64,
    /// The latest error, if any.
    pub last_error: Option<String>,
    /// Records handed to it that it does not hold yet.
    pub lag_records: u64,
    /// Age of the oldest of those (ms).
    pub lag_ms: u64,
    /// Undelivered records in its spool.
    pub spool_records: u64,
    /// Undelivered bytes in its spool.
    pub spool_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    stats: SinkStats,
    handed: u64,
    done: u64,
    oldest_ts: Option<u64>,
}

/// One sink's live counters, shared by its thread (writer) and readers.
#[derive(Debug)]
pub(crate) struct LaneStats {
    counters: Mutex<Counters>,
}

impl LaneStats {
    pub(crate) fn new(name: &'static str, durable: bool, healthy: bool) -> Self {
        let stats = SinkStats { name, durable, healthy, ..SinkStats::default() };
        Self { counters: Mutex::new(Counters { stats, ..Counters::default() }) }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SinkStats)) {
        f(&mut self.counters.lock().unwrap_or_else(PoisonError::into_inner).stats);
    }

    /// The dispatcher handed `records` (the first of them from `ts_ms`).
    pub(crate) fn handed(&self, records: u64, ts_ms: u64) {
        let mut c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        c.handed += records;
        if records > 0 && c.oldest_ts.is_none() {
            c.oldest_ts = Some(ts_ms);
        }
    }

    /// The sink now holds (or gave up on) `records` more; `oldest_ts` is the oldest record
    /// it still lacks, if it knows one.
    pub(crate) fn done(&self, records: u64, oldest_ts: Option<u64>) {
        let mut c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        c.done += records;
        c.oldest_ts = if c.done >= c.handed { None } else { oldest_ts.or(c.oldest_ts) };
    }

    pub(crate) fn snapshot(&self, now_ms: u64) -> SinkStats {
        let c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stats = c.stats.clone();
        stats.lag_records = c.handed.saturating_sub(c.done);
        stats.lag_ms = match c.oldest_ts {
            Some(ts) if stats.lag_records > 0 => now_ms.saturating_sub(ts),
            _ => 0,
        };
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_what_was_handed_and_not_yet_held() {
        let s = LaneStats::new("file", true, true);
        s.handed(10, 1_000);
        assert_eq!((s.snapshot(1_500).lag_records, s.snapshot(1_500).lag_ms), (10, 500));
        s.done(4, Some(1_200));
        assert_eq!((s.snapshot(1_500).lag_records, s.snapshot(1_500).lag_ms), (6, 300));
        s.done(6, None);
        assert_eq!((s.snapshot(1_500).lag_records, s.snapshot(1_500).lag_ms), (0, 0));
        s.update(|st| st.retries += 1);
        assert_eq!(s.snapshot(0).retries, 1);
    }
}
