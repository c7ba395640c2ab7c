//! The client engine: one mio event loop per thread holding many viewer connections (plain or
//! TLS), each walking connect -> upgrade -> join -> receive, and checking everything it gets.
//!
//! It is built like the server (edge-triggered mio, one scratch buffer per thread, roomcast's
//! own frame codec in client role) so that the load generator is not what limits a run.
//! Every event's `data.t` is its intended send time (ns since the Unix epoch); latency is
//! recorded per delivery into this thread's HDR histogram, and every room stream is checked
//! for loss, duplication and reordering ([`SeqCheck`]).

use crate::accounting::SeqCheck;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use roomcast::wire::frame::{encode_client_frame, FrameReader, Incoming, Role};
use roomcast::wire::upgrade;
use serde::Deserialize;
use slab::Slab;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (the clock `data.t` is written in).
pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A histogram of latencies in microseconds, 1 us to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// Host name for the request and TLS.
    pub host: String,
    /// Upgrade path, e.g. `/ws`.
    pub path: String,
    /// TLS client configuration for `wss`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Local source addresses to spread connections over.
    pub source_ips: Vec<IpAddr>,
}

/// One connection to open: its user and room.
#[derive(Clone, Debug)]
pub struct ConnPlan {
    /// The `?user=` id.
    pub user: String,
    /// The room to join (none: only connect, as in `storm`).
    pub room: Option<String>,
}

/// Counters every thread updates and the progress line reads.
#[derive(Default)]
pub struct Shared {
    /// Connections upgraded.
    pub connected: AtomicU64,
    /// Connections joined.
    pub joined: AtomicU64,
    /// Connect or upgrade failures.
    pub failed: AtomicU64,
    /// Connections the server closed (or that broke) after opening.
    pub closed: AtomicU64,
    /// Events delivered (new seqs).
    pub deliveries: AtomicU64,
    /// Error replies received.
    pub errors: AtomicU64,
    /// Comments acknowledged.
    pub acks: AtomicU64,
    /// Comments sent.
    pub comments: AtomicU64,
    /// Largest delay of a comment behind its timetable, ns.
    pub send_lag_ns: AtomicU64,
    /// Churn: connections dropped and reopened with `since`.
    pub reconnects: AtomicU64,
    /// Churn: rejoins answered `recovered: true` (missed events replayed).
    pub recovered: AtomicU64,
    /// Churn: rejoins answered `recovered: false`.
    pub recovery_failed: AtomicU64,
    /// `presence` messages received (all connections).
    pub presence: AtomicU64,
    /// Churn: stop disconnecting (publishing is over; let every stream catch up).
    pub quiesce: AtomicBool,
    /// Set to end the run.
    pub stop: AtomicBool,
    /// Latency so far, merged by the threads about once a second, for the progress line.
    pub progress: Mutex<Option<Histogram<u64>>>,
}

/// Comments a thread sends: at `rate` per second in total for this thread, during `duration`.
#[derive(Clone, Debug)]
pub struct CommentPlan {
    /// Comments per second from this thread.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// When to start (after every thread has joined).
    pub start: Arc<AtomicBool>,
}

/// What a thread measured.
pub struct ThreadReport {
    /// Delivery latency (us).
    pub latency: Histogram<u64>,
    /// Comment -> ack latency (us).
    pub ack_latency: Histogram<u64>,
    /// Per connection: room and its stream check.
    pub streams: Vec<(String, SeqCheck)>,
    /// Close codes received from the server.
    pub close_codes: HashMap<u16, u64>,
    /// Time from start to the last connection upgraded.
    pub connect_time: Duration,
    /// Comments sent.
    pub comments_sent: u64,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<(TcpStream, rustls::ClientConnection)>),
}

