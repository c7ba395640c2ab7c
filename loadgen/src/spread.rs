//! How each published message reached its viewers: when its first and its last delivery
//! arrived, measured from its intended send time.
//!
//! The latency histogram says how late deliveries were, not why. A tail made by the fan-out
//! itself (a room's last member is written to ~1,900 writes after its first) looks like every
//! message's last delivery being late; a tail made by a stall (the server's core taken away for
//! 30 ms, the publisher late) looks like a run of consecutive messages whose *first* delivery
//! is late too. The spread tells them apart: the summary in the report, and every message in
//! `--timeline`'s CSV.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// A message whose first delivery came this late or later started its fan-out late.
pub const LATE_START_MS: f64 = 10.0;

/// Messages one thread keeps a spread for (~48 bytes each, so ~24 MB at most): a soak run at
/// 1,000 messages/s is covered for its first ~8 minutes, and the summary's `messages` then
/// says how many were.
pub const MAX_MESSAGES: usize = 500_000;

/// One message's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    /// Deliveries counted (one per viewer that received it).
    pub deliveries: u64,
    /// The earliest delivery's latency, us.
    pub first_us: u64,
    /// The latest delivery's latency, us.
    pub last_us: u64,
}

impl Spread {
    /// One delivery `us` after the message's intended send time.
    pub fn one(us: u64) -> Self {
        Self { deliveries: 1, first_us: us, last_us: us }
    }

    /// Both together.
    pub fn merge(&mut self, o: &Self) {
        self.deliveries += o.deliveries;
        self.first_us = self.first_us.min(o.first_us);
        self.last_us = self.last_us.max(o.last_us);
    }
}

/// Count one delivery of the message stamped `stamp_ns` in `into` (a message not yet seen is
/// left out once `into` holds [`MAX_MESSAGES`]).
pub fn record(into: &mut HashMap<u64, Spread>, stamp_ns: u64, us: u64) {
    if let Some(s) = into.get_mut(&stamp_ns) {
        s.merge(&Spread::one(us));
    } else if into.len() < MAX_MESSAGES {
        into.insert(stamp_ns, Spread::one(us));
    }
}

/// Add `from` (a thread's or a process's) to `into`.
pub fn merge_into<'a>(into: &mut BTreeMap<u64, Spread>, from: impl IntoIterator<Item = (&'a u64, &'a Spread)>) {
    for (stamp, s) in from {
        into.entry(*stamp).and_modify(|t| t.merge(s)).or_insert(*s);
    }
}

/// The report's summary over every message.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpreadSummary {
    /// Messages delivered at least once (and kept: see [`MAX_MESSAGES`]).
    pub messages: u64,
    /// Median over messages of the first delivery's latency, ms.
    pub first_p50_ms: f64,
    /// Median over messages of the last delivery's latency, ms: the fan-out's own length.
    pub last_p50_ms: f64,
    /// The latest last delivery, ms.
    pub last_max_ms: f64,
    /// When that message was due, seconds after the first message.
    pub last_max_at_s: f64,
    /// Messages whose first delivery came [`LATE_START_MS`] or later.
    pub late_starts: u64,
}

/// Summarise `spread` (messages by stamp, ns).
pub fn summary(spread: &BTreeMap<u64, Spread>) -> Option<SpreadSummary> {
    let t0 = *spread.keys().next()?;
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2] as f64 / 1000.0
    };
    let (worst_stamp, worst) = spread.iter().max_by_key(|(_, s)| s.last_us)?;
    Some(SpreadSummary {
        messages: spread.len() as u64,
        first_p50_ms: median(spread.values().map(|s| s.first_us).collect()),
        last_p50_ms: median(spread.values().map(|s| s.last_us).collect()),
        last_max_ms: worst.last_us as f64 / 1000.0,
        last_max_at_s: (worst_stamp - t0) as f64 / 1e9,
        late_starts: spread.values().filter(|s| s.first_us as f64 / 1000.0 >= LATE_START_MS).count() as u64,
    })
}

/// `--timeline`: one CSV line per message, in send order.
pub fn csv(spread: &BTreeMap<u64, Spread>) -> String {
    let mut out = String::from("due_s,deliveries,first_ms,last_ms\n");
    let Some(&t0) = spread.keys().next() else { return out };
    for (stamp, s) in spread {
        let _ = writeln!(
            out,
            "{:.4},{},{:.3},{:.3}",
            (stamp - t0) as f64 / 1e9,
            s.deliveries,
            s.first_us as f64 / 1000.0,
            s.last_us as f64 / 1000.0
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_keeps_its_first_and_last_delivery_over_threads() {
        let mut a = HashMap::new();
        record(&mut a, 1_000_000_000, 400);
        record(&mut a, 1_000_000_000, 15_000);
        let mut b = HashMap::new();
        record(&mut b, 1_000_000_000, 300);
        record(&mut b, 1_020_000_000, 37_000);
        let mut all = BTreeMap::new();
        merge_into(&mut all, &a);
        merge_into(&mut all, &b);
        assert_eq!(all[&1_000_000_000], Spread { deliveries: 3, first_us: 300, last_us: 15_000 });
        let s = summary(&all).expect("two messages");
        assert_eq!(s.messages, 2);
        assert_eq!(s.late_starts, 1, "the second message's only delivery came 37 ms late");
        assert_eq!(s.last_max_ms, 37.0);
        assert!((s.last_max_at_s - 0.02).abs() < 1e-9);
        assert_eq!(csv(&all), "due_s,deliveries,first_ms,last_ms\n0.0000,3,0.300,15.000\n0.0200,1,37.000,37.000\n");
    }

    #[test]
    fn no_deliveries_no_summary() {
        assert_eq!(summary(&BTreeMap::new()), None);
        assert_eq!(csv(&BTreeMap::new()), "due_s,deliveries,first_ms,last_ms\n");
    }
}
