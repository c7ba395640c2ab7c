//! A connection's life as the shard drives it: accept, the upgrade, frames in, the heartbeat,
//! closing, and the socket's end (the states themselves are [`Session`]'s).
//!
//! The shell reports what happened to a socket (bytes, end of stream, an error, writability, a
//! write done); every decision about what that means is made here: whether the upgrade is
//! accepted and as whom, what a frame means, when a silent connection is pinged or closed, when
//! a slow consumer is cut, and when a socket is shut or dropped. The shell learns the outcome
//! from the shard's output lists, never by reading session state.

use super::Shard;
use crate::ids::ConnKey;
use crate::metrics::ListenerKind;
use crate::query::LeaveReason;
use crate::session::{Heartbeat, Identity, Phase, Session, SocketStep};
use crate::wire::frame::{self, close_code, Incoming};
use crate::wire::server_msg;
use crate::wire::upgrade::{self, Upgrade};
use std::ops::ControlFlow;
use std::sync::Arc;

/// RFC 6455 7.1.5: the code "reserved" for a connection "closed abnormally, e.g., without
/// sending or receiving a Close control frame"; counted, never sent.
const ABNORMAL_CLOSURE: u16 = 1006;

impl<Io> Shard<Io> {
    /// A connection was accepted on `listener`: it has `handshake_timeout_ms` to complete its
    /// upgrade.
    pub fn accept(&mut self, io: Io, listener: ListenerKind, now_ms: u64) -> ConnKey {
        self.now_ms = now_ms;
        *self.counters.connects.slot(listener) += 1;
        *self.counters.connections_open.slot(listener) += 1;
        let key = self.conns.insert(io, |id| Session::accept(id, listener, now_ms));
        self.conns.arm(key, now_ms + self.cfg.handshake_timeout_ms);
        key
    }

    /// Accept a connection whose upgrade was done elsewhere (tests, benches, simulations): it
    /// is open at once as `user` (an anonymous id is made up when `None`).
    pub fn open(&mut self, io: Io, user: Option<&str>, now_ms: u64) -> ConnKey {
        self.now_ms = now_ms;
        *self.counters.connects.slot(ListenerKind::Ws) += 1;
        *self.counters.connections_open.slot(ListenerKind::Ws) += 1;
        let key = self.conns.insert(io, |id| {
            let user: Arc<str> = user.map_or_else(|| Arc::from(format!("anon-{id}")), Arc::from);
            Session::opened(id, Identity { name: Arc::clone(&user), user }, now_ms)
        });
        self.opened(key, now_ms);
        self.drain_loopback(now_ms);
        key
    }

    /// Bytes arrived on the connection: the upgrade request while upgrading, WebSocket frames
    /// after it. `bytes` is the worker's scratch buffer; text is parsed in place.
    pub fn handle_bytes(&mut self, key: ConnKey, bytes: &mut [u8], now_ms: u64) {
        self.now_ms = now_ms;
        let Some(conn) = self.conns.get_mut(key) else { return };
        match conn.session.phase() {
            Phase::Upgrading => self.upgrade(key, bytes, now_ms),
            Phase::Open | Phase::Closing { .. } => self.feed(key, bytes, now_ms),
            Phase::Answered => {}
        }
        self.step_socket(key);
        self.drain_loopback(now_ms);
    }

    /// One complete WebSocket message from the connection (the frame reader's output; tests
    /// and benches call it directly).
    pub fn handle_incoming(&mut self, key: ConnKey, msg: Incoming<'_>, now_ms: u64) {
        self.incoming(key, msg, now_ms);
        self.drain_loopback(now_ms);
    }

    /// The peer closed its side of the socket.
    pub fn handle_eof(&mut self, key: ConnKey, now_ms: u64) {
        self.now_ms = now_ms;
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.session.note_peer_closed();
        match conn.session.phase() {
            // Gone without a close frame: 1006 on its side, gone on ours.
            Phase::Open | Phase::Upgrading => self.drop_conn(key, now_ms),
            Phase::Closing { .. } | Phase::Answered => self.step_socket(key),
        }
    }

    /// The socket failed (read or write error, or it could not be registered): it goes now.
    pub fn handle_io_error(&mut self, key: ConnKey, now_ms: u64) {
        self.now_ms = now_ms;
        self.drop_conn(key, now_ms);
    }

    /// The socket can take more: list the connection if something waits.
    pub fn handle_writable(&mut self, key: ConnKey) {
        if self.conns.get(key).is_some_and(|c| !c.session.outbound().is_empty()) {
            self.conns.mark_dirty(key);
        }
    }

    /// The shell wrote what the socket took (`ok`) or the write failed. A connection that still
    /// has more than its budget queued cannot keep up with its rooms and is closed with 4009
    /// (its close frame is listed to be written in this same turn); a closing connection whose
    /// close is written moves on.
    pub fn handle_written(&mut self, key: ConnKey, ok: bool, now_ms: u64) {
        self.now_ms = now_ms;
        if let Some((at, before)) = self.transmitting.take().filter(|(at, _)| *at == key) {
            let after = self.conns.get(at).map_or(before, |c| c.session.outbound().queued());
            if after < before {
                self.counters.socket_writes += 1;
                self.counters.bytes_out += (before - after) as u64;
            }
        }
        if !ok {
            return self.drop_conn(key, now_ms);
        }
        self.enforce_budget(key);
        self.step_socket(key);
        self.drain_loopback(now_ms);
    }

