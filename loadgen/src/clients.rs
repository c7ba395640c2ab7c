//! Where a run's viewers live: client threads in this process ([`Local`]), or child processes
//! (`--procs`, [`Children`]) that each run their share of threads and report to the parent.
//! [`Clients`] gives the run one face for both: start, the shared counters, the signals of the
//! scenario (start commenting, stop churning) and the merged totals at the end.
//!
//! It also turns the command line into a [`Target`] and each thread's [`ThreadPlan`]. It never
//! measures or judges anything itself.

use crate::cli::{Kind, Settings};
use crate::client::{self, ChurnPlan, CommentPlan, ConnPlan, Endpoint, Shared, Target, ThreadPlan, ThreadReport};
use crate::jwt::Minter;
use crate::net;
use crate::procs::{self, ChildIndex, ChildLine, Children, Counters, ParentLine, Totals};
use anyhow::{bail, Context};
use std::io::BufRead;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Handshakes in flight per thread for `storm`, at least: a storm measures the server's accept
/// and upgrade rate, so the client must not be what bounds it.
const STORM_INFLIGHT: usize = 1024;

/// One `--url`: whether it is `wss`, and where it points.
pub fn endpoint(url: &str) -> anyhow::Result<(bool, Endpoint)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        bail!("--url must start with ws:// or wss:// (got {url:?})");
    };
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/ws".into()));
    let addr: SocketAddr = hostport
        .to_socket_addrs()
        .with_context(|| format!("--url {url}"))?
        .next()
        .with_context(|| format!("--url host of {url} does not resolve"))?;
    let host = hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport).to_owned();
    Ok((tls, Endpoint { addr, host, path }))
}

/// The servers to connect to, from `--url` (one or several, all `ws` or all `wss`), `--ca` and
/// `--source-ips`.
pub fn target(s: &Settings) -> anyhow::Result<Target> {
    let c = &s.common;
    let mut schemes = Vec::new();
    let mut endpoints = Vec::new();
    for url in &c.url {
        let (tls, endpoint) = endpoint(url)?;
        schemes.push(tls);
        endpoints.push(endpoint);
    }
    let Some(&tls) = schemes.first() else { bail!("--url is needed") };
    if schemes.iter().any(|&t| t != tls) {
        bail!("every --url must have the same scheme (all ws:// or all wss://)");
    }
    let tls = if tls {
        let pem = match &c.ca {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            None => bail!("wss needs --ca CERT.pem (the server's certificate or its CA)"),
        };
        let mut config = (*roomcast::tls::client_config_trusting(&pem)?).clone();
        // A storm of full handshakes must not turn into resumed ones behind the run's back
        // (the server sends tickets by default): resumption is off unless `--tls-resume` gives
        // each thread its own ticket store.
        config.resumption = rustls::client::Resumption::disabled();
        Some(Arc::new(config))
    } else {
        None
    };
    let source_ips = match &c.source_ips {
        Some(spec) => net::parse_source_ips(spec)?,
        None => Vec::new(),
    };
    Ok(Target { endpoints, tls, source_ips })
}

/// Client threads of this process.
pub struct Local {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<ThreadReport>>>,
    comment_start: Arc<AtomicBool>,
}

impl Local {
    /// Start this process's client threads, for the connections that are `me`'s share (all of
    /// them without `--procs`).
    pub fn start(s: &Settings, target: &Target, me: ChildIndex) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let comment_start = Arc::new(AtomicBool::new(false));
        let threads = s.common.threads.max(1);
        let minter = s.common.jwt_secret.as_deref().map(Minter::hs256);
        let mut handles = Vec::new();
        for t in 0..threads {
            let plans = conn_plans(s, me, t, target.endpoints.len(), minter.as_ref())?;
            let plan = thread_plan(s, target, plans, &comment_start, me, t);
            let shared = Arc::clone(&shared);
            handles.push(std::thread::spawn(move || client::run_thread(&plan, &shared)));
        }
        Ok(Self { shared, threads: handles, comment_start })
    }

    /// Stop the threads and merge what they measured.
    pub fn finish(self, last_seq: &[u64]) -> anyhow::Result<Totals> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut totals = Totals { processes: 1, ..Totals::default() };
        for t in self.threads {
            totals.add_thread(t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??, last_seq)?;
        }
        Ok(totals)
    }
}

