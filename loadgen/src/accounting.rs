//! Per-room delivery accounting for one connection: what was lost, duplicated or reordered.
//!
//! roomcast promises every member a gap-free, in-order stream per room. This checks it exactly
//! instead of trusting it: a seq ahead of the next expected one opens a gap (its missing seqs
//! are remembered), a late arrival of a missing seq is *reordered* (and no longer lost), and a
//! seq seen before is a *duplicate*. Memory stays proportional to the gaps, not the stream.

use std::collections::BTreeSet;

/// The stream of one room as seen by one connection.
#[derive(Debug, Default, Clone)]
pub struct SeqCheck {
    last: u64,
    missing: BTreeSet<u64>,
    /// Messages received (each seq once).
    pub received: u64,
    /// Seqs received more than once.
    pub duplicated: u64,
    /// Seqs received after a later one.
    pub reordered: u64,
}

impl SeqCheck {
    /// Start after `seq` (the `joined.seq`: everything after it is expected).
    pub fn starting_after(seq: u64) -> Self {
        Self { last: seq, ..Self::default() }
    }

    /// Account for `seq`; returns true when it is new (to be counted as a delivery).
    pub fn observe(&mut self, seq: u64) -> bool {
        if seq == self.last + 1 {
            self.last = seq;
        } else if seq > self.last + 1 {
            self.missing.extend(self.last + 1..seq);
            self.last = seq;
        } else if self.missing.remove(&seq) {
            self.reordered += 1;
        } else {
            self.duplicated += 1;
            return false;
        }
        self.received += 1;
        true
    }

    /// Seqs in a gap that never arrived, plus those after the last received up to `upto`
    /// (the room's last published seq).
    pub fn lost(&self, upto: u64) -> u64 {
        self.missing.len() as u64 + upto.saturating_sub(self.last)
    }

    /// The last seq seen in order or ahead.
    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_stream_is_reported_exactly() {
        let mut c = SeqCheck::starting_after(10);
        // 11 12 (13 lost) 14 14(dup) 16 15(reordered) 17 12(dup) ... up to 20 published.
        for seq in [11, 12, 14, 14, 16, 15, 17, 12] {
            c.observe(seq);
        }
        assert_eq!(c.received, 6);
        assert_eq!(c.duplicated, 2);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.lost(17), 1, "13 never came");
        assert_eq!(c.lost(20), 4, "13, and 18..=20 after the last one seen");
    }

    #[test]
    fn a_clean_stream_has_nothing_to_report() {
        let mut c = SeqCheck::starting_after(0);
        assert!((1..=1000).all(|s| c.observe(s)));
        assert_eq!((c.received, c.duplicated, c.reordered, c.lost(1000)), (1000, 0, 0, 0));
    }
}
