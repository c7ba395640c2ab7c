//! `[sink]`: which sinks run, how they batch, where the spool lives, and the ack mode the homes
//! read.
//!
//! Every key has a default; with no `[sink]` table at all roomcast writes to a file sink in
//! `./data` and acks comments once they are fsynced there (`durable`). `[sink.redis]` and
//! `[sink.webhook]` turn those sinks on by being present. [`SinkConfig::validate`]'s errors name
//! the key. This module only describes settings: it must never open a file or a socket.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// `[sink]`: the durable sinks.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// When a viewer's comment is acked (`sink.ack`).
    pub ack: AckMode,
    /// Records (comments, tombstones) that may wait between the homes and the sink runner
    /// (`sink.queue_records`); a full queue is backpressure (`unavailable`).
    pub queue_records: usize,
    /// The file sink (`[sink.file]`, on by default).
    pub file: FileSinkConfig,
    /// The Redis Streams sink (`[sink.redis]`, on when present).
    pub redis: Option<RedisSinkConfig>,
    /// The HTTP webhook sink (`[sink.webhook]`, on when present).
    pub webhook: Option<WebhookSinkConfig>,
    /// The local spool that holds records a sink could not take (`[sink.spool]`).
    pub spool: SpoolConfig,
    /// Retry timing for a failing sink (`[sink.retry]`).
    pub retry: RetryConfig,
    /// Presence records (`[sink.presence]`).
    pub presence: PresencePolicyConfig,
}

/// `sink.ack`: what a viewer's `ack` to a comment promises.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Fanned out and acked once every durable sink (or the spool) holds the comment.
    #[default]
    Durable,
    /// Fanned out and acked at once; written behind (still spooled, never dropped).
    Fast,
}

/// `[sink.file]`: append-only JSON Lines segments in a local directory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// Whether the file sink runs (`sink.file.enabled`).
    pub enabled: bool,
    /// Data directory (`sink.file.dir`).
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it holds this many bytes
    /// (`sink.file.segment_bytes`).
    pub segment_bytes: u64,
    /// At most one fsync per this many ms, unless `fsync_records` are waiting
    /// (`sink.file.fsync_ms`). A record arriving after a quiet spell is written at once.
    pub fsync_ms: u64,
    /// Records that, once waiting, are fsynced without waiting for `fsync_ms`
    /// (`sink.file.fsync_records`).
    pub fsync_records: usize,
    /// Whether acks wait for this sink (`sink.file.durable`).
    pub durable: bool,
    /// Whether presence records are written here (`sink.file.presence`).
    pub presence: bool,
}

/// `sink.redis.streams`: where the entries go.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamLayout {
    /// One stream per room: `<key>:<room>`.
    #[default]
    PerRoom,
    /// Every room in one stream: `<key>`.
    Single,
}

/// `[sink.redis]`: `XADD` to Redis Streams.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSinkConfig {
    /// `redis://[user:password@]host:port[/db]` (`sink.redis.url`).
    pub url: String,
    /// One stream per room or one for all (`sink.redis.streams`).
    pub streams: StreamLayout,
    /// Stream key, or key prefix per room (`sink.redis.key`).
    pub key: String,
    /// `XADD ... MAXLEN ~ N`: approximate length kept per stream; 0 = no trimming
    /// (`sink.redis.maxlen`).
    pub maxlen: u64,
    /// Connect, read and write timeout (`sink.redis.timeout_ms`).
    pub timeout_ms: u64,
    /// At most one pipeline per this many ms unless `batch_records` wait (`sink.redis.batch_ms`).
    pub batch_ms: u64,
    /// Most records in one transaction; that many waiting are sent at once
    /// (`sink.redis.batch_records`).
    pub batch_records: usize,
    /// Whether acks wait for this sink (`sink.redis.durable`).
    pub durable: bool,
    /// Whether presence records are written here (`sink.redis.presence`).
    pub presence: bool,
}

/// `[sink.webhook]`: batched, signed `POST`s of JSON arrays.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSinkConfig {
    /// `http://` or `https://` URL that receives the batches (`sink.webhook.url`).
    pub url: String,
    /// Shared secret of the HMAC-SHA256 signature (`sink.webhook.secret`).
    pub secret: Secret,
    /// Optional URL whose `GET` must answer 2xx for the sink to count as healthy at start
    /// (`sink.webhook.health_url`); without it the start check is a TCP connect to `url`'s host.
    pub health_url: Option<String>,
    /// Whole request timeout (`sink.webhook.timeout_ms`).
    pub timeout_ms: u64,
    /// At most one request per this many ms unless `batch_records` wait (`sink.webhook.batch_ms`).
    pub batch_ms: u64,
    /// Most records in one request; that many waiting are sent at once
    /// (`sink.webhook.batch_records`).
    pub batch_records: usize,
    /// Whether acks wait for this sink (`sink.webhook.durable`).
    pub durable: bool,
    /// Whether presence records are posted (`sink.webhook.presence`).
    pub presence: bool,
}

