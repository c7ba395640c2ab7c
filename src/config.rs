//! Typed configuration with embedded defaults.
//!
//! Every setting has a default (PROTOCOL.md's ports), a key in the optional TOML file given with
//! `--config`, and a command-line flag; flags win over the file, the file over the defaults.
//! A bad value is an error that names where it came from: the flag (`--max-message: ...`) when
//! a flag set it, the key (`limits.max_message: ...`) when the file did. This module never
//! opens a socket and never reads anything but the one file it is given.
//!
//! toml reports a mistyped or unknown key by its line only; `serde_path_to_error` (dtolnay's,
//! a thin wrapper around any serde deserializer) adds the dotted key path, so every file error
//! starts with the key like the range errors do.

pub mod addr;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything `roomcast serve` needs to run.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Let this process share its listening ports with other processes (`SO_REUSEPORT`
    /// groups across processes, for benchmarks). Off: a port another process already listens
    /// on is refused at startup.
    pub reuse_port: bool,
    /// Plain WebSocket listener.
    pub ws: WsConfig,
    /// TLS WebSocket listener (off until both `cert` and `key` are set).
    pub wss: WssConfig,
    /// Ingest socket for upstream services.
    pub ingest: IngestConfig,
    /// Admin HTTP port.
    pub admin: AdminConfig,
    /// Per-connection limits.
    pub limits: LimitsConfig,
    /// Heartbeats and presence.
    pub presence: PresenceConfig,
    /// Room history and room lifetime.
    pub history: HistoryConfig,
    /// How a room's messages are sent to its members.
    pub fanout: FanoutConfig,
    /// Durable sinks for comments, tombstones and presence records.
    pub sink: crate::sink::SinkConfig,
}

/// `[ws]`: the plain viewer listener.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Address to listen on (a host name is resolved when the configuration is read).
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    /// HTTP path of the upgrade (also used by the TLS listener).
    pub path: String,
    /// Serve the demo page at `GET /` (and `/index.html`) on the viewer ports.
    pub demo_page: bool,
}

/// `[wss]`: the TLS viewer listener.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WssConfig {
    /// Address to listen on once a certificate and key are configured.
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// `[ingest]`: the upstream publishing socket.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// TCP address to listen on.
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    /// Optional Unix socket path.
    pub unix: Option<PathBuf>,
    /// Longest accepted command line in bytes; a longer line closes the connection.
    pub max_line: usize,
    /// Tokens accepted by `auth`; empty means no auth is required.
    pub tokens: Vec<String>,
}

/// `[admin]`: the operators' HTTP port.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on.
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    /// When set, every admin path but `/healthz` needs `Authorization: Bearer <token>`;
    /// required when `listen` is not a loopback address.
    pub token: Option<String>,
}

/// `[limits]`: what one viewer connection may cost.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest client message in bytes (after reassembly); larger closes with 1009.
    pub max_message: usize,
    /// Longest comment text in characters.
    pub max_comment_chars: usize,
    /// Bytes that may still wait in one connection's outbound queue after a write attempt
    /// before it is closed with 4009 (within one loop turn up to 4 times this may queue).
    pub outbound_budget: usize,
    /// Time a new connection has to complete the WebSocket handshake.
    pub handshake_timeout_ms: u64,
    /// Time a closing connection has to finish the close handshake before it is dropped.
    pub close_timeout_ms: u64,
    /// Rooms one connection may be joined to at once (its private `user:` room excluded).
    pub max_rooms_per_conn: usize,
}

/// `[presence]`: heartbeats and the coalesced presence messages.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// How often clients should ping (sent in `hello.heartbeat_ms`).
    pub heartbeat_ms: u64,
    /// Silence after which a connection is closed; 0 means 2.5 x `heartbeat_ms`.
    pub timeout_ms: u64,
    /// At most one `presence` (and one `reactions`) message per room per this interval.
    pub interval_ms: u64,
    /// Rooms with more viewers than this get `online` without `joined`/`left` lists.
    pub large_room: usize,
}

