//! Messages between workers, and from workers to the ingest loop, and the [`Router`] that
//! addresses them.
//!
//! Workers share nothing on the per-message path; they exchange these values through their
//! mailboxes. Rooms travel as [`RoomName`] and frames as [`Bytes`], so a message between
//! workers moves pointers, never payload copies. Every message for a connection carries the
//! connection's [`ConnId`] next to its slab key: a reply that arrives after the connection
//! closed (and its key was reused) is recognised and dropped.

use crate::ids::{ConnId, ConnKey, RoomName, Seq, WorkerId};
use crate::metrics::Source;
use crate::query::LeaveReason;
use crate::room::JoinReply;
use crate::wire::{ErrorCode, Ref};
use bytes::Bytes;
use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// The home worker of `room`: a fixed hash, the same in every thread and every run.
pub fn home_of(room: &str, workers: usize) -> WorkerId {
    // DefaultHasher::new() is SipHash with fixed keys: stable across threads of one process.
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    WorkerId((h.finish() % workers.max(1) as u64) as u16)
}

/// A connection somewhere in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Worker holding the connection.
    pub worker: WorkerId,
    /// Its slab key there.
    pub key: ConnKey,
    /// Its process-wide id, to recognise a reused key.
    pub conn: ConnId,
}

/// Where an ingest reply goes: an ingest connection and the command's place in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The ingest connection's key in the ingest loop.
    pub conn: usize,
    /// The connection's generation, to recognise a reused key.
    pub generation: u64,
    /// The command's serial number on that connection.
    pub serial: u64,
    /// For a multi-room publish: which room of the list.
    pub part: u32,
}

