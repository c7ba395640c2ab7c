//! The batching window: when a home room's frames leave for its members.
//!
//! A room's frames collect in its batch as they are sequenced. At the end of a loop turn a
//! room's batch goes out as one buffer of consecutive frames (one write per member), unless
//! the room already sent a batch less than `window_ms` ago: then it is held until the window
//! ends (DESIGN.md, "hot live room"), so a busy room costs each member one write per window,
//! while a quiet room's message is never delayed. A batch also goes out at once, whatever the
//! window, when it reaches [`MAX_BATCH_BYTES`] (it is one buffer in every member's queue and
//! must stay small next to the outbound budget) and when the shard takes it because a member
//! joins (a newcomer must start after everything sequenced before its `joined`) or the room
//! closes.
//!
//! Unsequenced frames (a room's `presence` and `reactions`) *ride* the batch: they wait in the
//! room's slot until its next batch leaves and go out in the same buffer, so an active room
//! pays no extra write per member for them. Each rider has a deadline (the shard gives an
//! active room's riders up to one presence interval, a quiet room's none): a room whose next
//! batch does not come by then sends its riders alone at the end of that turn. Riders are not
//! counted against the window (a rider alone never waits for it) and never reorder the
//! room's sequenced frames.
//!
//! All state of the window is here, keyed by the room's key in the shard's home slab: each
//! room's frames and last send time, the rooms with fresh frames this turn, and the rooms held
//! by their window with the earliest time one of them is due, so a turn never walks every busy
//! room. Time is a parameter; nothing here reads a clock or knows what a member is.

use bytes::{Bytes, BytesMut};

/// Largest batch of consecutive frames sent as one buffer.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// A room's batch leaving now: consecutive frames in one buffer.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// The frames: the sequenced ones in order, then the riders.
    pub(crate) frames: Bytes,
    /// When its first sequenced frame was pushed (ms); `None` for riders alone.
    pub(crate) first_ms: Option<u64>,
    /// How many messages (frames, riders included) it holds.
    pub(crate) messages: u32,
}

/// One room's batch.
#[derive(Debug, Default)]
struct Slot {
    frames: Vec<Bytes>,
    bytes: usize,
    /// When the first frame of the current batch was pushed.
    first_ms: u64,
    /// When the room last sent a batch (`None`: never), for the window.
    last_sent_ms: Option<u64>,
    /// On `fresh` or `held`.
    listed: bool,
    /// Unsequenced frames waiting for the next batch, oldest first.
    riders: Vec<Bytes>,
    /// When the riders must leave, alone if need be (`u64::MAX`: none wait).
    riders_due_ms: u64,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Batcher {
    window_ms: u64,
    slots: Vec<Slot>,
    /// Rooms whose batch got its first frame since it was last listed.
    fresh: Vec<usize>,
    /// Rooms whose batch the window holds.
    held: Vec<usize>,
    /// A spare list, so a turn allocates nothing while it sorts the two above.
    spare: Vec<usize>,
    /// When the earliest room in `held` is due (`u64::MAX`: none).
    held_due_ms: u64,
    /// Rooms with riders (each once).
    riding: Vec<usize>,
    /// The earliest deadline of a room in `riding` (`u64::MAX`: none).
    riders_due_ms: u64,
}

impl Batcher {
    /// A batcher with a window of `window_ms` (0: every batch goes at the end of its turn).
    pub(crate) fn new(window_ms: u64) -> Self {
        Self {
            window_ms,
            slots: Vec::new(),
            fresh: Vec::new(),
            held: Vec::new(),
            spare: Vec::new(),
            held_due_ms: u64::MAX,
            riding: Vec::new(),
            riders_due_ms: u64::MAX,
        }
    }

    fn slot(&mut self, room: usize) -> &mut Slot {
        if room >= self.slots.len() {
            self.slots.resize_with(room + 1, || Slot { riders_due_ms: u64::MAX, ..Slot::default() });
        }
        &mut self.slots[room]
    }

