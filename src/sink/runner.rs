//! Starting and stopping the sinks: [`start`] builds and checks every configured sink, opens
//! their spools and starts the threads; [`SinkRuntime::shutdown`] flushes and joins them.
//!
//! Threads: one dispatcher (`roomcast-sink`) and one per sink (`roomcast-sink-<name>`), so a
//! slow or failing sink has its own progress and its own backoff while the others go on. A
//! sink whose start check fails is logged and starts in the failing state: its records spool
//! until it answers, and the server starts anyway. Only what no retry can fix stops [`start`]:
//! a bad setting, a data or spool directory that cannot be opened, a thread that cannot be
//! spawned.

use crate::sink::config::{SinkConfig, SinkConfigError};
use crate::sink::dispatch::{Building, Control, Dispatcher, Link, LANE_QUEUE_CHUNKS};
use crate::sink::file::{FileSink, FileSinkError};
use crate::sink::handle::{now_ms, DurableNotify, Shared, SinkHandle};
use crate::sink::lane::{Lane, LaneState};
use crate::sink::metrics::{LaneStats, SinkMetrics};
use crate::sink::presence::PresenceDebouncer;
use crate::sink::redis::{RedisSink, RedisSinkError};
use crate::sink::retry::Backoff;
use crate::sink::spool::{Spool, SpoolBudget, SpoolError};
use crate::sink::webhook::WebhookSink;
use crate::sink::{batch::BatchPolicy, Sink};
use crossbeam_channel::Sender;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Presence transitions that may wait for the dispatcher.
const PRESENCE_QUEUE: usize = 16_384;