/// `[history]`: the per-room ring used for recovery, and room lifetime.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Sequenced messages kept per room.
    pub size: usize,
    /// Oldest message kept, in milliseconds.
    pub max_age_ms: u64,
    /// A room with no members and no events for this long is freed.
    pub room_idle_ms: u64,
}

/// `[fanout]`: how a room's messages reach its members.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// A room that sent its members a write less than this long ago holds further messages
    /// until this long after that write, then sends them together: each member gets at most
    /// one write per window from a busy room, at most this much later. A quiet room's message
    /// goes out at once. 0 sends every loop turn's messages at the end of the turn.
    pub batch_window_ms: u64,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self { batch_window_ms: DEFAULT_BATCH_WINDOW_MS }
    }
}

/// See [`FanoutConfig::batch_window_ms`].
pub const DEFAULT_BATCH_WINDOW_MS: u64 = 5;

/// Longest batching window accepted: beyond this a room's messages would be visibly late.
pub const MAX_BATCH_WINDOW_MS: u64 = 1_000;

impl Default for WsConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 8080)), path: "/ws".to_owned(), demo_page: true }
    }
}

impl Default for WssConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 8443)), cert: None, key: None }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 7070)), unix: None, max_line: 64 * 1024, tokens: Vec::new() }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9090)), token: None }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message: 4096,
            max_comment_chars: 500,
            outbound_budget: 1024 * 1024,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            max_rooms_per_conn: 64,
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self { heartbeat_ms: 25_000, timeout_ms: 0, interval_ms: 1_000, large_room: 100 }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { size: 512, max_age_ms: 300_000, room_idle_ms: 60_000 }
    }
}

impl PresenceConfig {
    /// Silence after which a connection is closed.
    pub fn effective_timeout_ms(&self) -> u64 {
        if self.timeout_ms == 0 {
            self.heartbeat_ms * 5 / 2
        } else {
            self.timeout_ms
        }
    }
}

/// A configuration that cannot be used. The message names the setting as the user wrote it:
/// the flag when a flag set it, the dotted key otherwise. Causes are reported through
/// [`std::error::Error::source`], never repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("{}", parse_text(path, key, *line, message))]
    Parse {
        /// The file (`<inline>` for a string).
        path: PathBuf,
        /// The dotted key, e.g. `limits.max_message`; empty for a TOML syntax error.
        key: String,
        /// The line in the file, when toml knows it.
        line: Option<usize>,
        /// What is wrong, without the echoed source line.
        message: String,
    },
    /// A value is out of range, or two settings do not fit together.
    #[error("{setting}: {message}")]
    Invalid {
        /// The key (`limits.max_message`) or, when a flag set it, the flag (`--max-message`).
        setting: String,
        /// What is wrong with it and what is allowed.
        message: String,
    },
}

fn parse_text(path: &Path, key: &str, line: Option<usize>, message: &str) -> String {
    let at = match line {
        Some(line) => format!("config file {}, line {line}", path.display()),
        None => format!("config file {}", path.display()),
    };
    if key.is_empty() {
        format!("{at}: {message}")
    } else {
        format!("{key}: {message} ({at})")
    }
}

impl ConfigError {
    /// The setting the error is about (a key or a flag), when it is about one.
    pub fn setting(&self) -> Option<&str> {
        match self {
            Self::Read { .. } => None,
            Self::Parse { key, .. } => (!key.is_empty()).then_some(key.as_str()),
            Self::Invalid { setting, .. } => Some(setting),
        }
    }
}

