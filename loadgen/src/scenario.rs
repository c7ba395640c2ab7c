//! One run from start to verdict, in phases that each do one thing: sample the server before
//! (its RSS and connections), open every connection, settle, drive the scenario (publish,
//! comment, churn, hold or nothing), collect the clients' totals into the [`Report`], judge it
//! ([`verdict`]) and write the output files.
//!
//! The scenario decides what happens and when; the measuring is in the client threads and the
//! publisher. A run's figures are never adjusted here, only counted and compared.

use crate::cli::{Kind, Settings};
use crate::client::Shared;
use crate::clients::{self, Clients};
use crate::procs::Totals;
use crate::progress::{wait_until, Progress};
use crate::publisher::{self, Publisher};
use crate::report::{self, Percentiles, Report, UrlReport};
use crate::server::Servers;
use crate::timetable::Lateness;
use crate::verdict;
use crate::{hgrm, net};
use anyhow::Context;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The servers (`--server-pid`), and their sums before this run opened its connections.
#[derive(Debug, Clone, Default)]
struct Baseline {
    servers: Servers,
    rss_kib: Option<u64>,
    connections: Option<u64>,
    sockets: Option<u64>,
}

impl Baseline {
    /// Sample the servers now (nothing without one; several: their sums).
    fn sample(servers: Servers) -> Self {
        Self {
            rss_kib: servers.rss_kib(),
            connections: servers.established_connections(),
            sockets: servers.socket_fds(),
            servers,
        }
    }
}

/// What the scenario sent: each room's last seq (for loss counting) and how late the sender was.
#[derive(Debug, Default)]
struct Sent {
    last_seq: Vec<u64>,
    lateness: Option<Lateness>,
    sender: &'static str,
}

/// Run the scenario and return its judged report (the output files are written too).
pub fn run(s: &Settings) -> anyhow::Result<Report> {
    let target = clients::target(s)?;
    if s.tls_resume {
        anyhow::ensure!(target.tls.is_some(), "--tls-resume needs a wss:// --url");
        anyhow::ensure!(s.common.procs <= 1, "--tls-resume runs in one loadgen process (--procs 1)");
    }
    let started = Instant::now();
    let baseline = Baseline::sample(Servers::new(&s.common.server_pid));
    let servers = &baseline.servers;
    let limits = net::Limits::raise_and_read();
    for warning in net::capacity_warnings(s.common.conns, s.common.procs, target.source_ips.len(), limits) {
        eprintln!("loadgen: warning: {warning}");
    }
    let mut clients = Clients::start(s, &target)?;
    let shared = clients.shared();
    let mut progress = Progress::new(s.kind, &shared, started);
    let mut opening = Opening::start(servers);
    open_all(s, &clients, &shared, &mut progress)?;
    if s.tls_resume {
        opening = resume_round(s, &clients, &shared, &mut progress, &baseline)?;
    }
    let mut report = Report {
        scenario: s.kind.name().into(),
        url: s.common.url.join(","),
        urls: s.common.url.clone(),
        server_pids: servers.pids.clone(),
        conns: s.common.conns as u64,
        rooms: if s.kind.joins() { s.rooms as u64 } else { 0 },
        connect_seconds: opening.started.elapsed().as_secs_f64(),
        server_conns_before: baseline.connections,
        ..Report::default()
    };
    opening.record(s, servers, &mut report);
    if s.settle > 0.0 {
        wait_until(&mut progress, Duration::from_secs_f64(s.settle), || false);
    }
    let window = Window::open(servers, &clients, &shared);
    let sent = drive(s, &mut clients, &shared, &mut progress, &mut report, &baseline, window.deliveries_before)?;
    let active = window.close(servers, &clients, &mut report);
    let totals = clients.finish(&sent.last_seq)?;
    record_totals(s, &mut report, &totals, &shared, active);
    record_per_url(s, &mut report, &totals, active);
    record_sending(&mut report, &sent);
    record_memory(&mut report, &baseline);
    let cx = verdict::Context {
        kind: s.kind,
        lateness: sent.lateness,
        sender: sent.sender,
        acked: shared.acks.load(Ordering::Relaxed),
        connect_timeout: s.common.connect_timeout,
        tls_resume: s.tls_resume,
    };
    report.judge(verdict::reasons(&report, &cx));
    write_outputs(s, &report, &totals)?;
    Ok(report)
}