    /// Let an unsequenced frame ride `room`'s next batch, leaving alone at the end of the
    /// first turn at or after `due_ms` if no batch has taken it by then (an earlier rider's
    /// deadline stands).
    pub(crate) fn ride(&mut self, room: usize, frame: Bytes, due_ms: u64) {
        let slot = self.slot(room);
        if slot.riders.is_empty() {
            self.riding.push(room);
        }
        let slot = self.slot(room);
        slot.riders.push(frame);
        slot.riders_due_ms = slot.riders_due_ms.min(due_ms);
        self.riders_due_ms = self.riders_due_ms.min(due_ms);
    }

    /// Add a sequenced frame to `room`'s batch. Returns the batch when it is full: the caller
    /// sends it now.
    #[must_use]
    pub(crate) fn push(&mut self, room: usize, frame: Bytes, now_ms: u64) -> Option<Batch> {
        let slot = self.slot(room);
        if slot.frames.is_empty() {
            slot.first_ms = now_ms;
        }
        slot.bytes += frame.len();
        slot.frames.push(frame);
        let full = slot.bytes >= MAX_BATCH_BYTES;
        if !std::mem::replace(&mut slot.listed, true) {
            self.fresh.push(room);
        }
        if full {
            return self.take(room, now_ms);
        }
        None
    }

    /// Take `room`'s batch now, whatever the window; `None` when nothing waits. Taking
    /// something starts the room's next window.
    #[must_use]
    pub(crate) fn take(&mut self, room: usize, now_ms: u64) -> Option<Batch> {
        let slot = self.slots.get_mut(room)?;
        let sequenced = slot.frames.len();
        let messages = (sequenced + slot.riders.len()) as u32;
        let first_ms = (sequenced > 0).then_some(slot.first_ms);
        slot.bytes = 0;
        slot.riders_due_ms = u64::MAX;
        let frames = join(&mut slot.frames, &mut slot.riders)?;
        if sequenced > 0 {
            slot.last_sent_ms = Some(now_ms);
        }
        Some(Batch { frames, first_ms, messages })
    }

    /// `room`'s batch now with `riders` added to it (a quiet room's presence at the tick):
    /// whatever waits in its slot, then the riders, in one buffer.
    #[must_use]
    pub(crate) fn take_with(
        &mut self,
        room: usize,
        riders: impl IntoIterator<Item = Bytes>,
        now_ms: u64,
    ) -> Option<Batch> {
        self.slot(room).riders.extend(riders);
        self.take(room, now_ms)
    }

    /// Whether frames (sequenced or riders) wait in `room`'s slot.
    pub(crate) fn has_batch(&self, room: usize) -> bool {
        self.slots.get(room).is_some_and(|s| !s.frames.is_empty() || !s.riders.is_empty())
    }

    /// Whether `room` sent a batch of sequenced frames within `ms` before `now_ms`, or has one
    /// waiting: an active room, whose next batch riders can expect soon.
    pub(crate) fn active_within(&self, room: usize, now_ms: u64, ms: u64) -> bool {
        self.slots
            .get(room)
            .is_some_and(|s| !s.frames.is_empty() || s.last_sent_ms.is_some_and(|at| at.saturating_add(ms) > now_ms))
    }

    /// The end of a turn at `now_ms`: every listed room whose window allows it gives its batch
    /// into `out` (room, batch); the rest are held until their window ends.
    /// Riders whose deadline has come leave too, alone if their room has no batch going.
    pub(crate) fn poll_due(&mut self, now_ms: u64, out: &mut Vec<(usize, Batch)>) {
        let fresh = std::mem::replace(&mut self.fresh, std::mem::take(&mut self.spare));
        self.send_or_hold(fresh, now_ms, out);
        if now_ms >= self.held_due_ms {
            self.held_due_ms = u64::MAX;
            let due = std::mem::replace(&mut self.held, std::mem::take(&mut self.spare));
            self.send_or_hold(due, now_ms, out);
        }
        self.send_due_riders(now_ms, out);
    }