    /// Close with 4009 a connection that has more than its outbound budget queued. Returns true
    /// when it was closed now.
    pub fn enforce_budget(&mut self, key: ConnKey) -> bool {
        let budget = self.cfg.outbound_budget;
        let over = self.conns.get(key).is_some_and(|c| c.session.over_budget(budget));
        if over {
            self.close(key, close_code::SLOW_CONSUMER, false);
        }
        over
    }

    /// Close the connection with `code` (a framing rule broken, a kick, shutdown...): the close
    /// frame is queued and the connection leaves its rooms.
    pub fn close(&mut self, key: ConnKey, code: u16, by_peer: bool) {
        let reason = match code {
            close_code::KICKED => LeaveReason::Kicked,
            close_code::SLOW_CONSUMER => LeaveReason::SlowConsumer,
            _ => LeaveReason::Closed,
        };
        self.close_for(key, code, by_peer, reason);
    }

    /// [`Shard::close`], with the reason its rooms are told.
    pub(super) fn close_for(&mut self, key: ConnKey, code: u16, by_peer: bool, reason: LeaveReason) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if !conn.session.close(code, by_peer) {
            return;
        }
        self.counters.closes.record(code);
        if code == close_code::SLOW_CONSUMER {
            self.counters.slow_consumer_closes += 1;
            tracing::warn!(
                conn = %conn.session.id(),
                user = %conn.session.user(),
                budget = self.cfg.outbound_budget,
                "slow consumer: outbound queue over budget, closing with 4009"
            );
        }
        self.conns.arm(key, self.now_ms + self.cfg.close_timeout_ms);
        self.conns.mark_dirty(key);
        self.leave_all(key, reason);
    }

    /// Close every connection with `code` (shutdown: 1001); connections still upgrading go.
    pub fn close_all(&mut self, code: u16, now_ms: u64) {
        self.now_ms = now_ms;
        // Batches held by the window go out before the close frames.
        self.homes.flush_all(now_ms, &mut self.router);
        self.drain_loopback(now_ms);
        for key in self.conns.keys() {
            let phase = self.conns.get(key).map(|c| c.session.phase());
            match phase {
                Some(Phase::Upgrading | Phase::Answered) => self.drop_conn(key, now_ms),
                _ => self.close(key, code, false),
            }
        }
        self.drain_loopback(now_ms);
    }

    /// Forget the connection at once, leaving its rooms, and give back its IO handle (tests
    /// and simulations; the shell learns of drops through [`Shard::poll_gone`]).
    pub fn remove(&mut self, key: ConnKey, now_ms: u64) -> Option<Io> {
        self.now_ms = now_ms;
        let io = self.take_conn(key).map(|c| c.io);
        self.drain_loopback(now_ms);
        io
    }

    /// Fire due deadlines: drop connections whose upgrade or close handshake timed out, ping
    /// connections silent for the heartbeat interval and close (1001) those silent for the
    /// heartbeat timeout.
    pub fn expire(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let fired = self.conns.take_fired(now_ms);
        for &key in &fired {
            let key = ConnKey(key);
            let (heartbeat_ms, timeout_ms) = (self.cfg.heartbeat_ms, self.cfg.heartbeat_timeout_ms);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match conn.session.heartbeat(now_ms, heartbeat_ms, timeout_ms) {
                Heartbeat::NotOpen => {
                    tracing::debug!(conn = %conn.session.id(), phase = ?conn.session.phase(), "deadline passed: dropping");
                    self.drop_conn(key, now_ms);
                }
                Heartbeat::Expired => self.close_for(key, close_code::GOING_AWAY, false, LeaveReason::Heartbeat),
                Heartbeat::Pinged { until_ms } => {
                    self.conns.arm(key, until_ms);
                    self.conns.mark_dirty(key);
                }
                Heartbeat::Wait { until_ms } => self.conns.arm(key, until_ms),
            }
        }
        self.conns.restore_fired(fired);
        self.drain_loopback(now_ms);
    }

    // --- the upgrade ---

    fn upgrade(&mut self, key: ConnKey, bytes: &[u8], now_ms: u64) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let request = conn.session.push_request(bytes);
        if let Some(page) = self.cfg.demo_page.as_ref().and_then(|page| page.respond_to(request)) {
            let page = page.to_vec();
            return self.answer_http(key, page);
        }
        let decision = upgrade::parse_upgrade(request, &self.cfg.ws_path);
        match decision {
            Upgrade::Incomplete => {}
            Upgrade::Rejected { response, reason, status } => {
                tracing::debug!(conn = %conn.session.id(), status, reason, "upgrade refused");
                self.answer_http(key, response);
            }
            Upgrade::Accepted { consumed, response, user, token: _ } => {
                let user: Arc<str> = match user {
                    Some(user) => match crate::ids::validate_name(&user) {
                        Ok(()) => Arc::from(user),
                        Err(why) => {
                            tracing::debug!(conn = %conn.session.id(), why, "upgrade refused: bad user");
                            return self.answer_http(key, upgrade::http_error(400, &format!("bad user: {why}")));
                        }
                    },
                    None => Arc::from(format!("anon-{}", conn.session.id())),
                };
                let identity = Identity { name: Arc::clone(&user), user };
                let mut rest = conn.session.upgrade(response, consumed, identity);
                self.opened(key, now_ms);
                if !rest.is_empty() {
                    self.feed(key, &mut rest, now_ms);
                }
            }
        }
    }

    fn answer_http(&mut self, key: ConnKey, response: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.session.answer(response);
        self.conns.mark_dirty(key);
    }

    /// The connection is open: `hello`, its private room, its heartbeat.
    fn opened(&mut self, key: ConnKey, now_ms: u64) {
        let Some(conn) = self.conns.get(key) else { return };
        let Some(identity) = conn.session.identity() else { return };
        let (id, user) = (conn.session.id(), Arc::clone(&identity.user));
        self.conns.arm(key, now_ms + self.cfg.heartbeat_ms);
        let hello = frame::text_frame_with(|out| {
            server_msg::hello(out, id.0, &user, self.cfg.heartbeat_ms, self.cfg.max_message)
        });
        self.send_to(key, hello);
        // The private room `user:<id>` is joined locally, indexed by the user id (shared with
        // the session, so it costs no allocation). Private rooms keep no audience at their home
        // (that would cost a home room and a round trip per connection): a message to one is
        // sequenced at its home and sent to every worker, and each delivers it to the user's
        // local connections. No `joined` is sent; the client did not ask.
        self.members.add_connection(&user, key);
    }

    // --- frames in ---

    /// Feed bytes to the connection's frame reader and its messages to the viewer logic.
    fn feed(&mut self, key: ConnKey, bytes: &mut [u8], now_ms: u64) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let mut reader = conn.session.take_reader();
        let mut got_close = false;
        let max_message = self.cfg.max_message;
        let result = reader.feed(bytes, max_message, |msg| {
            got_close |= matches!(msg, Incoming::Close(..));
            self.incoming(key, msg, now_ms);
            if got_close {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.session.restore_reader(reader);
        if got_close {
            conn.session.note_peer_closed();
        }
        if let Err(e) = result {
            tracing::debug!(conn = %conn.session.id(), error = %e, "closing on bad input");
            self.close(key, e.close_code(), false);
        }
    }

    /// One message: frames that belong to the connection's life are handled here, text goes to
    /// the viewer logic.
    fn incoming(&mut self, key: ConnKey, msg: Incoming<'_>, now_ms: u64) {
        self.now_ms = now_ms;
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.session.note_seen(now_ms);
        if !conn.session.is_open() {
            // After a close only the peer's close reply matters, and the reader reports it.
            return;
        }
        match msg {
            Incoming::Text(buf) => self.handle_text(key, buf, now_ms),
            Incoming::Binary(_) => {
                let message = "binary messages are not part of the protocol: send JSON as text messages";
                self.reply_error(key, (None, None), crate::wire::ErrorCode::BadRequest, message)
            }
            Incoming::Ping(payload) => self.send_to(key, frame::pong_frame(payload)),
            Incoming::Pong(_) => {}
            Incoming::Close(code, _) => {
                // RFC 6455 5.5.1: "the endpoint typically echos the status code it received".
                let echo = code.unwrap_or(close_code::NORMAL);
                self.close(key, echo, true);
            }
        }
    }

    // --- the end ---

    /// Decide the socket's next step after a write or the peer's end of stream.
    fn step_socket(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match conn.session.after_write() {
            SocketStep::Keep => {}
            SocketStep::ShutdownWrite => self.conns.list_shutdown(key),
            SocketStep::Drop => self.drop_conn(key, self.now_ms),
        }
    }

    /// Forget the connection and hand its socket to the shell to drop.
    fn drop_conn(&mut self, key: ConnKey, now_ms: u64) {
        if let Some(conn) = self.take_conn(key) {
            self.conns.drop_socket(conn);
        }
        self.drain_loopback(now_ms);
    }

    /// Take the connection out of every index; an open one leaves its rooms first.
    fn take_conn(&mut self, key: ConnKey) -> Option<super::Conn<Io>> {
        let conn = self.conns.get(key)?;
        if conn.session.is_open() {
            // Gone without a close handshake: RFC 6455's 1006, "abnormal closure".
            self.counters.closes.record(ABNORMAL_CLOSURE);
            self.leave_all(key, LeaveReason::Closed);
        }
        let conn = self.conns.remove(key)?;
        let open = self.counters.connections_open.slot(conn.session.listener());
        *open = open.saturating_sub(1);
        if conn.session.identity().is_some() {
            self.members.remove_connection(conn.session.user(), key);
        }
        Some(conn)
    }
}