/// Wait until every connection is up (joined, or upgraded in `storm`) or settled (failed or
/// closed), or `--connect-timeout`; fails when a child process died.
fn open_all(s: &Settings, clients: &Clients, shared: &Shared, progress: &mut Progress<'_>) -> anyhow::Result<()> {
    let want = s.common.conns as u64;
    let ready = || {
        let settled = shared.failed.load(Ordering::Relaxed) + shared.closed.load(Ordering::Relaxed);
        let up = if s.kind.joins() { &shared.joined } else { &shared.connected };
        up.load(Ordering::Relaxed) + settled >= want || clients.check().is_err()
    };
    wait_until(progress, Duration::from_secs_f64(s.common.connect_timeout), ready);
    clients.check()
}

/// The measured opening of the connections (the second round with `--tls-resume`): when it
/// began and the server's CPU then.
struct Opening {
    started: Instant,
    server_cpu_before: Option<f64>,
}

impl Opening {
    /// The opening begins now.
    fn start(servers: &Servers) -> Self {
        Self { started: Instant::now(), server_cpu_before: servers.cpu_seconds() }
    }

    /// `storm`: the server CPU the opening took (every connection is up, or settled, now).
    fn record(&self, s: &Settings, servers: &Servers, report: &mut Report) {
        if s.kind != Kind::Storm {
            return;
        }
        if let Some(before) = self.server_cpu_before {
            report.connect_server_cpu_seconds = servers.cpu_seconds().map(|after| after - before);
        }
    }
}

/// `storm --tls-resume`: close every connection of the first round and wait until the server
/// has let them go (with `--server-pid`: until it holds no more sockets than before the run, so
/// their closes are not counted in the second round's CPU), then reopen them all, resuming
/// their TLS sessions, and wait until they are up. Returns the second round's opening.
fn resume_round(
    s: &Settings,
    clients: &Clients,
    shared: &Shared,
    progress: &mut Progress<'_>,
    baseline: &Baseline,
) -> anyhow::Result<Opening> {
    let servers = &baseline.servers;
    let first = shared.connected.load(Ordering::Relaxed);
    let timeout = Duration::from_secs_f64(s.common.connect_timeout);
    shared.close_round.store(true, Ordering::Relaxed);
    wait_until(progress, timeout, || shared.held.load(Ordering::Relaxed) >= first || clients.check().is_err());
    clients.check()?;
    if let Some(before) = baseline.sockets {
        let released = wait_until(progress, timeout, || servers.socket_fds().is_none_or(|n| n <= before));
        if !released {
            eprintln!("loadgen: warning: the server still held the first round's sockets after {timeout:?}");
        }
    }
    // The second round counts afresh: connected and resumed are its own.
    shared.connected.store(0, Ordering::Relaxed);
    shared.tls_resumed.store(0, Ordering::Relaxed);
    let opening = Opening::start(servers);
    shared.reopen_round.store(true, Ordering::Relaxed);
    open_all(s, clients, shared, progress)?;
    Ok(opening)
}

/// The measured period: deliveries, time and CPU when it began.
struct Window {
    deliveries_before: u64,
    started: Instant,
    started_unix_ms: u64,
    /// Each server process's CPU seconds.
    server_cpu_before: Vec<Option<f64>>,
    loadgen_cpu_before: Option<f64>,
}

impl Window {
    /// The period begins now.
    fn open(servers: &Servers, clients: &Clients, shared: &Shared) -> Self {
        Self {
            deliveries_before: shared.deliveries.load(Ordering::Relaxed),
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            server_cpu_before: servers.cpu_seconds_each(),
            loadgen_cpu_before: clients.cpu_seconds(),
        }
    }

