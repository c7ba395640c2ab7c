//! One worker thread: a `mio::Poll`, its own `SO_REUSEPORT` listeners, the connections in its
//! [`Shard`], and its mailbox.
//!
//! The loop only moves bytes: it accepts, reads into one per-worker scratch buffer and hands
//! the bytes to the shard, passes mail between the shard and the other threads, writes what
//! the shard queued, and shuts or drops the sockets the shard says are done. Every decision
//! (the upgrade, what a frame means, heartbeats, closes, slow consumers) is the shard's.
//!
//! One turn, in this order (the shard's call contract, see [`crate::shard`]):
//!
//! 1. inputs: socket events (accept, read, writable), then the mailbox;
//! 2. timers: [`Shard::handle_timeout`] once (deadlines, presence tick, batching window);
//! 3. outputs: mail to the other workers and the ingest loop first (they work on it on their
//!    cores while this one writes), then every connection with something queued (repeated
//!    while writes close slow consumers, whose close frames go out in the same turn), then
//!    the mail those writes produced, then the sockets to shut or drop.
//!
//! So everything one turn's inputs and timers produce leaves in the same turn: a heartbeat
//! expiry's close frame and its presence `Leave` go out together.
//!
//! epoll is edge-triggered: every socket is registered once for read and write and drained
//! until `WouldBlock`; a connection with unwritten frames is simply retried on its next
//! writable event (mio `examples/tcp_server.rs`).

use super::mesh::{IngestMail, Mesh, WorkerMail};
use super::transport::Transport;
use super::{clock_ms, Listener};
use crate::ids::{ConnKey, WorkerId};
use crate::metrics::{ListenerKind, WorkerLoad};
use crate::shard::{Shard, ShardConfig};
use crate::wire::frame::close_code;
use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read from a socket at once; one buffer per worker, shared by all its connections.
const SCRATCH_LEN: usize = 64 * 1024;
/// How long a shutting-down worker waits for close frames to drain.
const SHUTDOWN_GRACE_MS: u64 = 2_000;

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 16;

/// Settings the loop itself needs (the rest is the shard's).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
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
    shard: Shard<Transport>,
    settings: WorkerSettings,
    scratch: Vec<u8>,
    /// The shard's dirty list of this turn (kept to reuse its buffer).
    dirty: Vec<ConnKey>,
    shutdown_deadline_ms: Option<u64>,
    /// Time spent on turns (not waiting in poll) since start, in microseconds.
    busy_us: u64,
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
            shard: Shard::new(id, shard_cfg),
            settings,
            scratch: vec![0; SCRATCH_LEN],
            dirty: Vec::new(),
            shutdown_deadline_ms: None,
            busy_us: 0,
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
            let turn_started = Instant::now();
            // 1. Inputs.
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE, now),
                    Token(t) => {
                        let key = ConnKey(t);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key, now);
                        }
                        if event.is_writable() {
                            self.shard.handle_writable(key);
                        }
                    }
                }
            }
            self.drain_inbox(now);
            // 2. Timers.
            self.shard.handle_timeout(now);
            // 3. Outputs.
            self.send_mail();
            self.write(now);
            self.send_mail();
            self.finish_sockets();
            self.busy_us += turn_started.elapsed().as_micros() as u64;
            if let Some(deadline) = self.shutdown_deadline_ms {
                if self.shard.conn_count() == 0 || now >= deadline {
                    tracing::debug!(worker = %self.id, left = self.shard.conn_count(), "worker stopped");
                    return Ok(());
                }
            }
        }
    }

    /// Sleep until the shard next has work (a deadline, the presence tick, a held batch), or
    /// the shutdown deadline.
    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        let mut wake_at = self.shard.next_wake_ms();
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
            let kind = if tls { ListenerKind::Wss } else { ListenerKind::Ws };
            let key = self.shard.accept(transport, kind, now);
            let registered = self.shard.io_mut(key).is_some_and(|io| {
                self.poll
                    .registry()
                    .register(io.socket(), Token(key.0), Interest::READABLE | Interest::WRITABLE)
                    .is_ok()
            });
            if !registered {
                self.shard.handle_io_error(key, now);
            }
        }
    }

    /// Read everything the socket has and hand it to the shard.
    fn read(&mut self, key: ConnKey, now: u64) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(io) = self.shard.io_mut(key) {
            match io.read(&mut scratch) {
                Ok(0) => {
                    self.shard.handle_eof(key, now);
                    break;
                }
                Ok(n) => self.shard.handle_bytes(key, &mut scratch[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.shard.handle_io_error(key, now);
                    break;
                }
            }
        }
        self.scratch = scratch;
        // TLS: records (handshake, alerts) may be waiting after the read.
        if self.shard.io_mut(key).is_some_and(|io| io.flush_tls().is_err()) {
            self.shard.handle_io_error(key, now);
        }
    }

    fn drain_inbox(&mut self, now: u64) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                WorkerMail::Ask { question, reply } => {
                    let answer = self.shard.answer(question, now);
                    let load = WorkerLoad {
                        worker: self.id,
                        busy_us: self.busy_us,
                        mailbox_depth: self.mesh.workers.get(usize::from(self.id.0)).map_or(0, |m| m.depth() as u64),
                    };
                    // The asker may have given up (deadline passed): nothing to do then.
                    let _ = reply.send((answer, load));
                }
                WorkerMail::Mail(batch) => {
                    let n = batch.len();
                    for mail in batch {
                        self.shard.handle_mail(mail, now);
                    }
                    if let Some(mine) = self.mesh.workers.get(usize::from(self.id.0)) {
                        mine.handled(n);
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
                mailbox.send_mail(mail);
            }
        }
        let replies = self.shard.take_ingest_replies();
        if !replies.is_empty() {
            self.mesh.ingest.send(IngestMail::Replies(replies));
        }
    }

    /// Write every connection with something queued, once each; again for those a write
    /// closed (a slow consumer's close frame), until none is left.
    fn write(&mut self, now: u64) {
        loop {
            self.shard.take_dirty(&mut self.dirty);
            if self.dirty.is_empty() {
                return;
            }
            for &key in &self.dirty {
                let Some((io, out)) = self.shard.transmit(key) else { continue };
                let ok = io.write(out).is_ok();
                self.shard.handle_written(key, ok, now);
            }
        }
    }

    /// Shut the write side of connections whose close frame is out; drop finished sockets.
    fn finish_sockets(&mut self) {
        while let Some(key) = self.shard.poll_shutdown() {
            if let Some(io) = self.shard.io_mut(key) {
                io.shutdown_write();
            }
        }
        while let Some(mut io) = self.shard.poll_gone() {
            let _ = self.poll.registry().deregister(io.socket());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per idle connection is a budget (BENCHMARKS.md): the slab entry is most of it, so
    /// its size must not creep up unnoticed. (It holds one outbound frame inline, which makes a
    /// delivery to an idle connection allocation-free, and the frame reader.)
    #[test]
    fn a_connection_slot_stays_small() {
        assert!(size_of::<crate::shard::Conn<Transport>>() <= 208, "{}", size_of::<crate::shard::Conn<Transport>>());
        assert!(size_of::<crate::wire::FrameReader>() <= 40);
    }
}