/// `[sink.spool]`: local disk that holds, in order, what a failing sink could not take.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory (one subdirectory per sink); unset = `<sink.file.dir>/spool` (`sink.spool.dir`).
    pub dir: Option<PathBuf>,
    /// Most unreplayed bytes over all sinks; past it new comments are refused
    /// (`sink.spool.max_bytes`).
    pub max_bytes: u64,
}

/// `[sink.retry]`: exponential backoff with jitter for a failing sink.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First delay (`sink.retry.initial_ms`).
    pub initial_ms: u64,
    /// Longest delay (`sink.retry.max_ms`).
    pub max_ms: u64,
}

/// `[sink.presence]`: debouncing of presence records.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresencePolicyConfig {
    /// A user (or room) that comes back within this many ms of going produces no record
    /// (`sink.presence.grace_ms`).
    pub grace_ms: u64,
}

/// A secret that never shows in `Debug` output or in `check-config`'s printout.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret itself (only the signer needs it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// Default `sink.file.dir`.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default `sink.presence.grace_ms`.
pub const DEFAULT_GRACE_MS: u64 = 3_000;

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            ack: AckMode::Durable,
            queue_records: 65_536,
            file: FileSinkConfig::default(),
            redis: None,
            webhook: None,
            spool: SpoolConfig::default(),
            retry: RetryConfig::default(),
            presence: PresencePolicyConfig::default(),
        }
    }
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from(DEFAULT_DATA_DIR),
            segment_bytes: 64 << 20,
            fsync_ms: 2,
            fsync_records: 4_096,
            durable: true,
            presence: false,
        }
    }
}

impl Default for RedisSinkConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            streams: StreamLayout::PerRoom,
            key: "roomcast:comments".to_owned(),
            maxlen: 100_000,
            timeout_ms: 2_000,
            batch_ms: 2,
            batch_records: 1_000,
            durable: true,
            presence: false,
        }
    }
}

impl Default for WebhookSinkConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: Secret::default(),
            health_url: None,
            timeout_ms: 5_000,
            batch_ms: 20,
            batch_records: 500,
            durable: true,
            presence: false,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self { dir: None, max_bytes: 1 << 30 }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { initial_ms: 100, max_ms: 10_000 }
    }
}

impl Default for PresencePolicyConfig {
    fn default() -> Self {
        Self { grace_ms: DEFAULT_GRACE_MS }
    }
}

/// A `[sink]` setting that cannot be used; `key` names it (e.g. `sink.webhook.url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SinkConfigError {
    /// The full key.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(key: &'static str, message: impl Into<String>) -> SinkConfigError {
    SinkConfigError { key, message: message.into() }
}

/// Longest group-commit or batch interval accepted: beyond it an ack would be visibly late.
pub const MAX_BATCH_MS: u64 = 1_000;

fn check_batch(
    key_ms: &'static str,
    ms: u64,
    key_records: &'static str,
    records: usize,
) -> Result<(), SinkConfigError> {
    if ms > MAX_BATCH_MS {
        return Err(invalid(key_ms, format!("at most {MAX_BATCH_MS} (got {ms})")));
    }
    if !(1..=100_000).contains(&records) {
        return Err(invalid(key_records, format!("must be 1..=100000 (got {records})")));
    }
    Ok(())
}

