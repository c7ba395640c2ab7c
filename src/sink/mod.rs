//! Durable sinks: where sequenced comments, moderation tombstones and debounced presence go
//! after the home worker has fanned them out, so they survive a crash and reach the platform's
//! own systems.
//!
//! ```text
//!  home workers --try_submit(origin, ticket, record)--> [bounded queue] --+
//!               --try_submit_presence(change)-------> [bounded queue] --+--> dispatcher thread
//!                                                                         (debounce presence,
//!                                                                          encode once, chunk)
//!       +--------------------------+---------------------------+-------------+
//!       v                          v                           v
//!  sink thread: file          sink thread: redis          sink thread: webhook
//!  (group commit, fsync)      (XADD in MULTI/EXEC)        (signed POST)
//!       |  on failure: spool/<sink>/ (in order), replay with backoff + jitter
//!       +--> progress --> dispatcher --> DurableNotify::durable(origin, ticket), once per batch per worker
//! ```
//!
//! Each sink is its own module (vector's shape): a serde config with `deny_unknown_fields`
//! (in [`config`]), a build step and a start check, [`Sink::write_batch`] that returns only once
//! the batch is durable in that sink, and one `is_retriable` function per sink deciding what a
//! retry can fix. A record is durable once every durable sink holds it or has it in its spool;
//! a full queue or spool is [`Backpressure`], never a drop. Records go out as JSON Lines, the
//! same shape everywhere ([`record`]).
//!
//! This layer is shell: it owns threads, files and sockets, and never calls into the core or
//! the worker loops; the homes reach it only through [`SinkHandle`], and it reaches them only
//! through [`DurableNotify`].

pub mod batch;
pub mod config;
mod dispatch;
pub mod file;
mod handle;
mod lane;
pub mod metrics;
pub mod presence;
pub mod record;
pub mod redis;
pub mod retry;
mod runner;
pub mod segment;
pub mod spool;
pub mod webhook;

pub use config::{AckMode, SinkConfig};
pub use handle::{Backpressure, DurableNotify, SinkHandle};
pub use metrics::{SinkMetrics, SinkStats};
pub use record::{EncodedRecord, PresenceKind, PresenceRecord, SinkRecord};
pub use runner::{start, SinkError, SinkRuntime};

/// Why a batch did not get into a sink, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkFailure {
    /// Whether a later attempt may succeed (decided by the sink's `is_retriable`). A batch
    /// that failed for good is kept in the spool's `rejected.jsonl`.
    pub retriable: bool,
    /// What went wrong, for logs and metrics.
    pub message: String,
}

impl SinkFailure {
    /// A failure.
    pub fn new(retriable: bool, message: impl Into<String>) -> Self {
        Self { retriable, message: message.into() }
    }
}

/// A place records go. Implementations live on their own thread, so every call may block (each
/// bounded by the sink's timeout).
pub trait Sink: Send {
    /// Short name: in logs, metrics and the spool's directory name.
    fn name(&self) -> &'static str;

    /// Whether the sink answers (run at start and while it is failing with nothing to replay).
    fn health_check(&mut self) -> Result<(), SinkFailure>;

    /// Write `batch` in order; return `Ok` only once the sink holds all of it durably. On
    /// error any part of it may have been written: it will be written again (at least once).
    fn write_batch(&mut self, batch: &[&EncodedRecord]) -> Result<(), SinkFailure>;
}
