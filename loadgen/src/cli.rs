//! The command line: one clap subcommand per scenario, each with only the options it uses
//! (`loadgen fanout --help` lists fanout's), the options every scenario has in one flattened
//! [`Common`] group, and the groups two scenarios share (rooms, publishing, draining) flattened
//! where they apply. [`Scenario::settings`] turns any of them into the one [`Settings`] the run
//! reads, so the run never matches on clap types.
//!
//! clap's derive API is what the server's CLI uses too. This module only parses: it must never
//! read a file or open a socket.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::procs::ChildIndex;

/// `loadgen`'s command line.
#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for roomcast: open-loop, verifying, coordinated-omission corrected"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// N viewers over R rooms; publish at a fixed rate through the ingest socket and check every
    /// delivery.
    Fanout(FanoutArgs),
    /// Viewers comment at a fixed total rate; measure comment -> ack and -> delivery latency.
    Comments(CommentsArgs),
    /// Open and hold N connections (with --server-pid: the server's RSS per connection).
    Idle(IdleArgs),
    /// Connect N as fast as possible; measure connect and upgrade latency.
    Storm(StormArgs),
    /// Viewers stay a random time, disconnect and rejoin with `since`, while events are
    /// published: every rejoin must recover exactly what it missed.
    Churn(ChurnArgs),
}

/// Options of every scenario.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Viewer URL: ws://HOST:PORT/ws or wss://HOST:PORT/ws. Several (the flag repeated, or a
    /// comma list, one scheme for all): each room's members go round-robin over them (the k-th
    /// member of a room to URL k mod N; over `--procs` children too).
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    pub url: Vec<String>,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Client threads (per process).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Client processes: more than one to hold more connections than one process may open
    /// files (connections are spread over them; counts and histograms are merged).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Internal: run as child I of N (set by a parent started with `--procs`).
    #[arg(long, hide = true)]
    pub child: Option<ChildIndex>,
    /// Handshakes in flight per thread.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// Local source addresses to spread connections over, e.g. 127.0.0.1-127.0.0.20.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// PEM certificate to trust for wss (e.g. from `roomcast gen-cert`).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// HS256 secret: each connection sends a JWT (`sub` = its user, every room, may comment,
    /// valid for an hour) as `?token=`.
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Send `{"op":"ping"}` from each connection every this many seconds (0: never). Only for
    /// a server that does not ping silent connections itself; otherwise a viewer sends nothing
    /// unasked but the pongs that answer the server's pings.
    #[arg(long, default_value_t = 0.0)]
    pub app_ping_every: f64,
    /// Client threads look for socket events every this many microseconds instead of sleeping
    /// in epoll until one comes (0: sleep in epoll). On loopback a sleeping client is woken by
    /// the server's own send, on the server's core: polling keeps that wakeup off it, as a
    /// network would, at the price of up to this much added to each measured latency.
    #[arg(long, default_value_t = 0)]
    pub poll_us: u64,
    /// Server process id: its CPU per delivery, its RSS per connection (idle). Several (the
    /// flag repeated, or a comma list, e.g. the nodes of a cluster): CPU, RSS and connections
    /// are summed over them.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Give up waiting for connections after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency percentile distribution (HdrHistogram .hgrm format) here.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write an SVG latency-by-percentile chart here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Write each message's deliveries here as CSV (`due_s,deliveries,first_ms,last_ms`, in
    /// send order): a stall shows as consecutive messages whose first delivery is late.
    #[arg(long)]
    pub timeline: Option<PathBuf>,
}

/// Rooms the viewers join.
#[derive(Args, Debug, Clone)]
pub struct RoomArgs {
    /// Rooms (connection i joins room i mod R).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Room name prefix.
    #[arg(long, default_value = "lg")]
    pub room_prefix: String,
}

/// Publishing through the ingest socket on an open-loop timetable.
#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// Ingest address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub ingest: String,
    /// Ingest token, sent as `{"op":"auth"}` first (for a server with ingest tokens).
    #[arg(long)]
    pub ingest_token: Option<String>,
    /// Messages per second, in total.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Extra payload bytes per message.
    #[arg(long, default_value_t = 0)]
    pub payload: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// A message sent this many ms or more behind its timetable is late; the run is invalid
    /// when more than 1% of messages were late.
    #[arg(long, default_value_t = 10.0)]
    pub lag_tolerance_ms: f64,
}