/// The connections thread `t` of child `me` opens: of the run's, those with `i mod children`
/// = `me`, dealt round-robin over its threads.
fn conn_plans(
    s: &Settings,
    me: ChildIndex,
    t: usize,
    endpoints: usize,
    minter: Option<&Minter>,
) -> anyhow::Result<Vec<ConnPlan>> {
    let threads = s.common.threads.max(1);
    (0..s.common.conns)
        .filter(|i| i % me.count == me.index)
        .enumerate()
        .filter(|(k, _)| k % threads == t)
        .map(|(_, i)| conn_plan(s, i, endpoints, minter))
        .collect()
}

/// Connection `i` (numbered over the whole run, every `--procs` child included): endpoint
/// `i mod endpoints`, user `lg<i>`, room `i mod rooms` (none in `storm`), and its token.
fn conn_plan(s: &Settings, i: usize, endpoints: usize, minter: Option<&Minter>) -> anyhow::Result<ConnPlan> {
    let user = format!("lg{i}");
    let token = minter.map(|m| m.token(&user)).transpose()?;
    let room = s.kind.joins().then(|| format!("{}-{}", s.room_prefix, i % s.rooms));
    Ok(ConnPlan { endpoint: endpoint_of(i, s.rooms, endpoints), user, room, token })
}

/// The endpoint of connection `i` of the run (in room `i mod rooms`): the members of each room
/// go round-robin over the endpoints (its k-th member, `k = i / rooms`, to endpoint
/// `k mod endpoints`), by the run-wide index, so the spread is the same with or without
/// `--procs`. Not `i mod endpoints`: whenever the rooms and the endpoints share a factor (30
/// rooms over 3 nodes) that would put every member of a room on one endpoint, and no message
/// would ever reach two. Without rooms (`storm`, one "room") it is `i mod endpoints`.
pub fn endpoint_of(i: usize, rooms: usize, endpoints: usize) -> usize {
    (i / rooms.max(1)) % endpoints.max(1)
}

/// Connections of the run (`conns` of them, over `rooms`) that connect to each of `endpoints`.
pub fn conns_per_endpoint(conns: usize, rooms: usize, endpoints: usize) -> Vec<u64> {
    let mut n = vec![0u64; endpoints.max(1)];
    for i in 0..conns {
        n[endpoint_of(i, rooms, endpoints)] += 1;
    }
    n
}

/// Thread `t` of child `me`'s plan.
fn thread_plan(
    s: &Settings,
    target: &Target,
    plans: Vec<ConnPlan>,
    comment_start: &Arc<AtomicBool>,
    me: ChildIndex,
    t: usize,
) -> ThreadPlan {
    let threads = s.common.threads.max(1);
    let comments = s.comments.as_ref().map(|pace| CommentPlan {
        rate: pace.rate / (threads * me.count) as f64,
        duration: Duration::from_secs_f64(pace.duration),
        start: Arc::clone(comment_start),
        late_after: Duration::from_secs_f64(pace.lag_tolerance_ms / 1000.0),
    });
    let churn =
        s.stay_ms.map(|(min, max)| ChurnPlan { min: Duration::from_millis(min), max: Duration::from_millis(max) });
    let inflight = if s.kind == Kind::Storm { s.common.inflight.max(STORM_INFLIGHT) } else { s.common.inflight };
    let app_ping_every = (s.common.app_ping_every > 0.0).then(|| Duration::from_secs_f64(s.common.app_ping_every));
    ThreadPlan {
        target: target.clone(),
        plans,
        max_inflight: inflight,
        comments,
        churn,
        thread_index: me.index * threads + t,
        app_ping_every,
        poll_every: (s.common.poll_us > 0).then(|| Duration::from_micros(s.common.poll_us)),
        tls_resume: s.tls_resume,
    }
}

