//! One viewer connection's life, from the first byte of its HTTP upgrade to the moment its
//! socket may go, independent of the socket.
//!
//! A [`Session`] knows where the connection is in its life ([`Phase`]), who the viewer is once
//! upgraded, which rooms it belongs to (and which joins still wait for the room's home), what
//! waits to be written to it, its frame reader, and how far the close handshake got. The shard
//! drives it; the IO shell only writes what [`Session::outbound_mut`] holds and reports the
//! socket's end of stream. Nothing here touches a socket, a thread or a clock.
//!
//! Life, forward only:
//!
//! ```text
//! Upgrading --upgrade--> Open --close--> Closing --(close written, peer done)--> gone
//!     |
//!     +--answer--> Answered --(response written)--> gone
//! ```
//!
//! `Upgrading` buffers the request; `Open` serves; `Closing` has its close frame queued after
//! whatever was queued before it, and lets the socket go once that is written and the peer
//! answered (or, when the peer closed first, once the echo is written); `Answered` has an HTTP
//! response other than the upgrade queued (an error, or the demo page) and lets the socket go
//! once it is written. [`Session::after_write`] says which step the socket takes next.

pub mod outbound;

use crate::auth::{Guard, Identity};
use crate::ids::ConnId;
use crate::metrics::ListenerKind;
use crate::wire::frame::{self, close_code, FrameReader, Role};
use bytes::Bytes;
use outbound::{Outbound, OverBudget};

/// Where a connection is in its life. See the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The HTTP upgrade request is being read.
    Upgrading,
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
    /// The request got an HTTP response other than the upgrade (a refusal, or the demo page).
    Answered,
}

/// The life with the data that exists only in some phases: the request buffer only while
/// upgrading, the viewer's identity only once upgraded (the two share their bytes, which keeps
/// every connection's slot small).
#[derive(Debug)]
enum Life {
    Upgrading { request: Vec<u8> },
    Open { guard: Guard },
    Closing { guard: Guard, code: u16, by_peer: bool },
    Answered,
}

/// A room the session belongs to, or asked to join.
#[derive(Debug)]
pub struct Membership {
    /// The room's name.
    pub room: crate::ids::RoomName,
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

/// What the socket does next, after a write attempt. See [`Session::after_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketStep {
    /// Keep serving (or keep waiting for the peer's close).
    Keep,
    /// Our close frame is out: shut the write side, so the peer sees end of stream after it.
    ShutdownWrite,
    /// Nothing more will be written or read: drop the socket.
    Drop,
}

/// One viewer connection's state. See the module doc.
#[derive(Debug)]
pub struct Session {
    id: ConnId,
    life: Life,
    rooms: Vec<Membership>,
    outbound: Outbound,
    reader: FrameReader,
    /// The peer's close frame, or its end of stream, arrived.
    peer_closed: bool,
    /// Our close frame is fully written and the write side shut.
    write_shut: bool,
    last_seen_ms: u64,
    last_spoke_ms: u64,
    /// A heartbeat ping went out and no frame arrived since.
    pinged: bool,
    /// The listener it came in on (ws or wss), for the counters.
    listener: ListenerKind,
    /// Upgraded on the testing echo endpoint: every message is sent back, nothing else.
    echo: bool,
    next_join_id: u32,
}

/// A heartbeat ping: RFC 6455 5.5.2, FIN and opcode 0x9, no payload, unmasked (a server
/// frame). Static: a ping costs no allocation.
const PING_FRAME: &[u8] = &[0x89, 0x00];

impl Session {
    /// A connection just accepted: its upgrade request is yet to come.
    pub fn accept(id: ConnId, listener: ListenerKind, now_ms: u64) -> Self {
        Self {
            id,
            life: Life::Upgrading { request: Vec::new() },
            rooms: Vec::new(),
            outbound: Outbound::default(),
            reader: FrameReader::new(Role::Server),
            peer_closed: false,
            write_shut: false,
            last_seen_ms: now_ms,
            last_spoke_ms: now_ms,
            pinged: false,
            listener,
            echo: false,
            next_join_id: 0,
        }
    }

    /// A connection whose upgrade was done elsewhere (tests, benches): open at once.
    pub fn opened(id: ConnId, guard: Guard, now_ms: u64) -> Self {
        let mut session = Self::accept(id, ListenerKind::Ws, now_ms);
        session.life = Life::Open { guard };
        session.rooms.reserve_exact(1);
        session
    }