impl Stream {
    fn socket(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => &mut t.0,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(t) => {
                let (sock, tls) = &mut **t;
                loop {
                    match tls.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    if tls.read_tls(sock)? == 0 {
                        return Ok(0);
                    }
                    tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    while tls.wants_write() {
                        match tls.write_tls(sock) {
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
    }

    /// Write `out` (draining what was written); Ok(true) when all is out.
    fn write(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        match self {
            Self::Plain(s) => {
                while !out.is_empty() {
                    match s.write(out) {
                        Ok(n) => {
                            out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
            Self::Tls(t) => {
                let (sock, tls) = &mut **t;
                if !out.is_empty() {
                    tls.writer().write_all(out)?;
                    out.clear();
                }
                while tls.wants_write() {
                    match tls.write_tls(sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Joining,
    Ready,
}

struct Conn {
    stream: Stream,
    state: State,
    plan: usize,
    reader: FrameReader,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    check: SeqCheck,
    /// Rejoining after a churn disconnect: `since` and `epoch` to send.
    resume: Option<(u64, String)>,
    /// The room's epoch from `joined`.
    epoch: Option<String>,
    /// Churn: when to drop this connection.
    leave_at: Option<Instant>,
}

/// A connection to (re)open: its plan, and for a churn reconnect, where it left off.
struct Pending {
    plan: usize,
    resume: Option<(u64, String, SeqCheck)>,
}

/// Churn: each connection stays a random time in `[min, max]`, then reconnects with `since`.
#[derive(Clone, Copy, Debug)]
pub struct ChurnPlan {
    /// Shortest stay.
    pub min: Duration,
    /// Longest stay.
    pub max: Duration,
}

/// A small xorshift generator: reproducible random stays without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, plan: ChurnPlan) -> Duration {
        let span = plan.max.saturating_sub(plan.min).as_millis() as u64;
        plan.min + Duration::from_millis(if span == 0 { 0 } else { self.next() % span })
    }
}

#[derive(Deserialize)]
struct ServerMsg<'a> {
    op: &'a str,
    seq: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    data: Option<Stamp<'a>>,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    epoch: Option<&'a str>,
    recovered: Option<bool>,
}

#[derive(Deserialize)]
struct Stamp<'a> {
    t: Option<u64>,
    text: Option<&'a str>,
}

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
const PING_EVERY: Duration = Duration::from_secs(10);
/// Connections are pinged in this many slices, one slice per `PING_EVERY / PING_SLICES`.
const PING_SLICES: usize = 100;

/// Run one client thread until `shared.stop`: open every planned connection (at most
/// `max_inflight` handshakes at once), join, receive and check, and send comments if asked.
pub fn run_thread(
    target: &Target,
    plans: &[ConnPlan],
    shared: &Shared,
    max_inflight: usize,
    comments: Option<CommentPlan>,
    churn: Option<ChurnPlan>,
    thread_index: usize,
) -> io::Result<ThreadReport> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (thread_index as u64 + 1));
    let mut pending: std::collections::VecDeque<Pending> =
        (0..plans.len()).map(|plan| Pending { plan, resume: None }).collect();
    let mut last_churn_check = Instant::now();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Slab<Conn> = Slab::with_capacity(plans.len());
    let mut scratch = vec![0u8; 64 * 1024];
    let mut latency = latency_histogram();
    let mut ack_latency = latency_histogram();
    let mut progress = latency_histogram();
    let mut close_codes: HashMap<u16, u64> = HashMap::new();
    let mut done: Vec<(String, SeqCheck)> = Vec::new();
    let mut opened = 0usize;
    let mut inflight = 0usize;
    let started = Instant::now();
    let mut connect_time = Duration::ZERO;
    let mut last_ping = Instant::now();
    let mut ping_slice = 0usize;
    let mut last_progress = Instant::now();
    let mut comments_sent = 0u64;
    let mut comment_clock: Option<(u64, u64)> = None; // (start ns, sent)
    let mut comment_cursor = 0usize;

    loop {
        while inflight < max_inflight && !pending.is_empty() && !shared.stop.load(Ordering::Relaxed) {
            let Some(next) = pending.pop_front() else { break };
            let from = (!target.source_ips.is_empty())
                .then(|| target.source_ips[(thread_index + opened) % target.source_ips.len()]);
            match crate::net::connect(target.addr, from) {
                Ok(sock) => {
                    let stream = match &target.tls {
                        Some(cfg) => {
                            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                            let tls = rustls::ClientConnection::new(Arc::clone(cfg), name)
                                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                            Stream::Tls(Box::new((sock, tls)))
                        }
                        None => Stream::Plain(sock),
                    };
                    let entry = conns.vacant_entry();
                    let key = entry.key();
                    let (check, resume) = match next.resume {
                        Some((since, epoch, check)) => (check, Some((since, epoch))),
                        None => (SeqCheck::default(), None),
                    };
                    let mut conn = Conn {
                        stream,
                        state: State::Connecting,
                        plan: next.plan,
                        reader: FrameReader::new(Role::Client),
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        check,
                        resume,
                        epoch: None,
                        leave_at: None,
                    };
                    poll.registry().register(
                        conn.stream.socket(),
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    entry.insert(conn);
                    inflight += 1;
                }
                Err(_) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            opened += 1;
        }

        // Wake for the next comment on time: sending late would be the load generator's lag.
        let mut timeout = Duration::from_millis(20);
        if let (Some(plan), Some((start, sent))) = (&comments, comment_clock) {
            let next = start + (sent as f64 * 1e9 / plan.rate) as u64;
            timeout = timeout.min(Duration::from_nanos(next.saturating_sub(unix_ns())));
        }
        poll.poll(&mut events, Some(timeout))?;
        let stopping = shared.stop.load(Ordering::Relaxed);
        for event in events.iter() {
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else { continue };
            let mut broken = false;
            if conn.state == State::Connecting && (event.is_writable() || event.is_error()) {
                match conn.stream.socket().peer_addr() {
                    Ok(_) => {
                        let path = format!("{}?user={}", target.path, plans[conn.plan].user);
                        conn.out.extend(upgrade::client_request(&target.host, &path, "dGhlIHNhbXBsZSBub25jZQ=="));
                        conn.state = State::Upgrading;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected && !event.is_error() => continue,
                    Err(_) => broken = true,
                }
            }
            if !broken && (event.is_readable() || event.is_read_closed()) {
                broken = read_conn(
                    conn,
                    &mut scratch,
                    plans,
                    shared,
                    &mut latency,
                    &mut ack_latency,
                    &mut progress,
                    &mut close_codes,
                    &mut inflight,
                    started,
                    &mut connect_time,
                );
            }
            if !broken && !conn.out.is_empty() && conn.stream.write(&mut conn.out).is_err() {
                broken = true;
            }
            if broken {
                if let Some(mut conn) = conns.try_remove(key) {
                    let _ = poll.registry().deregister(conn.stream.socket());
                    if conn.state == State::Ready {
                        shared.closed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        inflight = inflight.saturating_sub(1);
                    }
                    if let Some(room) = &plans[conn.plan].room {
                        done.push((room.clone(), conn.check));
                    }
                }
            }
        }
        if stopping {
            break;
        }
        if let Some(plan) = churn.filter(|_| !shared.quiesce.load(Ordering::Relaxed)) {
            if last_churn_check.elapsed() >= Duration::from_millis(10) {
                last_churn_check = Instant::now();
                let now = Instant::now();
                let due: Vec<usize> = conns
                    .iter()
                    .filter(|(_, c)| c.state == State::Ready && c.leave_at.is_some_and(|t| t <= now))
                    .map(|(k, _)| k)
                    .collect();
                for key in due {
                    if let Some(mut conn) = conns.try_remove(key) {
                        let _ = poll.registry().deregister(conn.stream.socket());
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        let resume = conn.epoch.take().map(|e| (conn.check.last(), e, conn.check.clone()));
                        pending.push_back(Pending { plan: conn.plan, resume });
                    }
                }
                for (_, conn) in conns.iter_mut() {
                    if conn.state == State::Ready && conn.leave_at.is_none() {
                        conn.leave_at = Some(now + rng.between(plan));
                    }
                }
            }
        }
        // Comments on a fixed timetable, spread over this thread's joined connections.
        if let Some(plan) = &comments {
            if plan.start.load(Ordering::Relaxed) && !conns.is_empty() {
                let (start, sent) = comment_clock.get_or_insert((unix_ns(), 0));
                let now = unix_ns();
                let elapsed = now.saturating_sub(*start);
                if elapsed <= plan.duration.as_nanos() as u64 {
                    // Comment k is due at k / rate: the first one at once.
                    let total = (plan.duration.as_secs_f64() * plan.rate) as u64;
                    let due = ((elapsed as f64 / 1e9 * plan.rate) as u64 + 1).min(total);
                    let keys: Vec<usize> =
                        conns.iter().filter(|(_, c)| c.state == State::Ready).map(|(k, _)| k).collect();
                    while *sent < due && !keys.is_empty() {
                        let intended = *start + (*sent as f64 * 1e9 / plan.rate) as u64;
                        shared.send_lag_ns.fetch_max(now.saturating_sub(intended), Ordering::Relaxed);
                        comment_cursor = (comment_cursor + 1) % keys.len();
                        if let Some(conn) = conns.get_mut(keys[comment_cursor]) {
                            if let Some(room) = &plans[conn.plan].room {
                                let op = serde_json::json!({"op": "comment", "room": room, "text": intended.to_string(), "ref": intended});
                                encode_client_frame(0x1, op.to_string().as_bytes(), MASK, &mut conn.out);
                                let _ = conn.stream.write(&mut conn.out);
                            }
                        }
                        *sent += 1;
                        comments_sent += 1;
                        shared.comments.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        // Heartbeats, spread evenly: one slice of the connections per tick, each connection
        // once per PING_EVERY. Pinging all at once would make the server answer thousands of
        // pongs in one burst, a stall this tool itself caused, seen in the latency tail.
        while last_ping.elapsed() >= PING_EVERY / PING_SLICES as u32 {
            last_ping += PING_EVERY / PING_SLICES as u32;
            for key in (ping_slice..conns.capacity()).step_by(PING_SLICES) {
                if let Some(conn) = conns.get_mut(key).filter(|c| c.state == State::Ready) {
                    encode_client_frame(0x1, br#"{"op":"ping"}"#, MASK, &mut conn.out);
                    let _ = conn.stream.write(&mut conn.out);
                }
            }
            ping_slice = (ping_slice + 1) % PING_SLICES;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            if let Ok(mut p) = shared.progress.lock() {
                match p.as_mut() {
                    Some(h) => {
                        let _ = h.add(&progress);
                    }
                    None => *p = Some(progress.clone()),
                }
            }
            progress.reset();
        }
    }
    for (_, conn) in conns.into_iter() {
        if let Some(room) = &plans[conn.plan].room {
            done.push((room.clone(), conn.check));
        }
    }
    // Churned connections not yet reopened: their streams count too (what they missed is lost).
    for p in pending {
        if let (Some(room), Some((_, _, check))) = (&plans[p.plan].room, p.resume) {
            done.push((room.clone(), check));
        }
    }
    Ok(ThreadReport { latency, ack_latency, streams: done, close_codes, connect_time, comments_sent })
}

#[allow(clippy::too_many_arguments)]
fn read_conn(
    conn: &mut Conn,
    scratch: &mut [u8],
    plans: &[ConnPlan],
    shared: &Shared,
    latency: &mut Histogram<u64>,
    ack_latency: &mut Histogram<u64>,
    progress: &mut Histogram<u64>,
    close_codes: &mut HashMap<u16, u64>,
    inflight: &mut usize,
    started: Instant,
    connect_time: &mut Duration,
) -> bool {
    loop {
        let n = match conn.stream.read(scratch) {
            Ok(0) => return true,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        };
        let mut data: &mut [u8] = &mut scratch[..n];
        let mut joined_buf;
        if conn.state == State::Upgrading {
            conn.inbuf.extend_from_slice(data);
            match upgrade::parse_client_response(&conn.inbuf) {
                Ok(None) => continue,
                Err(_) => return true,
                Ok(Some(used)) => {
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    *connect_time = started.elapsed();
                    joined_buf = conn.inbuf.split_off(used);
                    conn.inbuf = Vec::new();
                    match &plans[conn.plan].room {
                        Some(room) => {
                            let op = match &conn.resume {
                                Some((since, epoch)) => {
                                    serde_json::json!({"op": "join", "room": room, "since": since, "epoch": epoch})
                                }
                                None => serde_json::json!({"op": "join", "room": room}),
                            };
                            encode_client_frame(0x1, op.to_string().as_bytes(), MASK, &mut conn.out);
                            conn.state = State::Joining;
                        }
                        None => {
                            conn.state = State::Ready;
                            *inflight = inflight.saturating_sub(1);
                        }
                    }
                    data = &mut joined_buf;
                }
            }
        }
        let mut closed = false;
        let state = &mut conn.state;
        let check = &mut conn.check;
        let epoch = &mut conn.epoch;
        let resumed = conn.resume.is_some();
        let result = conn.reader.feed(data, 1 << 24, |msg| {
            match msg {
                Incoming::Text(text) => {
                    let Ok(m) = serde_json::from_slice::<ServerMsg<'_>>(text) else { return ControlFlow::Continue(()) };
                    match m.op {
                        "event" => {
                            let seq = m.seq.unwrap_or(0);
                            if check.observe(seq) {
                                shared.deliveries.fetch_add(1, Ordering::Relaxed);
                                let stamp = m.data.as_ref().and_then(|d| {
                                    d.t.or_else(|| {
                                        (m.kind == Some("comment"))
                                            .then(|| d.text.and_then(|t| t.parse().ok()))
                                            .flatten()
                                    })
                                });
                                if let Some(t) = stamp {
                                    let us = unix_ns().saturating_sub(t) / 1000;
                                    let _ = latency.record(us.max(1));
                                    let _ = progress.record(us.max(1));
                                }
                            }
                        }
                        "joined" => {
                            // A churn rejoin keeps its stream check: replayed events arrived
                            // before this `joined` and continued it. Without recovery the
                            // stream restarts at the room's current seq.
                            match (resumed, m.recovered) {
                                (true, Some(true)) => {
                                    shared.recovered.fetch_add(1, Ordering::Relaxed);
                                }
                                (true, _) => {
                                    shared.recovery_failed.fetch_add(1, Ordering::Relaxed);
                                    *check = SeqCheck::starting_after(m.seq.unwrap_or(0));
                                }
                                (false, _) => *check = SeqCheck::starting_after(m.seq.unwrap_or(0)),
                            }
                            *epoch = m.epoch.map(str::to_owned);
                            if *state == State::Joining {
                                *state = State::Ready;
                                *inflight = inflight.saturating_sub(1);
                                shared.joined.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        "ack" => {
                            shared.acks.fetch_add(1, Ordering::Relaxed);
                            if let Some(t) = m.reference {
                                let _ = ack_latency.record((unix_ns().saturating_sub(t) / 1000).max(1));
                            }
                        }
                        "error" => {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        "presence" => {
                            shared.presence.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                Incoming::Close(code, _) => {
                    *close_codes.entry(code.unwrap_or(1005)).or_default() += 1;
                    closed = true;
                    return ControlFlow::Break(());
                }
                _ => {}
            }
            ControlFlow::Continue(())
        });
        if result.is_err() || closed {
            return true;
        }
        if conn.state == State::Joining && !conn.out.is_empty() && conn.stream.write(&mut conn.out).is_err() {
            return true;
        }
    }
}
