//! `loadgen`: roomcast's bundled load generator.
//!
//! Scenarios: `fanout` (viewers in rooms, events published through the ingest socket on an
//! open-loop timetable, every delivery measured and checked), `comments` (viewers comment at
//! a fixed rate: comment -> ack and comment -> delivery latency), `idle` (hold connections;
//! with `--server-pid`, the server's RSS per connection), `storm` (connect as fast as
//! possible). Progress every second on stderr, a table on stdout, and `--json`, `--hgrm`,
//! `--svg` files. `--procs N` spreads the connections over N child processes ([`procs`]).

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use loadgen::client::{self, CommentPlan, ConnPlan, Shared, Target, ThreadPlan, ThreadReport};
use loadgen::procs::{self, ChildIndex, ChildLine, Children, Counters, ParentLine, Totals};
use loadgen::report::{self, Percentiles, Report};
use loadgen::{net, timetable};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timetable::Timetable;

#[derive(Parser)]
#[command(name = "loadgen", version, about = "Load generator for roomcast")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N viewers over R rooms; publish at a fixed rate through the ingest socket.
    Fanout(Common),
    /// Viewers comment at a fixed total rate; measure ack and delivery latency.
    Comments(Common),
    /// Open and hold N connections.
    Idle(Common),
    /// Connect N as fast as possible.
    Storm(Common),
    /// Viewers stay a random time, disconnect and rejoin with `since`, while events are
    /// published: every rejoin must recover exactly what it missed.
    Churn(Common),
}

#[derive(Args, Clone)]
struct Common {
    /// Viewer URL: ws://HOST:PORT/ws or wss://HOST:PORT/ws.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Ingest address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    ingest: String,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Rooms (connection i joins room i mod R).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Client threads (per process).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Client processes: more than one to hold more connections than one process may open
    /// files (connections are spread over them; counts and histograms are merged).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Internal: run as child I of N (set by a parent started with `--procs`).
    #[arg(long, hide = true)]
    child: Option<ChildIndex>,
    /// Messages (or comments) per second, in total.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Extra payload bytes per message.
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Seconds of publishing (fanout, comments) or holding (idle).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Handshakes in flight per thread.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Local source addresses to spread connections over, e.g. 127.0.0.1-127.0.0.20.
    #[arg(long)]
    source_ips: Option<String>,
    /// PEM certificate to trust for wss (e.g. from `roomcast gen-cert`).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Server process id, to report its RSS per connection (idle).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Room name prefix.
    #[arg(long, default_value = "lg")]
    room_prefix: String,
    /// Publisher lag (ms) beyond which the run is marked invalid.
    #[arg(long, default_value_t = 10.0)]
    lag_tolerance_ms: f64,
    /// Seconds to wait after every connection joined before publishing (fanout, churn) or
    /// commenting: lets the join phase's presence announcements pass, so the run measures the
    /// steady state only.
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
    /// Seconds to wait for deliveries after publishing ends.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the latency percentile distribution (.hgrm) here.
    #[arg(long)]
    hgrm: Option<std::path::PathBuf>,
    /// Write an SVG latency-by-percentile chart here.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Give up waiting for connections after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Churn: shortest stay of a connection, ms.
    #[arg(long, default_value_t = 1000)]
    hold_min_ms: u64,
    /// Churn: longest stay of a connection, ms.
    #[arg(long, default_value_t = 5000)]
    hold_max_ms: u64,
}

fn target(c: &Common) -> anyhow::Result<Target> {
    let (tls, rest) = if let Some(r) = c.url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = c.url.strip_prefix("ws://") {
        (false, r)
    } else {
        bail!("--url must start with ws:// or wss://");
    };
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/ws".into()));
    let addr: SocketAddr = hostport.to_socket_addrs()?.next().context("--url host does not resolve")?;
    let host = hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport).to_owned();
    let tls = if tls {
        let pem = match &c.ca {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            None => bail!("wss needs --ca CERT.pem (the server's certificate or its CA)"),
        };
        Some(roomcast::tls::client_config_trusting(&pem)?)
    } else {
        None
    };
    let source_ips = match &c.source_ips {
        Some(spec) => net::parse_source_ips(spec)?,
        None => Vec::new(),
    };
    Ok(Target { addr, host, path, tls, source_ips })
}

/// CPU seconds (user + system) the process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Client threads of this process.
struct Run {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<ThreadReport>>>,
    comment_start: Arc<AtomicBool>,
}