/// Waiting before and after the measured period.
#[derive(Args, Debug, Clone)]
pub struct DrainArgs {
    /// Seconds to wait after every connection joined before publishing or commenting: lets
    /// the join phase's presence announcements pass, so the run measures the steady state only.
    #[arg(long, default_value_t = 0.0)]
    pub settle: f64,
    /// Seconds to wait for deliveries after publishing ends.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}

/// `fanout`'s options.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Options of every scenario.
    #[command(flatten)]
    pub common: Common,
    /// The rooms joined.
    #[command(flatten)]
    pub rooms: RoomArgs,
    /// The ingest publisher.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Waiting before and after the measured period.
    #[command(flatten)]
    pub drain: DrainArgs,
}

/// `comments`' options.
#[derive(Args, Debug, Clone)]
pub struct CommentsArgs {
    /// Options of every scenario.
    #[command(flatten)]
    pub common: Common,
    /// The rooms joined.
    #[command(flatten)]
    pub rooms: RoomArgs,
    /// Comments per second, in total.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of commenting.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// A comment sent this many ms or more behind its timetable is late; the run is invalid
    /// when more than 1% of comments were late.
    #[arg(long, default_value_t = 10.0)]
    pub lag_tolerance_ms: f64,
    /// Waiting before and after the measured period.
    #[command(flatten)]
    pub drain: DrainArgs,
}

/// `idle`'s options.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Options of every scenario.
    #[command(flatten)]
    pub common: Common,
    /// The rooms joined.
    #[command(flatten)]
    pub rooms: RoomArgs,
    /// Seconds to hold the connections once they are all open.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

/// `storm`'s options.
#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Options of every scenario.
    #[command(flatten)]
    pub common: Common,
    /// wss: measure resumed connects. Every connection opens twice: the first round (full TLS
    /// handshakes) leaves each its session ticket, all are closed, then all reconnect and resume;
    /// the report (rates, latencies, server CPU) is the second round's. Without it every wss
    /// connect is a full handshake: loadgen's TLS client never resumes unless asked.
    #[arg(long)]
    pub tls_resume: bool,
}

/// `churn`'s options.
#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Options of every scenario.
    #[command(flatten)]
    pub common: Common,
    /// The rooms joined.
    #[command(flatten)]
    pub rooms: RoomArgs,
    /// The ingest publisher.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Waiting before and after the measured period.
    #[command(flatten)]
    pub drain: DrainArgs,
    /// Shortest stay of a connection, ms.
    #[arg(long, default_value_t = 1000)]
    pub hold_min_ms: u64,
    /// Longest stay of a connection, ms.
    #[arg(long, default_value_t = 5000)]
    pub hold_max_ms: u64,
}

/// Which scenario, without its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// See [`Scenario::Fanout`].
    Fanout,
    /// See [`Scenario::Comments`].
    Comments,
    /// See [`Scenario::Idle`].
    Idle,
    /// See [`Scenario::Storm`].
    Storm,
    /// See [`Scenario::Churn`].
    Churn,
}

impl Kind {
    /// The scenario's name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Comments => "comments",
            Self::Idle => "idle",
            Self::Storm => "storm",
            Self::Churn => "churn",
        }
    }

    /// Whether its viewers join a room (all but `storm`).
    pub fn joins(self) -> bool {
        self != Self::Storm
    }
}

/// A timetable a scenario sends on: its rate, length and lateness tolerance.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Messages (or comments) per second, in total.
    pub rate: f64,
    /// Seconds of sending.
    pub duration: f64,
    /// A message this many ms behind its timetable is late.
    pub lag_tolerance_ms: f64,
}

/// Everything a run reads, whatever the scenario (what a scenario does not use is at a neutral
/// value: no rooms for `storm`, no publisher for `idle`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The scenario.
    pub kind: Kind,
    /// Options of every scenario.
    pub common: Common,
    /// Rooms (1 for `storm`, which joins none).
    pub rooms: usize,
    /// Room name prefix.
    pub room_prefix: String,
    /// The ingest publisher (fanout, churn).
    pub publish: Option<PublishArgs>,
    /// The comment timetable (comments).
    pub comments: Option<Pace>,
    /// Seconds to hold the connections (idle).
    pub hold_seconds: f64,
    /// Waiting before and after the measured period.
    pub settle: f64,
    /// Seconds to wait for deliveries after sending ends.
    pub drain: f64,
    /// Churn: shortest and longest stay, ms.
    pub stay_ms: Option<(u64, u64)>,
    /// Storm over wss: connect twice and measure the resumed second round (`--tls-resume`).
    pub tls_resume: bool,
}

