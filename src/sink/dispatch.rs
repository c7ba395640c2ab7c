//! The runner's front thread: takes submissions off the homes' queues, debounces presence,
//! encodes each record once into a numbered [`Chunk`], hands every chunk to every sink thread,
//! and turns the sink threads' progress into [`DurableNotify`] calls.
//!
//! Durability is a frontier over chunk numbers: each sink thread reports the highest chunk it
//! holds (written or spooled), in order; the frontier is the lowest report among durable sinks
//! (with none, every dispatched chunk). When it passes chunks, their tickets are merged per
//! worker and each worker is told once, with its highest ticket. Because every sink thread
//! takes chunks in order and reports cumulatively, a ticket is only ever reported once all
//! earlier ones of its worker are durable too.
//!
//! A sink thread that cannot keep up fills its bounded queue; then this thread waits (still
//! taking progress reports), the homes' queue fills and submissions get `Backpressure`. Must
//! never drop a submission or report a chunk a durable sink thread has not reported.

use crate::sink::handle::{now_ms, DurableNotify, Submission};
use crate::sink::metrics::LaneStats;
use crate::sink::presence::PresenceDebouncer;
use crate::sink::record::{EncodedRecord, PresenceRecord, RecordKind, SinkRecord};
use crossbeam_channel::{select, Receiver, Sender};
use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Most records in one chunk: the unit of durability reports (a sink thread gathers several
/// chunks into one batch), small enough that a spool always holds a few.
pub(crate) const MAX_CHUNK_RECORDS: usize = 256;
/// Chunks that may wait in one sink thread's queue.
pub(crate) const LANE_QUEUE_CHUNKS: usize = 64;
/// A down is released this long after its grace ends, so an up that happened in time but is
/// still on its way from the home cancels it.
const IN_FLIGHT_MS: u64 = 100;
/// Longest sleep with nothing to do (the loop also wakes on every message).
const IDLE: Duration = Duration::from_secs(1);

/// Records encoded once, shared by every sink thread.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// 1, 2, 3, ... in dispatch order.
    pub(crate) index: u64,
    /// The records, in submission order.
    pub(crate) records: Vec<EncodedRecord>,
    /// How many of them are presence records.
    pub(crate) presence: usize,
}

/// What a sink thread's queue carries.
#[derive(Debug)]
pub(crate) enum LaneMsg {
    /// The next chunk.
    Chunk(Arc<Chunk>),
    /// Nothing more will come: commit what is left and exit.
    Stop,
}

/// A sink thread holds every chunk up to `through`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    pub(crate) lane: usize,
    pub(crate) through: u64,
}

/// Control messages from the runtime.
#[derive(Debug)]
pub(crate) enum Control {
    /// Take everything queued, hand it on, stop the sink threads and exit.
    Drain,
}

/// The dispatcher's view of one sink thread.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) tx: Sender<LaneMsg>,
    pub(crate) durable: bool,
    pub(crate) presence: bool,
    pub(crate) stats: Arc<LaneStats>,
    pub(crate) thread: Option<JoinHandle<()>>,
    pub(crate) through: u64,
}

/// See the module doc.
pub(crate) struct Dispatcher {
    pub(crate) records: Receiver<Submission>,
    pub(crate) presence: Receiver<PresenceRecord>,
    pub(crate) control: Receiver<Control>,
    pub(crate) progress: Receiver<Progress>,
    /// Kept so `progress` never disconnects (a receive on it then never spins).
    pub(crate) _progress_tx: Sender<Progress>,
    pub(crate) links: Vec<Link>,
    pub(crate) debouncer: Option<PresenceDebouncer>,
    pub(crate) notify: Arc<dyn DurableNotify>,
    pub(crate) waiting: VecDeque<(u64, Vec<(u16, u64)>)>,
    pub(crate) next_index: u64,
    pub(crate) building: Building,
}

/// The chunk being filled.
#[derive(Debug, Default)]
pub(crate) struct Building {
    records: Vec<EncodedRecord>,
    presence: usize,
    tickets: Vec<(u16, u64)>,
}

impl Building {
    fn push(&mut self, s: Submission) {
        if s.record.kind() == RecordKind::Presence {
            self.presence += 1;
        }
        self.records.push(s.record.encode());
        match self.tickets.iter_mut().find(|(o, _)| *o == s.origin) {
            Some(entry) => entry.1 = entry.1.max(s.ticket),
            None => self.tickets.push((s.origin, s.ticket)),
        }
    }