/// toml's and serde's wording, for people: Rust type names become what they mean.
fn plain_words(message: &str) -> String {
    let mut text = message.trim().to_owned();
    for (rust, words) in [
        ("expected usize", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u16", "expected an integer 0..=65535"),
        ("expected a boolean", "expected true or false"),
        ("unknown field", "unknown key"),
    ] {
        text = text.replace(rust, words);
    }
    text
}

impl Config {
    /// Parse a TOML document (every key optional).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Path::new("<inline>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let to_error = |e: toml::de::Error, key: String| {
            let line = e
                .span()
                .map(|span| 1 + text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count());
            ConfigError::Parse { path: path.to_owned(), key, line, message: plain_words(e.message()) }
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| to_error(e, String::new()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            to_error(e.into_inner(), key)
        })
    }

    /// Read and parse a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Check ranges and combinations a TOML type cannot express; errors name the keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&|key| key.to_owned())
    }

    /// [`Config::validate`] with `name` saying how each key is to be called in the message.
    fn check(&self, name: &dyn Fn(&'static str) -> String) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { setting: name(key), message };
        let l = &self.limits;
        if !(125..=16 << 20).contains(&l.max_message) {
            return Err(invalid("limits.max_message", format!("must be 125..=16777216 bytes (got {})", l.max_message)));
        }
        if l.max_comment_chars == 0 {
            return Err(invalid("limits.max_comment_chars", "must be at least 1 (got 0)".into()));
        }
        if l.outbound_budget < 4096 {
            return Err(invalid(
                "limits.outbound_budget",
                format!("must be at least 4096 bytes (got {})", l.outbound_budget),
            ));
        }
        if l.max_rooms_per_conn == 0 {
            return Err(invalid("limits.max_rooms_per_conn", "must be at least 1 (got 0)".into()));
        }
        if self.presence.heartbeat_ms == 0 {
            return Err(invalid("presence.heartbeat_ms", "must be at least 1 ms (got 0)".into()));
        }
        let timeout = self.presence.timeout_ms;
        if timeout != 0 && timeout <= self.presence.heartbeat_ms {
            return Err(invalid(
                "presence.timeout_ms",
                format!(
                    "must be 0 (2.5 x the heartbeat) or longer than {} = {} ms (got {timeout})",
                    name("presence.heartbeat_ms"),
                    self.presence.heartbeat_ms
                ),
            ));
        }
        if self.presence.interval_ms == 0 {
            return Err(invalid("presence.interval_ms", "must be at least 1 ms (got 0)".into()));
        }
        if self.history.size == 0 {
            return Err(invalid("history.size", "must be at least 1 (got 0)".into()));
        }
        if self.fanout.batch_window_ms > MAX_BATCH_WINDOW_MS {
            return Err(invalid(
                "fanout.batch_window_ms",
                format!("must be at most {MAX_BATCH_WINDOW_MS} ms (got {})", self.fanout.batch_window_ms),
            ));
        }
        if !self.ws.path.starts_with('/') {
            return Err(invalid("ws.path", format!("must start with '/' (got {:?})", self.ws.path)));
        }
        match (&self.wss.cert, &self.wss.key) {
            (Some(_), None) => return Err(invalid("wss.cert", format!("needs {} as well", name("wss.key")))),
            (None, Some(_)) => return Err(invalid("wss.key", format!("needs {} as well", name("wss.cert")))),
            _ => {}
        }
        if self.workers > 256 {
            return Err(invalid("workers", format!("must be at most 256 (got {})", self.workers)));
        }
        if let Some(path) = &self.ingest.unix {
            // Better refused than silently ignored: an upstream would wait on a missing socket.
            return Err(invalid(
                "ingest.unix",
                format!("Unix-socket ingest is not available yet ({}); use ingest.listen", path.display()),
            ));
        }
        if self.admin.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid("admin.token", "must not be empty (leave it out for no token)".into()));
        }
        if self.admin.token.is_none() && !self.admin.listen.ip().is_loopback() {
            // Anyone who can reach the port could read every room and publish into it.
            return Err(invalid(
                "admin.listen",
                format!(
                    "{} is not a loopback address: set {} too, or listen on 127.0.0.1",
                    self.admin.listen,
                    name("admin.token")
                ),
            ));
        }
        if let Err(e) = self.sink.validate() {
            return Err(invalid(e.key, e.message));
        }
        if self.ingest.max_line < 1024 {
            return Err(invalid(
                "ingest.max_line",
                format!("must be at least 1024 bytes (got {})", self.ingest.max_line),
            ));
        }
        Ok(())
    }

    /// Worker threads to run: `workers`, or one per available core when 0.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// A copy fit for logs and `check-config` output: secrets (ingest and admin tokens)
    /// replaced.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for token in copy.ingest.tokens.iter_mut().chain(copy.admin.token.as_mut()) {
            *token = "<redacted>".to_owned();
        }
        copy
    }

    /// Whether the TLS listener is on.
    pub fn tls_enabled(&self) -> bool {
        self.wss.cert.is_some() && self.wss.key.is_some()
    }
}