impl Run {
    /// Stop the threads and merge what they measured.
    fn finish(self, last_seq: &[u64]) -> anyhow::Result<Totals> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut totals = Totals { processes: 1, ..Totals::default() };
        for t in self.threads {
            totals.add_thread(t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??, last_seq)?;
        }
        Ok(totals)
    }
}

/// Where the connections are: in this process's threads, or in child processes.
enum Clients {
    Local(Run),
    Children(Children),
}

impl Clients {
    fn start(c: &Common, scenario: &str, target: &Target) -> anyhow::Result<Self> {
        if c.procs <= 1 {
            return Ok(Self::Local(start_clients(c, scenario, target, ChildIndex { index: 0, count: 1 })));
        }
        let exe = std::env::current_exe().context("finding the loadgen binary to start children")?;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        Ok(Self::Children(Children::spawn(&exe, &args, c.procs)?))
    }

    fn shared(&self) -> Arc<Shared> {
        match self {
            Self::Local(run) => Arc::clone(&run.shared),
            Self::Children(children) => children.shared(),
        }
    }

    fn start_comments(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Local(run) => {
                run.comment_start.store(true, Ordering::Relaxed);
                Ok(())
            }
            Self::Children(children) => children.start_comments(),
        }
    }

    /// Churn: stop disconnecting, so that every stream can catch up before the count.
    fn quiesce(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Local(run) => {
                run.shared.quiesce.store(true, Ordering::Relaxed);
                Ok(())
            }
            Self::Children(children) => children.quiesce(),
        }
    }

    /// CPU seconds used by the client side: this process and its children.
    fn cpu_seconds(&self) -> Option<f64> {
        let me = cpu_seconds(std::process::id())?;
        match self {
            Self::Local(_) => Some(me),
            Self::Children(children) => {
                children.pids().into_iter().map(cpu_seconds).sum::<Option<f64>>().map(|c| c + me)
            }
        }
    }

    /// Fails when a child process has already exited (it printed why).
    fn check(&self) -> anyhow::Result<()> {
        match self {
            Self::Children(children) => match children.ended_early() {
                Some(index) => bail!("loadgen child {index} exited early; its error is above"),
                None => Ok(()),
            },
            Self::Local(_) => Ok(()),
        }
    }

    fn finish(self, last_seq: &[u64]) -> anyhow::Result<Totals> {
        match self {
            Self::Local(run) => run.finish(last_seq),
            Self::Children(children) => children.finish(last_seq),
        }
    }
}

/// Start this process's client threads, for the connections that are `me`'s share (all of
/// them without `--procs`).
fn start_clients(c: &Common, scenario: &str, target: &Target, me: ChildIndex) -> Run {
    let shared = Arc::new(Shared::default());
    let comment_start = Arc::new(AtomicBool::new(false));
    let threads = c.threads.max(1);
    let join = scenario != "storm";
    let mine: Vec<usize> = (0..c.conns).filter(|i| i % me.count == me.index).collect();
    let mut handles = Vec::new();
    for t in 0..threads {
        let plans: Vec<ConnPlan> = mine
            .iter()
            .enumerate()
            .filter(|(k, _)| k % threads == t)
            .map(|(_, &i)| ConnPlan {
                user: format!("lg{i}"),
                room: join.then(|| format!("{}-{}", c.room_prefix, i % c.rooms.max(1))),
            })
            .collect();
        let (shared, target) = (Arc::clone(&shared), target.clone());
        let comments = (scenario == "comments").then(|| CommentPlan {
            rate: c.rate / (threads * me.count) as f64,
            duration: Duration::from_secs_f64(c.duration),
            start: Arc::clone(&comment_start),
        });
        let inflight = if scenario == "storm" { c.inflight.max(1024) } else { c.inflight };
        let churn = (scenario == "churn").then(|| client::ChurnPlan {
            min: Duration::from_millis(c.hold_min_ms),
            max: Duration::from_millis(c.hold_max_ms.max(c.hold_min_ms)),
        });
        let plan = ThreadPlan { target, plans, max_inflight: inflight, comments, churn, thread_index: me.index * threads + t };
        handles.push(std::thread::spawn(move || client::run_thread(&plan, &shared)));
    }
    Run { shared, threads: handles, comment_start }
}

fn progress_line(shared: &Shared, started: Instant, last: &mut (Instant, u64)) {
    let now = Instant::now();
    let delivered = shared.deliveries.load(Ordering::Relaxed);
    let rate = (delivered - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
    *last = (now, delivered);
    let p99 = shared
        .progress
        .lock()
        .ok()
        .and_then(|h| h.as_ref().map(|h| h.value_at_quantile(0.99) as f64 / 1000.0))
        .unwrap_or(0.0);
    eprintln!(
        "[{:6.1}s] conns {} joined {} failed {} closed {} | deliveries {} ({:.0}/s) p99 {:.2} ms | comments {} acked {} | errors {}",
        started.elapsed().as_secs_f64(),
        shared.connected.load(Ordering::Relaxed),
        shared.joined.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        shared.closed.load(Ordering::Relaxed),
        delivered,
        rate,
        p99,
        shared.comments.load(Ordering::Relaxed),
        shared.acks.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed),
    );
}