    /// Send the riders whose deadline has come, alone (a room whose sequenced frames are
    /// held by the window keeps them held: riders may not make a batch early); forget the
    /// rooms whose riders already left with a batch.
    fn send_due_riders(&mut self, now_ms: u64, out: &mut Vec<(usize, Batch)>) {
        if self.riders_due_ms > now_ms {
            return;
        }
        let mut next_due = u64::MAX;
        let mut riding = std::mem::take(&mut self.riding);
        let mut kept = 0;
        for i in 0..riding.len() {
            let room = riding[i];
            let Some(slot) = self.slots.get_mut(room) else { continue };
            if slot.riders.is_empty() {
                continue;
            }
            if slot.riders_due_ms > now_ms {
                next_due = next_due.min(slot.riders_due_ms);
                riding[kept] = room;
                kept += 1;
                continue;
            }
            out.push((room, Self::take_riders(slot)));
        }
        riding.truncate(kept);
        self.riding = riding;
        self.riders_due_ms = next_due;
    }

    /// The slot's riders alone, as one batch (there is at least one).
    fn take_riders(slot: &mut Slot) -> Batch {
        slot.riders_due_ms = u64::MAX;
        let messages = slot.riders.len() as u32;
        let frames = join(&mut slot.riders, &mut Vec::new()).unwrap_or_default();
        Batch { frames, first_ms: None, messages }
    }

    /// Send each listed room's batch, or hold it while its window lasts. `rooms` is emptied
    /// and kept as the spare list.
    fn send_or_hold(&mut self, mut rooms: Vec<usize>, now_ms: u64, out: &mut Vec<(usize, Batch)>) {
        let window = self.window_ms;
        for room in rooms.drain(..) {
            let Some(slot) = self.slots.get_mut(room) else { continue };
            let due = slot.last_sent_ms.map_or(0, |at| at.saturating_add(window));
            if window > 0 && due > now_ms && !slot.frames.is_empty() {
                self.held_due_ms = self.held_due_ms.min(due);
                self.held.push(room);
                continue;
            }
            slot.listed = false;
            if let Some(batch) = self.take(room, now_ms) {
                out.push((room, batch));
            }
        }
        self.spare = rooms;
    }

    /// When [`Batcher::poll_due`] next has work to do because a held window ends or riders
    /// are due.
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        let due = self.held_due_ms.min(self.riders_due_ms);
        (due != u64::MAX).then_some(due)
    }

    /// Every waiting batch, now (shutdown: they go out before the close frames).
    pub(crate) fn take_all(&mut self, now_ms: u64, out: &mut Vec<(usize, Batch)>) {
        let mut listed = std::mem::take(&mut self.fresh);
        listed.append(&mut self.held);
        listed.append(&mut self.riding);
        self.held_due_ms = u64::MAX;
        self.riders_due_ms = u64::MAX;
        for room in listed {
            if let Some(slot) = self.slots.get_mut(room) {
                slot.listed = false;
            }
            if let Some(batch) = self.take(room, now_ms) {
                out.push((room, batch));
            }
        }
    }

    /// `room` was freed (its key may be reused by a new room): forget its slot and take it off
    /// the lists. Its batch must have been taken first.
    pub(crate) fn forget(&mut self, room: usize) {
        if let Some(slot) = self.slots.get_mut(room) {
            debug_assert!(slot.frames.is_empty(), "a freed room's batch was not sent");
            *slot = Slot { riders_due_ms: u64::MAX, ..Slot::default() };
            self.fresh.retain(|r| *r != room);
            self.held.retain(|r| *r != room);
            self.riding.retain(|r| *r != room);
        }
    }
}

