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
//!    cores while this one writes), then the connections with something queued, oldest
//!    first, for at most [`WRITE_SLICE`] (a slow consumer a write closed is listed again for
//!    its close frame), then the mail those writes produced, then the sockets to shut or drop.
//!
//! So everything one turn's inputs and timers produce leaves in the same turn (a heartbeat
//! expiry's close frame and its presence `Leave` go out together), except a fan-out too large
//! for one slice: its remaining writes wait for the next turn, which starts at once (no sleep
//! while writes wait), after the worker has read its sockets and mailbox again. A room's
//! 2,000-member batch is then ~10 ms of writes spread over five turns instead of one burst
//! that holds every other room of the worker behind it.
//!
//! epoll is edge-triggered: every socket is registered once for read and write and drained
//! until `WouldBlock`; a connection with unwritten frames is simply retried on its next
//! writable event (mio `examples/tcp_server.rs`).

use super::gate::Gate;
use super::mesh::{IngestMail, Mesh, WorkerMail};
use super::nonblocking;
use super::stall::StallMeter;
use super::transport::{TlsBuffers, Transport};
use super::{clock_ms, Listener};
use crate::admission::AcceptPacer;
use crate::ids::{ConnKey, WorkerId};
use crate::metrics::{CloseCounts, ListenerKind, WorkerLoad};
use crate::shard::durable::SinkPort;
use crate::shard::{Shard, ShardConfig};
use crate::sink::{AckMode, Backpressure, PresenceRecord, SinkHandle, SinkRecord};
use crate::wire::frame::close_code;
use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read from a socket at once; one buffer per worker, shared by all its connections.
const SCRATCH_LEN: usize = 64 * 1024;
/// How long a shutting-down worker waits for close frames to drain.
const SHUTDOWN_GRACE_MS: u64 = 2_000;
/// How often a draining worker closes its next share of connections.
const DRAIN_STEP_MS: u64 = 50;
/// How often a worker logs the closes and write stalls of the last interval (when there were any).
const SUMMARY_MS: u64 = 60_000;
/// How long one turn may spend writing sockets before it reads its inputs again: one large
/// fan-out (a batch to thousands of local members, ~5 us a write) is spread over turns, so a
/// worker never leaves its other rooms and its mailbox for more than about this long.
const WRITE_SLICE: Duration = Duration::from_millis(2);
/// Connections written between two looks at the clock.
const WRITE_CHUNK: usize = 64;

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX - 16;

/// Settings the loop itself needs (the rest is the shard's).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// TLS configuration for listeners marked TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The durable sinks, if any run.
    pub sink: Option<SinkHandle>,
    /// The connection caps all workers share.
    pub gate: Arc<Gate>,
    /// Upgrades per second this worker accepts (`limits.accept_rate`; 0: unpaced).
    pub accept_rate: u32,
    /// At shutdown, viewers are closed in steps over this long (`limits.drain_ms`).
    pub drain_ms: u64,
    /// `TCP_NOTSENT_LOWAT` of accepted sockets (`limits.socket_unsent_bytes`; 0: not set).
    pub socket_unsent_bytes: u32,
    /// What sequences the rooms: the homes (a single node) or the cluster's broker.
    pub broker: Arc<crate::broker::Broker>,
}

/// A worker's end of the durable sinks, as the core's [`SinkPort`]: the sinks' bounded queue,
/// tagged with the worker's id so their durability reports come back to it.
#[derive(Debug)]
struct HomeSink {
    handle: SinkHandle,
    origin: u16,
}

impl SinkPort for HomeSink {
    fn ack_mode(&self) -> AckMode {
        self.handle.ack_mode()
    }

    fn wants_presence(&self) -> bool {
        self.handle.wants_presence()
    }

    fn submit(&mut self, ticket: u64, record: SinkRecord) -> Result<(), Backpressure> {
        self.handle.try_submit(self.origin, ticket, record)
    }

