//! A connection's life as the shard drives it: accept, the upgrade, frames in, the heartbeat,
//! closing, and the socket's end (the states themselves are [`Session`]'s).
//!
//! The shell reports what happened to a socket (bytes, end of stream, an error, writability, a
//! write done); every decision about what that means is made here: whether the upgrade is
//! accepted and as whom, what a frame means, when a silent connection is pinged or closed, when
//! a slow consumer is cut, and when a socket is shut or dropped. The shell learns the outcome
//! from the shard's output lists, never by reading session state.

use super::mail::{Mail, Origin};
use super::Shard;
use crate::admission::UserAdmit;
use crate::auth::{Authenticated, Guard, Identity, Refused};
use crate::ids::ConnKey;
use crate::metrics::ListenerKind;
use crate::query::LeaveReason;
use crate::session::{Heartbeat, Phase, Session, SocketStep};
use crate::wire::frame::{self, close_code, Incoming};
use crate::wire::server_msg;
use crate::wire::upgrade::{self, Accepted, Endpoint, Handshake, Rejection};
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

    /// A connection refused before its upgrade was read (at capacity, too many from its
    /// address): `response` is its whole answer. It is written, our side of the stream is shut,
    /// and the socket goes when the peer closes (or at the handshake timeout).
    pub fn accept_refused(&mut self, io: Io, listener: ListenerKind, response: Vec<u8>, now_ms: u64) -> ConnKey {
        let key = self.accept(io, listener, now_ms);
        self.answer_http(key, response);
        key
    }

    /// Accept a connection whose upgrade was done elsewhere (tests, benches, simulations): it
    /// is open at once as `user` (an anonymous id is made up when `None`).
    pub fn open(&mut self, io: Io, user: Option<&str>, now_ms: u64) -> ConnKey {
        self.now_ms = now_ms;
        *self.counters.connects.slot(ListenerKind::Ws) += 1;
        *self.counters.connections_open.slot(ListenerKind::Ws) += 1;
        let limits = &self.cfg.rate_limits;
        let key = self.conns.insert(io, |id| {
            let user: Arc<str> = user.map_or_else(|| Arc::from(format!("anon-{id}")), Arc::from);
            Session::opened(id, Guard::new(Identity::Development(user), limits, now_ms), now_ms)
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
        tracing::debug!(conn = %conn.session.id(), user = %conn.session.user(), code, by_peer, reason = reason.as_str(), "connection closing");
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

    /// Close up to `count` open connections with `code` (a staged shutdown closes a share of
    /// them per turn); connections still upgrading go at once. Returns how many were closed.
    pub fn close_some(&mut self, code: u16, count: usize, now_ms: u64) -> usize {
        self.now_ms = now_ms;
        self.homes.flush_all(now_ms, &mut self.router);
        self.drain_loopback(now_ms);
        let mut closed = 0;
        for key in self.conns.keys() {
            if closed >= count {
                break;
            }
            match self.conns.get(key).map(|c| c.session.phase()) {
                Some(Phase::Upgrading | Phase::Answered) => self.drop_conn(key, now_ms),
                Some(Phase::Open) => {
                    self.close(key, code, false);
                    closed += 1;
                }
                _ => {}
            }
        }
        self.drain_loopback(now_ms);
        closed
    }

    /// Open connections (upgraded and not closing).
    pub fn open_count(&self) -> usize {
        self.conns.keys().into_iter().filter(|k| self.conns.get(*k).is_some_and(|c| c.session.is_open())).count()
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
            let expiry = conn.session.guard().and_then(|g| g.deadline_ms(&self.auth));
            if conn.session.is_open() && expiry.is_some_and(|at| at <= now_ms) {
                tracing::debug!(conn = %conn.session.id(), user = %conn.session.user(), "token expired and not refreshed: closing with 4001");
                self.close_for(key, close_code::TOKEN_EXPIRED, false, LeaveReason::Closed);
                continue;
            }
            match conn.session.heartbeat(now_ms, heartbeat_ms, timeout_ms) {
                Heartbeat::NotOpen => {
                    tracing::debug!(conn = %conn.session.id(), phase = ?conn.session.phase(), "deadline passed: dropping");
                    self.drop_conn(key, now_ms);
                }
                Heartbeat::Expired => self.close_for(key, close_code::GOING_AWAY, false, LeaveReason::Heartbeat),
                Heartbeat::Pinged { until_ms } => {
                    let at = self.deadline(key, until_ms);
                    self.conns.arm(key, at);
                    self.conns.mark_dirty(key);
                }
                Heartbeat::Wait { until_ms } => {
                    let at = self.deadline(key, until_ms);
                    self.conns.arm(key, at);
                }
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
        match self.cfg.upgrade.parse(request) {
            Handshake::Incomplete => {}
            Handshake::Rejected(Rejection { status, reason, response }) => {
                tracing::debug!(conn = %conn.session.id(), status, reason, "upgrade refused");
                self.answer_http(key, response);
            }
            Handshake::Accepted(accepted) => self.accepted(key, *accepted, now_ms),
        }
    }

    /// A valid upgrade request: who is it (the token, or `?user=` without auth), may it
    /// connect (the per-user cap), then open.
    fn accepted(&mut self, key: ConnKey, accepted: Accepted, now_ms: u64) {
        let Some(conn) = self.conns.get(key) else { return };
        let id = conn.session.id();
        let token = accepted.credential.as_ref().map(|c| c.token.as_str());
        let identity = match self.auth.authenticate(token, now_ms) {
            Ok(Authenticated::Verified(claims)) => Identity::Verified(claims),
            Ok(Authenticated::Development) => {
                let user = accepted.user.as_deref().map_or_else(|| Arc::from(format!("anon-{id}")), Arc::from);
                Identity::Development(user)
            }
            Err(e) => {
                // The reason, never the token.
                tracing::debug!(conn = %id, why = %e, "upgrade refused: 401");
                self.counters.auth_refusals += 1;
                return self.answer_http(key, upgrade::unauthorized(&e.to_string()));
            }
        };
        if let Some(admission) = &self.cfg.admission {
            let origin = Origin { worker: self.id, key, conn: id };
            match admission.admit_user(identity.user(), origin) {
                UserAdmit::Admit => {}
                UserAdmit::AdmitAndClose(oldest) => {
                    self.router.post(oldest.worker, Mail::CloseConn { to: oldest, code: close_code::POLICY });
                }
                UserAdmit::Refuse(refusal) => {
                    tracing::debug!(conn = %id, user = %identity.user(), "upgrade refused: the user has its most connections");
                    let message = "this user has as many connections as it may; close one first";
                    return self.answer_http(key, upgrade::unavailable(refusal.http_status(), message, 5));
                }
            }
        }
        let guard = Guard::new(identity, &self.cfg.rate_limits, now_ms);
        let Some(conn) = self.conns.get_mut(key) else { return };
        let mut rest = conn.session.upgrade(accepted.response, accepted.consumed, guard);
        if accepted.endpoint == Endpoint::Echo {
            conn.session.set_echo();
        }
        self.opened(key, now_ms);
        if !rest.is_empty() {
            self.feed(key, &mut rest, now_ms);
        }
    }

    fn answer_http(&mut self, key: ConnKey, response: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.session.answer(response);
        self.conns.mark_dirty(key);
    }

    /// The connection is open: `hello`, its private room, its deadline (the heartbeat, or its
    /// token's expiry when that comes first).
    fn opened(&mut self, key: ConnKey, now_ms: u64) {
        let Some(conn) = self.conns.get(key) else { return };
        let Some(identity) = conn.session.identity() else { return };
        let (id, user, echo) = (conn.session.id(), Arc::clone(identity.user()), conn.session.is_echo());
        tracing::debug!(conn = %id, user = %user, listener = conn.session.listener().as_str(), echo, "connection open");
        let deadline = self.deadline(key, now_ms + self.cfg.heartbeat_ms);
        self.conns.arm(key, deadline);
        if echo {
            // The testing echo endpoint speaks no protocol: no hello, no rooms.
            return;
        }
        let (lo, hi) = self.cfg.reconnect_ms;
        let widen = if self.cfg.admission.as_ref().is_some_and(|a| a.under_load()) { 4 } else { 1 };
        let hello = server_msg::Hello {
            conn: id.0,
            user: &user,
            heartbeat_ms: self.cfg.heartbeat_ms,
            max_message: self.cfg.max_message,
            reconnect_ms: (lo * widen, hi * widen),
        };
        let hello = frame::text_frame_with(|out| server_msg::hello(out, hello));
        self.send_to(key, hello);
        // The private room `user:<id>` is joined locally, indexed by the user id (shared with
        // the session, so it costs no allocation). Private rooms keep no audience at their home
        // (that would cost a home room and a round trip per connection): a message to one is
        // sequenced at its home and sent to every worker, and each delivers it to the user's
        // local connections. No `joined` is sent; the client did not ask.
        if self.members.add_connection(&user, key) {
            // In a cluster the node follows the user's private room while it holds any.
            self.homes.private(&user, true);
        }
    }

    /// The connection's next deadline: `next` (its heartbeat), or its token's expiry when that
    /// comes first.
    fn deadline(&self, key: ConnKey, next: u64) -> u64 {
        let expiry = self.conns.get(key).and_then(|c| c.session.guard()).and_then(|g| g.deadline_ms(&self.auth));
        expiry.map_or(next, |e| e.min(next))
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
        if conn.session.is_echo() {
            return self.echo(key, msg);
        }
        match msg {
            Incoming::Text(buf) => self.handle_text(key, buf, now_ms),
            Incoming::Binary(_) => {
                if self.check(key, now_ms, |g, l, now| g.check_message(l, now)).is_ok() {
                    let message = "binary messages are not part of the protocol: send JSON as text messages";
                    self.reply_error(key, (None, None), crate::wire::ErrorCode::BadRequest, message)
                }
            }
            Incoming::Ping(payload) => {
                if self.check(key, now_ms, |g, l, now| g.check_message(l, now)).is_ok() {
                    self.send_to(key, frame::pong_frame(payload));
                }
            }
            Incoming::Pong(_) => {}
            Incoming::Close(code, _) => {
                // RFC 6455 5.5.1: "the endpoint typically echos the status code it received".
                let echo = code.unwrap_or(close_code::NORMAL);
                self.close(key, echo, true);
            }
        }
    }

    /// The testing echo endpoint (`testing.echo_path`, for the Autobahn TestSuite): every
    /// message goes back as it came; pings get pongs; nothing else is spoken.
    fn echo(&mut self, key: ConnKey, msg: Incoming<'_>) {
        match msg {
            Incoming::Text(payload) => self.send_to(key, frame::text_frame(payload)),
            Incoming::Binary(payload) => self.send_to(key, frame::binary_frame(payload)),
            Incoming::Ping(payload) => self.send_to(key, frame::pong_frame(payload)),
            Incoming::Pong(_) => {}
            Incoming::Close(code, _) => self.close(key, code.unwrap_or(close_code::NORMAL), true),
        }
    }

    /// Ask the connection's guard (its claims and rate limits) about an action. A refusal
    /// that closes (4008, repeated violations) closes here; the caller answers the others.
    pub(super) fn check(
        &mut self,
        key: ConnKey,
        now_ms: u64,
        check: impl FnOnce(&mut Guard, &crate::ratelimit::RateLimits, u64) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        let limits = &self.cfg.rate_limits;
        let Some(guard) = self.conns.get_mut(key).and_then(|c| c.session.guard_mut()) else { return Ok(()) };
        let result = check(guard, limits, now_ms);
        if let Err(refused) = &result {
            if matches!(refused, Refused::RateLimited(_) | Refused::Close) {
                self.counters.rate_limited += 1;
            }
            if let Some(code) = refused.close_code() {
                tracing::debug!(code, "closing: rate limit exceeded repeatedly");
                self.close_for(key, code, false, LeaveReason::Closed);
            }
        }
        result
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
            self.conns.drop_socket(key, conn);
        }
        self.drain_loopback(now_ms);
    }

    /// Take the connection out of every index; an open one leaves its rooms first.
    fn take_conn(&mut self, key: ConnKey) -> Option<super::Conn<Io>> {
        let conn = self.conns.get(key)?;
        if conn.session.is_open() {
            // Gone without a close handshake: RFC 6455's 1006, "abnormal closure".
            tracing::debug!(conn = %conn.session.id(), user = %conn.session.user(), code = ABNORMAL_CLOSURE, "connection gone without a close");
            self.counters.closes.record(ABNORMAL_CLOSURE);
            self.leave_all(key, LeaveReason::Closed);
        }
        let conn = self.conns.remove(key)?;
        let open = self.counters.connections_open.slot(conn.session.listener());
        *open = open.saturating_sub(1);
        if let (Some(admission), Some(identity)) = (&self.cfg.admission, conn.session.identity()) {
            admission.release_user(identity.user(), Origin { worker: self.id, key, conn: conn.session.id() });
        }
        if let Some(identity) = conn.session.identity() {
            if self.members.remove_connection(identity.user(), key) {
                self.homes.private(identity.user(), false);
            }
        }
        Some(conn)
    }
}