/// Mail between workers. The first group goes to a room's home, the second to the worker of a
/// member.
#[derive(Debug)]
pub enum Mail {
    /// A connection asks to join a room (to the home).
    Join {
        /// The room.
        room: RoomName,
        /// Who asks.
        from: Origin,
        /// The session's id for this join, echoed in [`Mail::Joined`].
        join_id: u32,
        /// The viewer's user id.
        user: Arc<str>,
        /// The viewer's display name.
        name: Arc<str>,
        /// Recovery position: last seq seen and its epoch.
        since: Option<(u64, Box<str>)>,
        /// The `join`'s `ref`, echoed in `joined`.
        reference: Option<Ref>,
    },
    /// A member (confirmed or pending) of `worker` left the room (to the home).
    Leave {
        /// The room.
        room: RoomName,
        /// The worker the member was on.
        worker: WorkerId,
        /// The viewer's user id.
        user: Arc<str>,
        /// The viewer's display name (for the `left` list of presence).
        name: Arc<str>,
        /// Why it left (counted per room, shown to operators).
        reason: LeaveReason,
    },
    /// A viewer's comment was refused on its worker (to the home, which counts it per room).
    Rejected {
        /// The room.
        room: RoomName,
        /// The viewer's user id.
        user: Arc<str>,
        /// The error code the viewer got.
        code: ErrorCode,
    },
    /// A viewer's comment (to the home).
    Comment {
        /// The room.
        room: RoomName,
        /// Who commented; gets the ack.
        from: Origin,
        /// The viewer's user id.
        user: Arc<str>,
        /// The viewer's display name.
        name: Arc<str>,
        /// The comment text, validated.
        text: Box<str>,
        /// The client's `ref`, echoed in the ack.
        reference: Option<Ref>,
    },
    /// An upstream event (to the home).
    Publish {
        /// The room.
        room: RoomName,
        /// The event's `type`.
        kind: Box<str>,
        /// The event's `data`, raw JSON.
        data: Box<str>,
        /// Where it came from (the ingest socket or the HTTP API).
        source: Source,
        /// Where to report the seq, if anywhere.
        reply: Option<ReplyTo>,
    },
    /// An upstream state replacement (to the home).
    SetState {
        /// The room.
        room: RoomName,
        /// The new state object, raw JSON.
        state: Box<str>,
        /// Where it came from (the ingest socket or the HTTP API).
        source: Source,
        /// Where to report seq and version, if anywhere.
        reply: Option<ReplyTo>,
    },
    /// A viewer's reaction, counted per interval (to the home).
    React {
        /// The room.
        room: RoomName,
        /// The reaction kind.
        kind: Box<str>,
    },
    /// Close a user's connections, or take the user out of one room (to every worker).
    Kick {
        /// The user id.
        user: Arc<str>,
        /// Only this room; `None` closes every connection of the user with 4010.
        room: Option<RoomName>,
        /// Where to report how many connections were affected.
        reply: Option<ReplyTo>,
    },
    /// Moderation takes a comment back (to the home): a `comment_deleted` event and a
    /// tombstone for the sinks.
    DeleteComment {
        /// The room.
        room: RoomName,
        /// The comment's id (`<epoch>-<seq>`).
        id: Box<str>,
        /// Where to report the event's seq (or the refusal), if anywhere.
        reply: Option<ReplyTo>,
    },
    /// Close a room: members get `left` with reason `closed` and the room is freed (to the home).
    CloseRoom {
        /// The room.
        room: RoomName,
        /// Where to report completion.
        reply: Option<ReplyTo>,
    },
    /// The home closed the room (to each worker with members).
    RoomClosed {
        /// The room.
        room: RoomName,
    },
    /// Frames of a room for every local member (to a member's worker).
    Deliver {
        /// The room.
        room: RoomName,
        /// One or more consecutive encoded frames.
        frames: Bytes,
        /// When the oldest sequenced message among them was sequenced at the home (ms), for
        /// the publish-to-write latency; `None` for presence and reactions alone.
        sequenced_ms: Option<u64>,
        /// How many messages the frames are (each receiver counts them as deliveries).
        messages: u32,
    },
    /// The home's answer to [`Mail::Join`] (to the member's worker).
    Joined {
        /// The room.
        room: RoomName,
        /// The joining connection.
        to: Origin,
        /// The id from the join.
        join_id: u32,
        /// Replay and the `joined` frame.
        reply: JoinReply,
    },
    /// Close one connection with `code` (to its worker): the per-user cap evicting a user's
    /// oldest connection.
    CloseConn {
        /// The connection.
        to: Origin,
        /// The close code.
        code: u16,
    },
    /// A frame for one connection, e.g. an ack (to the connection's worker).
    ToConn {
        /// The connection.
        to: Origin,
        /// The encoded frame.
        frame: Bytes,
    },
    /// A message the cluster sequenced (from the broker, to the room's home on this node).
    Broadcast {
        /// The room.
        room: RoomName,
        /// The message.
        message: super::cluster::Broadcast,
    },
    /// A followed room's snapshot (from the broker, to the room's home).
    Synced {
        /// The room.
        room: RoomName,
        /// The cluster's copy of the room.
        snapshot: Box<super::cluster::Snapshot>,
    },
    /// The cluster's answer to a comment or a delete this home sent (from the broker).
    Sequenced {
        /// The room.
        room: RoomName,
        /// The seq and epoch the message got, or why not.
        outcome: Result<(u64, Box<str>), super::cluster::Unavailable>,
        /// What waits for the answer.
        then: super::cluster::Then,
    },
    /// Cluster presence of a room (from the broker, to the room's home).
    ClusterPresence {
        /// The room.
        room: RoomName,
        /// The report.
        report: Box<super::cluster::ClusterPresence>,
    },
    /// The room's subscription was taken again after a failure: catch up from a snapshot
    /// (from the broker, to the room's home).
    Resync {
        /// The room.
        room: RoomName,
    },
    /// Another node's upstream asked for this moderation: carry it out here (from the broker;
    /// a kick to every worker, a room's close to its home).
    ClusterOp {
        /// What to do.
        op: super::cluster::ClusterOp,
    },
    /// The cluster lost this node's presence (its heartbeat expired, or Redis lost its data):
    /// every home reports its viewers again (from the broker, to every worker).
    PresenceResync,
    /// The cluster lost the room's history: close its members here with 1012 so they rejoin
    /// (from the home, to each worker with members).
    Reset {
        /// The room.
        room: RoomName,
    },
}