    /// The process-wide connection id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The listener the connection came in on.
    pub fn listener(&self) -> ListenerKind {
        self.listener
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        match self.life {
            Life::Upgrading { .. } => Phase::Upgrading,
            Life::Open { .. } => Phase::Open,
            Life::Closing { code, by_peer, .. } => Phase::Closing { code, by_peer },
            Life::Answered => Phase::Answered,
        }
    }

    /// Whether the session serves viewer ops (upgraded, not closing).
    pub fn is_open(&self) -> bool {
        matches!(self.life, Life::Open { .. })
    }

    /// Who the viewer is; `None` before the upgrade (and after a refused one).
    pub fn identity(&self) -> Option<&Identity> {
        match &self.life {
            Life::Open { guard } | Life::Closing { guard, .. } => Some(guard.identity()),
            Life::Upgrading { .. } | Life::Answered => None,
        }
    }

    /// The viewer's trust state, while upgraded.
    pub fn guard(&self) -> Option<&Guard> {
        match &self.life {
            Life::Open { guard } | Life::Closing { guard, .. } => Some(guard),
            Life::Upgrading { .. } | Life::Answered => None,
        }
    }

    /// The connection is on the testing echo endpoint (`testing.echo_path`).
    pub fn set_echo(&mut self) {
        self.echo = true;
    }

    /// Whether the connection is on the testing echo endpoint.
    pub fn is_echo(&self) -> bool {
        self.echo
    }

    /// The viewer's trust state (claims and rate limits), to check an op; only while open.
    pub fn guard_mut(&mut self) -> Option<&mut Guard> {
        match &mut self.life {
            Life::Open { guard } => Some(guard),
            _ => None,
        }
    }

    /// The viewer's user id (empty before the upgrade).
    pub fn user(&self) -> &str {
        self.identity().map_or("", |i| i.user())
    }

    // --- the upgrade ---

    /// Buffer bytes of the upgrade request; the request so far is returned for parsing (the
    /// parser refuses one that grows past its limit, so at most one read more than the limit
    /// is ever held).
    pub fn push_request(&mut self, bytes: &[u8]) -> &[u8] {
        let Life::Upgrading { request } = &mut self.life else { return &[] };
        request.extend_from_slice(bytes);
        request
    }

    /// The upgrade succeeded: queue the `101` response (and whatever the caller queues next,
    /// `hello`), become `Open` with `guard` (who the viewer is, and its rate limits), and
    /// return the bytes that followed the request (already WebSocket frames).
    pub fn upgrade(&mut self, response: Vec<u8>, consumed: usize, guard: Guard) -> Vec<u8> {
        let Life::Upgrading { mut request } = std::mem::replace(&mut self.life, Life::Open { guard }) else {
            return Vec::new();
        };
        self.rooms.reserve_exact(1);
        self.outbound.push_unbounded(Bytes::from(response));
        request.split_off(consumed.min(request.len()))
    }

    /// Answer the request with an HTTP response other than the upgrade (an error, the demo
    /// page); the socket goes once it is out.
    pub fn answer(&mut self, response: Vec<u8>) {
        if matches!(self.life, Life::Upgrading { .. }) {
            self.life = Life::Answered;
            self.outbound.push_unbounded(Bytes::from(response));
        }
    }

    // --- frames in ---

    /// Take the frame reader out to feed it (the caller handles messages while it holds it)
    /// and give it back with [`Session::restore_reader`].
    pub fn take_reader(&mut self) -> FrameReader {
        std::mem::replace(&mut self.reader, FrameReader::new(Role::Server))
    }

    /// Give the frame reader back after [`Session::take_reader`].
    pub fn restore_reader(&mut self, reader: FrameReader) {
        self.reader = reader;
    }

    /// Any frame arrived: the peer is alive.
    pub fn note_seen(&mut self, now_ms: u64) {
        self.last_seen_ms = now_ms;
        self.pinged = false;
    }

    /// The viewer commented or reacted: what `silent_ms` is measured from.
    pub fn note_spoke(&mut self, now_ms: u64) {
        self.last_spoke_ms = now_ms;
    }