/// Every key that has a flag, with that flag: error messages name the flag when it set the
/// value. `ServeArgs` below declares the same pairs; a unit test keeps the two in step.
pub const FLAGS: &[(&str, &str)] = &[
    ("workers", "--workers"),
    ("reuse_port", "--reuse-port"),
    ("ws.listen", "--ws-listen"),
    ("ws.path", "--ws-path"),
    ("ws.demo_page", "--no-demo-page"),
    ("wss.listen", "--wss-listen"),
    ("wss.cert", "--tls-cert"),
    ("wss.key", "--tls-key"),
    ("ingest.listen", "--ingest-listen"),
    ("ingest.unix", "--ingest-unix"),
    ("ingest.max_line", "--ingest-max-line"),
    ("ingest.tokens", "--ingest-token"),
    ("admin.listen", "--admin-listen"),
    ("admin.token", "--admin-token"),
    ("limits.max_message", "--max-message"),
    ("limits.max_comment_chars", "--max-comment-chars"),
    ("limits.outbound_budget", "--outbound-budget"),
    ("limits.handshake_timeout_ms", "--handshake-timeout-ms"),
    ("limits.close_timeout_ms", "--close-timeout-ms"),
    ("limits.max_rooms_per_conn", "--max-rooms-per-conn"),
    ("presence.heartbeat_ms", "--heartbeat-ms"),
    ("presence.timeout_ms", "--heartbeat-timeout-ms"),
    ("presence.interval_ms", "--presence-interval-ms"),
    ("presence.large_room", "--large-room"),
    ("history.size", "--history-size"),
    ("history.max_age_ms", "--history-max-age-ms"),
    ("history.room_idle_ms", "--room-idle-ms"),
    ("fanout.batch_window_ms", "--batch-window-ms"),
    ("sink.file.dir", "--sink-dir"),
    ("sink.ack", "--sink-ack"),
];

/// The flag of `key`, if it has one.
pub fn flag_of(key: &str) -> Option<&'static str> {
    FLAGS.iter().find(|(k, _)| *k == key).map(|(_, flag)| *flag)
}

