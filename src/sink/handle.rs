//! The homes' side of the seam: a cloneable [`SinkHandle`] that never blocks, and the
//! [`DurableNotify`] the runtime implements to hear back.
//!
//! A home submits each comment or tombstone with its worker id (`origin`) and a per-worker
//! ticket that grows strictly with every submission; the runner later reports
//! `durable(origin, ticket)`: every record of that worker with a ticket up to it is held by
//! every durable sink or by the spool. A full queue, a full spool or a stopped runner is
//! [`Backpressure`] (the viewer gets `unavailable`): nothing is ever dropped silently and
//! nothing refused is ever reported. Must never block a worker's loop or take a lock.

use crate::sink::config::AckMode;
use crate::sink::metrics::{LaneStats, SinkMetrics};
use crate::sink::record::{PresenceRecord, SinkRecord};
use crate::sink::spool::SpoolBudget;
use crate::wire::ErrorCode;
use crossbeam_channel::{Sender, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Told when records became durable. Implemented by the runtime (a worker's mailbox plus its
/// waker); called from the sink runner's thread, once per committed batch per worker, with
/// the highest ticket of that worker the batch made durable. Tickets reported for one origin
/// only grow. Must return quickly (it is on the runner's loop) and never call back into the
/// sinks.
pub trait DurableNotify: Send + Sync {
    /// Every record from worker `origin` with a ticket `<= ticket` is durable.
    fn durable(&self, origin: u16, ticket: u64);
}

/// Why a record was not taken. The viewer is told [`ErrorCode::Unavailable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Backpressure {
    /// `sink.queue_records` records already wait for the runner.
    #[error("the sink queue is full")]
    QueueFull,
    /// The spool reached `sink.spool.max_bytes` while a sink is failing.
    #[error("the sink spool is full")]
    SpoolFull,
    /// The sinks are shutting down.
    #[error("the sinks are stopped")]
    Stopped,
}

impl Backpressure {
    /// The error code the commenter gets.
    pub fn error_code(self) -> ErrorCode {
        ErrorCode::Unavailable
    }
}

/// A record on its way to the runner.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) origin: u16,
    pub(crate) ticket: u64,
    pub(crate) record: SinkRecord,
}

/// State the handles and the runtime share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) budget: Arc<SpoolBudget>,
    pub(crate) stopped: AtomicBool,
    pub(crate) lanes: Vec<Arc<LaneStats>>,
    pub(crate) ack: AckMode,
    pub(crate) wants_presence: bool,
}

/// Milliseconds since the Unix epoch (records carry wall-clock `ts`).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A home worker's way into the sinks; clone one per worker. Every method is non-blocking and
/// safe to call from any thread.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    pub(crate) records: Sender<Submission>,
    pub(crate) presence: Sender<PresenceRecord>,
    pub(crate) shared: Arc<Shared>,
}

impl SinkHandle {
    /// Submit a comment or tombstone. `ticket` must grow strictly per `origin`. On `Ok` the
    /// record will be written (and [`DurableNotify::durable`] will cover it once it is
    /// durable); on `Err` it was not taken and nothing about it will be reported. A presence
    /// record given here is written as it is, not debounced (homes use
    /// [`try_submit_presence`](Self::try_submit_presence)).
    pub fn try_submit(&self, origin: u16, ticket: u64, record: SinkRecord) -> Result<(), Backpressure> {
        if !self.accepting() {
            return Err(self.refusal());
        }
        match self.records.try_send(Submission { origin, ticket, record }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Backpressure::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(Backpressure::Stopped),
        }
    }

    /// Submit a raw presence transition of a room the caller is home of: `online` for a
    /// user's first connection in the room, `offline` when its last one went, `occupied` for
    /// the room's first viewer, `vacated` when its last left, in the order they happened.
    /// They are debounced (`sink.presence.grace_ms`) before any sink sees them and carry no
    /// ticket (nothing waits for them). Does nothing when no sink takes presence records
    /// ([`wants_presence`](Self::wants_presence)); a full presence queue is
    /// [`Backpressure::QueueFull`], and the caller should keep the transition and retry it
    /// before newer ones of the same room.
    pub fn try_submit_presence(&self, change: PresenceRecord) -> Result<(), Backpressure> {
        if !self.shared.wants_presence {
            return Ok(());
        }
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(Backpressure::Stopped);
        }
        match self.presence.try_send(change) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Backpressure::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(Backpressure::Stopped),
        }
    }

    /// Cheap check: false while the spool is full (or the sinks are stopped), so a home can
    /// refuse a comment before sequencing it.
    pub fn accepting(&self) -> bool {
        !self.shared.stopped.load(Ordering::Acquire) && self.shared.budget.has_room()
    }

    fn refusal(&self) -> Backpressure {
        if self.shared.stopped.load(Ordering::Acquire) {
            Backpressure::Stopped
        } else {
            Backpressure::SpoolFull
        }
    }

    /// `sink.ack`: whether homes wait for [`DurableNotify::durable`] before acking.
    pub fn ack_mode(&self) -> AckMode {
        self.shared.ack
    }

    /// Whether any sink takes presence records.
    pub fn wants_presence(&self) -> bool {
        self.shared.wants_presence
    }

    /// A snapshot of every sink's counters and the spool.
    pub fn metrics(&self) -> SinkMetrics {
        let now = now_ms();
        SinkMetrics {
            sinks: self.shared.lanes.iter().map(|l| l.snapshot(now)).collect(),
            spool_bytes: self.shared.budget.used_bytes(),
            spool_records: self.shared.budget.records(),
            spool_max_bytes: self.shared.budget.max_bytes(),
            queued_records: self.records.len(),
            accepting: self.accepting(),
        }
    }
}