/// Where the connections are: in this process's threads, or in child processes.
pub enum Clients {
    /// This process's threads.
    Local(Local),
    /// `--procs` children.
    Children(Children),
}

impl Clients {
    /// Start the run's clients.
    pub fn start(s: &Settings, target: &Target) -> anyhow::Result<Self> {
        if s.common.procs <= 1 {
            return Ok(Self::Local(Local::start(s, target, ChildIndex { index: 0, count: 1 })?));
        }
        let exe = std::env::current_exe().context("finding the loadgen binary to start children")?;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        Ok(Self::Children(Children::spawn(&exe, &args, s.common.procs)?))
    }

    /// The counters (summed over children).
    pub fn shared(&self) -> Arc<Shared> {
        match self {
            Self::Local(run) => Arc::clone(&run.shared),
            Self::Children(children) => children.shared(),
        }
    }

    /// Comments: every connection has joined; start.
    pub fn start_comments(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Local(run) => {
                run.comment_start.store(true, Ordering::Relaxed);
                Ok(())
            }
            Self::Children(children) => children.start_comments(),
        }
    }

    /// Churn: stop disconnecting, so that every stream can catch up before the count.
    pub fn quiesce(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Local(run) => {
                run.shared.quiesce.store(true, Ordering::Relaxed);
                Ok(())
            }
            Self::Children(children) => children.quiesce(),
        }
    }

    /// CPU seconds used by the client side: this process and its children.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let me = crate::server::cpu_seconds(std::process::id())?;
        match self {
            Self::Local(_) => Some(me),
            Self::Children(children) => {
                children.pids().into_iter().map(crate::server::cpu_seconds).sum::<Option<f64>>().map(|c| c + me)
            }
        }
    }

    /// Fails when a child process has already exited (it printed why).
    pub fn check(&self) -> anyhow::Result<()> {
        match self {
            Self::Children(children) => match children.ended_early() {
                Some(index) => bail!("loadgen child {index} exited early; its error is above"),
                None => Ok(()),
            },
            Self::Local(_) => Ok(()),
        }
    }

    /// Stop and merge everything measured.
    pub fn finish(self, last_seq: &[u64]) -> anyhow::Result<Totals> {
        match self {
            Self::Local(run) => run.finish(last_seq),
            Self::Children(children) => children.finish(last_seq),
        }
    }
}

/// A child of `--procs`: open this process's share of the connections, report progress to the
/// parent, start commenting and stop when told, then send what it measured (see [`procs`]).
pub fn run_child(s: &Settings, me: ChildIndex) -> anyhow::Result<()> {
    let target = target(s)?;
    net::Limits::raise_and_read();
    let run = Local::start(s, &target, me)?;
    let shared = Arc::clone(&run.shared);
    let rx = listen_to_parent(Arc::clone(&run.shared), Arc::clone(&run.comment_start));
    let last_seq = loop {
        let progress = shared.progress.lock().ok().and_then(|h| h.clone());
        procs::send_to_parent(&ChildLine::Progress { counters: Counters::read(&shared), latency: progress })?;
        match rx.recv_timeout(procs::PROGRESS_EVERY) {
            Ok(last_seq) => break last_seq,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Vec::new(),
        }
    };
    let totals = run.finish(&last_seq)?;
    procs::send_to_parent(&ChildLine::Progress { counters: Counters::read(&shared), latency: None })?;
    procs::send_to_parent(&ChildLine::Totals(Box::new(totals)))
}