    /// Record the CPU both sides used in the period (the servers' summed, and each one's);
    /// returns its length in seconds.
    fn close(self, servers: &Servers, clients: &Clients, report: &mut Report) -> f64 {
        let active = self.started.elapsed().as_secs_f64();
        report.window_unix_ms = Some((self.started_unix_ms, unix_ms()));
        if let (Some(before), Some(after)) = (self.loadgen_cpu_before, clients.cpu_seconds()) {
            report.loadgen_cpu_seconds = after - before;
        }
        let each: Vec<Option<f64>> = servers
            .cpu_seconds_each()
            .into_iter()
            .zip(self.server_cpu_before)
            .map(|(after, before)| Some(after? - before?))
            .collect();
        if !each.is_empty() {
            report.server_cpu_seconds = each.iter().copied().sum();
        }
        report.server_cpu_seconds_each = each;
        active
    }
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    crate::client::unix_ns() / 1_000_000
}

/// The scenario itself.
fn drive(
    s: &Settings,
    clients: &mut Clients,
    shared: &Shared,
    progress: &mut Progress<'_>,
    report: &mut Report,
    baseline: &Baseline,
    deliveries_before: u64,
) -> anyhow::Result<Sent> {
    match s.kind {
        Kind::Fanout => fanout(s, shared, progress, report, deliveries_before),
        Kind::Comments => comments(s, clients, shared, progress),
        Kind::Churn => churn(s, clients, shared, progress, report, deliveries_before),
        Kind::Idle => {
            report.server_rss_kib = baseline.rss_kib.zip(baseline.servers.rss_kib());
            wait_until(progress, Duration::from_secs_f64(s.hold_seconds), || false);
            Ok(Sent::default())
        }
        Kind::Storm => Ok(Sent::default()),
    }
}

/// Publish, then wait until every member of every room has every event (or `--drain`).
fn fanout(
    s: &Settings,
    shared: &Shared,
    progress: &mut Progress<'_>,
    report: &mut Report,
    deliveries_before: u64,
) -> anyhow::Result<Sent> {
    let sent = publish(s, shared, progress, report)?;
    // Connections that never joined expect nothing.
    let want = s.common.conns as u64;
    report.expected = report.expected * shared.joined.load(Ordering::Relaxed) / want.max(1);
    let expected = report.expected + deliveries_before;
    wait_until(progress, Duration::from_secs_f64(s.drain), || shared.deliveries.load(Ordering::Relaxed) >= expected);
    Ok(sent)
}

/// Comment for `--duration`, then wait until every comment is acked and delivered (or
/// `--drain`).
fn comments(s: &Settings, clients: &mut Clients, shared: &Shared, progress: &mut Progress<'_>) -> anyhow::Result<Sent> {
    let Some(pace) = &s.comments else { return Ok(Sent::default()) };
    clients.start_comments()?;
    wait_until(progress, Duration::from_secs_f64(pace.duration), || false);
    // Every comment acked and, when rooms are equal, delivered to every member of its room
    // (the ack can reach the sender before the comment reaches the others).
    let per_room = members_per_room(s);
    wait_until(progress, Duration::from_secs_f64(s.drain), || {
        let sent = shared.comments.load(Ordering::Relaxed);
        shared.acks.load(Ordering::Relaxed) >= sent
            && per_room.is_none_or(|n| shared.deliveries.load(Ordering::Relaxed) >= sent * n)
    });
    let lateness = Lateness {
        tolerance: Duration::from_secs_f64(pace.lag_tolerance_ms / 1000.0),
        sent: shared.comments.load(Ordering::Relaxed),
        late: shared.late_comments.load(Ordering::Relaxed),
        max: Duration::from_nanos(shared.send_lag_ns.load(Ordering::Relaxed)),
    };
    Ok(Sent { last_seq: Vec::new(), lateness: Some(lateness), sender: "comment sender" })
}

