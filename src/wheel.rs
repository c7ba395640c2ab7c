//! A hashed timer wheel for per-connection deadlines: handshake timeout, heartbeat expiry,
//! close timeout. One entry per connection (its slab key), re-armed to its earliest deadline.
//!
//! Why hand-written: the crates on offer (`tokio`'s wheel is internal; `hierarchical_hash_wheel_timer`,
//! `timer-wheel`-style crates) store boxed callbacks or their own ids and allocate per timer;
//! roomcast needs "one slot per slab key, O(1) re-arm and cancel, no allocation per arm, time
//! passed in as a number" so the sans-IO core stays testable with a fake clock. The entries
//! live in a `Vec` indexed by key and are linked into slot lists by index (no `unsafe`, no
//! pointers), so arm, re-arm and cancel are O(1) and an armed key costs 24 bytes.
//!
//! Time is `u64` milliseconds, never read from a clock here. A deadline fires exactly once, at
//! the first [`TimerWheel::poll`] whose `now_ms` is at or past it *and* at or past its tick
//! boundary (deadlines round up to the tick): never early, at most one tick late. A poll costs
//! the slots it advances over plus the entries it finds in them; deadlines further out than
//! one rotation (`SLOTS` ticks) stay in their slot and are skipped until due.

/// Slots in the wheel: with 100 ms ticks one rotation is about 7 minutes.
const SLOTS: usize = 4096;
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    deadline_ms: u64,
    prev: u32,
    next: u32,
    /// Slot index + 1, or 0 when not armed.
    slot: u32,
}

const UNARMED: Entry = Entry { deadline_ms: 0, prev: NIL, next: NIL, slot: 0 };

/// See the module doc.
#[derive(Debug)]
pub struct TimerWheel {
    tick_ms: u64,
    /// The tick whose slot the next poll starts from.
    current: u64,
    heads: Vec<u32>,
    occupied: Vec<u64>,
    entries: Vec<Entry>,
    len: usize,
}

impl TimerWheel {
    /// A wheel of `tick_ms` resolution starting at `now_ms`.
    pub fn new(tick_ms: u64, now_ms: u64) -> Self {
        let tick_ms = tick_ms.max(1);
        Self {
            tick_ms,
            current: now_ms / tick_ms,
            heads: vec![NIL; SLOTS],
            occupied: vec![0; SLOTS / 64],
            entries: Vec::new(),
            len: 0,
        }
    }

    /// Arm `key` to fire at `deadline_ms`, replacing any deadline it had. O(1).
    pub fn arm(&mut self, key: usize, deadline_ms: u64) {
        self.cancel(key);
        if key >= self.entries.len() {
            self.entries.resize(key + 1, UNARMED);
        }
        let tick = deadline_ms.div_ceil(self.tick_ms).max(self.current);
        let slot = (tick % SLOTS as u64) as usize;
        let head = self.heads[slot];
        self.entries[key] = Entry { deadline_ms, prev: NIL, next: head, slot: slot as u32 + 1 };
        if head != NIL {
            self.entries[head as usize].prev = key as u32;
        }
        self.heads[slot] = key as u32;
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Disarm `key` if armed. O(1); fine for a key never armed.
    pub fn cancel(&mut self, key: usize) {
        let Some(entry) = self.entries.get(key).copied() else { return };
        if entry.slot == 0 {
            return;
        }
        let slot = entry.slot as usize - 1;
        if entry.prev == NIL {
            self.heads[slot] = entry.next;
        } else {
            self.entries[entry.prev as usize].next = entry.next;
        }
        if entry.next != NIL {
            self.entries[entry.next as usize].prev = entry.prev;
        }
        if self.heads[slot] == NIL {
            self.occupied[slot / 64] &= !(1 << (slot % 64));
        }
        self.entries[key] = UNARMED;
        self.len -= 1;
    }

    /// Append every key whose deadline is due at `now_ms` to `fired`, disarming it.
    pub fn poll(&mut self, now_ms: u64, fired: &mut Vec<usize>) {
        let target = now_ms / self.tick_ms;
        if target < self.current {
            return;
        }
        let span = (target - self.current + 1).min(SLOTS as u64);
        for t in self.current..self.current + span {
            let slot = (t % SLOTS as u64) as usize;
            let mut key = self.heads[slot];
            while key != NIL {
                let entry = self.entries[key as usize];
                if entry.deadline_ms <= now_ms {
                    self.cancel(key as usize);
                    fired.push(key as usize);
                }
                key = entry.next;
            }
        }
        self.current = target;
    }

    /// A lower bound of the earliest deadline (the time of the next occupied slot), for the
    /// event loop's sleep; `None` when nothing is armed.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let start = (self.current % SLOTS as u64) as usize;
        let words = SLOTS / 64;
        let (first_word, first_bit) = (start / 64, start % 64);
        // Walk the occupancy bitmap a word (64 slots) at a time from the current slot.
        let distance = (0..=words).find_map(|i| {
            let w = (first_word + i) % words;
            let mut bits = self.occupied[w];
            if i == 0 {
                bits &= !0u64 << first_bit;
            } else if i == words {
                bits &= (1u64 << first_bit) - 1;
            }
            (bits != 0).then(|| (w * 64 + bits.trailing_zeros() as usize + SLOTS - start) % SLOTS)
        })?;
        // The current slot is already being polled: wake at the next tick, never in a loop.
        Some((self.current + (distance as u64).max(1)) * self.tick_ms)
    }

