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

use crate::admission::PerUserPolicy;
use crate::ratelimit::{Rate, RateLimits};
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
    /// Viewer authentication (JWT).
    pub auth: AuthConfig,
    /// Switches for conformance and test tooling; all off by default.
    pub testing: TestingConfig,
    /// Durable sinks for comments, tombstones and presence records.
    pub sink: crate::sink::SinkConfig,
    /// Sharing rooms with other nodes through Redis (off: a single node).
    pub cluster: crate::broker::ClusterConfig,
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
    /// `Origin` values a browser upgrade may carry (e.g. `https://app.example`); empty allows
    /// any. Others are refused with 403; a request without `Origin` is not a browser's and is
    /// allowed.
    pub allowed_origins: Vec<String>,
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
    /// TLS 1.3 session tickets sent after each handshake (stateless, so they cost nothing
    /// while the connection lives); 0 turns TLS 1.3 resumption off. See `tls`.
    pub session_tickets: usize,
    /// Sessions remembered for TLS 1.2 clients that resume by session id (bounded, shared by
    /// the workers); 0: none.
    pub session_cache: usize,
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
    /// Bytes that may wait for one connection, in its outbound queue and unsent in the
    /// kernel's socket buffer together, after a write attempt before it is closed with 4009
    /// (within one loop turn up to 4 times this may queue).
    pub outbound_budget: usize,
    /// `TCP_NOTSENT_LOWAT` of viewer sockets: the kernel takes no more from a write while
    /// this many bytes wait unsent in the socket (0: the kernel's own autotuned limit, up to
    /// `net.ipv4.tcp_wmem`'s maximum, and not counted in the budget).
    pub socket_unsent_bytes: usize,
    /// Time a new connection has to complete the WebSocket handshake.
    pub handshake_timeout_ms: u64,
    /// Time a closing connection has to finish the close handshake before it is dropped.
    pub close_timeout_ms: u64,
    /// Rooms one connection may be joined to at once (its private `user:` room excluded).
    pub max_rooms_per_conn: usize,
    /// Comments per second per connection (0 = unlimited).
    pub comment_rate: f32,
    /// Comments allowed at once.
    pub comment_burst: u32,
    /// Reactions per second per connection (0 = unlimited).
    pub react_rate: f32,
    /// Reactions allowed at once.
    pub react_burst: u32,
    /// Joins per second per connection (0 = unlimited).
    pub join_rate: f32,
    /// Joins allowed at once.
    pub join_burst: u32,
    /// Client messages of any kind per second per connection (0 = unlimited).
    pub message_rate: f32,
    /// Client messages allowed at once.
    pub message_burst: u32,
    /// Rate-limited requests tolerated within `violations_window_ms` before the connection is
    /// closed with 4008.
    pub violations_max: u32,
    /// The window of `violations_max`.
    pub violations_window_ms: u64,
    /// Connections the process holds at once; beyond, upgrades get 503. 0 = the open-files
    /// limit less a reserve.
    pub max_connections: usize,
    /// Connections from one address (IPv6: one /64) at once; beyond, 429. 0 = unlimited.
    pub max_connections_per_ip: u32,
    /// Connections of one user at once; beyond, `per_user_policy` applies. 0 = unlimited.
    pub max_connections_per_user: u32,
    /// `close_oldest` (the user's oldest connection is closed with 1008) or `refuse_newest`
    /// (the new upgrade gets 429).
    pub per_user_policy: PerUserPolicy,
    /// Upgrades per second per worker (a token bucket of one second's worth); connections
    /// past it wait in the listen backlog. 0 = unpaced.
    pub accept_rate: u32,
    /// `hello.reconnect_ms`: the shortest delay a client should draw before reconnecting;
    /// under load (near `max_connections`, or pacing accepts) the window is four times wider.
    pub reconnect_min_ms: u64,
    /// `hello.reconnect_ms`: the longest such delay.
    pub reconnect_max_ms: u64,
    /// At shutdown (SIGTERM) viewers are closed with 1001 in steps over this long, not all at
    /// once, so their reconnects spread over the other servers; `/readyz` turns 503 first.
    pub drain_ms: u64,
}