/// Publish while viewers churn, then stop churning and wait until every rejoin is answered and
/// every event delivered (or `--drain`).
fn churn(
    s: &Settings,
    clients: &mut Clients,
    shared: &Shared,
    progress: &mut Progress<'_>,
    report: &mut Report,
    deliveries_before: u64,
) -> anyhow::Result<Sent> {
    let mut sent = Sent::default();
    match &s.publish {
        // Every viewer joined before publishing and rejoins with `since`, so each must end up
        // with every event of its room: the expected count stands as it is.
        Some(p) if p.rate > 0.0 => sent = publish(s, shared, progress, report)?,
        Some(p) => {
            wait_until(progress, Duration::from_secs_f64(p.duration), || false);
        }
        None => {}
    }
    // Stop churning, then let rejoins in flight and the last events arrive before counting: a
    // stream cut short by this tool is not a loss by the server.
    clients.quiesce()?;
    let expected = report.expected + deliveries_before;
    wait_until(progress, Duration::from_secs_f64(s.drain), || {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        load(&shared.recovered) + load(&shared.recovery_failed) >= load(&shared.reconnects)
            && load(&shared.deliveries) >= expected
    });
    Ok(sent)
}

/// Members of each room when every room has as many (connection i is in room i mod rooms).
fn members_per_room(s: &Settings) -> Option<u64> {
    (s.common.conns % s.rooms == 0).then(|| (s.common.conns / s.rooms) as u64)
}

/// Publish on the timetable and put it in `report`: messages published and the deliveries
/// expected if every planned connection is a member.
fn publish(s: &Settings, shared: &Shared, progress: &mut Progress<'_>, report: &mut Report) -> anyhow::Result<Sent> {
    let Some(p) = &s.publish else { return Ok(Sent::default()) };
    let plan = publisher::Plan {
        ingest: p.ingest.clone(),
        token: p.ingest_token.clone(),
        rooms: s.rooms,
        room_prefix: s.room_prefix.clone(),
        rate: p.rate,
        duration: Duration::from_secs_f64(p.duration),
        payload: p.payload,
        lag_tolerance: Duration::from_secs_f64(p.lag_tolerance_ms / 1000.0),
    };
    let published = Publisher::connect(plan)?.run(progress)?;
    shared.errors.fetch_add(published.errors, Ordering::Relaxed);
    report.published = published.per_room.iter().sum();
    let members = |r: usize| (0..s.common.conns).filter(|i| i % s.rooms == r).count() as u64;
    report.expected = published.per_room.iter().enumerate().map(|(r, n)| n * members(r)).sum();
    Ok(Sent { last_seq: published.last_seq, lateness: Some(published.lateness), sender: "publisher" })
}

/// The clients' totals and counters.
fn record_totals(s: &Settings, report: &mut Report, totals: &Totals, shared: &Shared, active: f64) {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    report.delivered = totals.delivered;
    report.duplicated = totals.duplicated;
    report.reordered = totals.reordered;
    report.lost = totals.lost;
    report.loadgen_processes = totals.processes;
    report.reconnects = load(&shared.reconnects);
    report.recovered = load(&shared.recovered);
    report.recovery_failed = load(&shared.recovery_failed);
    report.presence_messages = load(&shared.presence);
    let conns = s.common.conns.max(1) as f64;
    report.presence_per_member_per_sec = report.presence_messages as f64 / (conns * active.max(1e-6));
    report.connected = load(&shared.connected);
    report.joined = load(&shared.joined);
    report.failed = load(&shared.failed);
    report.closed_by_server = load(&shared.closed);
    report.errors = load(&shared.errors);
    let mut codes: Vec<_> = totals.close_codes.iter().collect();
    codes.sort();
    report.close_codes = codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    if !totals.connect_time.is_zero() {
        report.connect_seconds = totals.connect_time.as_secs_f64();
    }
    report.connects_per_sec = report.connected as f64 / report.connect_seconds.max(1e-6);
    report.tls_resumed = load(&shared.tls_resumed);
    report.connects_per_server_cpu_sec =
        report.connect_server_cpu_seconds.map(|cpu| report.connected as f64 / cpu.max(0.01));
    report.latency = Percentiles::of(&totals.latency);
    report.message_spread = crate::spread::summary(&totals.spread);
    report.connect_latency = Percentiles::of(&totals.connect_latency);
    report.upgrade_latency = Percentiles::of(&totals.upgrade_latency);
    if s.kind == Kind::Comments {
        report.published = totals.comments_sent;
        if let Some(n) = members_per_room(s) {
            // Every comment reaches every member of its room, the sender included.
            report.expected = totals.comments_sent * n;
        }
        report.ack_latency = Some(Percentiles::of(&totals.ack_latency));
    }
    report.deliveries_per_sec = report.delivered as f64 / active.max(1e-6);
    if let Some(cpu) = report.server_cpu_seconds {
        report.deliveries_per_server_cpu_sec = Some(report.delivered as f64 / cpu.max(0.01));
    }
}

