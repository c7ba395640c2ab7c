//! A room's ring of recent sequenced messages, for lossless recovery on reconnect.
//!
//! The ring keeps the encoded frames themselves (the same [`Bytes`] the members received), so
//! a replay is a list of refcount bumps. It is bounded by count and by age, allocates nothing
//! until the first message, and gives a replay only when it still holds *every* message after
//! the client's position: a partial replay would be a silent gap.

use bytes::Bytes;
use std::collections::VecDeque;

/// See the module doc.
#[derive(Debug)]
pub struct History {
    entries: VecDeque<(u64, u64, Bytes)>,
    max_len: usize,
    max_age_ms: u64,
    bytes: usize,
}

impl History {
    /// An empty ring of at most `max_len` messages no older than `max_age_ms`.
    pub fn new(max_len: usize, max_age_ms: u64) -> Self {
        Self { entries: VecDeque::new(), max_len, max_age_ms, bytes: 0 }
    }

    /// Append the room's next message (seqs are consecutive), dropping the oldest beyond the
    /// length bound.
    pub fn push(&mut self, seq: u64, ts_ms: u64, frame: Bytes) {
        debug_assert!(self.entries.back().is_none_or(|(last, _, _)| *last + 1 == seq), "seqs must be consecutive");
        if self.max_len == 0 {
            return;
        }
        while self.entries.len() >= self.max_len {
            self.pop_front();
        }
        self.bytes += frame.len();
        self.entries.push_back((seq, ts_ms, frame));
    }

    /// [`History::push`] of a message that may not follow the last one held (a room that
    /// follows the cluster after a gap): the ring is emptied first when it would not, so it
    /// always holds consecutive seqs.
    pub fn push_after_gap(&mut self, seq: u64, ts_ms: u64, frame: Bytes) {
        if self.entries.back().is_some_and(|(last, _, _)| *last + 1 != seq) {
            self.entries.clear();
            self.bytes = 0;
        }
        self.push(seq, ts_ms, frame);
    }

    /// The most messages the ring holds.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The oldest message's greatest age.
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_ms
    }

    fn pop_front(&mut self) {
        if let Some((_, _, frame)) = self.entries.pop_front() {
            self.bytes -= frame.len();
        }
    }

    /// Drop messages older than `now_ms - max_age_ms`; release the memory when empty.
    pub fn prune(&mut self, now_ms: u64) {
        let oldest_kept = now_ms.saturating_sub(self.max_age_ms);
        while self.entries.front().is_some_and(|(_, ts, _)| *ts < oldest_kept) {
            self.pop_front();
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
    }

    /// The frames after `since` up to `last_seq`, in order, if and only if the ring holds every
    /// message from `since + 1` to `last_seq` (the room's latest, or the latest its members
    /// have been sent). `since >= last_seq` replays nothing.
    pub fn replay(&self, since: u64, last_seq: u64) -> Option<impl Iterator<Item = &Bytes> + '_> {
        let range = if since >= last_seq {
            self.entries.len()..self.entries.len()
        } else {
            let (first, _, _) = self.entries.front()?;
            let (last, _, _) = self.entries.back()?;
            if *first > since + 1 || *last < last_seq {
                return None;
            }
            let skip = (since + 1 - first) as usize;
            skip..skip + (last_seq - since) as usize
        };
        Some(self.entries.range(range).map(|(_, _, frame)| frame))
    }

    /// Every frame held up to `last_seq`, oldest first (the newer ones may not have been sent
    /// yet: a room waiting for its sinks).
    pub fn frames_through(&self, last_seq: u64) -> impl Iterator<Item = &Bytes> + '_ {
        self.entries.iter().take_while(move |(seq, _, _)| *seq <= last_seq).map(|(_, _, frame)| frame)
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Frame bytes held, for memory accounting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(seq: u64) -> Bytes {
        Bytes::from(seq.to_string())
    }

    fn replayed(h: &History, since: u64, last: u64) -> Option<Vec<u64>> {
        h.replay(since, last).map(|it| it.map(|b| String::from_utf8_lossy(b).parse().unwrap_or(0)).collect())
    }

    #[test]
    fn replays_the_missed_suffix_or_nothing() {
        let mut h = History::new(4, 1_000);
        assert_eq!(h.entries.capacity(), 0, "nothing allocated before the first push");
        for seq in 1..=6 {
            h.push(seq, seq * 10, frame(seq));
        }
        assert_eq!(replayed(&h, 4, 6), Some(vec![5, 6]));
        assert_eq!(replayed(&h, 2, 6), Some(vec![3, 4, 5, 6]));
        assert_eq!(replayed(&h, 1, 6), None, "message 2 is gone");
        assert_eq!(replayed(&h, 6, 6), Some(vec![]));
        assert_eq!(replayed(&h, 9, 6), Some(vec![]));
        h.prune(1_045);
        assert_eq!(replayed(&h, 4, 6), Some(vec![5, 6]));
        assert_eq!(replayed(&h, 3, 6), None, "too old");
        h.prune(10_000);
        assert!(h.is_empty());
        assert_eq!((h.bytes(), h.entries.capacity()), (0, 0));
        assert_eq!(replayed(&h, 5, 6), None);
    }

    proptest! {
        /// Against a model that keeps everything: a replay is exactly the missed suffix when
        /// the ring covers it, and nothing otherwise; never partial.
        #[test]
        fn replay_is_exact_or_none(
            max_len in 1usize..20,
            max_age in 1u64..50,
            steps in proptest::collection::vec((1u64..10, any::<bool>()), 1..80),
            since_back in 0u64..30,
        ) {
            let mut h = History::new(max_len, max_age);
            let mut model: Vec<(u64, u64)> = Vec::new();
            let (mut seq, mut now) = (0u64, 0u64);
            for (dt, publish) in steps {
                now += dt;
                if publish {
                    seq += 1;
                    h.push(seq, now, frame(seq));
                    model.push((seq, now));
                }
                h.prune(now);
            }
            let since = seq.saturating_sub(since_back);
            let kept: Vec<u64> = model.iter().rev().take(max_len)
                .filter(|(_, ts)| *ts >= now.saturating_sub(max_age)).map(|(s, _)| *s).collect();
            let covered = since >= seq || kept.contains(&(since + 1));
            let got = replayed(&h, since, seq);
            if covered {
                prop_assert_eq!(got, Some(((since + 1)..=seq).collect::<Vec<_>>()));
            } else {
                prop_assert_eq!(got, None);
            }
        }
    }
}
