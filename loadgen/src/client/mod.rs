//! The client engine: one mio event loop per thread holding many viewer connections (plain or
//! TLS), each walking connect -> upgrade -> join -> receive, and checking everything it gets.
//!
//! It is built like the server (edge-triggered mio, one scratch buffer per thread, roomcast's
//! own frame codec in client role) so that the load generator is not what limits a run.
//! Every event's `data.t` is its intended send time (ns since the Unix epoch); latency is
//! recorded per delivery into this thread's HDR histogram, and every room stream is checked
//! for loss, duplication and reordering ([`SeqCheck`]).
//!
//! One job per part: [`stream`] moves bytes (plain or TLS), [`conn`] moves them between a
//! socket and its [`viewer`] (the protocol state of one viewer), [`tally`] keeps the thread's
//! measurements, [`dialer`] decides what to open next, and [`churn`], [`commenter`] and
//! [`pinger`] (opt-in application pings) are the scenarios' timetables, and [`tickets`] keeps a
//! thread's TLS session tickets for `storm --tls-resume`. [`run_thread`] is the event loop that ties them.
//! A client thread must never block except in `poll`, and never panic on what a server sends.

mod churn;
mod commenter;
mod conn;
mod dialer;
mod pinger;
mod stream;
mod tally;
mod tickets;
mod viewer;

use crate::accounting::SeqCheck;
use churn::Churn;
use commenter::Commenter;
use conn::{Conn, Connect};
use dialer::{Dialer, Pending};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use pinger::Pinger;
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stream::Stream;
use tally::Tally;
use viewer::{Phase, Viewer};

/// Nanoseconds since the Unix epoch (the clock `data.t` is written in).
pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A histogram of latencies in microseconds, 1 us to 1 hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// One server viewers connect to (one `--url`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Server address.
    pub addr: SocketAddr,
    /// Host name for the request and TLS.
    pub host: String,
    /// Upgrade path, e.g. `/ws`.
    pub path: String,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// The servers, in `--url` order (at least one): each room's members go round-robin over
    /// them ([`ConnPlan::endpoint`], `crate::clients::endpoint_of`).
    pub endpoints: Vec<Endpoint>,
    /// TLS client configuration for `wss` (every endpoint has the same scheme).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Local source addresses to spread connections over.
    pub source_ips: Vec<IpAddr>,
}

/// One connection to open: its server, user and room.
#[derive(Clone, Debug)]
pub struct ConnPlan {
    /// Index of its server in [`Target::endpoints`].
    pub endpoint: usize,
    /// The `?user=` id.
    pub user: String,
    /// The room to join (none: only connect, as in `storm`).
    pub room: Option<String>,
    /// A JWT to send as `?token=` (`--jwt-secret`).
    pub token: Option<String>,
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
    /// Comments sent [`CommentPlan::late_after`] or more behind their timetable.
    pub late_comments: AtomicU64,
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
    /// Connections whose TLS handshake resumed an earlier session.
    pub tls_resumed: AtomicU64,
    /// `storm --tls-resume`: close every upgraded connection and hold it for the second round.
    pub close_round: AtomicBool,
    /// Connections closed and held for the second round.
    pub held: AtomicU64,
    /// `storm --tls-resume`: reopen the held connections (they resume their TLS sessions).
    pub reopen_round: AtomicBool,
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
    /// A comment this far behind its timetable is late.
    pub late_after: Duration,
}