    fn push_presence(&mut self, p: PresenceRecord) {
        self.presence += 1;
        self.records.push(SinkRecord::Presence(p).encode());
    }
}

impl Dispatcher {
    /// Run until [`Control::Drain`] (or every handle and the runtime are gone).
    pub(crate) fn run(mut self) {
        let mut out = Vec::new();
        loop {
            let timeout = self.presence_timeout();
            let mut draining = false;
            select! {
                recv(self.control) -> _ => draining = true,
                recv(self.progress) -> p => if let Ok(p) = p { self.on_progress(p) },
                recv(self.records) -> s => match s {
                    Ok(s) => self.building.push(s),
                    Err(_) => draining = true,
                },
                recv(self.presence) -> p => match p {
                    Ok(p) => self.on_presence(p, &mut out),
                    Err(_) => draining = true,
                },
                default(timeout) => {}
            }
            if draining {
                break;
            }
            self.take_queued(&mut out);
            self.poll_presence(&mut out);
            self.dispatch();
            while let Ok(p) = self.progress.try_recv() {
                self.on_progress(p);
            }
        }
        self.drain(&mut out);
    }

    fn presence_timeout(&self) -> Duration {
        match self.debouncer.as_ref().and_then(PresenceDebouncer::next_deadline) {
            Some(due) => Duration::from_millis((due + IN_FLIGHT_MS).saturating_sub(now_ms())).min(IDLE),
            None => IDLE,
        }
    }

    fn on_presence(&mut self, change: PresenceRecord, out: &mut Vec<PresenceRecord>) {
        if let Some(d) = &mut self.debouncer {
            d.handle(change, out);
            for p in out.drain(..) {
                self.building.push_presence(p);
            }
        }
    }

    fn poll_presence(&mut self, out: &mut Vec<PresenceRecord>) {
        if let Some(d) = &mut self.debouncer {
            d.poll(now_ms().saturating_sub(IN_FLIGHT_MS), out);
            for p in out.drain(..) {
                self.building.push_presence(p);
            }
        }
    }

    /// Whatever is already queued, up to a chunk's worth (presence first: its order per room
    /// matters, its volume is small).
    fn take_queued(&mut self, out: &mut Vec<PresenceRecord>) {
        while self.building.records.len() < MAX_CHUNK_RECORDS {
            match self.presence.try_recv() {
                Ok(p) => self.on_presence(p, out),
                Err(_) => break,
            }
        }
        while self.building.records.len() < MAX_CHUNK_RECORDS {
            match self.records.try_recv() {
                Ok(s) => self.building.push(s),
                Err(_) => break,
            }
        }
    }

    /// Hand the chunk being built to every sink thread.
    fn dispatch(&mut self) {
        if self.building.records.is_empty() {
            return;
        }
        self.next_index += 1;
        let building = std::mem::take(&mut self.building);
        let chunk = Arc::new(Chunk { index: self.next_index, records: building.records, presence: building.presence });
        self.waiting.push_back((chunk.index, building.tickets));
        let first_ts = chunk.records.first().map_or(0, |r| r.ts_ms);
        for i in 0..self.links.len() {
            let link = &self.links[i];
            let relevant = chunk.records.len() - if link.presence { 0 } else { chunk.presence };
            link.stats.handed(relevant as u64, first_ts);
            loop {
                let link = &self.links[i];
                select! {
                    send(link.tx, LaneMsg::Chunk(Arc::clone(&chunk))) -> _ => break,
                    recv(self.progress) -> p => match p {
                        Ok(p) => self.on_progress(p),
                        // Every sink thread is gone; nothing can become durable any more.
                        Err(_) => break,
                    },
                }
            }
        }
        self.advance();
    }

    fn on_progress(&mut self, p: Progress) {
        if let Some(link) = self.links.get_mut(p.lane) {
            link.through = link.through.max(p.through);
        }
        self.advance();
    }

    /// Tell each worker about the tickets that the frontier passed.
    fn advance(&mut self) {
        let frontier = self.links.iter().filter(|l| l.durable).map(|l| l.through).min().unwrap_or(self.next_index);
        let mut merged: Vec<(u16, u64)> = Vec::new();
        while self.waiting.front().is_some_and(|(index, _)| *index <= frontier) {
            let Some((_, tickets)) = self.waiting.pop_front() else { break };
            for (origin, ticket) in tickets {
                match merged.iter_mut().find(|(o, _)| *o == origin) {
                    Some(entry) => entry.1 = entry.1.max(ticket),
                    None => merged.push((origin, ticket)),
                }
            }
        }
        for (origin, ticket) in merged {
            self.notify.durable(origin, ticket);
        }
    }

