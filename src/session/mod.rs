//! One viewer connection's protocol state, independent of its socket.
//!
//! A [`Session`] knows who the viewer is, which rooms it belongs to (and which joins are still
//! waiting for the room's home), what waits to be written to it, and whether it is closing. The
//! shard drives it; the IO shell only writes what [`Session::outbound`] holds and reports the
//! socket gone. Nothing here touches a socket, a thread or a clock.
//!
//! Lifecycle: `Open` (after the upgrade) -> `Closing` (a close frame is queued; nothing but it
//! and a half-written frame before it will be written) -> removed by the shard. The state only
//! moves forward.

pub mod outbound;

use crate::ids::ConnId;
use bytes::Bytes;
use outbound::Outbound;
use std::sync::Arc;

/// Where a connection is in its life. See the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Upgraded and serving.
    Open,
    /// A close frame with this code is queued; `by_peer` when the peer closed first (then the
    /// socket can go as soon as the echo is written).
    Closing {
        /// The close code sent.
        code: u16,
        /// Whether the peer started the close handshake.
        by_peer: bool,
    },
}

/// A room the session belongs to, or asked to join.
#[derive(Debug)]
pub struct Membership {
    /// The room's name.
    pub room: Arc<str>,
    /// Whether the home has confirmed the join.
    pub state: MemberState,
}

/// Whether a join is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// `join` was sent to the home with this id; replies with another id are stale.
    Pending(u32),
    /// A member: receives the room's frames. `slot` is its index in the worker's member list.
    Joined {
        /// Index in the worker-local member list of the room.
        slot: u32,
    },
}

/// One viewer connection's protocol state. See the module doc.
#[derive(Debug)]
pub struct Session {
    /// Process-wide connection id (`hello.conn`).
    pub id: ConnId,
    /// The viewer's user id.
    pub user: Arc<str>,
    /// Display name shown in presence (the user id when none was given).
    pub name: Arc<str>,
    /// Rooms joined or being joined (the private `user:` room is kept by the shard instead).
    pub rooms: Vec<Membership>,
    /// Frames waiting to be written.
    pub outbound: Outbound,
    /// Open or closing.
    pub phase: Phase,
    /// Last time any frame arrived from the peer (ms).
    pub last_seen_ms: u64,
    /// Last comment or reaction (ms), or the connect time: what `silent_ms` is measured from.
    pub last_spoke_ms: u64,
    next_join_id: u32,
}

impl Session {
    /// A new open session.
    pub fn new(id: ConnId, user: Arc<str>, name: Arc<str>, now_ms: u64) -> Self {
        Self {
            id,
            user,
            name,
            rooms: Vec::with_capacity(1),
            outbound: Outbound::default(),
            phase: Phase::Open,
            last_seen_ms: now_ms,
            last_spoke_ms: now_ms,
            next_join_id: 0,
        }
    }

    /// Whether the session still serves (not closing).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The membership entry of `room`, if any.
    pub fn membership(&self, room: &str) -> Option<&Membership> {
        self.rooms.iter().find(|m| &*m.room == room)
    }

    /// Mutable membership entry of `room`, if any.
    pub fn membership_mut(&mut self, room: &str) -> Option<&mut Membership> {
        self.rooms.iter_mut().find(|m| &*m.room == room)
    }

    /// Record a join sent to the home and return its id.
    pub fn begin_join(&mut self, room: Arc<str>) -> u32 {
        self.next_join_id = self.next_join_id.wrapping_add(1);
        let id = self.next_join_id;
        // Most connections are in their private room and one more: room for exactly that.
        self.rooms.reserve_exact(1);
        self.rooms.push(Membership { room, state: MemberState::Pending(id) });
        id
    }

    /// Forget `room`; returns the membership it had.
    pub fn remove_membership(&mut self, room: &str) -> Option<Membership> {
        let at = self.rooms.iter().position(|m| &*m.room == room)?;
        Some(self.rooms.swap_remove(at))
    }

    /// Rooms joined or pending (the private `user:` room is not listed here).
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Queue a frame for an open session within `budget`. Returns false when the budget is
    /// exceeded: the caller must close the session as a slow consumer.
    #[must_use]
    pub fn send(&mut self, frame: Bytes, budget: usize) -> bool {
        match self.phase {
            Phase::Open => self.outbound.push(frame, budget).is_ok(),
            Phase::Closing { .. } => true,
        }
    }

    /// Start closing with `code` and queue the close frame after what is already queued; a slow
    /// consumer's backlog (4009) is dropped first, but for a half-written frame, since it is
    /// the reason for the close and would only delay it. Returns false if already closing.
    pub fn close(&mut self, code: u16, by_peer: bool) -> bool {
        if !self.is_open() {
            return false;
        }
        if code == crate::wire::frame::close_code::SLOW_CONSUMER {
            self.outbound.drop_unstarted();
        }
        self.outbound.push_unbounded(crate::wire::frame::close_frame(code, ""));
        self.phase = Phase::Closing { code, by_peer };
        true
    }
}