    /// Last time any frame arrived from the peer (ms).
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms
    }

    /// Last comment or reaction (ms), or the connect time.
    pub fn last_spoke_ms(&self) -> u64 {
        self.last_spoke_ms
    }

    /// The peer's close frame or end of stream arrived.
    pub fn note_peer_closed(&mut self) {
        self.peer_closed = true;
    }

    // --- heartbeats ---

    /// The heartbeat deadline fired at `now_ms`: what the connection needs. A connection
    /// silent for `heartbeat_ms` gets one WebSocket ping (browsers and conforming clients
    /// answer it by themselves, PROTOCOL.md "Heartbeats"); one silent for `timeout_ms` is
    /// closed. Returns the next deadline to arm, if any.
    pub fn heartbeat(&mut self, now_ms: u64, heartbeat_ms: u64, timeout_ms: u64) -> Heartbeat {
        if !self.is_open() {
            return Heartbeat::NotOpen;
        }
        let expires = self.last_seen_ms.saturating_add(timeout_ms);
        if now_ms >= expires {
            return Heartbeat::Expired;
        }
        let ping_at = self.last_seen_ms.saturating_add(heartbeat_ms);
        if self.pinged || now_ms < ping_at {
            return Heartbeat::Wait { until_ms: if self.pinged { expires } else { ping_at.min(expires) } };
        }
        self.pinged = true;
        self.outbound.push_unbounded(Bytes::from_static(PING_FRAME));
        Heartbeat::Pinged { until_ms: expires }
    }

    // --- rooms ---

    /// The membership entry of `room`, if any.
    pub fn membership(&self, room: &str) -> Option<&Membership> {
        self.rooms.iter().find(|m| &*m.room == room)
    }

    /// Mutable membership entry of `room`, if any.
    pub fn membership_mut(&mut self, room: &str) -> Option<&mut Membership> {
        self.rooms.iter_mut().find(|m| &*m.room == room)
    }

    /// Whether the home confirmed the session's join of `room`.
    pub fn is_joined(&self, room: &str) -> bool {
        self.membership(room).is_some_and(|m| matches!(m.state, MemberState::Joined { .. }))
    }

    /// Record a join sent to the home and return its id.
    pub fn begin_join(&mut self, room: crate::ids::RoomName) -> u32 {
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

    /// Forget every room; returns the memberships.
    pub fn take_memberships(&mut self) -> Vec<Membership> {
        std::mem::take(&mut self.rooms)
    }

    /// Rooms joined or pending (the private `user:` room is not listed here).
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The rooms joined or pending.
    pub fn rooms(&self) -> impl Iterator<Item = &Membership> {
        self.rooms.iter()
    }

    // --- frames out ---

    /// Queue a frame for an open session within `budget`. `Err` when the budget is exceeded:
    /// the caller must close the session as a slow consumer. A closing session takes nothing
    /// (only its close frame and what was queued before it go out) and says `Ok`.
    pub fn send(&mut self, frame: &Bytes, budget: usize) -> Result<(), OverBudget> {
        match self.life {
            Life::Open { .. } => self.outbound.push(frame, budget),
            Life::Upgrading { .. } | Life::Closing { .. } | Life::Answered => Ok(()),
        }
    }

    /// Whether more than `budget` bytes wait after a write attempt (an open session only).
    pub fn over_budget(&self, budget: usize) -> bool {
        self.is_open() && self.outbound.queued() > budget
    }

    /// The queue the shell writes from.
    pub fn outbound_mut(&mut self) -> &mut Outbound {
        &mut self.outbound
    }

    /// The queue, read-only.
    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    // --- closing ---

    /// Start closing with `code` and queue the close frame after what is already queued; a slow
    /// consumer's backlog (4009) is dropped first, but for a half-written frame, since it is
    /// the reason for the close and would only delay it. Returns false if not open (already
    /// closing, or never upgraded).
    pub fn close(&mut self, code: u16, by_peer: bool) -> bool {
        if !self.is_open() {
            return false;
        }
        let Life::Open { guard } = std::mem::replace(&mut self.life, Life::Answered) else {
            return false;
        };
        if code == close_code::SLOW_CONSUMER {
            self.outbound.drop_unstarted();
        }
        self.outbound.push_unbounded(frame::close_frame(code, ""));
        self.life = Life::Closing { guard, code, by_peer };
        true
    }

    /// After a write attempt (and after the peer's end of stream): what the socket does next.
    /// Returns [`SocketStep::ShutdownWrite`] at most once.
    pub fn after_write(&mut self) -> SocketStep {
        let written = self.outbound.is_empty();
        match self.life {
            Life::Upgrading { .. } if self.peer_closed => SocketStep::Drop,
            Life::Upgrading { .. } | Life::Open { .. } => SocketStep::Keep,
            // An HTTP answer is followed by our end of stream, and the socket goes once the
            // peer closes too: dropping it with the peer's request unread would reset the
            // connection and the peer might never read the answer.
            Life::Answered if written && self.peer_closed => SocketStep::Drop,
            Life::Answered if written && !self.write_shut => {
                self.write_shut = true;
                SocketStep::ShutdownWrite
            }
            Life::Answered => SocketStep::Keep,
            Life::Closing { by_peer, .. } => {
                if written && (by_peer || self.peer_closed) {
                    SocketStep::Drop
                } else if written && !self.write_shut {
                    self.write_shut = true;
                    SocketStep::ShutdownWrite
                } else {
                    SocketStep::Keep
                }
            }
        }
    }
}