/// `[auth]`: how viewers prove who they are. With neither a secret nor a public key, auth is
/// off (the development default): `?user=` names the user and every room is open.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret, or `@path` to read it from a file (at least 32 bytes).
    pub hmac_secret: Option<String>,
    /// PEM public keys (EC P-256 -> ES256, RSA -> RS256, Ed25519 -> EdDSA); each key's `kid` is
    /// its file name without the extension. Several for rotation.
    pub public_keys: Vec<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, seconds.
    pub leeway_s: u64,
    /// Verified tokens each worker remembers (0 = no cache).
    pub cache_size: usize,
}

/// `[testing]`: conformance and test switches, off by default.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Path of a WebSocket echo endpoint (every message sent back) for the Autobahn
    /// TestSuite, e.g. `/echo`; unset = no such endpoint. Never turn it on in production.
    pub echo_path: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hmac_secret: None,
            public_keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_s: 5,
            cache_size: 16_384,
        }
    }
}

impl AuthConfig {
    /// Whether a key is configured (tokens required).
    pub fn enabled(&self) -> bool {
        self.hmac_secret.is_some() || !self.public_keys.is_empty()
    }

    /// Read the keys (startup only) and build the verifier; `None` when auth is off.
    pub fn verifier(&self) -> Result<Option<crate::auth::Verifier>, crate::auth::KeyError> {
        if !self.enabled() {
            return Ok(None);
        }
        let keys = crate::auth::KeySet::load(self.hmac_secret.as_deref(), &self.public_keys)?;
        let rules = crate::auth::Rules {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_s: self.leeway_s,
        };
        Ok(Some(crate::auth::Verifier::new(keys, rules)))
    }
}

/// What a write may put in a socket beyond `TCP_NOTSENT_LOWAT`: the kernel checks the limit
/// once per segment it allocates (up to 64 KiB with segmentation offload), so the unsent
/// bytes of a socket stay under the limit plus this.
pub const SOCKET_UNSENT_OVERSHOOT: usize = 64 * 1024;

impl LimitsConfig {
    /// The bytes a connection's own outbound queue may hold: the budget less what the kernel
    /// may hold unsent for it, so the two together stay within `outbound_budget` (the whole
    /// budget when the kernel's share is not capped).
    pub fn queue_budget(&self) -> usize {
        match self.socket_unsent_bytes {
            0 => self.outbound_budget,
            unsent => self.outbound_budget.saturating_sub(unsent + SOCKET_UNSENT_OVERSHOOT),
        }
    }