/// Why the sinks could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A `[sink]` setting is invalid (the message names the key).
    #[error(transparent)]
    Config(#[from] SinkConfigError),
    /// The file sink's directory cannot be used.
    #[error(transparent)]
    File(#[from] FileSinkError),
    /// The Redis sink cannot be built.
    #[error(transparent)]
    Redis(#[from] RedisSinkError),
    /// The webhook sink cannot be built.
    #[error("webhook sink: {0}")]
    Webhook(String),
    /// A spool directory cannot be used.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A thread could not be started.
    #[error("cannot start a sink thread: {0}")]
    Spawn(std::io::Error),
}

/// The running sinks. Dropping it shuts them down like [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct SinkRuntime {
    handle: SinkHandle,
    control: Sender<Control>,
    stop: Option<Sender<()>>,
    dispatcher: Option<JoinHandle<()>>,
}

struct Built {
    sink: Box<dyn Sink>,
    policy: BatchPolicy,
    durable: bool,
    presence: bool,
}

fn policy(ms: u64, records: usize, max_write: usize) -> BatchPolicy {
    BatchPolicy { max_records: records, max_write, min_interval: Duration::from_millis(ms) }
}

fn build_sinks(config: &SinkConfig) -> Result<Vec<Built>, SinkError> {
    let mut built = Vec::new();
    let f = &config.file;
    if f.enabled {
        let (sink, _) = FileSink::open(f)?;
        built.push(Built {
            sink: Box::new(sink),
            policy: policy(f.fsync_ms, f.fsync_records, usize::MAX),
            durable: f.durable,
            presence: f.presence,
        });
    }
    if let Some(r) = &config.redis {
        built.push(Built {
            sink: Box::new(RedisSink::new(r)?),
            policy: policy(r.batch_ms, r.batch_records, r.batch_records),
            durable: r.durable,
            presence: r.presence,
        });
    }
    if let Some(w) = &config.webhook {
        built.push(Built {
            sink: Box::new(WebhookSink::new(w).map_err(SinkError::Webhook)?),
            policy: policy(w.batch_ms, w.batch_records, w.batch_records),
            durable: w.durable,
            presence: w.presence,
        });
    }
    Ok(built)
}

/// Validate `config`, build and check every sink, open the spools (what they hold is replayed
/// before any new record) and start the threads. `notify` hears about durable tickets from
/// the dispatcher thread. Blocks for the start checks (each bounded by its sink's timeout).
pub fn start(config: &SinkConfig, notify: Arc<dyn DurableNotify>) -> Result<SinkRuntime, SinkError> {
    config.validate()?;
    let built = build_sinks(config)?;
    let budget = Arc::new(SpoolBudget::new(config.spool.max_bytes));
    let spool_root = config.spool_dir();
    let (progress_tx, progress_rx) = crossbeam_channel::unbounded();
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let retry = (Duration::from_millis(config.retry.initial_ms), Duration::from_millis(config.retry.max_ms));
    let mut links = Vec::new();
    let mut lanes = Vec::new();
    for (index, mut b) in built.into_iter().enumerate() {
        let name = b.sink.name();
        let (spool, recovery) = Spool::open(&spool_root.join(name), Arc::clone(&budget))?;
        if let Some(path) = &recovery.segment {
            tracing::warn!(sink = name, segment = %path.display(), bytes = recovery.truncated_bytes, "spool: cut a torn last line");
        }
        if !spool.is_empty() {
            tracing::info!(
                sink = name,
                records = spool.records(),
                "spool holds records from before; replaying them first"
            );
        }
        let healthy = match b.sink.health_check() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(sink = name, error = %e, "sink is down at start; its records spool until it answers");
                false
            }
        };
        let stats = Arc::new(LaneStats::new(name, b.durable, healthy));
        if !healthy {
            stats.update(|s| s.last_error = Some("start check failed".to_owned()));
        }
        // What the spool kept from before was handed to this sink too: lag counts it until
        // it is replayed (each replayed line counts as done).
        let (records, bytes) = (spool.records(), spool.bytes());
        stats.handed(records, spool.head_ts().unwrap_or_else(now_ms));
        stats.update(|s| {
            s.spool_records = records;
            s.spool_bytes = bytes;
        });
        let (tx, rx) = crossbeam_channel::bounded(LANE_QUEUE_CHUNKS);
        lanes.push(Lane {
            index,
            sink: b.sink,
            spool,
            policy: b.policy,
            presence: b.presence,
            backoff: Backoff::new(retry.0, retry.1),
            stats: Arc::clone(&stats),
            budget: Arc::clone(&budget),
            rx,
            stop: stop_rx.clone(),
            progress: progress_tx.clone(),
            healthy,
            state: LaneState::default(),
        });
        links.push(Link { tx, durable: b.durable, presence: b.presence, stats, thread: None, through: 0 });
    }
    for (lane, link) in lanes.into_iter().zip(links.iter_mut()) {
        let name = format!("roomcast-sink-{}", lane.sink.name());
        let thread = std::thread::Builder::new().name(name).spawn(move || lane.run()).map_err(SinkError::Spawn)?;
        link.thread = Some(thread);
    }
    let (records_tx, records_rx) = crossbeam_channel::bounded(config.queue_records);
    let (presence_tx, presence_rx) = crossbeam_channel::bounded(PRESENCE_QUEUE);
    let (control_tx, control_rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(Shared {
        budget,
        stopped: Default::default(),
        lanes: links.iter().map(|l| Arc::clone(&l.stats)).collect(),
        ack: config.ack,
        wants_presence: config.wants_presence(),
    });
    let debouncer = shared.wants_presence.then(|| PresenceDebouncer::new(config.presence.grace_ms));
    let dispatcher = Dispatcher {
        records: records_rx,
        presence: presence_rx,
        control: control_rx,
        progress: progress_rx,
        _progress_tx: progress_tx,
        links,
        debouncer,
        notify,
        waiting: VecDeque::new(),
        next_index: 0,
        building: Building::default(),
    };
    let thread = std::thread::Builder::new()
        .name("roomcast-sink".into())
        .spawn(move || dispatcher.run())
        .map_err(SinkError::Spawn)?;
    let handle = SinkHandle { records: records_tx, presence: presence_tx, shared };
    Ok(SinkRuntime { handle, control: control_tx, stop: Some(stop_tx), dispatcher: Some(thread) })
}

impl SinkRuntime {
    /// A handle for a home worker (clone it once per worker).
    pub fn handle(&self) -> SinkHandle {
        self.handle.clone()
    }

    /// A snapshot of every sink's counters and the spool.
    pub fn metrics(&self) -> SinkMetrics {
        self.handle.metrics()
    }

    /// Refuse new records, hand everything accepted to the sinks (a healthy sink gets one
    /// attempt per remaining batch, a failing one's records go to its spool), report what
    /// became durable and join the threads. Call it after the workers stopped submitting.
    /// Blocks for at most one write timeout per sink past the spool writes.
    pub fn shutdown(mut self) -> SinkMetrics {
        self.stop_threads();
        self.handle.metrics()
    }

    fn stop_threads(&mut self) {
        let Some(thread) = self.dispatcher.take() else { return };
        self.handle.shared.stopped.store(true, Ordering::Release);
        // Disconnecting the stop channel tells every sink thread at once: no more retries.
        self.stop.take();
        let _ = self.control.send(Control::Drain);
        if thread.join().is_err() {
            tracing::error!("the sink dispatcher panicked");
        }
    }
}

impl Drop for SinkRuntime {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