/// What a fired heartbeat deadline means. See [`Session::heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The session is not open: the deadline was the handshake's or the close's.
    NotOpen,
    /// Silent past the timeout: close it.
    Expired,
    /// A ping was queued; arm this deadline.
    Pinged {
        /// When the connection expires unless a frame arrives.
        until_ms: u64,
    },
    /// Nothing to do yet; arm this deadline.
    Wait {
        /// The next deadline.
        until_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn guard(user: &str) -> Guard {
        Guard::new(Identity::Development(Arc::from(user)), &crate::ratelimit::RateLimits::default(), 0)
    }

    fn open(now: u64) -> Session {
        Session::opened(ConnId(1), guard("u"), now)
    }

    #[test]
    fn a_silent_session_is_pinged_once_then_expires() {
        let mut s = open(0);
        assert_eq!(s.heartbeat(50, 100, 250), Heartbeat::Wait { until_ms: 100 });
        assert_eq!(s.heartbeat(100, 100, 250), Heartbeat::Pinged { until_ms: 250 });
        assert_eq!(s.outbound().queued(), 2, "an empty ping frame");
        assert_eq!(s.heartbeat(150, 100, 250), Heartbeat::Wait { until_ms: 250 }, "one ping per silence");
        assert_eq!(s.heartbeat(250, 100, 250), Heartbeat::Expired);
    }

    #[test]
    fn any_frame_resets_the_heartbeat() {
        let mut s = open(0);
        assert!(matches!(s.heartbeat(100, 100, 250), Heartbeat::Pinged { .. }));
        s.note_seen(120);
        assert_eq!(s.heartbeat(250, 100, 250), Heartbeat::Pinged { until_ms: 370 }, "not expired: it answered");
        s.note_seen(300);
        assert_eq!(s.heartbeat(370, 100, 250), Heartbeat::Wait { until_ms: 400 });
    }

    #[test]
    fn the_close_handshake_lets_the_socket_go_only_when_both_sides_are_done() {
        let mut s = open(0);
        assert!(s.close(close_code::GOING_AWAY, false));
        assert!(!s.close(close_code::NORMAL, false), "closing happens once");
        assert_eq!(s.after_write(), SocketStep::Keep, "the close frame is not written yet");
        let queued = s.outbound().queued();
        s.outbound_mut().advance(queued);
        assert_eq!(s.after_write(), SocketStep::ShutdownWrite);
        assert_eq!(s.after_write(), SocketStep::Keep, "shut once; now wait for the peer");
        s.note_peer_closed();
        assert_eq!(s.after_write(), SocketStep::Drop);
    }

    #[test]
    fn a_peer_initiated_close_goes_once_the_echo_is_written() {
        let mut s = open(0);
        assert!(s.close(1000, true));
        let queued = s.outbound().queued();
        s.outbound_mut().advance(queued);
        assert_eq!(s.after_write(), SocketStep::Drop);
    }

    #[test]
    fn an_upgrade_keeps_the_bytes_after_the_request_and_a_refusal_goes_once_written() {
        let mut s = Session::accept(ConnId(2), ListenerKind::Ws, 0);
        assert_eq!(s.push_request(b"RE"), b"RE");
        assert_eq!(s.push_request(b"Q\x81\x80"), b"REQ\x81\x80");
        let rest = s.upgrade(b"101".to_vec(), 3, guard("a"));
        assert_eq!((rest, s.phase(), s.user()), (b"\x81\x80".to_vec(), Phase::Open, "a"));
        let mut r = Session::accept(ConnId(3), ListenerKind::Ws, 0);
        r.answer(b"HTTP/1.1 404".to_vec());
        assert_eq!((r.phase(), r.after_write()), (Phase::Answered, SocketStep::Keep));
        r.outbound_mut().advance(12);
        assert_eq!(r.after_write(), SocketStep::ShutdownWrite, "the answer, then our end of stream");
        assert_eq!(r.after_write(), SocketStep::Keep, "waiting for the peer to close");
        r.note_peer_closed();
        assert_eq!(r.after_write(), SocketStep::Drop);
        assert!(r.send(&Bytes::from_static(b"x"), 10).is_ok() && r.outbound().is_empty(), "nothing after a refusal");
    }
}