/// Wait until `done()` or `timeout`, printing progress every second.
fn wait_until(shared: &Shared, started: Instant, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut last = (Instant::now(), shared.deliveries.load(Ordering::Relaxed));
    let mut next_print = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        if Instant::now() >= next_print {
            progress_line(shared, started, &mut last);
            next_print += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// Publish on the timetable; returns (messages per room, final seq per room, max lag).
fn publish(c: &Common, shared: &Shared, started: Instant) -> anyhow::Result<(Vec<u64>, Vec<u64>, Duration)> {
    let stream = TcpStream::connect(&c.ingest).with_context(|| format!("connecting to ingest {}", c.ingest))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let rooms = c.rooms.max(1);
    let mut table = Timetable::new(c.rate, Duration::from_secs_f64(c.duration));
    let total = table.total();
    let reader = std::thread::spawn(move || {
        let mut seqs = Vec::with_capacity(total as usize);
        let mut errors = 0u64;
        for line in BufReader::new(stream).lines().take(total as usize) {
            let Ok(line) = line else { break };
            match serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["seq"].as_u64()) {
                Some(seq) => seqs.push(seq),
                None => {
                    errors += 1;
                    seqs.push(0);
                }
            }
        }
        (seqs, errors)
    });
    let padding = "x".repeat(c.payload);
    let base = client::unix_ns();
    let start = Instant::now();
    let mut per_room = vec![0u64; rooms];
    let mut buf = String::new();
    let mut last = (Instant::now(), shared.deliveries.load(Ordering::Relaxed));
    let mut next_print = Instant::now() + Duration::from_secs(1);
    while let Some(next) = table.next_due_ns() {
        let now = start.elapsed().as_nanos() as u64;
        if now + 200_000 < next {
            std::thread::sleep(Duration::from_nanos(next - now - 150_000));
            continue;
        }
        while start.elapsed().as_nanos() < u128::from(next) {
            std::hint::spin_loop();
        }
        buf.clear();
        let now = start.elapsed().as_nanos() as u64;
        for (k, due) in table.take_due(now) {
            let room = (k as usize) % rooms;
            per_room[room] += 1;
            let _ = writeln!(
                buf,
                r#"{{"op":"publish","room":"{}-{}","type":"lg","data":{{"t":{},"i":{},"p":"{}"}}}}"#,
                c.room_prefix,
                room,
                base + due,
                k,
                padding
            );
        }
        writer.write_all(buf.as_bytes())?;
        if Instant::now() >= next_print {
            progress_line(shared, started, &mut last);
            next_print += Duration::from_secs(1);
        }
    }
    let (seqs, errors) = reader.join().map_err(|_| anyhow::anyhow!("ingest reader panicked"))?;
    shared.errors.fetch_add(errors, Ordering::Relaxed);
    let mut last_seq = vec![0u64; rooms];
    for (k, seq) in seqs.iter().enumerate() {
        let r = k % rooms;
        last_seq[r] = last_seq[r].max(*seq);
    }
    Ok((per_room, last_seq, table.max_lag))
}

/// Publish on the timetable and put it in `report`: messages published, the publisher's lag
/// (the run is invalid when it fell behind) and the deliveries expected if every planned
/// connection is a member. Returns each room's last seq.
fn publish_and_record(
    c: &Common,
    shared: &Shared,
    started: Instant,
    tolerance: Duration,
    report: &mut Report,
) -> anyhow::Result<Vec<u64>> {
    let (per_room, last_seq, lag) = publish(c, shared, started)?;
    report.published = per_room.iter().sum();
    let members = |r: usize| (0..c.conns).filter(|i| i % c.rooms.max(1) == r).count() as u64;
    report.expected = per_room.iter().enumerate().map(|(r, n)| n * members(r)).sum();
    record_lag(report, lag, tolerance, "publisher");
    Ok(last_seq)
}

/// Record how far `who` fell behind its timetable; beyond `tolerance` the run is invalid.
fn record_lag(report: &mut Report, lag: Duration, tolerance: Duration, who: &str) {
    report.publisher_max_lag_ms = lag.as_secs_f64() * 1000.0;
    if !timetable::kept_up(lag, tolerance) {
        report.valid = false;
        report.invalid_reason = Some(format!("{who} fell {:.1} ms behind the timetable", report.publisher_max_lag_ms));
    }
}

fn run(scenario: &str, c: Common) -> anyhow::Result<Report> {
    let target = target(&c)?;
    let tolerance = Duration::from_secs_f64(c.lag_tolerance_ms / 1000.0);
    let started = Instant::now();
    let rss_before = c.server_pid.and_then(rss_kib);
    let limits = net::Limits::raise_and_read();
    for warning in net::capacity_warnings(c.conns, c.procs, target.source_ips.len(), limits) {
        eprintln!("loadgen: warning: {warning}");
    }
    let mut clients = Clients::start(&c, scenario, &target)?;
    let shared = clients.shared();
    let want = c.conns as u64;
    let ready = |s: &Shared| {
        let settled = s.failed.load(Ordering::Relaxed) + s.closed.load(Ordering::Relaxed);
        let up =
            if scenario == "storm" { s.connected.load(Ordering::Relaxed) } else { s.joined.load(Ordering::Relaxed) };
        up + settled >= want
    };
    wait_until(&shared, started, Duration::from_secs_f64(c.connect_timeout), || {
        ready(&shared) || clients.check().is_err()
    });
    clients.check()?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let mut report = Report {
        scenario: scenario.into(),
        url: c.url.clone(),
        conns: want,
        rooms: c.rooms as u64,
        connect_seconds,
        valid: true,
        ..Report::default()
    };
    if c.settle > 0.0 {
        wait_until(&shared, started, Duration::from_secs_f64(c.settle), || false);
    }
    let deliveries_before = shared.deliveries.load(Ordering::Relaxed);
    let publish_started = Instant::now();
    let cpu_before = c.server_pid.and_then(cpu_seconds);
    let self_cpu_before = clients.cpu_seconds();
    let mut last_seq: Vec<u64> = Vec::new();
    match scenario {
        "fanout" => {
            last_seq = publish_and_record(&c, &shared, started, tolerance, &mut report)?;
            // Connections that never joined expect nothing.
            report.expected = report.expected * shared.joined.load(Ordering::Relaxed) / want.max(1);
            let expected = report.expected + deliveries_before;
            wait_until(&shared, started, Duration::from_secs_f64(c.drain), || {
                shared.deliveries.load(Ordering::Relaxed) >= expected
            });
        }
        "comments" => {
            clients.start_comments()?;
            wait_until(&shared, started, Duration::from_secs_f64(c.duration), || false);
            // Every comment acked and, when rooms are equal, delivered to every member of its
            // room (the ack can reach the sender before the comment reaches the others).
            let per_room = (c.conns % c.rooms.max(1) == 0).then(|| (c.conns / c.rooms.max(1)) as u64);
            wait_until(&shared, started, Duration::from_secs_f64(c.drain), || {
                let sent = shared.comments.load(Ordering::Relaxed);
                shared.acks.load(Ordering::Relaxed) >= sent
                    && per_room.is_none_or(|n| shared.deliveries.load(Ordering::Relaxed) >= sent * n)
            });
            let lag = Duration::from_nanos(shared.send_lag_ns.load(Ordering::Relaxed));
            record_lag(&mut report, lag, tolerance, "comments");
        }
        "churn" => {
            if c.rate > 0.0 {
                // Every viewer joined before publishing and rejoins with `since`, so each must
                // end up with every event of its room: the expected count stands as it is.
                last_seq = publish_and_record(&c, &shared, started, tolerance, &mut report)?;
            } else {
                wait_until(&shared, started, Duration::from_secs_f64(c.duration), || false);
            }
            // Stop churning, then let rejoins in flight and the last events arrive before
            // counting: a stream cut short by this tool is not a loss by the server.
            clients.quiesce()?;
            let expected = report.expected + deliveries_before;
            wait_until(&shared, started, Duration::from_secs_f64(c.drain), || {
                let s = &shared;
                s.recovered.load(Ordering::Relaxed) + s.recovery_failed.load(Ordering::Relaxed)
                    >= s.reconnects.load(Ordering::Relaxed)
                    && s.deliveries.load(Ordering::Relaxed) >= expected
            });
        }
        "idle" => {
            report.server_rss_kib = c.server_pid.and_then(|pid| Some((rss_before?, rss_kib(pid)?)));
            wait_until(&shared, started, Duration::from_secs_f64(c.duration), || false);
        }
        _ => {}
    }
    let active = publish_started.elapsed().as_secs_f64();
    if let (Some(before), Some(after)) = (self_cpu_before, clients.cpu_seconds()) {
        report.loadgen_cpu_seconds = after - before;
    }
    if let (Some(pid), Some(before)) = (c.server_pid, cpu_before) {
        if let Some(after) = cpu_seconds(pid) {
            report.server_cpu_seconds = Some(after - before);
        }
    }
    let totals = clients.finish(&last_seq)?;
    let Totals { latency, ack_latency, connect_time, comments_sent, close_codes: codes, .. } = totals;
    report.delivered = totals.delivered;
    report.duplicated = totals.duplicated;
    report.reordered = totals.reordered;
    report.lost = totals.lost;
    report.loadgen_processes = totals.processes;
    report.reconnects = shared.reconnects.load(Ordering::Relaxed);
    report.recovered = shared.recovered.load(Ordering::Relaxed);
    report.recovery_failed = shared.recovery_failed.load(Ordering::Relaxed);
    report.presence_messages = shared.presence.load(Ordering::Relaxed);
    report.presence_per_member_per_sec = report.presence_messages as f64 / (want.max(1) as f64 * active.max(1e-6));
    report.connected = shared.connected.load(Ordering::Relaxed);
    report.joined = shared.joined.load(Ordering::Relaxed);
    report.failed = shared.failed.load(Ordering::Relaxed);
    report.closed_by_server = shared.closed.load(Ordering::Relaxed);
    report.errors = shared.errors.load(Ordering::Relaxed);
    report.close_codes = codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    let upgraded_in = if connect_time.is_zero() { connect_seconds } else { connect_time.as_secs_f64() };
    report.connect_seconds = upgraded_in;
    report.connects_per_sec = report.connected as f64 / upgraded_in.max(1e-6);
    report.latency = Percentiles::of(&latency);
    if scenario == "comments" {
        report.published = comments_sent;
        if c.conns % c.rooms.max(1) == 0 {
            // Every comment reaches every member of its room, the sender included.
            report.expected = comments_sent * (c.conns / c.rooms.max(1)) as u64;
        }
        report.ack_latency = Some(Percentiles::of(&ack_latency));
    }
    report.deliveries_per_sec = (report.delivered as f64) / active.max(1e-6);
    if let Some(cpu) = report.server_cpu_seconds {
        report.deliveries_per_server_cpu_sec = Some(report.delivered as f64 / cpu.max(0.01));
    }
    if let (Some(pid), Some(before)) = (c.server_pid, rss_before) {
        if report.server_rss_kib.is_none() {
            report.server_rss_kib = rss_kib(pid).map(|after| (before, after));
        }
    }
    if let Some((before, after)) = report.server_rss_kib {
        report.server_rss_per_conn =
            Some((after.saturating_sub(before) * 1024) as f64 / report.joined.max(report.connected).max(1) as f64);
    }
    if report.failed > 0 && report.valid && scenario != "storm" {
        // Figures over fewer connections than asked for do not answer the question asked.
        report.valid = false;
        report.invalid_reason = Some(format!("{} connections failed", report.failed));
    }
    if let Some(path) = &c.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &c.hgrm {
        std::fs::write(path, report::hgrm(&latency)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &c.svg {
        let title = format!("roomcast {scenario}: {} conns, {} rooms, {}/s", c.conns, c.rooms, c.rate);
        std::fs::write(path, report::svg(&latency, &title)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// A child of `--procs`: open this process's share of the connections, report progress to the
/// parent, start commenting and stop when told, then send what it measured (see [`procs`]).
fn run_child(scenario: &str, c: &Common, me: ChildIndex) -> anyhow::Result<()> {
    let target = target(c)?;
    net::Limits::raise_and_read();
    let run = start_clients(c, scenario, &target, me);
    let (shared, comment_start) = (Arc::clone(&run.shared), Arc::clone(&run.comment_start));
    let quiesce = Arc::clone(&run.shared);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u64>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str(&line) {
                Ok(ParentLine::StartComments) => comment_start.store(true, Ordering::Relaxed),
                Ok(ParentLine::Quiesce) => quiesce.quiesce.store(true, Ordering::Relaxed),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (name, common) = match cli.scenario {
        Scenario::Fanout(c) => ("fanout", c),
        Scenario::Comments(c) => ("comments", c),
        Scenario::Idle(c) => ("idle", c),
        Scenario::Storm(c) => ("storm", c),
        Scenario::Churn(c) => ("churn", c),
    };
    if let Some(me) = common.child {
        return run_child(name, &common, me);
    }
    let report = run(name, common)?;
    print!("{}", report.table());
    Ok(())
}
