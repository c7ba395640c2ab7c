//! Typed configuration with embedded defaults.
//!
//! Every setting has a default (PROTOCOL.md's ports), a key in the optional TOML file given with
//! `--config`, and a command-line flag; flags win over the file, the file over the defaults.
//! Unknown keys and bad values are errors that name the key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `roomcast serve` needs to run.
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
}

/// `[ws]`: the plain viewer listener.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// HTTP path of the upgrade (also used by the TLS listener).
    pub path: String,
}

/// `[wss]`: the TLS viewer listener.
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
}

/// `[limits]`: what one viewer connection may cost.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest client message in bytes (after reassembly); larger closes with 1009.
    pub max_message: usize,
    /// Longest comment text in characters.
    pub max_comment_chars: usize,
    /// Bytes that may wait in one connection's outbound queue before it is closed with 4009.
    pub outbound_budget: usize,
    /// Time a new connection has to complete the WebSocket handshake.
    pub handshake_timeout_ms: u64,
    /// Time a closing connection has to finish the close handshake before it is dropped.
    pub close_timeout_ms: u64,
    /// Rooms one connection may be joined to at once (its private `user:` room excluded).
    pub max_rooms_per_conn: usize,
}

/// `[presence]`: heartbeats and the coalesced presence messages.
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Sequenced messages kept per room.
    pub size: usize,
    /// Oldest message kept, in milliseconds.
    pub max_age_ms: u64,
    /// A room with no members and no events for this long is freed.
    pub room_idle_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: 0,
            ws: WsConfig::default(),
            wss: WssConfig::default(),
            ingest: IngestConfig::default(),
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
            presence: PresenceConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            path: "/ws".to_owned(),
        }
    }
}

impl Default for WssConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            cert: None,
            key: None,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            unix: None,
            max_line: 64 * 1024,
            tokens: Vec::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
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
        Self {
            heartbeat_ms: 25_000,
            timeout_ms: 0,
            interval_ms: 1_000,
            large_room: 100,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 512,
            max_age_ms: 300_000,
            room_idle_ms: 60_000,
        }
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
