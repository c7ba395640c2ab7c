//! One worker thread: a `mio::Poll`, its own `SO_REUSEPORT` listeners, the connections in its
//! [`Shard`], and its mailbox.
//!
//! The loop only moves bytes: it accepts, completes the HTTP upgrade, reads into one
//! per-worker scratch buffer and hands complete WebSocket messages to the shard, passes mail
//! between the shard and the other threads, and once per turn writes every connection that has
//! new frames (one vectored write each). All decisions are the shard's.
//!
//! epoll is edge-triggered: every socket is registered once for read and write and drained
//! until `WouldBlock`; a connection with unwritten frames is simply retried on its next
//! writable event (mio `examples/tcp_server.rs`).

use super::mesh::{IngestMail, Mesh, WorkerMail};
use super::transport::Transport;
use super::{clock_ms, Listener};
use crate::ids::{ConnKey, WorkerId};
use crate::session::Phase;
use crate::shard::{Shard, ShardConfig};
use crate::wheel::TimerWheel;
use crate::wire::frame::{close_code, FrameReader, Incoming, Role};
use crate::wire::upgrade::{self, Upgrade};
use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

/// Bytes read from a socket at once; one buffer per worker, shared by all its connections.
const SCRATCH_LEN: usize = 64 * 1024;
/// Resolution of handshake deadlines.
const HANDSHAKE_TICK_MS: u64 = 100;
/// How long a shutting-down worker waits for close frames to drain.
const SHUTDOWN_GRACE_MS: u64 = 2_000;

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 16;
const UPGRADING_BIT: usize = 1 << 40;

/// What the worker keeps per open connection, besides the protocol state in the shard.
#[derive(Debug)]
pub struct ConnIo {
    transport: Transport,
    reader: FrameReader,
    /// The peer's close frame (or end of stream) arrived.
    peer_closed: bool,
    /// Our close frame is fully written and the write side shut.
    write_shut: bool,
    /// Already on the worker's list of closing connections.
    listed_closing: bool,
}

/// A connection still in its HTTP upgrade.
#[derive(Debug)]
struct Upgrading {
    transport: Transport,
    request: Vec<u8>,
}

/// Settings the loop itself needs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The upgrade path (`/ws`).
    pub path: String,
    /// Largest client message.
    pub max_message: usize,
    /// Handshake timeout.
    pub handshake_timeout_ms: u64,
    /// TLS configuration for listeners marked TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// One worker. Built on the main thread (so its waker exists before any thread runs), then
/// moved into its thread and [`Worker::run`].
pub struct Worker {
    id: WorkerId,
    poll: Poll,
    inbox: Receiver<WorkerMail>,
    mesh: Arc<Mesh>,
    listeners: Vec<Listener>,
    upgrading: Slab<Upgrading>,
    shard: Shard<ConnIo>,
    settings: WorkerSettings,
    scratch: Vec<u8>,
    dirty: Vec<ConnKey>,
    /// The shard's dirty list of this turn (kept to reuse its buffer).
    from_shard: Vec<ConnKey>,
    /// Connections that may have finished closing; checked after each flush.
    closing: Vec<ConnKey>,
    /// Handshake deadlines of `upgrading`, by slab key.
    handshakes: TimerWheel,
    fired: Vec<usize>,
    shutdown_deadline_ms: Option<u64>,
}