/// What a thread measured.
pub struct ThreadReport {
    /// Delivery latency (us).
    pub latency: Histogram<u64>,
    /// Comment -> ack latency (us).
    pub ack_latency: Histogram<u64>,
    /// Connect start -> TCP connected (us).
    pub connect_latency: Histogram<u64>,
    /// Connect start -> `101` read (us).
    pub upgrade_latency: Histogram<u64>,
    /// Delivery latency (us) per endpoint, in [`Target::endpoints`] order (empty with one
    /// endpoint: it would only repeat `latency`).
    pub latency_by_endpoint: Vec<Histogram<u64>>,
    /// Per connection: room, index of its endpoint and its stream check.
    pub streams: Vec<(String, usize, SeqCheck)>,
    /// Close codes received from the server.
    pub close_codes: HashMap<u16, u64>,
    /// Time from start to the last connection upgraded.
    pub connect_time: Duration,
    /// Comments sent.
    pub comments_sent: u64,
    /// Each message's first and last delivery here, by its stamp (ns).
    pub spread: HashMap<u64, crate::spread::Spread>,
}

/// Churn: each connection stays a random time in `[min, max]`, then reconnects with `since`.
#[derive(Clone, Copy, Debug)]
pub struct ChurnPlan {
    /// Shortest stay.
    pub min: Duration,
    /// Longest stay.
    pub max: Duration,
}

/// Everything one client thread is asked to do.
pub struct ThreadPlan {
    /// Where to connect.
    pub target: Target,
    /// The connections this thread opens.
    pub plans: Vec<ConnPlan>,
    /// Handshakes in flight at most.
    pub max_inflight: usize,
    /// Comments to send, if the scenario comments.
    pub comments: Option<CommentPlan>,
    /// Churn schedule, if the scenario churns.
    pub churn: Option<ChurnPlan>,
    /// This thread's index in the run (seeds its churn and picks its first source address).
    pub thread_index: usize,
    /// Send `{"op":"ping"}` from each ready connection this often (for a server that does not
    /// ping silent connections itself); `None`: send nothing unasked but pongs.
    pub app_ping_every: Option<Duration>,
    /// Look for events this often without waiting in epoll (`--poll-us`); `None`: wait in
    /// epoll for the next event.
    pub poll_every: Option<Duration>,
    /// `storm --tls-resume`: keep the thread's TLS session tickets and open every connection a
    /// second time when the scenario says so (see [`Round`]).
    pub tls_resume: bool,
}

/// Where a thread is in `storm --tls-resume`: opening the first round (full handshakes), holding
/// its closed connections, or reopening them (resumed handshakes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    First,
    Held,
    Second,
}

/// Longest wait in `poll` when nothing is due.
const POLL_TIMEOUT: Duration = Duration::from_millis(20);
/// Bytes read at once from a socket.
const SCRATCH_LEN: usize = 64 * 1024;

/// Run one client thread until `shared.stop`: open every planned connection (at most
/// `plan.max_inflight` handshakes at once), join, receive and check, and send comments if asked.
pub fn run_thread(plan: &ThreadPlan, shared: &Shared) -> io::Result<ThreadReport> {
    let mut thread = ClientThread::new(plan, shared)?;
    loop {
        thread.open_pending()?;
        thread.poll()?;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        thread.tick();
    }
    Ok(thread.into_report())
}

/// One client thread's state: its poller, connections and timetables.
struct ClientThread<'a> {
    plan: &'a ThreadPlan,
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    scratch: Vec<u8>,
    tally: Tally<'a>,
    dialer: Dialer,
    churn: Option<Churn>,
    commenter: Option<Commenter>,
    pinger: Option<Pinger>,
    /// Streams of connections that ended: their room, endpoint and check.
    done: Vec<(String, usize, SeqCheck)>,
    /// The TLS configuration its connections use (with its own ticket store for
    /// `--tls-resume`).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `--tls-resume`: the round, and the plans of connections closed for the second one.
    round: Round,
    held: Vec<usize>,
}

impl<'a> ClientThread<'a> {
    fn new(plan: &'a ThreadPlan, shared: &'a Shared) -> io::Result<Self> {
        Ok(Self {
            plan,
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::with_capacity(plan.plans.len()),
            scratch: vec![0u8; SCRATCH_LEN],
            tally: Tally::new(shared, plan.target.endpoints.len()),
            dialer: Dialer::new(plan.plans.len(), plan.max_inflight),
            churn: plan.churn.map(|c| Churn::new(c, plan.thread_index)),
            commenter: plan.comments.clone().map(Commenter::new),
            pinger: plan.app_ping_every.map(Pinger::new),
            done: Vec::new(),
            tls: match &plan.target.tls {
                Some(config) if plan.tls_resume => Some(tickets::TicketPool::config_for(config, plan.plans.len())),
                other => other.clone(),
            },
            round: Round::First,
            held: Vec::new(),
        })
    }

