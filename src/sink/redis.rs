//! The Redis Streams sink: one `XADD` per record, pipelined per batch, to one stream per room
//! (`<sink.redis.key>:<room>`, default `roomcast:comments:<room>`) or to one stream
//! (`sink.redis.streams = "single"`), trimmed with `MAXLEN ~ <sink.redis.maxlen>`.
//!
//! Each entry has three fields: `type` and `room` (for consumers that filter without parsing)
//! and `record`, the record's JSON line (the shape every sink writes). A batch is one
//! `MULTI`/`EXEC` transaction, all of it or none of it: a plain pipeline can fail at its start
//! (`LOADING` while a restarted Redis reads its AOF) and succeed at its end, and the retry would
//! then put earlier records after later ones. Entry ids are Redis's (`*`): a batch whose `EXEC`
//! answer was lost is sent again, so a consumer may see a record twice and dedupes by its `id`. "Durable" here means Redis acknowledged the pipeline; how durable
//! Redis itself is depends on its `appendonly`/`appendfsync` settings.
//!
//! The `redis` crate's synchronous connection is used on the sink's own thread: the write must
//! block until Redis answered anyway, the socket timeouts (`sink.redis.timeout_ms`) bound every
//! call, and an async runtime would add threads and a reactor for nothing. After any IO error
//! the connection is dropped; the next attempt (after the runner's backoff with jitter)
//! reconnects. Must never block without a timeout.

use crate::sink::config::{RedisSinkConfig, StreamLayout};
use crate::sink::record::EncodedRecord;
use crate::sink::{Sink, SinkFailure};
use ::redis::{Client, Connection, ErrorKind, RedisError, ServerErrorKind};
use std::time::Duration;

/// The Redis sink's errors.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    /// `sink.redis.url` is not usable.
    #[error("redis sink: bad sink.redis.url: {0}")]
    Url(RedisError),
    /// Connecting, or a command, failed.
    #[error("redis sink: {0}")]
    Command(RedisError),
}

/// Whether a failed batch may succeed later. Everything is retried except a refusal that no
/// retry can change: a key of another type (`WRONGTYPE`), a rejected command (`ERR`) or a reply
/// of the wrong shape. Connection loss, timeouts, `LOADING`, `OOM`, `READONLY` during a
/// failover, a transaction discarded for one of those (`EXECABORT`) and authentication errors
/// (fixed on the Redis side without a restart) are retried.
pub fn is_retriable(error: &RedisSinkError) -> bool {
    let RedisSinkError::Command(e) = error else { return false };
    if e.code() == Some("WRONGTYPE") {
        return false;
    }
    !matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError)
            | ErrorKind::Server(ServerErrorKind::CrossSlot)
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Client
    )
}

impl From<RedisSinkError> for SinkFailure {
    fn from(error: RedisSinkError) -> Self {
        Self::new(is_retriable(&error), error.to_string())
    }
}

/// See the module doc.
pub struct RedisSink {
    client: Client,
    conn: Option<Connection>,
    config: RedisSinkConfig,
    timeout: Duration,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink").field("connected", &self.conn.is_some()).finish_non_exhaustive()
    }
}

impl RedisSink {
    /// Build from the config; connects only in [`Sink::health_check`] or the first write.
    pub fn new(config: &RedisSinkConfig) -> Result<Self, RedisSinkError> {
        let client = Client::open(config.url.as_str()).map_err(RedisSinkError::Url)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        Ok(Self { client, conn: None, config: config.clone(), timeout })
    }

    /// The stream a record of `room` goes to.
    pub fn stream_key(&self, room: &str) -> String {
        match self.config.streams {
            StreamLayout::PerRoom => format!("{}:{room}", self.config.key),
            StreamLayout::Single => self.config.key.clone(),
        }
    }

    fn connection(&mut self) -> Result<&mut Connection, RedisError> {
        if self.conn.is_none() {
            let conn = self.client.get_connection_with_timeout(self.timeout)?;
            conn.set_read_timeout(Some(self.timeout))?;
            conn.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(conn);
        }
        // Just set above when it was missing.
        self.conn.as_mut().ok_or_else(|| RedisError::from(std::io::Error::other("no connection")))
    }

    fn run(&mut self, pipe: &::redis::Pipeline) -> Result<(), RedisSinkError> {
        let result = self.connection().and_then(|conn| pipe.exec(conn));
        if let Err(e) = &result {
            if is_retriable(&RedisSinkError::Command(e.clone())) {
                // The connection may be half-read or dead: start over on the next attempt.
                self.conn = None;
            }
        }
        result.map_err(RedisSinkError::Command)
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn health_check(&mut self) -> Result<(), SinkFailure> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("PING");
        Ok(self.run(&pipe)?)
    }

    fn write_batch(&mut self, batch: &[&EncodedRecord]) -> Result<(), SinkFailure> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::Pipeline::with_capacity(batch.len());
        pipe.atomic();
        for record in batch {
            let cmd = pipe.cmd("XADD").arg(self.stream_key(&record.room));
            if self.config.maxlen > 0 {
                cmd.arg("MAXLEN").arg("~").arg(self.config.maxlen);
            }
            cmd.arg("*")
                .arg("type")
                .arg(record.kind.as_str())
                .arg("room")
                .arg(&*record.room)
                .arg("record")
                .arg(&record.line)
                .ignore();
        }
        Ok(self.run(&pipe)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout_and_refused_commands_are_not_retried() {
        let mut config = RedisSinkConfig::default();
        let sink = RedisSink::new(&config).expect("valid url");
        assert_eq!(sink.stream_key("live-1"), "roomcast:comments:live-1");
        config.streams = StreamLayout::Single;
        assert_eq!(RedisSink::new(&config).expect("valid").stream_key("live-1"), "roomcast:comments");
        let io = RedisSinkError::Command(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into());
        assert!(is_retriable(&io));
        let refused = RedisSinkError::Command(RedisError::from((ErrorKind::Client, "bad")));
        assert!(!is_retriable(&refused));
    }
}