impl SinkConfig {
    /// Check ranges and combinations TOML types cannot express.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        if !(1..=1 << 24).contains(&self.queue_records) {
            return Err(invalid("sink.queue_records", format!("must be 1..=16777216 (got {})", self.queue_records)));
        }
        let f = &self.file;
        if f.enabled {
            if f.dir.as_os_str().is_empty() {
                return Err(invalid("sink.file.dir", "must not be empty"));
            }
            if f.segment_bytes < 4096 {
                return Err(invalid("sink.file.segment_bytes", format!("at least 4096 (got {})", f.segment_bytes)));
            }
            check_batch("sink.file.fsync_ms", f.fsync_ms, "sink.file.fsync_records", f.fsync_records)?;
        }
        if let Some(r) = &self.redis {
            let info = ::redis::IntoConnectionInfo::into_connection_info(r.url.as_str());
            if let Err(e) = info {
                return Err(invalid("sink.redis.url", format!("not a Redis URL ({e})")));
            }
            if r.key.is_empty() {
                return Err(invalid("sink.redis.key", "must not be empty"));
            }
            if r.timeout_ms == 0 {
                return Err(invalid("sink.redis.timeout_ms", "must be positive"));
            }
            check_batch("sink.redis.batch_ms", r.batch_ms, "sink.redis.batch_records", r.batch_records)?;
        }
        if let Some(w) = &self.webhook {
            crate::sink::webhook::parse_url(&w.url).map_err(|m| invalid("sink.webhook.url", m))?;
            if let Some(h) = &w.health_url {
                crate::sink::webhook::parse_url(h).map_err(|m| invalid("sink.webhook.health_url", m))?;
            }
            if w.secret.expose().is_empty() {
                return Err(invalid(
                    "sink.webhook.secret",
                    "must be set (the receiver verifies the signature with it)",
                ));
            }
            if w.timeout_ms == 0 {
                return Err(invalid("sink.webhook.timeout_ms", "must be positive"));
            }
            check_batch("sink.webhook.batch_ms", w.batch_ms, "sink.webhook.batch_records", w.batch_records)?;
        }
        if !f.enabled && self.redis.is_none() && self.webhook.is_none() {
            return Err(invalid("sink.file.enabled", "no sink left: enable the file sink or configure another"));
        }
        if self.spool.max_bytes < 1 << 20 {
            return Err(invalid("sink.spool.max_bytes", format!("at least 1048576 (got {})", self.spool.max_bytes)));
        }
        if self.retry.initial_ms == 0 {
            return Err(invalid("sink.retry.initial_ms", "must be positive"));
        }
        if self.retry.max_ms < self.retry.initial_ms {
            return Err(invalid("sink.retry.max_ms", "must be at least sink.retry.initial_ms"));
        }
        if self.presence.grace_ms > 3_600_000 {
            return Err(invalid("sink.presence.grace_ms", format!("at most 3600000 (got {})", self.presence.grace_ms)));
        }
        Ok(())
    }

    /// The spool directory: `sink.spool.dir`, or `<sink.file.dir>/spool`.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool.dir.clone().unwrap_or_else(|| self.file.dir.join("spool"))
    }

    /// Whether any running sink takes presence records (homes need not submit them otherwise).
    pub fn wants_presence(&self) -> bool {
        (self.file.enabled && self.file.presence)
            || self.redis.as_ref().is_some_and(|r| r.presence)
            || self.webhook.as_ref().is_some_and(|w| w.presence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SinkConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_a_durable_file_sink_in_data() {
        let c = SinkConfig::default();
        assert_eq!(c.ack, AckMode::Durable);
        assert!(c.file.enabled && c.redis.is_none() && c.webhook.is_none());
        assert_eq!(c.file.dir, PathBuf::from("./data"));
        assert_eq!(c.spool_dir(), PathBuf::from("./data/spool"));
        assert_eq!(c.presence.grace_ms, 3_000);
        assert!(!c.wants_presence());
        c.validate().expect("defaults are valid");
        assert_eq!(parse("").expect("empty parses"), c);
    }

    #[test]
    fn sections_turn_sinks_on() {
        let c = parse(
            "ack = \"fast\"\n[redis]\nurl = \"redis://127.0.0.1:7000\"\nstreams = \"single\"\n\
             [webhook]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"s3cret\"\npresence = true\n",
        )
        .expect("parses");
        assert_eq!(c.ack, AckMode::Fast);
        assert_eq!(c.redis.as_ref().map(|r| r.streams), Some(StreamLayout::Single));
        assert!(c.wants_presence());
        c.validate().expect("valid");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!toml::to_string(&c).expect("serializes").contains("s3cret"));
    }

    #[test]
    fn the_example_file_s_commented_sink_keys_are_real_keys() {
        // Uncomment `# key = value` and `# [sink.x]` lines of the `[sink]` part: what the
        // example documents must parse.
        let example = include_str!("../../roomcast.example.toml");
        let at = example.find("\n[sink]\n").expect("the example has a [sink] table");
        let key = |k: &str| {
            k.starts_with(|c: char| c.is_ascii_lowercase()) && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        };
        let sink_part: String = example[at..]
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.starts_with("[sink.") && rest.ends_with(']') => rest,
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| key(k)) => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let text = format!("{}{sink_part}", &example[..at]);
        let c: crate::config::Config = toml::from_str(&text).expect("the uncommented example parses");
        assert!(c.sink.redis.is_some() && c.sink.webhook.is_some());
        c.sink.validate().expect("and is valid");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[file]\nfsync_mss = 3\n").expect_err("unknown key");
        assert!(e.contains("fsync_mss"), "{e}");
        let e = parse("[webhook]\nurl = \"ftp://x\"\nsecret = \"s\"\n").expect("parses").validate().expect_err("url");
        assert_eq!(e.key, "sink.webhook.url");
        let e = parse("[webhook]\nurl = \"http://x/\"\n").expect("parses").validate().expect_err("secret");
        assert_eq!(e.key, "sink.webhook.secret");
        let e = parse("[redis]\nurl = \"http://x\"\n").expect("parses").validate().expect_err("url");
        assert_eq!(e.key, "sink.redis.url");
        let e = parse("[file]\nenabled = false\n").expect("parses").validate().expect_err("no sink");
        assert_eq!(e.key, "sink.file.enabled");
        let e = parse("[file]\nfsync_ms = 5000\n").expect("parses").validate().expect_err("range");
        assert_eq!(e.key, "sink.file.fsync_ms");
        let e = parse("[spool]\nmax_bytes = 10\n").expect("parses").validate().expect_err("range");
        assert!(e.to_string().starts_with("sink.spool.max_bytes"), "{e}");
    }
}