/// `roomcast serve` flags: one per setting, each overriding its TOML key.
#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `workers`: worker threads, 0 = one per core [default: 0].
    #[arg(long)]
    pub workers: Option<usize>,
    /// `reuse_port = true`: share the listening ports with other processes on purpose
    /// (SO_REUSEPORT, for benchmarks); without it a port in use by another process is refused.
    #[arg(long)]
    pub reuse_port: bool,
    /// `ws.listen`: plain WebSocket address, HOST:PORT [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR", value_parser = addr::parse)]
    pub ws_listen: Option<SocketAddr>,
    /// `ws.path`: upgrade path [default: /ws].
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// `ws.demo_page = false`: do not serve the demo page at `GET /`.
    #[arg(long)]
    pub no_demo_page: bool,
    /// `wss.listen`: TLS WebSocket address, HOST:PORT [default: 0.0.0.0:8443].
    #[arg(long, value_name = "ADDR", value_parser = addr::parse)]
    pub wss_listen: Option<SocketAddr>,
    /// `wss.cert`: PEM certificate chain (turns wss on with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// `wss.key`: PEM private key.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// `ingest.listen`: ingest TCP address, HOST:PORT [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR", value_parser = addr::parse)]
    pub ingest_listen: Option<SocketAddr>,
    /// `ingest.unix`: ingest Unix socket path (not available yet: refused).
    #[arg(long, value_name = "PATH")]
    pub ingest_unix: Option<PathBuf>,
    /// `ingest.max_line`: longest ingest line in bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub ingest_max_line: Option<usize>,
    /// `ingest.tokens`: an accepted ingest token (repeatable).
    #[arg(long = "ingest-token", value_name = "TOKEN")]
    pub ingest_tokens: Vec<String>,
    /// `admin.listen`: admin HTTP address, HOST:PORT [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR", value_parser = addr::parse)]
    pub admin_listen: Option<SocketAddr>,
    /// `admin.token`: bearer token every admin path but /healthz needs [default: none].
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// `limits.max_message`: largest client message [default: 4096].
    #[arg(long, value_name = "BYTES")]
    pub max_message: Option<usize>,
    /// `limits.max_comment_chars`: longest comment [default: 500].
    #[arg(long, value_name = "CHARS")]
    pub max_comment_chars: Option<usize>,
    /// `limits.outbound_budget`: queued bytes before 4009 [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub outbound_budget: Option<usize>,
    /// `limits.handshake_timeout_ms` [default: 10000].
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// `limits.close_timeout_ms` [default: 5000].
    #[arg(long, value_name = "MS")]
    pub close_timeout_ms: Option<u64>,
    /// `limits.max_rooms_per_conn` [default: 64].
    #[arg(long, value_name = "N")]
    pub max_rooms_per_conn: Option<usize>,
    /// `presence.heartbeat_ms`: silence before the server pings [default: 25000].
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// `presence.timeout_ms`: silence before close, 0 = 2.5 x heartbeat [default: 0].
    #[arg(long, value_name = "MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// `presence.interval_ms`: presence/reactions coalescing interval [default: 1000].
    #[arg(long, value_name = "MS")]
    pub presence_interval_ms: Option<u64>,
    /// `presence.large_room`: viewers above which lists are left out [default: 100].
    #[arg(long, value_name = "N")]
    pub large_room: Option<usize>,
    /// `history.size`: messages kept per room [default: 512].
    #[arg(long, value_name = "N")]
    pub history_size: Option<usize>,
    /// `history.max_age_ms`: oldest message kept [default: 300000].
    #[arg(long, value_name = "MS")]
    pub history_max_age_ms: Option<u64>,
    /// `history.room_idle_ms`: empty quiet rooms are freed after this [default: 60000].
    #[arg(long, value_name = "MS")]
    pub room_idle_ms: Option<u64>,
    /// `fanout.batch_window_ms`: a busy room's messages are sent together, at most this much
    /// later; 0 = at the end of each loop turn [default: 5].
    #[arg(long, value_name = "MS")]
    pub batch_window_ms: Option<u64>,
    /// `sink.file.dir`: the file sink's data directory (its spool goes under it) [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub sink_dir: Option<PathBuf>,
    /// `sink.ack`: `durable` (acks wait for the sinks) or `fast` [default: durable].
    #[arg(long, value_name = "MODE")]
    pub sink_ack: Option<crate::sink::AckMode>,
}

/// Applies flags over a configuration and remembers which keys they set.
struct Overrides<'c> {
    config: &'c mut Config,
    by_flag: Vec<&'static str>,
}

impl Overrides<'_> {
    fn set<T>(&mut self, key: &'static str, slot: impl FnOnce(&mut Config) -> &mut T, value: Option<T>) {
        if let Some(v) = value {
            *slot(self.config) = v;
            self.by_flag.push(key);
        }
    }
}

