//! Typed configuration with embedded defaults.
//!
//! Every setting has a default (PROTOCOL.md's ports), a key in the optional TOML file given with
//! `--config`, and a command-line flag; flags win over the file, the file over the defaults.
//! Unknown keys and bad values are errors that name the key.

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
}

/// `[ws]`: the plain viewer listener.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// HTTP path of the upgrade (also used by the TLS listener).
    pub path: String,
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
    pub listen: SocketAddr,
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

impl LimitsConfig {
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

impl Default for WsConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 8080)), path: "/ws".to_owned(), allowed_origins: Vec::new() }
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
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9090)) }
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
            comment_rate: 5.0,
            comment_burst: 10,
            react_rate: 20.0,
            react_burst: 40,
            join_rate: 5.0,
            join_burst: 20,
            message_rate: 50.0,
            message_burst: 100,
            violations_max: 10,
            violations_window_ms: 10_000,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            per_user_policy: PerUserPolicy::CloseOldest,
            accept_rate: 2_000,
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

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file (`<inline>` for a string).
        path: PathBuf,
        /// toml's message, which names the key and the line.
        message: String,
    },
    /// A value is out of range.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, e.g. `limits.max_message`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

impl Config {
    /// Parse a TOML document (every key optional).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Path::new("<inline>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
    }

    /// Read and parse a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Check ranges and combinations a TOML type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if !(125..=16 << 20).contains(&l.max_message) {
            return Err(invalid("limits.max_message", format!("must be 125..=16777216 bytes (got {})", l.max_message)));
        }
        if l.max_comment_chars == 0 {
            return Err(invalid("limits.max_comment_chars", "must be at least 1"));
        }
        if l.outbound_budget < 4096 {
            return Err(invalid(
                "limits.outbound_budget",
                format!("must be at least 4096 bytes (got {})", l.outbound_budget),
            ));
        }
        if l.max_rooms_per_conn == 0 {
            return Err(invalid("limits.max_rooms_per_conn", "must be at least 1"));
        }
        if self.presence.heartbeat_ms == 0 {
            return Err(invalid("presence.heartbeat_ms", "must be positive"));
        }
        let timeout = self.presence.timeout_ms;
        if timeout != 0 && timeout <= self.presence.heartbeat_ms {
            return Err(invalid(
                "presence.timeout_ms",
                format!("must be 0 (2.5 x heartbeat_ms) or longer than presence.heartbeat_ms (got {timeout})"),
            ));
        }
        if self.presence.interval_ms == 0 {
            return Err(invalid("presence.interval_ms", "must be positive"));
        }
        if self.history.size == 0 {
            return Err(invalid("history.size", "must be at least 1"));
        }
        if self.fanout.batch_window_ms > MAX_BATCH_WINDOW_MS {
            return Err(invalid(
                "fanout.batch_window_ms",
                format!("at most {MAX_BATCH_WINDOW_MS} (got {})", self.fanout.batch_window_ms),
            ));
        }
        if !self.ws.path.starts_with('/') {
            return Err(invalid("ws.path", format!("must start with '/' (got {:?})", self.ws.path)));
        }
        if self.wss.cert.is_some() != self.wss.key.is_some() {
            return Err(invalid("wss.cert", "wss.cert and wss.key must be given together"));
        }
        if self.workers > 256 {
            return Err(invalid("workers", format!("at most 256 (got {})", self.workers)));
        }
        if let Some(path) = &self.ingest.unix {
            // Better refused than silently ignored: an upstream would wait on a missing socket.
            return Err(invalid(
                "ingest.unix",
                format!("Unix-socket ingest is not available yet ({})", path.display()),
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
                return Err(invalid(key, "its burst must be at least 1 when the rate is positive"));
            }
        }
        if l.violations_max == 0 {
            return Err(invalid("limits.violations_max", "must be at least 1"));
        }
        if l.violations_window_ms == 0 {
            return Err(invalid("limits.violations_window_ms", "must be positive"));
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
                "entries are origins like \"https://app.example\" (no path, no trailing slash)",
            ));
        }
        if self.auth.leeway_s > 300 {
            return Err(invalid("auth.leeway_s", format!("at most 300 s (got {})", self.auth.leeway_s)));
        }
        if self.auth.hmac_secret.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("auth.hmac_secret", "must not be empty"));
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

    /// A copy fit for logs and `check-config` output: secrets (ingest tokens) replaced.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for token in &mut copy.ingest.tokens {
            *token = "<redacted>".to_owned();
        }
        // `@path` names a file, which is not a secret; the secret itself is.
        if let Some(secret) = &mut copy.auth.hmac_secret {
            if !secret.starts_with('@') {
                *secret = "<redacted>".to_owned();
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
    /// `ws.listen`: plain WebSocket address [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub ws_listen: Option<SocketAddr>,
    /// `ws.path`: upgrade path [default: /ws].
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,
    /// `wss.listen`: TLS WebSocket address [default: 0.0.0.0:8443].
    #[arg(long, value_name = "ADDR")]
    pub wss_listen: Option<SocketAddr>,
    /// `wss.cert`: PEM certificate chain (turns wss on with --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// `wss.key`: PEM private key.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// `ingest.listen`: ingest TCP address [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub ingest_listen: Option<SocketAddr>,
    /// `ingest.unix`: ingest Unix socket path.
    #[arg(long, value_name = "PATH")]
    pub ingest_unix: Option<PathBuf>,
    /// `ingest.max_line`: longest ingest line in bytes [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub ingest_max_line: Option<usize>,
    /// `ingest.tokens`: an accepted ingest token (repeatable).
    #[arg(long = "ingest-token", value_name = "TOKEN")]
    pub ingest_tokens: Vec<String>,
    /// `admin.listen`: admin HTTP address [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
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
    /// `presence.heartbeat_ms`: announced ping interval [default: 25000].
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
    /// `limits.join_burst` [default: 20].
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
}

fn parse_per_user_policy(text: &str) -> Result<PerUserPolicy, String> {
    match text {
        "close_oldest" => Ok(PerUserPolicy::CloseOldest),
        "refuse_newest" => Ok(PerUserPolicy::RefuseNewest),
        other => Err(format!("expected close_oldest or refuse_newest, got {other:?}")),
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

impl ServeArgs {
    /// Defaults, then the file, then the flags; validated.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        set(&mut c.workers, self.workers);
        set(&mut c.ws.listen, self.ws_listen);
        set(&mut c.ws.path, self.ws_path);
        set(&mut c.wss.listen, self.wss_listen);
        set(&mut c.wss.cert, self.tls_cert.map(Some));
        set(&mut c.wss.key, self.tls_key.map(Some));
        set(&mut c.ingest.listen, self.ingest_listen);
        set(&mut c.ingest.unix, self.ingest_unix.map(Some));
        set(&mut c.ingest.max_line, self.ingest_max_line);
        if !self.ingest_tokens.is_empty() {
            c.ingest.tokens = self.ingest_tokens;
        }
        set(&mut c.admin.listen, self.admin_listen);
        set(&mut c.limits.max_message, self.max_message);
        set(&mut c.limits.max_comment_chars, self.max_comment_chars);
        set(&mut c.limits.outbound_budget, self.outbound_budget);
        set(&mut c.limits.handshake_timeout_ms, self.handshake_timeout_ms);
        set(&mut c.limits.close_timeout_ms, self.close_timeout_ms);
        set(&mut c.limits.max_rooms_per_conn, self.max_rooms_per_conn);
        set(&mut c.presence.heartbeat_ms, self.heartbeat_ms);
        set(&mut c.presence.timeout_ms, self.heartbeat_timeout_ms);
        set(&mut c.presence.interval_ms, self.presence_interval_ms);
        set(&mut c.presence.large_room, self.large_room);
        set(&mut c.history.size, self.history_size);
        set(&mut c.history.max_age_ms, self.history_max_age_ms);
        set(&mut c.history.room_idle_ms, self.room_idle_ms);
        set(&mut c.fanout.batch_window_ms, self.batch_window_ms);
        if !self.ws_allowed_origins.is_empty() {
            c.ws.allowed_origins = self.ws_allowed_origins;
        }
        let l = &mut c.limits;
        set(&mut l.comment_rate, self.comment_rate);
        set(&mut l.comment_burst, self.comment_burst);
        set(&mut l.react_rate, self.react_rate);
        set(&mut l.react_burst, self.react_burst);
        set(&mut l.join_rate, self.join_rate);
        set(&mut l.join_burst, self.join_burst);
        set(&mut l.message_rate, self.message_rate);
        set(&mut l.message_burst, self.message_burst);
        set(&mut l.violations_max, self.violations_max);
        set(&mut l.violations_window_ms, self.violations_window_ms);
        set(&mut l.max_connections, self.max_connections);
        set(&mut l.max_connections_per_ip, self.max_connections_per_ip);
        set(&mut l.max_connections_per_user, self.max_connections_per_user);
        set(&mut l.per_user_policy, self.per_user_policy);
        set(&mut l.accept_rate, self.accept_rate);
        set(&mut c.auth.hmac_secret, self.auth_hmac_secret.map(Some));
        if !self.auth_public_keys.is_empty() {
            c.auth.public_keys = self.auth_public_keys;
        }
        set(&mut c.auth.issuer, self.auth_issuer.map(Some));
        set(&mut c.auth.audience, self.auth_audience.map(Some));
        set(&mut c.auth.leeway_s, self.auth_leeway_s);
        set(&mut c.auth.cache_size, self.auth_cache_size);
        set(&mut c.testing.echo_path, self.testing_echo_path.map(Some));
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_protocol_ports() {
        let c = Config::default();
        assert_eq!(c.ws.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.wss.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.ingest.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.limits.max_message, 4096);
        assert!(!c.tls_enabled());
        assert_eq!(c.presence.effective_timeout_ms(), 62_500);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn the_example_file_lists_the_defaults() {
        let c = Config::from_toml_str(include_str!("../roomcast.example.toml")).expect("example parses");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml_str("[limits]\nmax_mesage = 5\n").expect_err("unknown key");
        assert!(e.to_string().contains("max_mesage"), "{e}");
        let e = Config::from_toml_str("[limits]\nmax_message = \"big\"\n").expect_err("wrong type");
        assert!(e.to_string().contains("max_message"), "{e}");
        let e = Config::from_toml_str("[limits]\nmax_message = 10\n").expect("parses").validate().expect_err("range");
        assert!(e.to_string().starts_with("limits.max_message"), "{e}");
        let e =
            Config::from_toml_str("[fanout]\nbatch_window_ms = 5000\n").expect("parses").validate().expect_err("range");
        assert!(e.to_string().starts_with("fanout.batch_window_ms"), "{e}");
        let mut c = Config::default();
        c.wss.cert = Some("c.pem".into());
        assert!(c.validate().expect_err("pair").to_string().contains("wss.key"));
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
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("roomcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "workers = 3\n[limits]\nmax_message = 1000\n").expect("write");
        let args = ServeArgs { config: Some(path), max_message: Some(2000), ..ServeArgs::default() };
        let c = args.into_config().expect("valid");
        assert_eq!((c.workers, c.limits.max_message), (3, 2000));
        let _ = std::fs::remove_dir_all(dir);
    }
}
