//! One sink's thread: gathers chunks into batches ([`BatchPolicy`]), writes them, and when
//! the sink fails keeps its records in the sink's [`Spool`] and replays them, in order, with
//! backoff and jitter until it is healthy again.
//!
//! The order of one sink's records never changes: while anything is spooled, new batches go to
//! the spool behind it, and replay delivers from the spool's head. A batch is reported (in
//! [`Progress`]) only once the sink acknowledged it, the spool fsynced it, or the sink refused
//! it for good and it was fsynced to `rejected.jsonl`. When the spool has no room the thread
//! keeps the batch and stops taking chunks, so backpressure reaches the homes; it reports
//! nothing it does not hold.
//!
//! On stop (the runtime's broadcast) retries end: one write attempt per remaining batch when
//! the sink is healthy, otherwise the spool; what even the spool cannot take is logged as
//! abandoned (it was never reported durable). Must never report out of order, never write a
//! new record to the sink while older ones wait in the spool.

use crate::sink::batch::BatchPolicy;
use crate::sink::dispatch::{Chunk, LaneMsg, Progress};
use crate::sink::metrics::LaneStats;
use crate::sink::record::{EncodedRecord, RecordKind};
use crate::sink::retry::Backoff;
use crate::sink::spool::{Spool, SpoolBudget, SpoolError};
use crate::sink::{Sink, SinkFailure};
use crossbeam_channel::{never, select, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a sink thread needs.
pub(crate) struct Lane {
    pub(crate) index: usize,
    pub(crate) sink: Box<dyn Sink>,
    pub(crate) spool: Spool,
    pub(crate) policy: BatchPolicy,
    pub(crate) presence: bool,
    pub(crate) backoff: Backoff,
    pub(crate) stats: Arc<LaneStats>,
    pub(crate) budget: Arc<SpoolBudget>,
    pub(crate) rx: Receiver<LaneMsg>,
    pub(crate) stop: Receiver<()>,
    pub(crate) progress: Sender<Progress>,
    /// False after a failed write or start check, until a write succeeds.
    pub(crate) healthy: bool,
    pub(crate) state: LaneState,
}

/// The thread's moving parts.
#[derive(Debug, Default)]
pub(crate) struct LaneState {
    pending: Vec<Arc<Chunk>>,
    pending_records: usize,
    /// Of the pending records, how many (from the start) the sink or the spool already holds:
    /// a batch cut short by a full spool is taken up again from there.
    held: usize,
    last_commit: Option<Instant>,
    /// When the next attempt at the sink (replay, or a retry of a failed write) may happen.
    retry_at: Option<Instant>,
    /// The spool had no room for the pending batch: wait for replay to make some.
    holding: bool,
    waiting_flag: bool,
    stopping: bool,
    finished: bool,
}

impl Lane {
    /// Run until the dispatcher sends `Stop` (or goes away).
    pub(crate) fn run(mut self) {
        if !self.healthy || !self.spool.is_empty() {
            let delay = if self.healthy { Duration::ZERO } else { self.backoff.fail(fastrand::f64()) };
            self.state.retry_at = Some(Instant::now() + delay);
        }
        self.refresh_oldest();
        loop {
            if self.state.finished && self.state.pending.is_empty() {
                break;
            }
            self.wait();
            let now = Instant::now();
            if self.retry_due(now) {
                self.replay(now);
            }
            if self.commit_due(now) {
                self.commit(now);
            }
        }
        let mut flag = self.state.waiting_flag;
        self.budget.set_waiting(false, &mut flag);
        self.state.waiting_flag = flag;
    }

    fn retry_due(&self, now: Instant) -> bool {
        !self.state.stopping && self.state.retry_at.is_some_and(|at| now >= at)
    }

    fn commit_due(&self, now: Instant) -> bool {
        let s = &self.state;
        if s.pending.is_empty() {
            return false;
        }
        if s.stopping || s.pending_records == 0 {
            return true;
        }
        if s.holding {
            // Only replay can make room; try again after each attempt.
            return self.retry_due(now) || s.retry_at.is_none();
        }
        self.policy.is_due(s.pending_records, s.last_commit, now)
    }

    /// Block until a chunk, the stop broadcast, or the next deadline.
    fn wait(&mut self) {
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
        };
        if !self.state.stopping {
            consider(self.state.retry_at);
        }
        if !self.state.holding {
            match self.policy.due(self.state.pending_records, self.state.last_commit) {
                Some(at) => consider(Some(at.unwrap_or(now))),
                None if !self.state.pending.is_empty() => consider(Some(now)),
                None => {}
            }
        }
        if self.state.stopping && !self.state.pending.is_empty() {
            consider(Some(now));
        }
        if deadline.is_some_and(|d| d <= now) {
            self.take_queued();
            return;
        }
        let timer = deadline.map_or_else(never, crossbeam_channel::at);
        // While holding, new chunks would only pile up; once stopping they are taken anyway
        // (to be spooled or abandoned) so the dispatcher can finish.
        let closed = self.state.finished || (self.state.holding && !self.state.stopping);
        let rx = if closed { never() } else { self.rx.clone() };
        let stop = if self.state.stopping { never() } else { self.stop.clone() };
        select! {
            recv(rx) -> msg => self.take(msg.ok()),
            recv(stop) -> _ => self.state.stopping = true,
            recv(timer) -> _ => {}
        }
        self.take_queued();
    }

    /// More chunks already queued, while the batch is not full.
    fn take_queued(&mut self) {
        while (!self.state.holding || self.state.stopping)
            && !self.state.finished
            && self.state.pending_records < self.policy.max_records
        {
            match self.rx.try_recv() {
                Ok(msg) => self.take(Some(msg)),
                Err(_) => break,
            }
        }
    }

    fn take(&mut self, msg: Option<LaneMsg>) {
        match msg {
            Some(LaneMsg::Chunk(chunk)) => {
                self.state.pending_records += self.relevant(&chunk).count();
                self.state.pending.push(chunk);
            }
            Some(LaneMsg::Stop) | None => {
                self.state.finished = true;
                self.state.stopping = true;
            }
        }
    }

    fn relevant<'a>(&self, chunk: &'a Chunk) -> impl Iterator<Item = &'a EncodedRecord> {
        let presence = self.presence;
        chunk.records.iter().filter(move |r| presence || r.kind != RecordKind::Presence)
    }

    fn report(&self, through: u64) {
        let _ = self.progress.send(Progress { lane: self.index, through });
    }

    fn fail(&mut self, failure: &SinkFailure, now: Instant) {
        self.healthy = false;
        let delay = self.backoff.fail(fastrand::f64());
        self.state.retry_at = Some(now + delay);
        tracing::warn!(
            sink = self.sink.name(),
            error = %failure,
            retry_in_ms = delay.as_millis() as u64,
            "sink write failed; records wait in the spool"
        );
        let message = failure.to_string();
        self.stats.update(|s| {
            s.healthy = false;
            s.retries += 1;
            s.last_error = Some(message);
        });
    }

    fn succeed(&mut self, records: usize) {
        self.backoff.reset();
        let recovered = !self.healthy;
        self.healthy = true;
        self.stats.update(|s| {
            s.healthy = true;
            s.records_written += records as u64;
            s.batches += 1;
        });
        if recovered {
            tracing::info!(sink = self.sink.name(), "sink healthy again");
        }
    }

    fn refresh_oldest(&self) {
        let spool = self.spool.head_ts();
        let pending = self.state.pending.iter().flat_map(|c| self.relevant(c)).next().map(|r| r.ts_ms);
        let (records, bytes) = (self.spool.records(), self.spool.bytes());
        self.stats.update(|s| {
            s.spool_records = records;
            s.spool_bytes = bytes;
        });
        self.stats.done(0, spool.or(pending));
    }

    /// Commit the pending chunks: to the sink (in slices of at most `max_write`) when
    /// nothing is spooled and it is healthy (or due for a retry); what the sink did not take
    /// goes to the spool.
    fn commit(&mut self, now: Instant) {
        let chunks = std::mem::take(&mut self.state.pending);
        let count = std::mem::take(&mut self.state.pending_records);
        let mut done = std::mem::take(&mut self.state.held);
        let Some(through) = chunks.last().map(|c| c.index) else { return };
        let batch: Vec<&EncodedRecord> = chunks.iter().flat_map(|c| self.relevant(c)).collect();
        if batch.is_empty() {
            self.report(through);
            return;
        }
        if !self.state.holding {
            self.state.last_commit = Some(now);
        }
        // A failing sink is tried again when its retry is due, but not once stopping.
        let retry_due = self.state.retry_at.is_none_or(|at| now >= at);
        let direct = self.spool.is_empty() && (self.healthy || (retry_due && !self.state.stopping));
        if direct {
            while done < batch.len() {
                let end = done.saturating_add(self.policy.max_write).min(batch.len());
                let slice = &batch[done..end];
                match self.sink.write_batch(slice) {
                    Ok(()) => self.succeed(slice.len()),
                    Err(f) if !f.retriable => self.reject(slice, &f),
                    Err(f) => {
                        self.fail(&f, now);
                        break;
                    }
                }
                self.stats.done(slice.len() as u64, None);
                done = end;
            }
            if done == batch.len() {
                if self.healthy {
                    self.state.retry_at = None;
                }
                drop(batch);
                self.set_holding(false);
                self.refresh_oldest();
                self.report(through);
                return;
            }
        }
        let spooled_from = done;
        let mut failure = None;
        while done < batch.len() {
            // Slices of at most `max_records`: an empty spool takes any one slice, so the limit
            // is exceeded by at most one slice.
            let end = (done + self.policy.max_records).min(batch.len());
            if let Err(e) = self.spool.append(&batch[done..end]) {
                failure = Some(e);
                break;
            }
            done = end;
        }
        let n = (done - spooled_from) as u64;
        self.stats.update(|s| s.spooled_records += n);
        let left = batch.len() - done;
        drop(batch);
        let Some(e) = failure else {
            self.set_holding(false);
            self.refresh_oldest();
            self.report(through);
            return;
        };
        if self.state.stopping {
            self.abandon(chunks, left, &e);
            return;
        }
        if let SpoolError::Io { .. } = e {
            tracing::error!(sink = self.sink.name(), error = %e, "cannot spool; holding the batch");
            let message = e.to_string();
            self.stats.update(|s| s.last_error = Some(message));
        }
        if self.state.retry_at.is_none() {
            self.state.retry_at = Some(now + self.backoff.fail(fastrand::f64()));
        }
        self.state.pending = chunks;
        self.state.pending_records = count;
        self.state.held = done;
        self.set_holding(true);
    }

    fn set_holding(&mut self, holding: bool) {
        self.state.holding = holding;
        let mut flag = self.state.waiting_flag;
        self.budget.set_waiting(holding, &mut flag);
        self.state.waiting_flag = flag;
    }

    fn abandon(&mut self, chunks: Vec<Arc<Chunk>>, count: usize, error: &SpoolError) {
        tracing::error!(
            sink = self.sink.name(),
            records = count,
            error = %error,
            "stopping with records neither the sink nor the spool took (never reported durable)"
        );
        self.stats.update(|s| s.abandoned_records += count as u64);
        self.stats.done(count as u64, None);
        drop(chunks);
        self.set_holding(false);
    }

    fn reject(&mut self, batch: &[&EncodedRecord], failure: &SinkFailure) {
        tracing::error!(
            sink = self.sink.name(),
            records = batch.len(),
            error = %failure,
            "sink refused a batch for good; kept in the spool's rejected.jsonl"
        );
        if let Err(e) = self.spool.reject(batch) {
            tracing::error!(sink = self.sink.name(), error = %e, "cannot write rejected records");
        }
        let (n, message) = (batch.len() as u64, failure.to_string());
        self.stats.update(|s| {
            s.rejected_records += n;
            s.last_error = Some(message);
        });
    }

    /// One attempt at the sink: deliver the spool's head (or, with nothing spooled, a health
    /// check).
    fn replay(&mut self, now: Instant) {
        if self.spool.is_empty() {
            match self.sink.health_check() {
                Ok(()) => {
                    if !self.healthy {
                        tracing::info!(sink = self.sink.name(), "sink healthy again");
                    }
                    self.healthy = true;
                    self.backoff.reset();
                    self.state.retry_at = None;
                    self.stats.update(|s| s.healthy = true);
                }
                Err(f) => self.fail(&f, now),
            }
            return;
        }
        let peeked = match self.spool.peek(self.policy.max_records) {
            Ok(p) => p,
            Err(e) => {
                let failure = SinkFailure::new(true, format!("reading the spool: {e}"));
                self.fail(&failure, now);
                return;
            }
        };
        let batch: Vec<&EncodedRecord> = peeked.records.iter().collect();
        let result = if batch.is_empty() { Ok(()) } else { self.sink.write_batch(&batch) };
        let n = batch.len();
        match result {
            Ok(()) => {
                if n > 0 {
                    self.succeed(n);
                }
            }
            Err(f) if !f.retriable => self.reject(&batch, &f),
            Err(f) => {
                self.fail(&f, now);
                return;
            }
        }
        let bad = peeked.bad_lines.len();
        if let Err(e) = self.spool.consume(peeked) {
            // Delivered but not marked: it will be delivered again (at least once).
            let failure = SinkFailure::new(true, format!("advancing the spool: {e}"));
            self.fail(&failure, now);
            return;
        }
        self.stats.done((n + bad) as u64, None);
        self.refresh_oldest();
        // More to replay goes on at once; with the spool empty the sink is live again.
        self.state.retry_at = if self.spool.is_empty() { None } else { Some(now) };
    }
}
