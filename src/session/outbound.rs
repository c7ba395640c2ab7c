//! A connection's outbound queue: shared frames waiting to be written, with a byte budget.
//!
//! Broadcast frames arrive here as [`Bytes`] that every member shares (a refcount, not a copy).
//! The queue never copies a frame; the IO shell writes from [`Outbound::slices`] (one `writev`)
//! and reports how much went out with [`Outbound::advance`]. The budget is what turns a slow
//! consumer into a typed disconnect instead of unbounded memory: [`Outbound::push`] refuses a
//! frame that would take the queue over it, and the session closes the connection with 4009.

use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Frames waiting for the socket, oldest first. The head frame may be partly written.
///
/// Most of the time a connection is idle, receives one frame and writes it at once, so a
/// single frame is held inline: no allocation, and no free, per delivery. (Allocating and
/// freeing a small queue per delivery, a million times per fan-out wave, measurably slowed
/// glibc's later allocations; BENCHMARKS.md.) Only a backlog of two or more frames allocates.
#[derive(Debug, Default)]
pub struct Outbound {
    frames: Frames,
    /// Bytes queued; u32 keeps the slot small (a budget is far below 4 GiB).
    queued: u32,
    head_partial: bool,
    /// On which of the owner's write lists this queue is (see [`Outbound::list`]). Kept
    /// here, beside the fields every delivery touches, so listing costs no extra cache line.
    listed: Listed,
}

/// Which write list a queue is on: the owner writes urgent queues (events, replies, closes)
/// before background ones (presence and reactions alone).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// On no list.
    #[default]
    No,
    /// On the background list only.
    Background,
    /// On the urgent list (and perhaps still on the background one).
    Urgent,
}

#[derive(Debug, Default)]
enum Frames {
    #[default]
    Empty,
    One(Bytes),
    Many(VecDeque<Bytes>),
}

/// The queue is over its byte budget; the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl Outbound {
    /// Queue `frame` unless that would put more than `budget` bytes in the queue. The frame
    /// is borrowed and cloned only when taken: a fan-out clones its shared frame straight
    /// into each member's queue (cloning it into a temporary first and moving that cost a
    /// store-forwarding stall per member, a quarter of a large fan-out's time; BENCHMARKS.md).
    pub fn push(&mut self, frame: &Bytes, budget: usize) -> Result<(), OverBudget> {
        if self.queued as usize + frame.len() > budget && !self.is_empty() {
            return Err(OverBudget);
        }
        self.push_unbounded(frame.clone());
        Ok(())
    }

    /// Queue `frame` whatever the budget: for the close frame, which must go out.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.queued = self.queued.saturating_add(u32::try_from(frame.len()).unwrap_or(u32::MAX));
        self.frames = match std::mem::take(&mut self.frames) {
            Frames::Empty => Frames::One(frame),
            Frames::One(first) => Frames::Many(VecDeque::from([first, frame])),
            Frames::Many(mut q) => {
                q.push_back(frame);
                Frames::Many(q)
            }
        };
    }

    /// Mark the queue listed for a write, `urgent` or in the background: true if the caller
    /// must put it on that list (it was on no list, or only on the background one and this
    /// is urgent).
    pub fn list(&mut self, urgent: bool) -> bool {
        let next = match (self.listed, urgent) {
            (Listed::No, false) => Listed::Background,
            (Listed::No | Listed::Background, true) => Listed::Urgent,
            _ => return false,
        };
        self.listed = next;
        true
    }

    /// Which list the queue is on.
    pub fn listed(&self) -> Listed {
        self.listed
    }

    /// The owner took the queue off its write lists (it is being written).
    pub fn unlist(&mut self) {
        self.listed = Listed::No;
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued as usize
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        matches!(self.frames, Frames::Empty)
    }

    /// Iterate over the waiting frames in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        let (one, many) = match &self.frames {
            Frames::Empty => (None, None),
            Frames::One(b) => (Some(b), None),
            Frames::Many(q) => (None, Some(q.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Fill `out` with slices of the waiting frames, in order, for one vectored write.
    /// Returns how many slices were filled.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, frame) in out.iter_mut().zip(self.iter()) {
            *slot = IoSlice::new(frame);
            n += 1;
        }
        n
    }

    /// Mark `written` bytes as sent, dropping frames that went out completely.
    pub fn advance(&mut self, mut written: usize) {
        self.queued -= u32::try_from(written).unwrap_or(u32::MAX).min(self.queued);
        while written > 0 {
            let head = match &mut self.frames {
                Frames::Empty => break,
                Frames::One(b) => b,
                Frames::Many(q) => match q.front_mut() {
                    Some(b) => b,
                    None => break,
                },
            };
            if written < head.len() {
                head.advance(written);
                self.head_partial = true;
                break;
            }
            written -= head.len();
            self.head_partial = false;
            self.pop_head();
        }
    }

    /// Remove the head frame, going back to the inline forms as the backlog shrinks (an idle
    /// connection keeps no queue memory).
    fn pop_head(&mut self) {
        self.frames = match std::mem::take(&mut self.frames) {
            Frames::Empty | Frames::One(_) => Frames::Empty,
            Frames::Many(mut q) => {
                q.pop_front();
                match q.len() {
                    0 => Frames::Empty,
                    1 => q.pop_front().map_or(Frames::Empty, Frames::One),
                    _ => Frames::Many(q),
                }
            }
        };
    }

    /// Drop every frame that has not started to go out (the head may be half written and must
    /// be finished, or the stream would be corrupt). Used when a close replaces the backlog.
    pub fn drop_unstarted(&mut self) {
        let head = match std::mem::take(&mut self.frames) {
            Frames::Empty => None,
            Frames::One(b) => Some(b),
            Frames::Many(mut q) => q.pop_front(),
        };
        self.frames = match head {
            Some(b) if self.head_partial => Frames::One(b),
            _ => Frames::Empty,
        };
        self.queued = u32::try_from(self.iter().map(Bytes::len).sum::<usize>()).unwrap_or(u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_but_always_takes_the_first_frame() {
        let mut q = Outbound::default();
        assert!(q.push(&Bytes::from(vec![0u8; 100]), 10).is_ok(), "an empty queue takes any frame");
        assert_eq!(q.push(&Bytes::from_static(b"x"), 10), Err(OverBudget));
        assert_eq!(q.queued(), 100);
    }

    #[test]
    fn advance_handles_partial_writes_across_frames() {
        let mut q = Outbound::default();
        q.push_unbounded(Bytes::from_static(b"abc"));
        q.push_unbounded(Bytes::from_static(b"defg"));
        q.advance(4);
        let mut slices = [IoSlice::new(&[]); 4];
        let n = q.slices(&mut slices);
        assert_eq!(n, 1);
        assert_eq!(&*slices[0], b"efg");
        assert_eq!(q.queued(), 3);
        q.advance(3);
        assert!(q.is_empty());
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn drop_unstarted_keeps_a_half_written_head() {
        let mut q = Outbound::default();
        for f in [&b"aaaa"[..], b"bb", b"cc"] {
            q.push_unbounded(Bytes::copy_from_slice(f));
        }
        q.advance(1);
        q.drop_unstarted();
        assert_eq!(q.queued(), 3, "only the half-written head is kept");
        q.advance(3);
        q.push_unbounded(Bytes::from_static(b"dd"));
        q.drop_unstarted();
        assert!(q.is_empty(), "a head not yet started is dropped too");
    }
}