    fn submit_presence(&mut self, record: PresenceRecord) -> Result<(), Backpressure> {
        self.handle.try_submit_presence(record)
    }
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
    /// The TLS connections' shared read and sealing buffers (see the transport's module doc).
    tls_buffers: TlsBuffers,
    /// The shard's dirty list of this turn (kept to reuse its buffer).
    dirty: Vec<ConnKey>,
    shutdown_deadline_ms: Option<u64>,
    /// A staged shutdown: when it began and how many open connections it found.
    draining: Option<(u64, usize)>,
    /// Paces accepts in a reconnect storm (`None`: unpaced).
    pacer: Option<AcceptPacer>,
    /// Accepting waits for the pacer until then (edge-triggered listeners: retried on time).
    accept_resume_ms: Option<u64>,
    /// Each socket's peer address, when the gate counts addresses.
    peers: HashMap<usize, IpAddr>,
    /// Sockets refused at accept (they hold no place at the gate).
    refused: HashSet<usize>,
    /// Time spent on turns (not waiting in poll) since start, in microseconds.
    busy_us: u64,
    /// Chunks of writes during which the thread lost its core.
    stalls: StallMeter,
    /// The closes counted at the last summary, and when the next is due.
    closes_logged: CloseCounts,
    next_summary_ms: u64,
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
            if ACCEPTED_SOCKETS_INHERIT_OPTIONS {
                set_viewer_socket_options(socket2::SockRef::from(&l.socket), settings.socket_unsent_bytes);
            }
        }
        let pacer = (settings.accept_rate > 0).then(|| AcceptPacer::new(settings.accept_rate, clock_ms()));
        let mut shard = Shard::new(id, shard_cfg);
        if let Some(handle) = settings.sink.clone() {
            shard.set_sink(Box::new(HomeSink { handle, origin: id.0 }));
        }
        if let Some(port) = settings.broker.port() {
            shard.set_broker(port);
        }
        Ok(Self {
            id,
            poll,
            inbox,
            mesh,
            listeners,
            shard,
            settings,
            scratch: vec![0; SCRATCH_LEN],
            tls_buffers: TlsBuffers::new(),
            dirty: Vec::new(),
            shutdown_deadline_ms: None,
            draining: None,
            pacer,
            accept_resume_ms: None,
            peers: HashMap::new(),
            refused: HashSet::new(),
            busy_us: 0,
            stalls: StallMeter::default(),
            closes_logged: CloseCounts::default(),
            next_summary_ms: clock_ms() + SUMMARY_MS,
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
                            self.read(key, event.is_read_closed() || event.is_error(), now);
                        }
                        if event.is_writable() {
                            self.shard.handle_writable(key);
                        }
                    }
                }
            }
            self.drain_inbox(now);
            if self.accept_resume_ms.is_some_and(|at| now >= at) {
                self.accept_resume_ms = None;
                self.settings.gate.set_pacing(false);
                for index in 0..self.listeners.len() {
                    self.accept(index, now);
                }
            }
            self.drain_step(now);
            // 2. Timers.
            self.shard.handle_timeout(now);
            // 3. Outputs.
            self.send_mail();
            self.write(now);
            self.send_mail();
            self.finish_sockets();
            self.busy_us += turn_started.elapsed().as_micros() as u64;
            if now >= self.next_summary_ms {
                self.log_summaries(now);
            }
            if let Some(deadline) = self.shutdown_deadline_ms {
                let drained = self.draining.is_none_or(|(started, _)| now >= started + self.settings.drain_ms);
                if (drained && self.shard.conn_count() == 0) || now >= deadline {
                    tracing::debug!(worker = %self.id, left = self.shard.conn_count(), "worker stopped");
                    return Ok(());
                }
            }
        }
    }

    /// One info line with the last interval's closes by code, and one with its write stalls,
    /// when there were any: what an operator scanning the log wants to know without turning on
    /// debug.
    fn log_summaries(&mut self, now: u64) {
        if let Some((stalls, longest_us)) = self.stalls.take_unlogged() {
            tracing::info!(
                worker = %self.id,
                stalls,
                longest_ms = longest_us / 1_000,
                "the worker lost its core while writing since the last summary (another process or the hypervisor \
                 ran): deliveries waiting then were late by up to that long"
            );
        }
        self.next_summary_ms = now + SUMMARY_MS;
        let closes = self.shard.counters().closes;
        let line = closes.since(&self.closes_logged);
        if !line.is_empty() {
            tracing::info!(worker = %self.id, closes = %line, "connections closed in the last minute, by code");
        }
        self.closes_logged = closes;
    }

    /// Sleep until the shard next has work (a deadline, the presence tick, a held batch), or
    /// the shutdown deadline.
    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        let mut wake_at = self.shard.next_wake_ms();
        if let Some(deadline) = self.shutdown_deadline_ms {
            wake_at = wake_at.min(deadline);
        }
        if let Some(resume) = self.accept_resume_ms {
            wake_at = wake_at.min(resume);
        }
        if self.draining.is_some() {
            wake_at = wake_at.min(now + DRAIN_STEP_MS);
        }
        Some(Duration::from_millis(wake_at.saturating_sub(now)))
    }

    fn accept(&mut self, index: usize, now: u64) {
        let Some(listener) = self.listeners.get(index) else { return };
        let tls = listener.tls;
        loop {
            if self.shutdown_deadline_ms.is_some() || self.accept_resume_ms.is_some() {
                return;
            }
            if let Some(pacer) = &mut self.pacer {
                if !pacer.try_accept(now) {
                    // A storm: the rest waits in the listen backlog, delivery to the connected
                    // viewers goes on, and new clients are told to back off further.
                    self.accept_resume_ms = Some(now + pacer.wait_ms(now).max(1));
                    self.settings.gate.set_pacing(true);
                    return;
                }
            }
            let Some(listener) = self.listeners.get(index) else { return };
            let (sock, peer) = match nonblocking::call(|| listener.socket.accept()) {
                Ok(Some(pair)) => pair,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: the backlog keeps the rest; retry shortly rather
                    // than spin (edge-triggered: no new event would come for them).
                    tracing::warn!(worker = %self.id, error = %e, "accept failed; retrying in 100 ms");
                    self.accept_resume_ms = Some(now + 100);
                    return;
                }
            };
            let refusal = self.settings.gate.admit(peer.ip()).err();
            if let Some(refusal) = refusal {
                tracing::debug!(worker = %self.id, %peer, %refusal, "connection refused");
            }
            if !ACCEPTED_SOCKETS_INHERIT_OPTIONS {
                set_viewer_socket_options(socket2::SockRef::from(&sock), self.settings.socket_unsent_bytes);
            }
            let transport = match (tls, &self.settings.tls, refusal) {
                (true, Some(cfg), None) => match rustls::server::UnbufferedServerConnection::new(Arc::clone(cfg)) {
                    Ok(conn) => Transport::tls(sock, conn),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS session setup failed");
                        self.settings.gate.release(Some(peer.ip()));
                        continue;
                    }
                },
                // A refused TLS client gets its answer in plain HTTP: it cannot read it, but it
                // is told by the close, and it costs no handshake.
                _ => Transport::Plain(sock),
            };
            let kind = if tls { ListenerKind::Wss } else { ListenerKind::Ws };
            let key = match refusal {
                None => {
                    let key = self.shard.accept(transport, kind, now);
                    if self.settings.gate.counts_addresses() {
                        self.peers.insert(key.0, peer.ip());
                    }
                    key
                }
                Some(refusal) => {
                    let answer = crate::wire::upgrade::unavailable(refusal.http_status(), &refusal.to_string(), 5);
                    let key = self.shard.accept_refused(transport, kind, answer, now);
                    self.refused.insert(key.0);
                    key
                }
            };
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

    /// A staged shutdown: close the next share of the open connections, so that all are
    /// closed by the end of `drain_ms` and their reconnects spread over it.
    fn drain_step(&mut self, now: u64) {
        let Some((started, total)) = self.draining else { return };
        let window = self.settings.drain_ms.max(1);
        let elapsed = now.saturating_sub(started).min(window);
        let due = (total as u64 * (elapsed + DRAIN_STEP_MS) / window).min(total as u64) as usize;
        let closed_so_far = total.saturating_sub(self.shard.open_count());
        if due > closed_so_far {
            self.shard.close_some(close_code::GOING_AWAY, due - closed_so_far, now);
        }
        if elapsed >= window && self.shard.open_count() > 0 {
            self.shard.close_all(close_code::GOING_AWAY, now);
        }
    }

    /// Read everything the socket has and hand it to the shard.
    ///
    /// A read that returned less than it asked for took everything the socket held, so the
    /// loop stops there instead of asking again for a `WouldBlock` (one `recvfrom` fewer per
    /// readable event; more data makes a new edge). Not when the event also says the peer
    /// closed (`until_empty`): its end of stream, which may have come with the data, is only
    /// seen by reading on to it.
    fn read(&mut self, key: ConnKey, until_empty: bool, now: u64) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(io) = self.shard.io_mut(key) {
            match nonblocking::call(|| io.read(&mut scratch, &mut self.tls_buffers)) {
                Ok(Some(0)) => {
                    self.shard.handle_eof(key, now);
                    break;
                }
                Ok(Some(n)) => {
                    let drained = !until_empty && io.drained(n, scratch.len());
                    self.shard.handle_bytes(key, &mut scratch[..n], now);
                    if drained {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.shard.handle_io_error(key, now);
                    break;
                }
            }
        }
        self.scratch = scratch;
        // TLS: records (handshake, alerts, a session ticket) may be waiting after the read.
        // When the read also queued a reply (the upgrade's 101 and `hello` after the client's
        // Finished), the write this turn sends them together: one syscall, not two.
        let replying = self.shard.conn(key).is_some_and(|c| c.session.outbound().queued() > 0);
        if !replying && self.shard.io_mut(key).is_some_and(|io| io.flush_tls().is_err()) {
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
                        write_stalls: self.stalls.stalls,
                        write_stalled_us: self.stalls.stalled_us,
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
                WorkerMail::Durable(ticket) => self.shard.handle_durable(ticket, now),
                WorkerMail::Shutdown => {
                    if self.shutdown_deadline_ms.is_none() {
                        let open = self.shard.open_count();
                        let drain_ms = self.settings.drain_ms;
                        tracing::info!(worker = %self.id, conns = open, drain_ms, "closing connections (1001) in steps");
                        self.shutdown_deadline_ms = Some(now + drain_ms + SHUTDOWN_GRACE_MS);
                        for l in &mut self.listeners {
                            let _ = self.poll.registry().deregister(&mut l.socket);
                        }
                        self.draining = Some((now, open));
                        self.drain_step(now);
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

    /// Write the connections with something queued, oldest first, in chunks of
    /// [`WRITE_CHUNK`] until none is left or the turn has written for [`WRITE_SLICE`]; the
    /// rest wait for the next turn, which comes at once (the shard's module doc, "Call
    /// order"). Connections a write closed (a slow consumer's close frame) are listed again
    /// behind them. A chunk that took far longer than writes take is a stall
    /// ([`super::stall`]), from the clock the slice reads anyway.
    fn write(&mut self, now: u64) {
        let started = Instant::now();
        let mut chunk_started = started;
        loop {
            self.shard.take_dirty(&mut self.dirty, WRITE_CHUNK);
            if self.dirty.is_empty() {
                return;
            }
            for &key in &self.dirty {
                let Some((io, out)) = self.shard.transmit(key) else { continue };
                let ok = io.write(out, &mut self.tls_buffers).is_ok();
                self.shard.handle_written(key, ok, now);
            }
            let chunk_done = Instant::now();
            self.stalls.chunk(chunk_done - chunk_started);
            chunk_started = chunk_done;
            if chunk_done - started >= WRITE_SLICE {
                return;
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
        // Closing the socket (dropping `_io`) takes it out of the poll: epoll forgets a file
        // description when its last descriptor closes, and nothing here duplicates one. No
        // `epoll_ctl(DEL)` first, one syscall fewer per connection.
        while let Some((key, _io)) = self.shard.poll_gone() {
            if !self.refused.remove(&key.0) {
                self.settings.gate.release(self.peers.remove(&key.0));
            }
        }
    }
}

/// Whether an accepted socket starts with its listener's `TCP_NODELAY` and
/// `TCP_NOTSENT_LOWAT`: Linux clones the listener's TCP state into the accepted socket, so the
/// worker sets them once on its listeners, not twice per connection (two of the ~20 syscalls
/// a wss connect took; `tests/slow_consumer.rs` sees the unsent bound take effect). Elsewhere,
/// per accepted socket.
const ACCEPTED_SOCKETS_INHERIT_OPTIONS: bool = cfg!(target_os = "linux");

/// A viewer socket writes each frame at once (no Nagle delay: the batching window already
/// groups them), and the kernel's share of a slow consumer's backlog is bounded (and counted in
/// the budget: `LimitsConfig::queue_budget`; 0 leaves the kernel's own limit). A failure leaves
/// the kernel's defaults, which only a non-Linux kernel would refuse: not worth refusing
/// viewers for.
fn set_viewer_socket_options(sock: socket2::SockRef<'_>, unsent_bytes: u32) {
    let _ = sock.set_tcp_nodelay(true);
    if unsent_bytes > 0 {
        let _ = sock.set_tcp_notsent_lowat(unsent_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ACCEPTED_SOCKETS_INHERIT_OPTIONS` relies on, on this kernel: an accepted socket
    /// has the options the worker gives its listeners (or sets on each socket elsewhere).
    #[test]
    fn accepted_viewer_sockets_have_nodelay_and_the_unsent_bound() {
        let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        if ACCEPTED_SOCKETS_INHERIT_OPTIONS {
            set_viewer_socket_options(socket2::SockRef::from(&listener), 48 * 1024);
        }
        let _client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        // connect() returned: the handshake is done and the connection waits in the backlog.
        let (sock, _) = listener.accept().expect("accept");
        if !ACCEPTED_SOCKETS_INHERIT_OPTIONS {
            set_viewer_socket_options(socket2::SockRef::from(&sock), 48 * 1024);
        }
        let sock = socket2::SockRef::from(&sock);
        assert!(sock.tcp_nodelay().expect("TCP_NODELAY"));
        assert_eq!(sock.tcp_notsent_lowat().expect("TCP_NOTSENT_LOWAT"), 48 * 1024);
    }

    /// Memory per idle connection is a budget (BENCHMARKS.md): the slab entry is most of it, so
    /// its size must not creep up unnoticed. (It holds one outbound frame inline, which makes a
    /// delivery to an idle connection allocation-free, the frame reader, and the guard: the
    /// identity and the rate-limit buckets, 24 bytes, which took it from 208 to 224.)
    #[test]
    fn a_connection_slot_stays_small() {
        assert!(size_of::<crate::shard::Conn<Transport>>() <= 224, "{}", size_of::<crate::shard::Conn<Transport>>());
        assert!(size_of::<crate::wire::FrameReader>() <= 40);
    }
}