    /// Shutdown: everything still queued goes to the sink threads, then `Stop`; wait for
    /// their last progress and join them.
    fn drain(&mut self, out: &mut Vec<PresenceRecord>) {
        loop {
            self.take_queued(out);
            if self.building.records.is_empty() {
                break;
            }
            self.dispatch();
        }
        if let Some(d) = &mut self.debouncer {
            d.flush(out);
            for p in out.drain(..) {
                self.building.push_presence(p);
            }
        }
        self.dispatch();
        for link in &self.links {
            let _ = link.tx.send(LaneMsg::Stop);
        }
        let threads: Vec<JoinHandle<()>> = self.links.iter_mut().filter_map(|l| l.thread.take()).collect();
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a sink thread panicked");
            }
        }
        while let Ok(p) = self.progress.try_recv() {
            self.on_progress(p);
        }
        let unreported: usize = self.waiting.iter().map(|(_, t)| t.len()).sum();
        if unreported > 0 {
            tracing::error!(chunks = self.waiting.len(), "sinks stopped with records that never became durable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<(u16, u64)>>);

    impl DurableNotify for Log {
        fn durable(&self, origin: u16, ticket: u64) {
            self.0.lock().expect("lock").push((origin, ticket));
        }
    }

    fn dispatcher(durable: &[bool]) -> (Dispatcher, Arc<Log>, Vec<Receiver<LaneMsg>>) {
        let (_rtx, records) = crossbeam_channel::bounded(8);
        let (_ptx, presence) = crossbeam_channel::bounded(8);
        let (_ctx, control) = crossbeam_channel::bounded(1);
        let (progress_tx, progress) = crossbeam_channel::unbounded();
        let mut links = Vec::new();
        let mut rxs = Vec::new();
        for &d in durable {
            let (tx, rx) = crossbeam_channel::bounded(8);
            let stats = Arc::new(LaneStats::new("file", d, true));
            links.push(Link { tx, durable: d, presence: false, stats, thread: None, through: 0 });
            rxs.push(rx);
        }
        let log = Arc::new(Log::default());
        let notify: Arc<dyn DurableNotify> = log.clone();
        let d = Dispatcher {
            records,
            presence,
            control,
            progress,
            _progress_tx: progress_tx,
            links,
            debouncer: None,
            notify,
            waiting: VecDeque::new(),
            next_index: 0,
            building: Building::default(),
        };
        (d, log, rxs)
    }

    fn submission(origin: u16, ticket: u64) -> Submission {
        let record = SinkRecord::Tombstone { room: "r".into(), id: format!("e-{ticket}"), seq: ticket, ts_ms: 1 };
        Submission { origin, ticket, record }
    }

    #[test]
    fn a_worker_hears_once_per_batch_when_every_durable_sink_holds_it() {
        let (mut d, log, _rxs) = dispatcher(&[true, true, false]);
        d.building.push(submission(0, 1));
        d.building.push(submission(1, 7));
        d.building.push(submission(0, 2));
        d.dispatch();
        d.building.push(submission(0, 3));
        d.dispatch();
        d.on_progress(Progress { lane: 0, through: 2 });
        d.on_progress(Progress { lane: 2, through: 2 });
        assert!(log.0.lock().expect("lock").is_empty(), "sink 1 holds nothing yet");
        d.on_progress(Progress { lane: 1, through: 1 });
        assert_eq!(*log.0.lock().expect("lock"), [(0, 2), (1, 7)]);
        d.on_progress(Progress { lane: 1, through: 2 });
        assert_eq!(log.0.lock().expect("lock")[2..], [(0, 3)]);
    }

    #[test]
    fn with_no_durable_sink_dispatch_is_enough() {
        let (mut d, log, rxs) = dispatcher(&[false]);
        d.building.push(submission(3, 9));
        d.dispatch();
        assert_eq!(*log.0.lock().expect("lock"), [(3, 9)]);
        assert!(matches!(rxs[0].try_recv(), Ok(LaneMsg::Chunk(c)) if c.index == 1));
    }
}