/// With several `--url`s: what each one's viewers received.
fn record_per_url(s: &Settings, report: &mut Report, totals: &Totals, active: f64) {
    if s.common.url.len() < 2 {
        return;
    }
    let conns = clients::conns_per_endpoint(s.common.conns, s.rooms, s.common.url.len());
    report.per_url = s
        .common
        .url
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let e = totals.by_endpoint.get(i);
            let delivered = e.map_or(0, |e| e.delivered);
            UrlReport {
                url: url.clone(),
                conns: conns[i],
                delivered,
                lost: e.map_or(0, |e| e.lost),
                deliveries_per_sec: delivered as f64 / active.max(1e-6),
                latency: e.map(|e| Percentiles::of(&e.latency)).unwrap_or_default(),
            }
        })
        .collect();
}

/// How late the sender was, and a note when a few messages were.
fn record_sending(report: &mut Report, sent: &Sent) {
    let Some(l) = sent.lateness else { return };
    report.publisher_max_lag_ms = l.max.as_secs_f64() * 1000.0;
    report.late_messages = l.late;
    report.lag_tolerance_ms = l.tolerance.as_secs_f64() * 1000.0;
    report.warnings.extend(l.note(sent.sender));
}

/// The server's RSS per connection, from its RSS before this run's connections; with a
/// warning when it already held others then.
fn record_memory(report: &mut Report, baseline: &Baseline) {
    let servers = &baseline.servers;
    if servers.is_empty() {
        return;
    }
    if report.server_rss_kib.is_none() {
        report.server_rss_kib = baseline.rss_kib.zip(servers.rss_kib());
    }
    let Some((before, after)) = report.server_rss_kib else { return };
    let ours = report.joined.max(report.connected).max(1);
    report.server_rss_per_conn = Some((after.saturating_sub(before) * 1024) as f64 / ours as f64);
    match baseline.connections {
        Some(0) => {}
        Some(n) => report.warnings.push(format!(
            "the server already held {n} connections before this run opened its own: the RSS per connection \
             is measured from an RSS that held them (and memory they freed is reused), so it is likely too low; \
             measure against a fresh server"
        )),
        None => report.warnings.push(format!(
            "could not read the server's connections from /proc/PID/fd (PID {:?}): the RSS per connection assumes \
             it held none",
            servers.pids
        )),
    }
}

/// `--json`, `--hgrm`, `--svg`, `--timeline`: storm and idle chart connect and upgrade latency (their
/// `.hgrm` is the upgrade latency), the others delivery latency.
fn write_outputs(s: &Settings, report: &Report, totals: &Totals) -> anyhow::Result<()> {
    let c = &s.common;
    let opens = matches!(s.kind, Kind::Storm | Kind::Idle);
    if let Some(path) = &c.json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &c.hgrm {
        let h = if opens { &totals.upgrade_latency } else { &totals.latency };
        std::fs::write(path, hgrm::hgrm(h)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &c.svg {
        let mut series = Vec::new();
        if opens {
            series.push(("connect (TCP)", &totals.connect_latency));
            series.push(("upgrade (connect to 101)", &totals.upgrade_latency));
        } else {
            series.push(("delivery", &totals.latency));
        }
        if s.kind == Kind::Comments {
            series.push(("ack", &totals.ack_latency));
        }
        let rate = s.publish.as_ref().map(|p| p.rate).or(s.comments.as_ref().map(|p| p.rate));
        let title = match rate {
            Some(rate) => format!("roomcast {}: {} conns, {} rooms, {rate}/s", s.kind.name(), c.conns, s.rooms),
            None => format!("roomcast {}: {} conns", s.kind.name(), c.conns),
        };
        std::fs::write(path, report::svg(&series, &title)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &c.timeline {
        std::fs::write(path, crate::spread::csv(&totals.spread))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