    /// Start connects while handshake slots are free.
    fn open_pending(&mut self) -> io::Result<()> {
        let shared = self.tally.shared;
        while !shared.stop.load(Ordering::Relaxed) {
            let Some(next) = self.dialer.next() else { break };
            let ips = &self.plan.target.source_ips;
            let from = (!ips.is_empty()).then(|| ips[(self.plan.thread_index + self.dialer.started) % ips.len()]);
            let opened = self.open(next, from)?;
            if !opened {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
            self.dialer.started(opened);
        }
        Ok(())
    }

    /// Start one connect; `Ok(false)` when the connect itself failed.
    fn open(&mut self, next: Pending, from: Option<IpAddr>) -> io::Result<bool> {
        let endpoint_index = self.plan.plans[next.plan].endpoint;
        let endpoint = &self.plan.target.endpoints[endpoint_index];
        let Ok(sock) = crate::net::connect(endpoint.addr, from) else { return Ok(false) };
        let stream = Stream::new(sock, self.tls.as_ref(), &endpoint.host)?;
        let mut conn = Conn::new(stream, Viewer::new(next.plan, endpoint_index, next.resume));
        let entry = self.conns.vacant_entry();
        self.poll.registry().register(conn.socket(), Token(entry.key()), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(conn);
        Ok(true)
    }

    /// Wait for socket events (or the next comment) and handle them.
    fn poll(&mut self) -> io::Result<()> {
        // Wake for the next comment on time: sending late would be the load generator's lag.
        let next_comment = self.commenter.as_ref().and_then(Commenter::next_due_in);
        let timeout = next_comment.map_or(POLL_TIMEOUT, |d| d.min(POLL_TIMEOUT));
        // The events are taken out while they are handled, so handling may borrow the rest.
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        match self.plan.poll_every {
            // Never a waiter on the epoll queue, so a server's send on loopback finds nobody
            // to wake; this thread's own timer wakes it (on its own core).
            Some(every) => {
                self.poll.poll(&mut events, Some(Duration::ZERO))?;
                if events.is_empty() {
                    std::thread::sleep(every.min(timeout));
                }
            }
            None => self.poll.poll(&mut events, Some(timeout))?,
        }
        for e in events.iter() {
            self.on_event(
                e.token().0,
                e.is_writable() || e.is_error(),
                e.is_readable() || e.is_read_closed(),
                e.is_error(),
            );
        }
        self.events = events;
        Ok(())
    }

    /// One socket event for connection `key`.
    fn on_event(&mut self, key: usize, writable: bool, readable: bool, error: bool) {
        let plans = &self.plan.plans;
        let Some(conn) = self.conns.get_mut(key) else { return };
        let was_ready = conn.viewer.phase == Phase::Ready;
        let mut broken = false;
        if conn.viewer.phase == Phase::Connecting && writable {
            let plan = &plans[conn.viewer.plan];
            match conn.on_connect_event(&self.plan.target.endpoints[plan.endpoint], plan, error, &mut self.tally) {
                Connect::Done => {}
                Connect::NotYet => return,
                Connect::Failed => broken = true,
            }
        }
        if !broken && readable {
            let room = plans[conn.viewer.plan].room.as_deref();
            broken = conn.read(&mut self.scratch, room, &mut self.tally);
        }
        if !was_ready && conn.viewer.phase == Phase::Ready {
            self.dialer.settled();
        }
        if !broken && conn.flush().is_err() {
            broken = true;
        }
        if broken {
            self.drop_broken(key);
        }
    }

    /// A connection ended: count it (closed if it was ready, failed if not) and keep its stream.
    fn drop_broken(&mut self, key: usize) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let _ = self.poll.registry().deregister(conn.socket());
        let shared = self.tally.shared;
        if conn.viewer.phase == Phase::Ready {
            shared.closed.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            self.dialer.settled();
        }
        let plan = &self.plan.plans[conn.viewer.plan];
        if let Some(room) = &plan.room {
            self.done.push((room.clone(), plan.endpoint, conn.viewer.check));
        }
    }

    /// Between polls: churn, comments, pings and the progress hand-over.
    fn tick(&mut self) {
        let shared = self.tally.shared;
        if !shared.quiesce.load(Ordering::Relaxed) {
            if let Some(churn) = &mut self.churn {
                for key in churn.due(&mut self.conns) {
                    self.reopen(key);
                }
            }
        }
        if let Some(commenter) = &mut self.commenter {
            commenter.send_due(&mut self.conns, &self.plan.plans, shared);
        }
        if let Some(pinger) = &mut self.pinger {
            pinger.tick(&mut self.conns);
        }
        if self.plan.tls_resume {
            self.next_round();
        }
        self.tally.hand_over_progress();
    }

    /// `storm --tls-resume`: close every upgraded connection when the scenario asks (holding its
    /// plan; its session tickets stay in the thread's store), then reopen them all when it asks
    /// again, measuring connects afresh.
    fn next_round(&mut self) {
        let shared = self.tally.shared;
        match self.round {
            Round::First if shared.close_round.load(Ordering::Relaxed) => {
                let ready: Vec<usize> =
                    self.conns.iter().filter(|(_, c)| c.viewer.phase == Phase::Ready).map(|(key, _)| key).collect();
                for key in ready {
                    let Some(mut conn) = self.conns.try_remove(key) else { continue };
                    let _ = self.poll.registry().deregister(conn.socket());
                    self.held.push(conn.viewer.plan);
                }
                shared.held.fetch_add(self.held.len() as u64, Ordering::Relaxed);
                self.round = Round::Held;
            }
            Round::Held if shared.reopen_round.load(Ordering::Relaxed) => {
                self.tally.restart_connects();
                for plan in self.held.drain(..) {
                    self.dialer.requeue(Pending { plan, resume: None });
                }
                self.round = Round::Second;
            }
            _ => {}
        }
    }

    /// Churn: drop a ready connection and queue it to reopen where it left off.
    fn reopen(&mut self, key: usize) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        let _ = self.poll.registry().deregister(conn.socket());
        self.tally.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        let viewer = conn.viewer;
        let resume = viewer.epoch.map(|e| (viewer.check.last(), e, viewer.check.clone()));
        self.dialer.requeue(Pending { plan: viewer.plan, resume });
    }

    /// What the thread measured, with every stream: open, ended, and churned but not reopened
    /// (what those missed is lost).
    fn into_report(self) -> ThreadReport {
        let plans = &self.plan.plans;
        let mut streams = self.done;
        for (_, conn) in self.conns {
            let plan = &plans[conn.viewer.plan];
            if let Some(room) = &plan.room {
                streams.push((room.clone(), plan.endpoint, conn.viewer.check));
            }
        }
        for p in self.dialer.into_pending() {
            let plan = &plans[p.plan];
            if let (Some(room), Some((_, _, check))) = (&plan.room, p.resume) {
                streams.push((room.clone(), plan.endpoint, check));
            }
        }
        let tally = self.tally;
        ThreadReport {
            latency: tally.latency,
            latency_by_endpoint: tally.by_endpoint,
            ack_latency: tally.ack_latency,
            connect_latency: tally.connect_latency,
            upgrade_latency: tally.upgrade_latency,
            streams,
            close_codes: tally.close_codes,
            connect_time: tally.connect_time,
            comments_sent: self.commenter.map_or(0, |c| c.sent),
            spread: tally.spread,
        }
    }
}