impl ServeArgs {
    /// Defaults, then the file, then the flags; validated. A bad value is reported under its
    /// flag when a flag set it.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let mut o = Overrides { config: &mut c, by_flag: Vec::new() };
        o.set("workers", |c| &mut c.workers, self.workers);
        o.set("reuse_port", |c| &mut c.reuse_port, self.reuse_port.then_some(true));
        o.set("ws.listen", |c| &mut c.ws.listen, self.ws_listen);
        o.set("ws.path", |c| &mut c.ws.path, self.ws_path);
        o.set("ws.demo_page", |c| &mut c.ws.demo_page, self.no_demo_page.then_some(false));
        o.set("wss.listen", |c| &mut c.wss.listen, self.wss_listen);
        o.set("wss.cert", |c| &mut c.wss.cert, self.tls_cert.map(Some));
        o.set("wss.key", |c| &mut c.wss.key, self.tls_key.map(Some));
        o.set("ingest.listen", |c| &mut c.ingest.listen, self.ingest_listen);
        o.set("ingest.unix", |c| &mut c.ingest.unix, self.ingest_unix.map(Some));
        o.set("ingest.max_line", |c| &mut c.ingest.max_line, self.ingest_max_line);
        let tokens = (!self.ingest_tokens.is_empty()).then_some(self.ingest_tokens);
        o.set("ingest.tokens", |c| &mut c.ingest.tokens, tokens);
        o.set("admin.listen", |c| &mut c.admin.listen, self.admin_listen);
        o.set("admin.token", |c| &mut c.admin.token, self.admin_token.map(Some));
        o.set("limits.max_message", |c| &mut c.limits.max_message, self.max_message);
        o.set("limits.max_comment_chars", |c| &mut c.limits.max_comment_chars, self.max_comment_chars);
        o.set("limits.outbound_budget", |c| &mut c.limits.outbound_budget, self.outbound_budget);
        o.set("limits.handshake_timeout_ms", |c| &mut c.limits.handshake_timeout_ms, self.handshake_timeout_ms);
        o.set("limits.close_timeout_ms", |c| &mut c.limits.close_timeout_ms, self.close_timeout_ms);
        o.set("limits.max_rooms_per_conn", |c| &mut c.limits.max_rooms_per_conn, self.max_rooms_per_conn);
        o.set("presence.heartbeat_ms", |c| &mut c.presence.heartbeat_ms, self.heartbeat_ms);
        o.set("presence.timeout_ms", |c| &mut c.presence.timeout_ms, self.heartbeat_timeout_ms);
        o.set("presence.interval_ms", |c| &mut c.presence.interval_ms, self.presence_interval_ms);
        o.set("presence.large_room", |c| &mut c.presence.large_room, self.large_room);
        o.set("history.size", |c| &mut c.history.size, self.history_size);
        o.set("history.max_age_ms", |c| &mut c.history.max_age_ms, self.history_max_age_ms);
        o.set("history.room_idle_ms", |c| &mut c.history.room_idle_ms, self.room_idle_ms);
        o.set("fanout.batch_window_ms", |c| &mut c.fanout.batch_window_ms, self.batch_window_ms);
        o.set("sink.file.dir", |c| &mut c.sink.file.dir, self.sink_dir);
        o.set("sink.ack", |c| &mut c.sink.ack, self.sink_ack);
        let by_flag = o.by_flag;
        let name = |key: &'static str| match flag_of(key) {
            Some(flag) if by_flag.contains(&key) => flag.to_owned(),
            _ => key.to_owned(),
        };
        c.check(&name)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn flags(args: &[&str]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).expect("flags parse");
        cli.serve.into_config()
    }

    #[test]
    fn defaults_are_the_protocol_ports() {
        let c = Config::default();
        assert_eq!(c.ws.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.wss.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.ingest.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.limits.max_message, 4096);
        assert!(!c.tls_enabled());
        assert!(c.ws.demo_page && !c.reuse_port);
        assert_eq!(c.presence.effective_timeout_ms(), 62_500);
        c.validate().expect("defaults are valid");
    }

    /// Dotted paths of every key in a TOML table.
    fn key_paths(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            match value {
                toml::Value::Table(inner) => key_paths(inner, &format!("{prefix}{key}."), out),
                _ => out.push(format!("{prefix}{key}")),
            }
        }
    }

    fn is_key(word: &str) -> bool {
        word.starts_with(|c: char| c.is_ascii_lowercase()) && word.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    }

    #[test]
    fn the_example_file_lists_every_key_with_its_default() {
        let example = include_str!("../roomcast.example.toml");
        let c = Config::from_toml_str(example).expect("example parses");
        assert_eq!(c, Config::default());
        // Every key, optional ones included: those without a default are commented out
        // (`# cert = "..."`), so uncomment `# key = value` lines before collecting keys.
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| is_key(k)) => rest,
                // An optional table (`# [sink.redis]`) and its keys.
                Some(rest) if rest.starts_with('[') && rest.ends_with(']') => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let mut listed = Vec::new();
        key_paths(&toml::from_str(&uncommented).expect("uncommented example parses"), "", &mut listed);
        let mut full = Config::default();
        full.wss.cert = Some("c.pem".into());
        full.wss.key = Some("k.pem".into());
        full.ingest.unix = Some("i.sock".into());
        full.admin.token = Some("t".into());
        full.sink.redis = Some(crate::sink::config::RedisSinkConfig::default());
        full.sink.webhook = Some(crate::sink::config::WebhookSinkConfig {
            health_url: Some("http://h/healthz".into()),
            ..Default::default()
        });
        full.sink.spool.dir = Some("spool".into());
        let mut all = Vec::new();
        key_paths(&toml::Table::try_from(&full).expect("config serializes"), "", &mut all);
        listed.sort();
        all.sort();
        assert_eq!(listed, all, "roomcast.example.toml must list every key");
        let mut with_flags: Vec<String> = FLAGS.iter().map(|(k, _)| (*k).to_owned()).collect();
        with_flags.sort();
        // The sinks are configured in the file (a table per sink, too many keys for flags), but
        // for their directory and ack mode.
        all.retain(|k| !k.starts_with("sink.") || with_flags.contains(k));
        assert_eq!(with_flags, all, "every key but the sinks' has a flag in FLAGS");
    }

    #[test]
    fn file_errors_start_with_the_key() {
        let e = Config::from_toml_str("[limits]\nmax_mesage = 5\n").expect_err("unknown key");
        let ConfigError::Parse { key, line, message, .. } = &e else { panic!("parse error: {e}") };
        assert_eq!((key.as_str(), *line), ("limits.max_mesage", Some(2)), "{e}");
        assert!(message.starts_with("unknown key `max_mesage`, expected one of"), "{message}");
        assert!(e.to_string().starts_with("limits.max_mesage: unknown key"), "{e}");
        assert!(!e.to_string().contains('|'), "no echoed source line: {e}");

        let e = Config::from_toml_str("[limits]\nmax_message = \"big\"\n").expect_err("wrong type");
        assert!(
            e.to_string()
                .starts_with("limits.max_message: invalid type: string \"big\", expected a non-negative integer"),
            "{e}"
        );
        let e = Config::from_toml_str("[ws]\nlisten = \"nohost\"\n").expect_err("bad address");
        assert!(e.to_string().starts_with("ws.listen: expected HOST:PORT"), "{e}");
        let e = Config::from_toml_str("workers = [\n").expect_err("syntax");
        assert_eq!(e.setting(), None, "{e}");
        assert!(e.to_string().starts_with("config file <inline>, line 1: "), "{e}");

        let e = Config::from_toml_str("[limits]\nmax_message = 10\n").expect("parses").validate().expect_err("range");
        assert_eq!(e.to_string(), "limits.max_message: must be 125..=16777216 bytes (got 10)");
        let e =
            Config::from_toml_str("[fanout]\nbatch_window_ms = 5000\n").expect("parses").validate().expect_err("range");
        assert_eq!(e.to_string(), "fanout.batch_window_ms: must be at most 1000 ms (got 5000)");
        let mut c = Config::default();
        c.wss.cert = Some("c.pem".into());
        assert_eq!(c.validate().expect_err("pair").to_string(), "wss.cert: needs wss.key as well");
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let e = flags(&["--max-message", "10"]).expect_err("range");
        assert_eq!(e.to_string(), "--max-message: must be 125..=16777216 bytes (got 10)");
        let e = flags(&["--tls-key", "k.pem"]).expect_err("pair");
        assert_eq!(e.to_string(), "--tls-key: needs wss.cert as well");
        let e = flags(&["--heartbeat-ms", "1000", "--heartbeat-timeout-ms", "500"]).expect_err("order");
        assert!(
            e.to_string().starts_with(
                "--heartbeat-timeout-ms: must be 0 (2.5 x the heartbeat) or longer than --heartbeat-ms = 1000 ms"
            ),
            "{e}"
        );
        let e = flags(&["--ingest-unix", "/tmp/x.sock"]).expect_err("unix");
        assert!(e.to_string().starts_with("--ingest-unix: Unix-socket ingest is not available yet"), "{e}");
    }

    #[test]
    fn host_names_and_switches_from_flags() {
        let c = flags(&["--ws-listen", "localhost:8081", "--no-demo-page", "--reuse-port"]).expect("valid");
        assert!(c.ws.listen.ip().is_loopback() && c.ws.listen.port() == 8081, "{}", c.ws.listen);
        assert!(!c.ws.demo_page && c.reuse_port);
        assert!(Cli::try_parse_from(["serve", "--ws-listen", "8080"]).is_err(), "a port alone is not an address");
    }

    #[test]
    fn a_public_admin_port_needs_a_token() {
        let mut c = Config::default();
        c.admin.listen = "0.0.0.0:9090".parse().expect("addr");
        let e = c.validate().expect_err("no token");
        assert!(e.to_string().starts_with("admin.listen: 0.0.0.0:9090 is not a loopback address"), "{e}");
        assert!(e.to_string().contains("admin.token"), "{e}");
        c.admin.token = Some("s3cret".into());
        c.validate().expect("with a token");
        assert_eq!(c.redacted().admin.token.as_deref(), Some("<redacted>"));
        c.admin.token = Some(" ".into());
        assert!(c.validate().expect_err("empty").to_string().starts_with("admin.token"));
        c.admin.listen = "[::1]:0".parse().expect("addr");
        c.admin.token = None;
        c.validate().expect("IPv6 loopback needs no token");
        let args = ServeArgs { admin_token: Some("t".into()), ..ServeArgs::default() };
        assert_eq!(args.into_config().expect("valid").admin.token.as_deref(), Some("t"));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("roomcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "workers = 3\n[limits]\nmax_message = 1000\n[ws]\nlisten = \"localhost:9\"\n")
            .expect("write");
        let args = ServeArgs { config: Some(path.clone()), max_message: Some(2000), ..ServeArgs::default() };
        let c = args.into_config().expect("valid");
        assert_eq!((c.workers, c.limits.max_message, c.ws.listen.port()), (3, 2000, 9));
        // A bad value from the file is named by its key even when other flags are given.
        std::fs::write(&path, "[limits]\nmax_message = 10\n").expect("write");
        let args = ServeArgs { config: Some(path), workers: Some(1), ..ServeArgs::default() };
        assert!(args.into_config().expect_err("range").to_string().starts_with("limits.max_message: "));
        let _ = std::fs::remove_dir_all(dir);
    }
}