/// The frames of `a` and then `b` as one buffer, both emptied: a lone frame as it is (no
/// copy), several copied together into one write's worth; `None` when both are empty.
fn join(a: &mut Vec<Bytes>, b: &mut Vec<Bytes>) -> Option<Bytes> {
    match (a.len(), b.len()) {
        (0, 0) => None,
        (1, 0) => a.pop(),
        (0, 1) => b.pop(),
        _ => {
            let mut buf = BytesMut::with_capacity(a.iter().chain(b.iter()).map(Bytes::len).sum());
            for frame in a.drain(..).chain(b.drain(..)) {
                buf.extend_from_slice(&frame);
            }
            Some(buf.freeze())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(n: u32) -> Bytes {
        Bytes::copy_from_slice(&n.to_be_bytes())
    }

    fn numbers(batch: &Batch) -> Vec<u32> {
        batch.frames.chunks(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    #[test]
    fn a_quiet_room_goes_at_the_end_of_the_turn_and_a_busy_one_waits_for_its_window() {
        let mut b = Batcher::new(10);
        let mut out = Vec::new();
        assert!(b.push(0, frame(1), 100).is_none());
        b.poll_due(100, &mut out);
        assert_eq!(out.iter().map(|(r, f)| (*r, numbers(f))).collect::<Vec<_>>(), [(0, vec![1])]);
        out.clear();
        assert!(b.push(0, frame(2), 103).is_none());
        assert!(b.push(0, frame(3), 104).is_none());
        b.poll_due(104, &mut out);
        assert!(out.is_empty(), "held by the window");
        assert_eq!(b.next_due_ms(), Some(110));
        b.poll_due(109, &mut out);
        assert!(out.is_empty());
        b.poll_due(110, &mut out);
        assert_eq!(out.iter().map(|(r, f)| (*r, numbers(f))).collect::<Vec<_>>(), [(0, vec![2, 3])]);
        assert_eq!(b.next_due_ms(), None);
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let mut b = Batcher::new(1_000);
        let big = Bytes::from(vec![0u8; MAX_BATCH_BYTES / 2]);
        assert!(b.push(3, big.clone(), 0).is_none());
        assert_eq!(b.push(3, big, 0).map(|f| f.frames.len()), Some(MAX_BATCH_BYTES));
        assert!(!b.has_batch(3));
    }

    #[test]
    fn a_forgotten_room_leaves_no_trace_for_the_next_room_on_its_key() {
        let mut b = Batcher::new(10);
        let mut out = Vec::new();
        assert!(b.push(1, frame(1), 0).is_none());
        b.poll_due(0, &mut out);
        assert!(b.push(1, frame(2), 1).is_none());
        b.poll_due(1, &mut out);
        let _ = b.take(1, 1);
        b.forget(1);
        out.clear();
        assert!(b.push(1, frame(9), 2).is_none());
        b.poll_due(2, &mut out);
        assert_eq!(out.len(), 1, "a new room has no window to wait for");
    }

    /// Riders are numbered from here, so a batch's numbers tell them from sequenced frames.
    const RIDER: u32 = 1 << 31;

    #[test]
    fn riders_go_with_the_next_batch_or_alone_at_their_deadline() {
        let mut b = Batcher::new(10);
        let mut out = Vec::new();
        b.ride(0, frame(RIDER), 1_000);
        b.poll_due(0, &mut out);
        assert!(out.is_empty(), "a rider waits for the room's next batch");
        assert!(b.has_batch(0), "and keeps the room from being freed");
        assert!(b.push(0, frame(1), 5).is_none());
        b.poll_due(5, &mut out);
        assert_eq!(out.iter().map(|(r, f)| (*r, numbers(f))).collect::<Vec<_>>(), [(0, vec![1, RIDER])]);
        assert_eq!(out[0].1.first_ms, Some(5));
        out.clear();
        b.ride(0, frame(RIDER + 1), 50);
        assert_eq!(b.next_due_ms(), Some(50));
        b.poll_due(49, &mut out);
        assert!(out.is_empty());
        b.poll_due(50, &mut out);
        assert_eq!(out.iter().map(|(r, f)| (*r, numbers(f))).collect::<Vec<_>>(), [(0, vec![RIDER + 1])]);
        assert_eq!(out[0].1.first_ms, None, "riders alone carry no sequencing time");
        out.clear();
        assert!(b.push(0, frame(2), 51).is_none());
        b.poll_due(51, &mut out);
        assert_eq!(out.len(), 1, "riders alone do not start a window");
        assert_eq!(b.next_due_ms(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push { room: usize },
        Ride { room: usize, wait: u64 },
        Take { room: usize },
        Turn,
        Advance { ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..3).prop_map(|room| Op::Push { room }),
            2 => ((0usize..3), (0u64..20)).prop_map(|(room, wait)| Op::Ride { room, wait }),
            1 => (0usize..3).prop_map(|room| Op::Take { room }),
            3 => Just(Op::Turn),
            2 => (1u64..8).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    proptest! {
        /// Against a model: every frame is sent exactly once, in order per room; a batch sent
        /// at the end of a turn is never early (its room's previous send of sequenced frames
        /// was at least a window before) and never late (at a turn where the window allows
        /// it, nothing stays behind); a taken batch holds everything pushed before it (what a
        /// join needs); riders leave once each, in order, never after the first turn at their
        /// deadline, and never make sequenced frames early; the worker is told when to wake.
        #[test]
        fn never_early_never_late_each_frame_once_in_order(window in 0u64..12, ops in proptest::collection::vec(op(), 1..200)) {
            let mut b = Batcher::new(window);
            let mut now = 0u64;
            let (mut next, mut next_rider) = (0u32, RIDER);
            let mut pushed: Vec<Vec<u32>> = vec![Vec::new(); 3];
            let mut sent: Vec<Vec<u32>> = vec![Vec::new(); 3];
            let mut ridden: Vec<Vec<(u32, u64)>> = vec![Vec::new(); 3];
            let mut riders_sent: Vec<Vec<u32>> = vec![Vec::new(); 3];
            let mut last_sent: Vec<Option<u64>> = vec![None; 3];
            let mut out = Vec::new();
            // Files a batch's frames; true when it held sequenced frames.
            let receive = |room: usize, batch: &Batch, sent: &mut Vec<Vec<u32>>, riders_sent: &mut Vec<Vec<u32>>| {
                let (riders, sequenced): (Vec<u32>, Vec<u32>) = numbers(batch).into_iter().partition(|n| *n >= RIDER);
                riders_sent[room].extend(riders);
                let any = !sequenced.is_empty();
                sent[room].extend(sequenced);
                any
            };
            for op in ops {
                match op {
                    Op::Push { room } => {
                        next += 1;
                        pushed[room].push(next);
                        if let Some(batch) = b.push(room, frame(next), now) {
                            receive(room, &batch, &mut sent, &mut riders_sent);
                            last_sent[room] = Some(now);
                        }
                    }
                    Op::Ride { room, wait } => {
                        next_rider += 1;
                        let due = ridden[room].iter().filter(|(n, _)| !riders_sent[room].contains(n)).map(|(_, d)| *d).min().unwrap_or(u64::MAX).min(now + wait);
                        ridden[room].push((next_rider, due));
                        b.ride(room, frame(next_rider), now + wait);
                    }
                    Op::Take { room } => {
                        if let Some(batch) = b.take(room, now) {
                            if receive(room, &batch, &mut sent, &mut riders_sent) {
                                last_sent[room] = Some(now);
                            }
                        }
                        prop_assert_eq!(&sent[room], &pushed[room], "a take holds everything pushed before it");
                    }
                    Op::Turn => {
                        out.clear();
                        b.poll_due(now, &mut out);
                        for (room, batch) in &out {
                            if receive(*room, batch, &mut sent, &mut riders_sent) {
                                if let Some(at) = last_sent[*room] {
                                    prop_assert!(window == 0 || now >= at + window, "early: room {} sent at {} and {}", room, at, now);
                                }
                                last_sent[*room] = Some(now);
                            }
                        }
                        for room in 0..3 {
                            let allowed = last_sent[room].is_none_or(|at| window == 0 || now >= at + window);
                            if allowed {
                                prop_assert_eq!(&sent[room], &pushed[room], "late: room {} at {}", room, now);
                            } else if sent[room] != pushed[room] {
                                let due = b.next_due_ms();
                                prop_assert!(due.is_some_and(|d| d <= last_sent[room].unwrap_or(0) + window), "no wake-up for room {}", room);
                            }
                            for (n, due) in &ridden[room] {
                                let gone = riders_sent[room].contains(n);
                                prop_assert!(gone || *due > now, "rider {} of room {} late at {} (due {})", n, room, now, due);
                                if !gone {
                                    prop_assert!(b.next_due_ms().is_some_and(|d| d <= *due), "no wake-up for rider {}", n);
                                }
                            }
                        }
                    }
                    Op::Advance { ms } => now += ms,
                }
                for room in 0..3 {
                    prop_assert!(pushed[room].starts_with(&sent[room]), "order or duplicate in room {}", room);
                    let all: Vec<u32> = ridden[room].iter().map(|(n, _)| *n).collect();
                    prop_assert!(all.starts_with(&riders_sent[room]), "rider order or duplicate in room {}", room);
                }
            }
        }
    }
}