/// A home's answer to an ingest command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestReply {
    /// A publish got this seq.
    Published {
        /// The command.
        to: ReplyTo,
        /// The event's seq.
        seq: Seq,
    },
    /// A state replacement got this seq and version.
    State {
        /// The command.
        to: ReplyTo,
        /// The state message's seq.
        seq: Seq,
        /// The state's new version.
        version: u64,
    },
    /// A kick affected this many connections on one worker.
    Kicked {
        /// The command.
        to: ReplyTo,
        /// Connections closed or taken out of the room.
        closed: u64,
    },
    /// A command without a value to report finished.
    Done {
        /// The command.
        to: ReplyTo,
    },
    /// The home refused the command (the reply is an error line).
    Refused {
        /// The command.
        to: ReplyTo,
        /// The error code.
        code: ErrorCode,
        /// Why, for a person.
        message: String,
    },
}

impl IngestReply {
    /// The command this replies to.
    pub fn to(&self) -> ReplyTo {
        match self {
            Self::Published { to, .. }
            | Self::State { to, .. }
            | Self::Kicked { to, .. }
            | Self::Done { to }
            | Self::Refused { to, .. } => *to,
        }
    }
}

/// Queue `mail` in the outbox of worker `to` (one list per worker; the mesh sends them at the
/// end of the turn). Shared by a worker's [`Router`] and the ingest loop's outbox.
pub(crate) fn post_to(outbox: &mut [Vec<Mail>], to: WorkerId, mail: Mail) {
    if let Some(out) = outbox.get_mut(usize::from(to.0)) {
        out.push(mail);
    }
}

/// Where a shard's outgoing mail waits until the shell takes it: one outbox per other worker,
/// a loopback queue for mail to itself (handled before the entry point that posted it
/// returns, in order, exactly as if it had travelled), and the replies for the ingest loop.
#[derive(Debug)]
pub(crate) struct Router {
    me: WorkerId,
    outbox: Vec<Vec<Mail>>,
    loopback: VecDeque<Mail>,
    ingest: Vec<IngestReply>,
}

impl Router {
    /// The router of worker `me` among `workers`.
    pub(crate) fn new(me: WorkerId, workers: usize) -> Self {
        Self { me, outbox: (0..workers).map(|_| Vec::new()).collect(), loopback: VecDeque::new(), ingest: Vec::new() }
    }

    /// Send `mail` to worker `to`.
    pub(crate) fn post(&mut self, to: WorkerId, mail: Mail) {
        if to == self.me {
            self.loopback.push_back(mail);
        } else {
            post_to(&mut self.outbox, to, mail);
        }
    }

    /// Reply to an ingest command.
    pub(crate) fn reply(&mut self, reply: IngestReply) {
        self.ingest.push(reply);
    }

    /// The next mail this worker sent itself.
    pub(crate) fn next_loopback(&mut self) -> Option<Mail> {
        self.loopback.pop_front()
    }

    /// Take the mail for worker `to`.
    pub(crate) fn take_outbox(&mut self, to: WorkerId) -> Vec<Mail> {
        // The `Vec` leaves with the mail (to the channel), so the next turn's starts with the
        // room this one needed: one allocation per busy turn, not a regrowth from empty (a
        // presence tick posts one mail per room; growing by doubling was half its cost).
        self.outbox
            .get_mut(usize::from(to.0))
            .map(|out| {
                let room = out.len();
                std::mem::replace(out, Vec::with_capacity(room))
            })
            .unwrap_or_default()
    }

    /// Take the replies for the ingest loop.
    pub(crate) fn take_replies(&mut self) -> Vec<IngestReply> {
        std::mem::take(&mut self.ingest)
    }
}
