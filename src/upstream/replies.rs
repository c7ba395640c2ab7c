//! An upstream connection's replies, put back in command order.
//!
//! Commands of one connection go to many homes, and the homes answer in any order across
//! rooms; a connection's replies must come back in the order of its commands (PROTOCOL.md:
//! "a reply line is written for each command, in order"). Each command takes a slot, numbered
//! by its serial; a home's answer fills its slot; the filled slots at the front are written.
//! A multi-room publish or a kick (answered by every worker) fills its slot part by part.

use crate::shard::mail::IngestReply;
use crate::wire::ingest;
use std::collections::VecDeque;

/// One command's reply slot.
#[derive(Debug)]
pub(crate) enum Slot {
    /// The reply line is known.
    Ready(Vec<u8>),
    /// Waiting for `left` more rooms of a publish.
    Publish {
        /// The seq of each room, in the command's order.
        seqs: Vec<u64>,
        /// Rooms still to answer.
        left: u32,
        /// Whether the command gave `rooms` (the reply carries `seqs`).
        many: bool,
    },
    /// Waiting for a state reply.
    State,
    /// Waiting for `left` more workers to report how many connections a kick affected.
    Kick {
        /// Workers still to answer.
        left: u32,
        /// Connections affected so far.
        closed: u64,
    },
    /// Waiting for a command without a value (close_room).
    Done,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Replies {
    base: u64,
    slots: VecDeque<Slot>,
}

impl Replies {
    /// Take the next slot; returns the command's serial.
    pub(crate) fn push(&mut self, slot: Slot) -> u64 {
        self.slots.push_back(slot);
        self.base + self.slots.len() as u64 - 1
    }

    /// Commands whose reply is not yet written.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Fill the slot `reply` answers (or one part of it). Stale or mismatched replies are
    /// ignored.
    pub fn fill(&mut self, reply: &IngestReply) {
        let to = reply.to();
        let Some(index) = to.serial.checked_sub(self.base).map(|i| i as usize) else { return };
        let Some(slot) = self.slots.get_mut(index) else { return };
        let mut line = Vec::new();
        match (slot, reply) {
            (Slot::Publish { seqs, left, many }, IngestReply::Published { seq, .. }) => {
                if let Some(s) = seqs.get_mut(to.part as usize) {
                    *s = seq.0;
                }
                *left = left.saturating_sub(1);
                if *left > 0 {
                    return;
                }
                if *many {
                    ingest::reply_seqs(&mut line, seqs);
                } else {
                    ingest::reply_seq(&mut line, seq.0);
                }
            }
            (Slot::State, IngestReply::State { seq, version, .. }) => ingest::reply_state(&mut line, seq.0, *version),
            (Slot::Kick { left, closed }, IngestReply::Kicked { closed: n, .. }) => {
                *closed += n;
                *left = left.saturating_sub(1);
                if *left > 0 {
                    return;
                }
                ingest::reply_closed(&mut line, *closed);
            }
            (Slot::Done, IngestReply::Done { .. }) => ingest::reply_ok(&mut line),
            _ => return,
        }
        self.slots[index] = Slot::Ready(line);
    }

    /// Move every reply that is next in order into `out`.
    pub fn drain_ready(&mut self, out: &mut Vec<u8>) {
        while let Some(Slot::Ready(line)) = self.slots.front() {
            out.extend_from_slice(line);
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Seq;
    use crate::shard::mail::ReplyTo;

    fn to(serial: u64, part: u32) -> ReplyTo {
        ReplyTo { conn: 0, generation: 0, serial, part }
    }

    #[test]
    fn replies_leave_in_command_order_whatever_order_they_arrive_in() {
        let mut r = Replies::default();
        let a = r.push(Slot::State);
        let b = r.push(Slot::Publish { seqs: vec![0, 0], left: 2, many: true });
        let c = r.push(Slot::Ready(b"{\"ok\":true}\n".to_vec()));
        let mut out = Vec::new();
        r.fill(&IngestReply::Published { to: to(b, 1), seq: Seq(9) });
        r.drain_ready(&mut out);
        assert!(out.is_empty(), "the first command is not answered yet");
        r.fill(&IngestReply::State { to: to(a, 0), seq: Seq(3), version: 1 });
        r.drain_ready(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "{\"ok\":true,\"seq\":3,\"version\":1}\n",
            "b waits for its second room"
        );
        r.fill(&IngestReply::Published { to: to(b, 0), seq: Seq(4) });
        r.drain_ready(&mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("{\"ok\":true,\"seqs\":[4,9]}\n{\"ok\":true}\n"));
        assert_eq!((r.in_flight(), c), (0, 2));
    }

    #[test]
    fn stale_and_mismatched_replies_are_ignored() {
        let mut r = Replies::default();
        let a = r.push(Slot::Done);
        r.fill(&IngestReply::Published { to: to(a, 0), seq: Seq(1) });
        r.fill(&IngestReply::Done { to: to(a + 5, 0) });
        let mut out = Vec::new();
        r.drain_ready(&mut out);
        assert!(out.is_empty());
        r.fill(&IngestReply::Done { to: to(a, 0) });
        r.drain_ready(&mut out);
        assert_eq!(out, b"{\"ok\":true}\n");
        r.fill(&IngestReply::Done { to: to(a, 0) });
        assert_eq!(r.in_flight(), 0, "a reply for a written slot changes nothing");
    }

    #[test]
    fn a_kick_is_answered_once_every_worker_reported() {
        let mut r = Replies::default();
        let k = r.push(Slot::Kick { left: 3, closed: 0 });
        let mut out = Vec::new();
        for n in [1, 0, 2] {
            r.fill(&IngestReply::Kicked { to: to(k, 0), closed: n });
        }
        r.drain_ready(&mut out);
        assert_eq!(out, b"{\"ok\":true,\"closed\":3}\n");
    }
}