impl Scenario {
    /// The run's settings.
    pub fn settings(self) -> Settings {
        let rooms = |r: RoomArgs| (r.rooms.max(1), r.room_prefix);
        let none = DrainArgs { settle: 0.0, drain: 0.0 };
        let tls_resume = matches!(&self, Self::Storm(a) if a.tls_resume);
        let (kind, common, (rooms, room_prefix), publish, comments, hold_seconds, drain, stay_ms) = match self {
            Self::Fanout(a) => (Kind::Fanout, a.common, rooms(a.rooms), Some(a.publish), None, 0.0, a.drain, None),
            Self::Comments(a) => {
                let pace = Pace { rate: a.rate, duration: a.duration, lag_tolerance_ms: a.lag_tolerance_ms };
                (Kind::Comments, a.common, rooms(a.rooms), None, Some(pace), 0.0, a.drain, None)
            }
            Self::Idle(a) => (Kind::Idle, a.common, rooms(a.rooms), None, None, a.duration, none, None),
            Self::Storm(a) => (Kind::Storm, a.common, (1, "lg".into()), None, None, 0.0, none, None),
            Self::Churn(a) => {
                let stay = (a.hold_min_ms, a.hold_max_ms.max(a.hold_min_ms));
                (Kind::Churn, a.common, rooms(a.rooms), Some(a.publish), None, 0.0, a.drain, Some(stay))
            }
        };
        Settings {
            kind,
            common,
            rooms,
            room_prefix,
            publish,
            comments,
            hold_seconds,
            settle: drain.settle,
            drain: drain.drain,
            stay_ms,
            tls_resume,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn help(scenario: &str) -> String {
        let mut cmd = Cli::command();
        cmd.build();
        let sub = cmd.find_subcommand_mut(scenario).expect("scenario exists");
        sub.render_long_help().to_string()
    }

    #[test]
    fn each_scenario_lists_only_its_own_options() {
        let storm = help("storm");
        for foreign in ["--rate", "--rooms", "--ingest", "--hold-min-ms", "--drain", "--payload"] {
            assert!(!storm.contains(foreign), "storm --help lists {foreign}:\n{storm}");
        }
        assert!(storm.contains("--conns") && storm.contains("--jwt-secret"), "{storm}");
        let idle = help("idle");
        assert!(idle.contains("--server-pid") && !idle.contains("--rate") && !idle.contains("--ingest-token"));
        let comments = help("comments");
        assert!(comments.contains("--rate") && !comments.contains("--ingest") && !comments.contains("--payload"));
        let fanout = help("fanout");
        assert!(fanout.contains("--ingest-token") && !fanout.contains("--hold-min-ms"));
        assert!(help("churn").contains("--hold-min-ms"));
    }

    #[test]
    fn a_scenario_refuses_another_scenarios_option() {
        assert!(Cli::try_parse_from(["loadgen", "storm", "--rate", "5"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "idle", "--ingest", "127.0.0.1:1"]).is_err());
        let cli = Cli::try_parse_from(["loadgen", "fanout", "--rate", "5", "--ingest-token", "t"]).expect("parses");
        let s = cli.scenario.settings();
        assert_eq!(
            (s.kind, s.publish.map(|p| (p.rate, p.ingest_token))),
            (Kind::Fanout, Some((5.0, Some("t".into()))))
        );
    }

    #[test]
    fn urls_and_server_pids_are_repeated_or_comma_listed() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["loadgen", "fanout"];
            argv.extend(args);
            let s = Cli::try_parse_from(argv).expect("parses").scenario.settings();
            (s.common.url, s.common.server_pid)
        };
        let (urls, pids) = parse(&[]);
        assert_eq!((urls, pids), (vec!["ws://127.0.0.1:8080/ws".to_owned()], vec![]));
        let (urls, pids) = parse(&["--url", "ws://a:1/ws", "--server-pid", "7"]);
        assert_eq!((urls, pids), (vec!["ws://a:1/ws".to_owned()], vec![7]));
        let (urls, pids) = parse(&[
            "--url",
            "ws://a:1/ws,ws://b:2/ws",
            "--url",
            "ws://c:3/ws",
            "--server-pid",
            "7,8",
            "--server-pid",
            "9",
        ]);
        assert_eq!(urls, ["ws://a:1/ws", "ws://b:2/ws", "ws://c:3/ws"]);
        assert_eq!(pids, [7, 8, 9]);
        assert!(Cli::try_parse_from(["loadgen", "idle", "--server-pid", "7,x"]).is_err());
        // Every scenario takes them (they are common options).
        let storm =
            Cli::try_parse_from(["loadgen", "storm", "--url", "ws://a:1/ws,ws://b:2/ws", "--server-pid", "1,2"]);
        let s = storm.expect("parses").scenario.settings();
        assert_eq!((s.common.url.len(), s.common.server_pid.len()), (2, 2));
    }
}