impl Worker {
    /// A worker around an existing poll (whose registry made its waker) and listeners.
    pub fn new(
        id: WorkerId,
        poll: Poll,
        inbox: Receiver<WorkerMail>,
        mesh: Arc<Mesh>,
        mut listeners: Vec<Listener>,
        shard_cfg: ShardConfig,
        settings: WorkerSettings,
    ) -> io::Result<Self> {
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry().register(&mut l.socket, Token(LISTENER_BASE + i), Interest::READABLE)?;
        }
        Ok(Self {
            id,
            poll,
            inbox,
            mesh,
            listeners,
            upgrading: Slab::new(),
            shard: Shard::new(id, shard_cfg),
            settings,
            scratch: vec![0; SCRATCH_LEN],
            dirty: Vec::new(),
            from_shard: Vec::new(),
            closing: Vec::new(),
            handshakes: TimerWheel::new(HANDSHAKE_TICK_MS, clock_ms()),
            fired: Vec::new(),
            shutdown_deadline_ms: None,
        })
    }

    /// The token the worker's waker must be created with.
    pub const WAKER_TOKEN: Token = WAKER;

    /// Run until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(clock_ms());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = clock_ms();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE, now),
                    Token(t) if t & UPGRADING_BIT != 0 => self.upgrade(t & !UPGRADING_BIT, now),
                    Token(t) => {
                        let key = ConnKey(t);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key, now);
                        }
                        if event.is_writable() {
                            self.mark_writable(key);
                        }
                    }
                }
            }
            self.drain_inbox(now);
            self.shard.tick(now);
            self.shard.end_turn(now);
            self.send_mail();
            self.flush(now);
            self.shard.expire(now);
            self.sweep(now);
            self.finish_closing(now);
            if let Some(deadline) = self.shutdown_deadline_ms {
                if self.shard.conn_count() == 0 || now >= deadline {
                    tracing::debug!(worker = %self.id, left = self.shard.conn_count(), "worker stopped");
                    return Ok(());
                }
            }
        }
    }

    /// Sleep until the shard's next tick, or the next sweep while handshakes or closes are
    /// in progress.
    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        let mut wake_at = self.shard.next_wake_ms();
        if let Some(handshake) = self.handshakes.next_deadline() {
            wake_at = wake_at.min(handshake);
        }
        if let Some(deadline) = self.shutdown_deadline_ms {
            wake_at = wake_at.min(deadline);
        }
        Some(Duration::from_millis(wake_at.saturating_sub(now)))
    }

    fn accept(&mut self, index: usize, now: u64) {
        let Some(listener) = self.listeners.get(index) else { return };
        let tls = listener.tls;
        loop {
            let (sock, _) = match listener.socket.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and try again on the next event rather than spin.
                    tracing::warn!(worker = %self.id, error = %e, "accept failed");
                    return;
                }
            };
            if self.shutdown_deadline_ms.is_some() {
                continue;
            }
            let _ = sock.set_nodelay(true);
            let transport = match (tls, &self.settings.tls) {
                (true, Some(cfg)) => match rustls::ServerConnection::new(Arc::clone(cfg)) {
                    Ok(conn) => Transport::tls(sock, conn),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS session setup failed");
                        continue;
                    }
                },
                _ => Transport::Plain(sock),
            };
            let entry = self.upgrading.vacant_entry();
            let index = entry.key();
            let mut up = Upgrading { transport, request: Vec::new() };
            let token = Token(index | UPGRADING_BIT);
            if self
                .poll
                .registry()
                .register(up.transport.socket(), token, Interest::READABLE | Interest::WRITABLE)
                .is_ok()
            {
                entry.insert(up);
                self.handshakes.arm(index, now + self.settings.handshake_timeout_ms);
            }
        }
    }

    fn upgrade(&mut self, index: usize, now: u64) {
        let Some(up) = self.upgrading.get_mut(index) else { return };
        let mut failed = false;
        loop {
            match up.transport.read(&mut self.scratch) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => up.request.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            if up.request.len() > upgrade::MAX_REQUEST_BYTES {
                break;
            }
        }
        if up.transport.flush_tls().is_err() {
            failed = true;
        }
        if failed {
            self.drop_upgrading(index);
            return;
        }
        match upgrade::parse_upgrade(&up.request, &self.settings.path) {
            Upgrade::Incomplete if up.request.len() <= upgrade::MAX_REQUEST_BYTES => {}
            Upgrade::Incomplete => {
                let _ = up.transport.write_all_now(&upgrade::http_error(431, "request too large"));
                self.drop_upgrading(index);
            }
            Upgrade::Rejected { response, reason, .. } => {
                tracing::debug!(worker = %self.id, reason, "upgrade rejected");
                let _ = up.transport.write_all_now(&response);
                self.drop_upgrading(index);
            }
            Upgrade::Accepted { consumed, response, user, token: _ } => {
                if let Some(user) = user.as_deref() {
                    if let Err(why) = crate::wire::validate_room(user) {
                        let _ = up.transport.write_all_now(&upgrade::http_error(400, &format!("bad user: {why}")));
                        self.drop_upgrading(index);
                        return;
                    }
                }
                self.handshakes.cancel(index);
                let mut up = self.upgrading.remove(index);
                if up.transport.write_all_now(&response).is_err() {
                    let _ = self.poll.registry().deregister(up.transport.socket());
                    return;
                }
                let mut leftover = up.request.split_off(consumed.min(up.request.len()));
                let io = ConnIo {
                    transport: up.transport,
                    reader: FrameReader::new(Role::Server),
                    peer_closed: false,
                    write_shut: false,
                    listed_closing: false,
                };
                let key = self.shard.open(io, user.as_deref(), now);
                let Some(conn) = self.shard.conn_mut(key) else { return };
                if self
                    .poll
                    .registry()
                    .reregister(conn.io.transport.socket(), Token(key.0), Interest::READABLE | Interest::WRITABLE)
                    .is_err()
                {
                    self.shard.remove(key, now);
                    return;
                }
                if !leftover.is_empty() {
                    self.feed(key, &mut leftover, now);
                }
                // Data that arrived with the request is already consumed; more may be waiting.
                self.read(key, now);
            }
        }
    }

    fn drop_upgrading(&mut self, index: usize) {
        self.handshakes.cancel(index);
        if let Some(mut up) = self.upgrading.try_remove(index) {
            let _ = self.poll.registry().deregister(up.transport.socket());
        }
    }

    /// Read everything the socket has and feed it to the shard.
    fn read(&mut self, key: ConnKey, now: u64) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(conn) = self.shard.conn_mut(key) {
            match conn.io.transport.read(&mut scratch) {
                Ok(0) => {
                    conn.io.peer_closed = true;
                    let open = conn.session.is_open();
                    self.note_closing(key);
                    if open {
                        // The peer went without a close frame: 1006 on its side, gone on ours.
                        self.shard.remove(key, now);
                    }
                    break;
                }
                Ok(n) => {
                    self.feed(key, &mut scratch[..n], now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.shard.remove(key, now);
                    break;
                }
            }
        }
        self.scratch = scratch;
        if let Some(conn) = self.shard.conn_mut(key) {
            // TLS: records (handshake, alerts) may be waiting after the read.
            if conn.io.transport.flush_tls().is_err() {
                self.shard.remove(key, now);
            }
        }
    }

    /// Feed bytes to the connection's frame reader and its messages to the shard.
    fn feed(&mut self, key: ConnKey, bytes: &mut [u8], now: u64) {
        let Some(conn) = self.shard.conn_mut(key) else { return };
        let mut reader = std::mem::replace(&mut conn.io.reader, FrameReader::new(Role::Server));
        let mut got_close = false;
        let shard = &mut self.shard;
        let result = reader.feed(bytes, self.settings.max_message, |msg| {
            got_close |= matches!(msg, Incoming::Close(..));
            shard.handle_incoming(key, msg, now);
            if got_close {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let Some(conn) = self.shard.conn_mut(key) else { return };
        conn.io.reader = reader;
        if got_close {
            conn.io.peer_closed = true;
        }
        if let Err(e) = result {
            tracing::debug!(worker = %self.id, conn = %conn.session.id, error = %e, "closing on bad input");
            self.shard.close(key, e.close_code(), false);
        }
        if got_close || !self.shard.conn(key).is_some_and(|c| c.session.is_open()) {
            self.note_closing(key);
        }
    }

    fn note_closing(&mut self, key: ConnKey) {
        if let Some(conn) = self.shard.conn_mut(key) {
            if !conn.io.listed_closing {
                conn.io.listed_closing = true;
                self.closing.push(key);
            }
        }
    }

    fn mark_writable(&mut self, key: ConnKey) {
        if self.shard.conn(key).is_some_and(|c| !c.session.outbound.is_empty()) {
            self.dirty.push(key);
        }
    }

    fn drain_inbox(&mut self, now: u64) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                WorkerMail::Mail(batch) => {
                    for mail in batch {
                        self.shard.handle_mail(mail, now);
                    }
                }
                WorkerMail::Shutdown => {
                    if self.shutdown_deadline_ms.is_none() {
                        tracing::info!(worker = %self.id, conns = self.shard.conn_count(), "closing connections (1001)");
                        self.shutdown_deadline_ms = Some(now + SHUTDOWN_GRACE_MS);
                        for l in &mut self.listeners {
                            let _ = self.poll.registry().deregister(&mut l.socket);
                        }
                        self.shard.close_all(close_code::GOING_AWAY, now);
                        for key in self.shard.keys() {
                            self.note_closing(key);
                        }
                    }
                }
            }
        }
    }

    fn send_mail(&mut self) {
        for (w, mailbox) in self.mesh.workers.iter().enumerate() {
            let to = WorkerId(w as u16);
            if to == self.id {
                continue;
            }
            let mail = self.shard.take_outbox(to);
            if !mail.is_empty() {
                mailbox.send(WorkerMail::Mail(mail));
            }
        }
        let replies = self.shard.take_ingest_replies();
        if !replies.is_empty() {
            self.mesh.ingest.send(IngestMail::Replies(replies));
        }
    }

    /// Write every connection with new frames (and those that became writable), once each.
    fn flush(&mut self, now: u64) {
        let mut keys = std::mem::take(&mut self.dirty);
        // Buffers swap with the shard's: no allocation per turn.
        self.shard.take_dirty(&mut self.from_shard);
        keys.extend_from_slice(&self.from_shard);
        for key in keys.drain(..) {
            if !self.write_conn(key, now) {
                continue;
            }
            // The budget judges what the socket would not take; a connection cut here gets
            // its close frame written at once.
            if self.shard.enforce_budget(key) && !self.write_conn(key, now) {
                continue;
            }
            if self.shard.conn(key).is_some_and(|c| !c.session.is_open()) {
                self.note_closing(key);
            }
        }
        self.dirty = keys;
        self.finish_closing(now);
    }

    /// Write what the connection has queued; false when the socket failed (it is removed).
    fn write_conn(&mut self, key: ConnKey, now: u64) -> bool {
        let Some(conn) = self.shard.conn_mut(key) else { return false };
        if conn.io.transport.write(&mut conn.session.outbound).is_err() {
            self.shard.remove(key, now);
            return false;
        }
        true
    }

    /// Move closing connections forward: shut the write side once the close frame is out,
    /// drop the socket once the peer answered (or closed first and our echo is out), or once
    /// the shard says the close handshake timed out. Only closing connections are visited.
    fn finish_closing(&mut self, now: u64) {
        for key in self.shard.take_timed_out() {
            self.shard.remove(key, now);
        }
        let mut i = 0;
        while i < self.closing.len() {
            let key = self.closing[i];
            let Some(conn) = self.shard.conn_mut(key) else {
                self.closing.swap_remove(i);
                continue;
            };
            let Phase::Closing { by_peer, .. } = conn.session.phase else {
                // The key was reused by a new, open connection: this entry is stale.
                self.closing.swap_remove(i);
                continue;
            };
            let written = conn.session.outbound.is_empty();
            if written && !conn.io.write_shut && !by_peer {
                conn.io.transport.shutdown_write();
                conn.io.write_shut = true;
            }
            if written && (by_peer || conn.io.peer_closed) {
                self.shard.remove(key, now);
                self.closing.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Drop connections that did not complete the upgrade in time.
    fn sweep(&mut self, now: u64) {
        self.handshakes.poll(now, &mut self.fired);
        for index in std::mem::take(&mut self.fired) {
            self.drop_upgrading(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per idle connection is a budget (BENCHMARKS.md): the slab entry is most of it, so
    /// its size must not creep up unnoticed. (208: 8 of them hold one outbound frame inline,
    /// which makes a delivery to an idle connection allocation-free.)
    #[test]
    fn a_connection_slot_stays_small() {
        assert!(size_of::<crate::shard::Conn<ConnIo>>() <= 208);
        assert!(size_of::<FrameReader>() <= 40);
    }
}