/// A thread reading the parent's lines: it sets the flags it is told to, and sends the rooms'
/// last seqs when told to stop (nothing when the parent is gone).
fn listen_to_parent(shared: Arc<Shared>, comment_start: Arc<AtomicBool>) -> std::sync::mpsc::Receiver<Vec<u64>> {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u64>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str(&line) {
                Ok(ParentLine::StartComments) => comment_start.store(true, Ordering::Relaxed),
                Ok(ParentLine::Quiesce) => shared.quiesce.store(true, Ordering::Relaxed),
                Ok(ParentLine::Stop { last_seq }) => {
                    let _ = tx.send(last_seq);
                    return;
                }
                Err(e) => eprintln!("loadgen child: unreadable line from the parent ({e}): {line}"),
            }
        }
        // The parent is gone: stop, reporting to no one.
        let _ = tx.send(Vec::new());
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["loadgen", "fanout"];
        argv.extend(args);
        Cli::try_parse_from(argv).expect("parses").scenario.settings()
    }

    #[test]
    fn viewers_go_round_robin_over_the_urls() {
        // No rooms (storm): connection i on endpoint i mod 3.
        assert_eq!((0..7).map(|i| endpoint_of(i, 1, 3)).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!((0..4).map(|i| endpoint_of(i, 2, 1)).collect::<Vec<_>>(), [0, 0, 0, 0]);
        assert_eq!(conns_per_endpoint(10, 1, 3), [4, 3, 3]);
        assert_eq!(conns_per_endpoint(2, 1, 3), [1, 1, 0]);
        assert_eq!(conns_per_endpoint(5, 4, 1), [5]);
        // 30 rooms over 3 endpoints: every room has 10 members on each (i mod 3 would have put
        // each room on one endpoint).
        let (conns, rooms) = (900, 30);
        let mut members = vec![[0u32; 3]; rooms];
        for i in 0..conns {
            members[i % rooms][endpoint_of(i, rooms, 3)] += 1;
        }
        assert!(members.iter().all(|m| *m == [10, 10, 10]), "{members:?}");
        assert_eq!(conns_per_endpoint(conns, rooms, 3), [300, 300, 300]);
        // Rooms that do not fill the last round: still as even as they can be.
        assert_eq!(conns_per_endpoint(40, 5, 2), [20, 20]);
        assert_eq!(conns_per_endpoint(25, 5, 2), [15, 10]);
    }

    #[test]
    fn children_and_threads_spread_by_the_run_wide_index() {
        // Three children of two threads each hold exactly the run's connections, each on the
        // URL and in the room that one process would have given it.
        let s = settings(&["--conns", "20", "--rooms", "4", "--threads", "2", "--procs", "3"]);
        let mut seen = Vec::new();
        for index in 0..3 {
            for t in 0..2 {
                for p in conn_plans(&s, ChildIndex { index, count: 3 }, t, 3, None).expect("plans") {
                    let i: usize = p.user.strip_prefix("lg").and_then(|n| n.parse().ok()).expect("user lg<i>");
                    assert_eq!(i % 3, index, "connection {i} belongs to child {index}");
                    seen.push((i, p.endpoint, p.room.expect("fanout joins")));
                }
            }
        }
        seen.sort();
        let want: Vec<_> = (0..20).map(|i| (i, (i / 4) % 3, format!("lg-{}", i % 4))).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn every_url_becomes_an_endpoint_of_one_scheme() {
        let t = target(&settings(&[
            "--url",
            "ws://127.0.0.1:9001/ws,ws://127.0.0.1:9002/x",
            "--url",
            "ws://127.0.0.1:9003",
        ]))
        .expect("target");
        let ports: Vec<u16> = t.endpoints.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [9001, 9002, 9003]);
        let paths: Vec<&str> = t.endpoints.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/ws", "/x", "/ws"]);
        assert!(t.endpoints.iter().all(|e| e.host == "127.0.0.1") && t.tls.is_none());
        let one = target(&settings(&[])).expect("the default URL");
        assert_eq!(one.endpoints.len(), 1);
        let mixed = target(&settings(&["--url", "ws://127.0.0.1:1/ws", "--url", "wss://127.0.0.1:2/ws"]));
        assert!(mixed.is_err_and(|e| e.to_string().contains("same scheme")));
        let bad = target(&settings(&["--url", "ws://127.0.0.1:1/ws,http://127.0.0.1:2/"]));
        assert!(bad.is_err_and(|e| e.to_string().contains("http://127.0.0.1:2/")));
    }
}