    /// Armed keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn fires_once_never_early_and_rearm_replaces() {
        let mut w = TimerWheel::new(10, 1_000);
        let mut fired = Vec::new();
        w.arm(1, 1_055);
        w.arm(2, 1_030);
        w.arm(2, 1_100);
        w.cancel(7);
        assert_eq!(w.len(), 2);
        w.poll(1_054, &mut fired);
        assert!(fired.is_empty());
        assert!(w.next_deadline().is_some_and(|d| d <= 1_060));
        w.poll(1_060, &mut fired);
        assert_eq!(fired, [1]);
        w.poll(1_099, &mut fired);
        assert_eq!(fired, [1]);
        w.poll(5_000, &mut fired);
        assert_eq!(fired, [1, 2]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn deadlines_beyond_one_rotation_wait_for_their_time() {
        let mut w = TimerWheel::new(1, 0);
        let far = SLOTS as u64 * 3 + 5;
        w.arm(0, far);
        let mut fired = Vec::new();
        for now in (0..far).step_by(97) {
            w.poll(now, &mut fired);
        }
        assert!(fired.is_empty());
        w.poll(far, &mut fired);
        assert_eq!(fired, [0]);
    }

    #[test]
    fn a_past_deadline_fires_at_the_next_poll() {
        let mut w = TimerWheel::new(100, 10_000);
        let mut fired = Vec::new();
        w.poll(10_050, &mut fired);
        w.arm(3, 9_000);
        w.poll(10_050, &mut fired);
        assert_eq!(fired, [3]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Arm(usize, u64),
        Cancel(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..40, 0u64..3_000).prop_map(|(k, d)| Op::Arm(k, d)),
            (0usize..40).prop_map(Op::Cancel),
            prop_oneof![0u64..50, 0u64..2_000, 0u64..200_000].prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a BTreeMap model: every deadline fires exactly once, never before it is due,
        /// and no later than the first poll at or past its deadline rounded up to the tick.
        #[test]
        fn matches_a_naive_model(tick in 1u64..200, ops in proptest::collection::vec(op(), 1..200)) {
            let mut now = 50_000u64;
            let mut w = TimerWheel::new(tick, now);
            let mut model: BTreeMap<usize, u64> = BTreeMap::new();
            let mut fired = Vec::new();
            for op in ops {
                match op {
                    Op::Arm(k, d) => {
                        let deadline = now + d - d.min(100);
                        w.arm(k, deadline);
                        model.insert(k, deadline);
                    }
                    Op::Cancel(k) => {
                        w.cancel(k);
                        model.remove(&k);
                    }
                    Op::Advance(dt) => {
                        if let Some(next) = w.next_deadline() {
                            let earliest = model.values().min().copied().unwrap_or(u64::MAX);
                            prop_assert!(next <= earliest.div_ceil(tick) * tick + tick, "sleep bound {} past earliest {}", next, earliest);
                        }
                        now += dt;
                        fired.clear();
                        w.poll(now, &mut fired);
                        for k in &fired {
                            let deadline = model.remove(k);
                            prop_assert!(deadline.is_some(), "key {} fired twice or unarmed", k);
                            prop_assert!(deadline.unwrap_or(0) <= now, "fired early");
                        }
                        for (k, d) in &model {
                            prop_assert!(d.div_ceil(tick) * tick > now, "key {} due at {} missed at {}", k, d, now);
                        }
                    }
                }
                prop_assert_eq!(w.len(), model.len());
            }
        }
    }
}