    /// The per-connection rate limits these settings describe.
    pub fn rate_limits(&self) -> RateLimits {
        let window_s = self.violations_window_ms as f32 / 1000.0;
        RateLimits {
            message: Rate::new(self.message_rate, self.message_burst as f32),
            join: Rate::new(self.join_rate, self.join_burst as f32),
            comment: Rate::new(self.comment_rate, self.comment_burst as f32),
            react: Rate::new(self.react_rate, self.react_burst as f32),
            violations: Rate::new(self.violations_max as f32 / window_s, self.violations_max as f32),
        }
    }
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

/// Most TLS 1.3 tickets one handshake may send: each costs a seal and a record, and a viewer
/// reconnecting once needs one.
pub const MAX_SESSION_TICKETS: usize = 16;

/// Most TLS 1.2 sessions the server-side cache may hold (a few hundred bytes each).
pub const MAX_SESSION_CACHE: usize = 1_000_000;

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            path: "/ws".to_owned(),
            demo_page: true,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for WssConfig {
    fn default() -> Self {
        let resumption = crate::tls::Resumption::default();
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            cert: None,
            key: None,
            session_tickets: resumption.tickets,
            session_cache: resumption.cache_entries,
        }
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
            socket_unsent_bytes: 64 * 1024,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            max_rooms_per_conn: 64,
            comment_rate: 5.0,
            comment_burst: 10,
            react_rate: 20.0,
            react_burst: 40,
            join_rate: 5.0,
            join_burst: 64,
            message_rate: 50.0,
            message_burst: 100,
            violations_max: 10,
            violations_window_ms: 10_000,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            per_user_policy: PerUserPolicy::CloseOldest,
            accept_rate: 2_000,
            reconnect_min_ms: 1_000,
            reconnect_max_ms: 5_000,
            drain_ms: 2_000,
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
        if l.socket_unsent_bytes > 0 && l.queue_budget() < 4096 {
            return Err(invalid(
                "limits.outbound_budget",
                format!(
                    "must be at least 4096 bytes more than limits.socket_unsent_bytes + 65536 (the kernel's share; \
                     got {} with socket_unsent_bytes {}); lower socket_unsent_bytes or set it to 0",
                    l.outbound_budget, l.socket_unsent_bytes
                ),
            ));
        }
        if l.socket_unsent_bytes > i32::MAX as usize {
            return Err(invalid(
                "limits.socket_unsent_bytes",
                format!("must be at most {} (got {})", i32::MAX, l.socket_unsent_bytes),
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
        if self.wss.session_tickets > MAX_SESSION_TICKETS {
            return Err(invalid(
                "wss.session_tickets",
                format!("must be at most {MAX_SESSION_TICKETS} (got {})", self.wss.session_tickets),
            ));
        }
        if self.wss.session_cache > MAX_SESSION_CACHE {
            return Err(invalid(
                "wss.session_cache",
                format!("must be at most {MAX_SESSION_CACHE} sessions (got {})", self.wss.session_cache),
            ));
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
        for (key, rate, burst) in [
            ("limits.comment_rate", l.comment_rate, l.comment_burst),
            ("limits.react_rate", l.react_rate, l.react_burst),
            ("limits.join_rate", l.join_rate, l.join_burst),
            ("limits.message_rate", l.message_rate, l.message_burst),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return Err(invalid(key, format!("must be a non-negative number (got {rate})")));
            }
            if rate > 0.0 && burst == 0 {
                return Err(invalid(key, "its burst must be at least 1 when the rate is positive".into()));
            }
        }
        if l.violations_max == 0 {
            return Err(invalid("limits.violations_max", "must be at least 1 (got 0)".into()));
        }
        if l.violations_window_ms == 0 {
            return Err(invalid("limits.violations_window_ms", "must be at least 1 ms (got 0)".into()));
        }
        if let Some(echo) = &self.testing.echo_path {
            if !echo.starts_with('/') || *echo == self.ws.path {
                return Err(invalid(
                    "testing.echo_path",
                    format!("must start with '/' and differ from ws.path (got {echo:?})"),
                ));
            }
        }
        if self.ws.allowed_origins.iter().any(|o| o.is_empty() || o.ends_with('/')) {
            return Err(invalid(
                "ws.allowed_origins",
                "entries are origins like \"https://app.example\" (no path, no trailing slash)".into(),
            ));
        }
        if self.auth.leeway_s > 300 {
            return Err(invalid("auth.leeway_s", format!("at most 300 s (got {})", self.auth.leeway_s)));
        }
        if self.auth.hmac_secret.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("auth.hmac_secret", "must not be empty".into()));
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
        if self.limits.reconnect_min_ms == 0 || self.limits.reconnect_min_ms > self.limits.reconnect_max_ms {
            return Err(invalid(
                "limits.reconnect_min_ms",
                format!(
                    "must be positive and at most {} (got {})",
                    name("limits.reconnect_max_ms"),
                    self.limits.reconnect_min_ms
                ),
            ));
        }
        if let Err(e) = self.sink.validate() {
            return Err(invalid(e.key, e.message));
        }
        if let Err((key, message)) = self.cluster.validate() {
            return Err(invalid(key, message));
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
        // `@path` names a file, which is not a secret; the secret itself is.
        if let Some(secret) = &mut copy.auth.hmac_secret {
            if !secret.starts_with('@') {
                *secret = "<redacted>".to_owned();
            }
        }
        // A Redis URL may carry a password (`redis://user:pass@host/`).
        if let Some(url) = &mut copy.cluster.redis_url {
            if let (Some(scheme), Some(at)) = (url.find("://"), url.rfind('@')) {
                if at > scheme {
                    url.replace_range(scheme + 3..at, "<redacted>");
                }
            }
        }
        copy
    }

    /// What the upgrade parser checks (`ws.path`, `testing.echo_path`, `ws.allowed_origins`).
    pub fn upgrade_policy(&self) -> crate::wire::upgrade::UpgradePolicy {
        crate::wire::upgrade::UpgradePolicy {
            path: self.ws.path.clone(),
            echo_path: self.testing.echo_path.clone(),
            allowed_origins: self.ws.allowed_origins.clone(),
        }
    }

    /// Whether the TLS listener is on.
    pub fn tls_enabled(&self) -> bool {
        self.wss.cert.is_some() && self.wss.key.is_some()
    }

    /// The TLS session resumption `[wss]` asks for.
    pub fn tls_resumption(&self) -> crate::tls::Resumption {
        crate::tls::Resumption { tickets: self.wss.session_tickets, cache_entries: self.wss.session_cache }
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
    ("wss.session_tickets", "--tls-session-tickets"),
    ("wss.session_cache", "--tls-session-cache"),
    ("ingest.listen", "--ingest-listen"),
    ("ingest.unix", "--ingest-unix"),
    ("ingest.max_line", "--ingest-max-line"),
    ("ingest.tokens", "--ingest-token"),
    ("admin.listen", "--admin-listen"),
    ("admin.token", "--admin-token"),
    ("limits.max_message", "--max-message"),
    ("limits.max_comment_chars", "--max-comment-chars"),
    ("limits.outbound_budget", "--outbound-budget"),
    ("limits.socket_unsent_bytes", "--socket-unsent-bytes"),
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
    ("ws.allowed_origins", "--ws-allowed-origin"),
    ("limits.comment_rate", "--comment-rate"),
    ("limits.comment_burst", "--comment-burst"),
    ("limits.react_rate", "--react-rate"),
    ("limits.react_burst", "--react-burst"),
    ("limits.join_rate", "--join-rate"),
    ("limits.join_burst", "--join-burst"),
    ("limits.message_rate", "--message-rate"),
    ("limits.message_burst", "--message-burst"),
    ("limits.violations_max", "--violations-max"),
    ("limits.violations_window_ms", "--violations-window-ms"),
    ("limits.max_connections", "--max-connections"),
    ("limits.max_connections_per_ip", "--max-connections-per-ip"),
    ("limits.max_connections_per_user", "--max-connections-per-user"),
    ("limits.per_user_policy", "--per-user-policy"),
    ("limits.accept_rate", "--accept-rate"),
    ("limits.reconnect_min_ms", "--reconnect-min-ms"),
    ("limits.reconnect_max_ms", "--reconnect-max-ms"),
    ("limits.drain_ms", "--drain-ms"),
    ("auth.hmac_secret", "--auth-hmac-secret"),
    ("auth.public_keys", "--auth-public-key"),
    ("auth.issuer", "--auth-issuer"),
    ("auth.audience", "--auth-audience"),
    ("auth.leeway_s", "--auth-leeway-s"),
    ("auth.cache_size", "--auth-cache-size"),
    ("testing.echo_path", "--testing-echo-path"),
    ("cluster.redis_url", "--cluster-redis-url"),
    ("cluster.node_id", "--node-id"),
    ("cluster.node_ttl_ms", "--node-ttl-ms"),
    ("cluster.timeout_ms", "--cluster-timeout-ms"),
    ("cluster.room_ttl_ms", "--cluster-room-ttl-ms"),
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
    /// `wss.session_tickets`: TLS 1.3 tickets per handshake, 0 = no resumption [default: 1].
    #[arg(long, value_name = "N")]
    pub tls_session_tickets: Option<usize>,
    /// `wss.session_cache`: TLS 1.2 sessions remembered, 0 = none [default: 4096].
    #[arg(long, value_name = "SESSIONS")]
    pub tls_session_cache: Option<usize>,
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
    /// `limits.outbound_budget`: queued bytes (ours and the kernel's) before 4009 [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub outbound_budget: Option<usize>,
    /// `limits.socket_unsent_bytes`: TCP_NOTSENT_LOWAT of viewer sockets, 0 = kernel's [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub socket_unsent_bytes: Option<usize>,
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
    /// `ws.allowed_origins`: an allowed browser Origin (repeatable) [default: any].
    #[arg(long = "ws-allowed-origin", value_name = "ORIGIN")]
    pub ws_allowed_origins: Vec<String>,
    /// `limits.comment_rate`: comments per second per connection [default: 5].
    #[arg(long, value_name = "PER_S")]
    pub comment_rate: Option<f32>,
    /// `limits.comment_burst` [default: 10].
    #[arg(long, value_name = "N")]
    pub comment_burst: Option<u32>,
    /// `limits.react_rate`: reactions per second per connection [default: 20].
    #[arg(long, value_name = "PER_S")]
    pub react_rate: Option<f32>,
    /// `limits.react_burst` [default: 40].
    #[arg(long, value_name = "N")]
    pub react_burst: Option<u32>,
    /// `limits.join_rate`: joins per second per connection [default: 5].
    #[arg(long, value_name = "PER_S")]
    pub join_rate: Option<f32>,
    /// `limits.join_burst` [default: 64].
    #[arg(long, value_name = "N")]
    pub join_burst: Option<u32>,
    /// `limits.message_rate`: client messages per second per connection [default: 50].
    #[arg(long, value_name = "PER_S")]
    pub message_rate: Option<f32>,
    /// `limits.message_burst` [default: 100].
    #[arg(long, value_name = "N")]
    pub message_burst: Option<u32>,
    /// `limits.violations_max`: rate-limited requests before close 4008 [default: 10].
    #[arg(long, value_name = "N")]
    pub violations_max: Option<u32>,
    /// `limits.violations_window_ms` [default: 10000].
    #[arg(long, value_name = "MS")]
    pub violations_window_ms: Option<u64>,
    /// `limits.max_connections`: 503 beyond; 0 = the open-files limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// `limits.max_connections_per_ip`: 429 beyond; 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<u32>,
    /// `limits.max_connections_per_user`: 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_user: Option<u32>,
    /// `limits.per_user_policy`: close_oldest or refuse_newest [default: close_oldest].
    #[arg(long, value_name = "POLICY", value_parser = parse_per_user_policy)]
    pub per_user_policy: Option<PerUserPolicy>,
    /// `limits.accept_rate`: upgrades per second per worker, 0 = unpaced [default: 2000].
    #[arg(long, value_name = "PER_S")]
    pub accept_rate: Option<u32>,
    /// `limits.reconnect_min_ms`: shortest reconnect delay announced in hello [default: 1000].
    #[arg(long, value_name = "MS")]
    pub reconnect_min_ms: Option<u64>,
    /// `limits.reconnect_max_ms`: longest reconnect delay announced in hello [default: 5000].
    #[arg(long, value_name = "MS")]
    pub reconnect_max_ms: Option<u64>,
    /// `limits.drain_ms`: at shutdown, close viewers in steps over this long [default: 2000].
    #[arg(long, value_name = "MS")]
    pub drain_ms: Option<u64>,
    /// `auth.hmac_secret`: HS256 secret or @path (also from the environment).
    #[arg(long, value_name = "SECRET|@PATH", env = "ROOMCAST_AUTH_HMAC_SECRET", hide_env_values = true)]
    pub auth_hmac_secret: Option<String>,
    /// `auth.public_keys`: a PEM public key file (repeatable).
    #[arg(long = "auth-public-key", value_name = "PEM")]
    pub auth_public_keys: Vec<PathBuf>,
    /// `auth.issuer`: required `iss`.
    #[arg(long, value_name = "ISS")]
    pub auth_issuer: Option<String>,
    /// `auth.audience`: required `aud`.
    #[arg(long, value_name = "AUD")]
    pub auth_audience: Option<String>,
    /// `auth.leeway_s`: clock skew tolerated on exp/nbf [default: 5].
    #[arg(long, value_name = "S")]
    pub auth_leeway_s: Option<u64>,
    /// `auth.cache_size`: verified tokens remembered per worker [default: 16384].
    #[arg(long, value_name = "N")]
    pub auth_cache_size: Option<usize>,
    /// `testing.echo_path`: a WebSocket echo endpoint for conformance tests [default: off].
    #[arg(long, value_name = "PATH")]
    pub testing_echo_path: Option<String>,
    /// `cluster.redis_url`: share rooms with other nodes through this Redis [default: off].
    #[arg(long, value_name = "URL")]
    pub cluster_redis_url: Option<String>,
    /// `cluster.node_id`: this node's id in the cluster [default: n-<random>].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// `cluster.node_ttl_ms`: a node silent this long is removed from presence [default: 3000].
    #[arg(long, value_name = "MS")]
    pub node_ttl_ms: Option<u64>,
    /// `cluster.timeout_ms`: longest wait for one Redis call [default: 1000].
    #[arg(long, value_name = "MS")]
    pub cluster_timeout_ms: Option<u64>,
    /// `cluster.room_ttl_ms`: a room's history lives this long in Redis after its last use [default: 86400000].
    #[arg(long, value_name = "MS")]
    pub cluster_room_ttl_ms: Option<u64>,
}

fn parse_per_user_policy(text: &str) -> Result<PerUserPolicy, String> {
    match text {
        "close_oldest" => Ok(PerUserPolicy::CloseOldest),
        "refuse_newest" => Ok(PerUserPolicy::RefuseNewest),
        other => Err(format!("expected close_oldest or refuse_newest, got {other:?}")),
    }
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
        o.set("wss.session_tickets", |c| &mut c.wss.session_tickets, self.tls_session_tickets);
        o.set("wss.session_cache", |c| &mut c.wss.session_cache, self.tls_session_cache);
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
        o.set("limits.socket_unsent_bytes", |c| &mut c.limits.socket_unsent_bytes, self.socket_unsent_bytes);
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
        let origins = (!self.ws_allowed_origins.is_empty()).then_some(self.ws_allowed_origins);
        o.set("ws.allowed_origins", |c| &mut c.ws.allowed_origins, origins);
        o.set("limits.comment_rate", |c| &mut c.limits.comment_rate, self.comment_rate);
        o.set("limits.comment_burst", |c| &mut c.limits.comment_burst, self.comment_burst);
        o.set("limits.react_rate", |c| &mut c.limits.react_rate, self.react_rate);
        o.set("limits.react_burst", |c| &mut c.limits.react_burst, self.react_burst);
        o.set("limits.join_rate", |c| &mut c.limits.join_rate, self.join_rate);
        o.set("limits.join_burst", |c| &mut c.limits.join_burst, self.join_burst);
        o.set("limits.message_rate", |c| &mut c.limits.message_rate, self.message_rate);
        o.set("limits.message_burst", |c| &mut c.limits.message_burst, self.message_burst);
        o.set("limits.violations_max", |c| &mut c.limits.violations_max, self.violations_max);
        o.set("limits.violations_window_ms", |c| &mut c.limits.violations_window_ms, self.violations_window_ms);
        o.set("limits.max_connections", |c| &mut c.limits.max_connections, self.max_connections);
        o.set("limits.max_connections_per_ip", |c| &mut c.limits.max_connections_per_ip, self.max_connections_per_ip);
        o.set(
            "limits.max_connections_per_user",
            |c| &mut c.limits.max_connections_per_user,
            self.max_connections_per_user,
        );
        o.set("limits.per_user_policy", |c| &mut c.limits.per_user_policy, self.per_user_policy);
        o.set("limits.accept_rate", |c| &mut c.limits.accept_rate, self.accept_rate);
        o.set("limits.reconnect_min_ms", |c| &mut c.limits.reconnect_min_ms, self.reconnect_min_ms);
        o.set("limits.reconnect_max_ms", |c| &mut c.limits.reconnect_max_ms, self.reconnect_max_ms);
        o.set("limits.drain_ms", |c| &mut c.limits.drain_ms, self.drain_ms);
        o.set("auth.hmac_secret", |c| &mut c.auth.hmac_secret, self.auth_hmac_secret.map(Some));
        let keys = (!self.auth_public_keys.is_empty()).then_some(self.auth_public_keys);
        o.set("auth.public_keys", |c| &mut c.auth.public_keys, keys);
        o.set("auth.issuer", |c| &mut c.auth.issuer, self.auth_issuer.map(Some));
        o.set("auth.audience", |c| &mut c.auth.audience, self.auth_audience.map(Some));
        o.set("auth.leeway_s", |c| &mut c.auth.leeway_s, self.auth_leeway_s);
        o.set("auth.cache_size", |c| &mut c.auth.cache_size, self.auth_cache_size);
        o.set("testing.echo_path", |c| &mut c.testing.echo_path, self.testing_echo_path.map(Some));
        o.set("cluster.redis_url", |c| &mut c.cluster.redis_url, self.cluster_redis_url.map(Some));
        o.set("cluster.node_id", |c| &mut c.cluster.node_id, self.node_id.map(Some));
        o.set("cluster.node_ttl_ms", |c| &mut c.cluster.node_ttl_ms, self.node_ttl_ms);
        o.set("cluster.timeout_ms", |c| &mut c.cluster.timeout_ms, self.cluster_timeout_ms);
        o.set("cluster.room_ttl_ms", |c| &mut c.cluster.room_ttl_ms, self.cluster_room_ttl_ms);
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
        full.auth.hmac_secret = Some("@secret".into());
        full.auth.issuer = Some("iss".into());
        full.auth.audience = Some("aud".into());
        full.testing.echo_path = Some("/echo".into());
        full.admin.token = Some("t".into());
        full.sink.redis = Some(crate::sink::config::RedisSinkConfig::default());
        full.sink.webhook = Some(crate::sink::config::WebhookSinkConfig {
            health_url: Some("http://h/healthz".into()),
            ..Default::default()
        });
        full.sink.spool.dir = Some("spool".into());
        full.cluster.redis_url = Some("redis://127.0.0.1:6379/".into());
        full.cluster.node_id = Some("n-1".into());
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
    fn tls_resumption_is_on_by_default_and_bounded() {
        let c = Config::default();
        assert_eq!(c.tls_resumption(), crate::tls::Resumption { tickets: 1, cache_entries: 4096 });
        let c = flags(&["--tls-session-tickets", "0", "--tls-session-cache", "0"]).expect("off");
        assert_eq!(c.tls_resumption(), crate::tls::Resumption::OFF);
        let e = flags(&["--tls-session-tickets", "17"]).expect_err("too many");
        assert_eq!(e.to_string(), "--tls-session-tickets: must be at most 16 (got 17)");
        let e = Config::from_toml_str("[wss]\nsession_cache = 2000000\n")
            .and_then(|c| c.validate().map(|()| c))
            .expect_err("too big");
        assert_eq!(e.to_string(), "wss.session_cache: must be at most 1000000 sessions (got 2000000)");
    }

    #[test]
    fn host_names_and_switches_from_flags() {
        let c = flags(&["--ws-listen", "localhost:8081", "--no-demo-page", "--reuse-port"]).expect("valid");
        assert!(c.ws.listen.ip().is_loopback() && c.ws.listen.port() == 8081, "{}", c.ws.listen);
        assert!(!c.ws.demo_page && c.reuse_port);
        assert!(Cli::try_parse_from(["serve", "--ws-listen", "8080"]).is_err(), "a port alone is not an address");
    }

    #[test]
    fn trust_settings_parse_validate_and_redact() {
        let c = Config::from_toml_str(
            "[auth]\nhmac_secret = \"s3cret-s3cret-s3cret-s3cret-s3cret\"\n[limits]\ncomment_rate = 2\nper_user_policy = \"refuse_newest\"\n[testing]\necho_path = \"/echo\"\n[ws]\nallowed_origins = [\"https://app.example\"]\n",
        )
        .expect("parses");
        c.validate().expect("valid");
        assert!(c.auth.enabled());
        assert_eq!(c.limits.per_user_policy, PerUserPolicy::RefuseNewest);
        assert_eq!(c.limits.rate_limits().comment, Rate::new(2.0, 10.0));
        assert_eq!(c.limits.rate_limits().violations, Rate::new(1.0, 10.0));
        assert_eq!(c.redacted().auth.hmac_secret.as_deref(), Some("<redacted>"));
        let mut file = c.clone();
        file.auth.hmac_secret = Some("@/etc/roomcast/secret".into());
        assert_eq!(file.redacted().auth.hmac_secret.as_deref(), Some("@/etc/roomcast/secret"));
        assert!(c.auth.verifier().expect("a 34-byte secret").is_some());
        assert!(Config::default().auth.verifier().expect("off").is_none());
        let policy = c.upgrade_policy();
        assert_eq!((policy.echo_path.as_deref(), policy.allowed_origins.len()), (Some("/echo"), 1));
        let e =
            Config::from_toml_str("[testing]\necho_path = \"/ws\"\n").expect("parses").validate().expect_err("clash");
        assert!(e.to_string().starts_with("testing.echo_path"), "{e}");
        let e = Config::from_toml_str("[limits]\njoin_rate = -1\n").expect("parses").validate().expect_err("negative");
        assert!(e.to_string().starts_with("limits.join_rate"), "{e}");
        let e = Config::from_toml_str("[limits]\nper_user_policy = \"random\"\n").expect_err("unknown policy");
        assert!(e.to_string().contains("per_user_policy"), "{e}");
        let e = Config::from_toml_str("[ws]\nallowed_origins = [\"https://a.example/\"]\n").expect("parses");
        assert!(e.validate().expect_err("slash").to_string().starts_with("ws.allowed_origins"));
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
