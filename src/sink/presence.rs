//! Presence debouncing: raw transitions from the homes in, one record per real change out.
//!
//! A phone that drops its connection and reconnects two seconds later must not tell the backend
//! "offline" and then "online". So an *up* (`online`, `occupied`) is written at once, while a
//! *down* (`offline`, `vacated`) waits for the grace period: an up of the same user in the same
//! room (or of the same room) whose `ts` is within the grace of the down's `ts` cancels both,
//! and nothing is written. A down that outlives its grace is written with its own `ts` (when the
//! user actually left). Heartbeats never reach this module, so one record per change is all it
//! can produce.
//!
//! Pure: no clock, no IO; `now` is a parameter, like the rest of the core. It keeps state only
//! for downs still in their grace period, never for every online user.

use crate::sink::record::{PresenceKind, PresenceRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Who a presence change is about: a room (`user == None`) or a user in a room.
type Key = (Arc<str>, Option<String>);

/// Holds downs during their grace period; see the module doc.
///
/// Call order: [`handle`](Self::handle) for each raw transition in the order the home produced
/// them (per room), [`poll`](Self::poll) whenever [`next_deadline`](Self::next_deadline) has
/// passed, [`flush`](Self::flush) at shutdown.
#[derive(Debug)]
pub struct PresenceDebouncer {
    grace_ms: u64,
    pending: HashMap<Key, Pending>,
    by_deadline: BTreeMap<(u64, u64), Key>,
    next_order: u64,
}

#[derive(Debug)]
struct Pending {
    record: PresenceRecord,
    deadline: (u64, u64),
}

fn is_down(kind: &PresenceKind) -> bool {
    matches!(kind, PresenceKind::Offline { .. } | PresenceKind::Vacated)
}

fn key_of(record: &PresenceRecord) -> Key {
    (Arc::clone(&record.room), record.kind.user().map(str::to_owned))
}

impl PresenceDebouncer {
    /// A debouncer with `grace_ms` of grace (0 writes every change as it comes).
    pub fn new(grace_ms: u64) -> Self {
        Self { grace_ms, pending: HashMap::new(), by_deadline: BTreeMap::new(), next_order: 0 }
    }

    /// Feed one raw transition; records to write now are pushed to `out`, in order.
    pub fn handle(&mut self, change: PresenceRecord, out: &mut Vec<PresenceRecord>) {
        let key = key_of(&change);
        if is_down(&change.kind) {
            if self.grace_ms == 0 {
                out.push(change);
            } else if !self.pending.contains_key(&key) {
                // A second down without an up in between is a repeat: the first one stands.
                let deadline = (change.ts_ms.saturating_add(self.grace_ms), self.next_order);
                self.next_order += 1;
                self.by_deadline.insert(deadline, key.clone());
                self.pending.insert(key, Pending { record: change, deadline });
            }
            return;
        }
        if let Some(pending) = self.pending.remove(&key) {
            self.by_deadline.remove(&pending.deadline);
            if change.ts_ms < pending.deadline.0 {
                // Back within the grace period: neither the down nor this up happened.
                return;
            }
            out.push(pending.record);
        }
        out.push(change);
    }

    /// Downs whose grace period ended at or before `now_ms` are pushed to `out`.
    pub fn poll(&mut self, now_ms: u64, out: &mut Vec<PresenceRecord>) {
        while let Some(entry) = self.by_deadline.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let key = entry.remove();
            if let Some(pending) = self.pending.remove(&key) {
                out.push(pending.record);
            }
        }
    }

    /// Every pending down, at once (the server is stopping: they are real departures).
    pub fn flush(&mut self, out: &mut Vec<PresenceRecord>) {
        self.poll(u64::MAX, out);
    }

    /// When the earliest pending down is due (ms), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.keys().next().map(|d| d.0)
    }

    /// Downs still in their grace period.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRACE: u64 = 3_000;

    fn online(room: &str, user: &str, ts_ms: u64) -> PresenceRecord {
        let kind = PresenceKind::Online { user: user.into(), name: user.into() };
        PresenceRecord { room: room.into(), kind, ts_ms }
    }

    fn offline(room: &str, user: &str, ts_ms: u64) -> PresenceRecord {
        let kind = PresenceKind::Offline { user: user.into(), name: user.into() };
        PresenceRecord { room: room.into(), kind, ts_ms }
    }

    #[test]
    fn a_reconnect_within_the_grace_produces_nothing() {
        let mut d = PresenceDebouncer::new(GRACE);
        let mut out = Vec::new();
        d.handle(online("r", "alice", 1_000), &mut out);
        assert_eq!(out, vec![online("r", "alice", 1_000)]);
        out.clear();
        d.handle(offline("r", "alice", 10_000), &mut out);
        d.poll(12_000, &mut out);
        d.handle(online("r", "alice", 12_999), &mut out);
        d.poll(100_000, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_real_departure_produces_exactly_one_offline() {
        let mut d = PresenceDebouncer::new(GRACE);
        let mut out = Vec::new();
        d.handle(online("r", "bob", 0), &mut out);
        d.handle(offline("r", "bob", 5_000), &mut out);
        d.poll(7_999, &mut out);
        assert_eq!(out.len(), 1, "nothing before the grace ends");
        assert_eq!(d.next_deadline(), Some(8_000));
        d.poll(8_000, &mut out);
        d.poll(9_000, &mut out);
        d.flush(&mut out);
        assert_eq!(out, vec![online("r", "bob", 0), offline("r", "bob", 5_000)]);
    }

    #[test]
    fn an_up_after_a_due_but_unpolled_down_writes_both_in_order() {
        let mut d = PresenceDebouncer::new(GRACE);
        let mut out = Vec::new();
        d.handle(offline("r", "c", 1_000), &mut out);
        d.handle(online("r", "c", 4_000), &mut out);
        assert_eq!(out, vec![offline("r", "c", 1_000), online("r", "c", 4_000)]);
    }

    #[test]
    fn rooms_debounce_like_users() {
        let mut d = PresenceDebouncer::new(GRACE);
        let mut out = Vec::new();
        let room = |kind, ts_ms| PresenceRecord { room: "r".into(), kind, ts_ms };
        d.handle(room(PresenceKind::Occupied, 0), &mut out);
        d.handle(room(PresenceKind::Vacated, 10), &mut out);
        d.handle(offline("r", "u", 10), &mut out);
        d.handle(room(PresenceKind::Occupied, 20), &mut out);
        d.flush(&mut out);
        assert_eq!(out, vec![room(PresenceKind::Occupied, 0), offline("r", "u", 10)]);
    }

    /// The naive model: from one key's whole timeline (alternating up, down, up, ... at
    /// increasing times) and the last poll time, the records that must come out.
    fn model(times: &[u64], end: u64) -> Vec<(bool, u64)> {
        let mut out = vec![(true, times[0])];
        let mut i = 1;
        while i < times.len() {
            let down = times[i];
            match times.get(i + 1) {
                Some(&up) if up < down + GRACE => {}
                Some(&up) => out.extend([(false, down), (true, up)]),
                None if end >= down + GRACE => out.push((false, down)),
                None => {}
            }
            i += 2;
        }
        out
    }

    proptest! {
        #[test]
        fn matches_the_naive_model(
            keys in proptest::collection::vec(proptest::collection::vec(0u64..2 * GRACE, 1..12), 1..5),
            poll_gaps in proptest::collection::vec(0u64..GRACE, 1..40),
            tail in 0u64..2 * GRACE,
        ) {
            // Per key: alternating up/down at strictly increasing times.
            let mut events = Vec::new();
            let mut timelines = Vec::new();
            for (k, gaps) in keys.iter().enumerate() {
                let mut t = 0;
                let mut times = Vec::new();
                for (i, gap) in gaps.iter().enumerate() {
                    t += gap + 1;
                    times.push(t);
                    let user = format!("u{k}");
                    events.push((t, k, if i % 2 == 0 { online("r", &user, t) } else { offline("r", &user, t) }));
                }
                timelines.push(times);
            }
            events.sort_by_key(|e| (e.0, e.1));
            // Polls at nondecreasing times, each no later than the next change (changes are
            // handled before the clock passes them).
            let mut d = PresenceDebouncer::new(GRACE);
            let mut out = Vec::new();
            let mut now = 0;
            let mut gaps = poll_gaps.iter().cycle();
            for (t, _, change) in events {
                while now + 1 < t {
                    now = (now + gaps.next().copied().unwrap_or(1) + 1).min(t - 1);
                    let before = out.len();
                    d.poll(now, &mut out);
                    for r in &out[before..] {
                        prop_assert!(r.ts_ms + GRACE <= now, "a down came out before its grace ended");
                    }
                }
                d.handle(change, &mut out);
            }
            let end = now + tail;
            d.poll(end, &mut out);
            for (k, times) in timelines.iter().enumerate() {
                let user = format!("u{k}");
                let got: Vec<(bool, u64)> = out
                    .iter()
                    .filter(|r| r.kind.user() == Some(user.as_str()))
                    .map(|r| (matches!(r.kind, PresenceKind::Online { .. }), r.ts_ms))
                    .collect();
                prop_assert_eq!(got, model(times, end));
            }
        }
    }
}
