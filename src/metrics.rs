//! Counters kept by each worker for `/metrics`, the dashboard and explainable numbers.
//!
//! Every worker owns one [`Counters`] and is the only one to write it, with plain `+=` on
//! plain integers: no atomics and no shared cache line on the per-message path. A scrape asks
//! every worker for a copy by mail and adds the copies up with `merge`; a counter is therefore
//! exact at the moment its owner answered. This module is pure data: it never reads a clock
//! (the [`RateMeter`] is handed `now_ms`), never formats the Prometheus text (the admin port
//! does that with `prometheus-client`) and never sends anything.
//!
//! Gauges (connections open, rooms, online) are counted the same way: each worker adds what it
//! holds, so their sum is the process's figure. The few values that are only meaningful per
//! worker (loop busy time, mailbox depth) travel in [`WorkerLoad`], one per worker, labelled
//! by worker id.

use crate::ids::WorkerId;
use crate::query::{CommentCounts, LeaveCounts};
use crate::wire::ErrorCode;

/// The two viewer listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// The `listener` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }
}

/// A count per listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByListener {
    /// On the plain listener.
    pub ws: u64,
    /// On the TLS listener.
    pub wss: u64,
}

impl ByListener {
    /// The count of one listener, to change.
    pub fn slot(&mut self, listener: ListenerKind) -> &mut u64 {
        match listener {
            ListenerKind::Ws => &mut self.ws,
            ListenerKind::Wss => &mut self.wss,
        }
    }

    /// Both listeners together.
    pub fn sum(&self) -> u64 {
        self.ws + self.wss
    }

    /// `(label, count)` for each listener.
    pub fn labelled(&self) -> [(&'static str, u64); 2] {
        [(ListenerKind::Ws.as_str(), self.ws), (ListenerKind::Wss.as_str(), self.wss)]
    }

    /// Add another set of counts.
    pub fn merge(&mut self, other: &Self) {
        self.ws += other.ws;
        self.wss += other.wss;
    }
}

/// Close codes counted one by one (PROTOCOL.md "Close codes", RFC 6455's protocol errors, and
/// 1006 for a connection gone without a close handshake); any other code is `other`.
pub const CLOSE_CODES: [u16; 15] =
    [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1012, 1013, 4001, 4008, 4009, 4010];

/// Close codes that mean something went wrong (bad input, too large, internal): counted in
/// [`Counters::errors`].
const ERROR_CLOSE_CODES: [u16; 6] = [1002, 1003, 1007, 1008, 1009, 1011];

/// Connections closed, by close code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseCounts {
    counts: [u64; CLOSE_CODES.len() + 1],
}

impl CloseCounts {
    fn index(code: u16) -> usize {
        CLOSE_CODES.iter().position(|c| *c == code).unwrap_or(CLOSE_CODES.len())
    }

    /// Count one close with `code`.
    pub fn record(&mut self, code: u16) {
        self.counts[Self::index(code)] += 1;
    }

    /// Closes with `code` (every uncounted code together for a code not in [`CLOSE_CODES`]).
    pub fn get(&self, code: u16) -> u64 {
        self.counts[Self::index(code)]
    }

    /// `(code label, count)` for each counted code, then `("other", count)`.
    pub fn labelled(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        CLOSE_CODES
            .iter()
            .map(u16::to_string)
            .chain(std::iter::once("other".to_owned()))
            .zip(self.counts.iter().copied())
    }

    /// Add another set of counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }

    /// The closes since `earlier` (a copy taken before), as `code×count` for each code that
    /// happened, in code order: a line for a person (`1000×3, 4009×1`); empty when none.
    pub fn since(&self, earlier: &Self) -> String {
        let labels = CLOSE_CODES.iter().map(u16::to_string).chain(std::iter::once("other".to_owned()));
        let parts: Vec<String> = labels
            .zip(self.counts.iter().zip(earlier.counts))
            .filter(|(_, (now, then))| **now > *then)
            .map(|(label, (now, then))| format!("{label}×{}", now - then))
            .collect();
        parts.join(", ")
    }
}

/// Where a published message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The ingest socket.
    Ingest,
    /// `POST /api/publish` (and the other upstream paths) on the admin port.
    Http,
    /// A viewer's comment.
    Comment,
}

impl Source {
    /// Every source.
    pub const ALL: [Self; 3] = [Self::Ingest, Self::Http, Self::Comment];

    /// The `source` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Http => "http",
            Self::Comment => "comment",
        }
    }
}

/// Messages published (sequenced by a home), by source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishCounts {
    counts: [u64; Source::ALL.len()],
}

impl PublishCounts {
    /// Count `n` messages from `source`.
    pub fn add(&mut self, source: Source, n: u64) {
        self.counts[source as usize] += n;
    }

    /// Messages from `source`.
    pub fn get(&self, source: Source) -> u64 {
        self.counts[source as usize]
    }

    /// Add another set of counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }
}

/// An upstream command (ingest socket or admin port), for the `op` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestOp {
    /// `auth`.
    Auth,
    /// `hello`.
    Hello,
    /// `publish`.
    Publish,
    /// `state`.
    State,
    /// `kick`.
    Kick,
    /// `close_room`.
    CloseRoom,
    /// `delete_comment`.
    DeleteComment,
    /// A line that named no known op (or could not be decoded far enough to tell).
    Unknown,
}

impl IngestOp {
    /// Every op.
    pub const ALL: [Self; 8] = [
        Self::Auth,
        Self::Hello,
        Self::Publish,
        Self::State,
        Self::Kick,
        Self::CloseRoom,
        Self::DeleteComment,
        Self::Unknown,
    ];

    /// The `op` label value (the op's name on the wire).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Hello => "hello",
            Self::Publish => "publish",
            Self::State => "state",
            Self::Kick => "kick",
            Self::CloseRoom => "close_room",
            Self::DeleteComment => "delete_comment",
            Self::Unknown => "unknown",
        }
    }
}

/// How an upstream command ended: `ok`, or the error code of its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Applied.
    Ok,
    /// Refused with this error code.
    Error(ErrorCode),
}

const OUTCOMES: usize = ErrorCode::ALL.len() + 1;

impl IngestOutcome {
    fn index(self) -> usize {
        match self {
            Self::Ok => 0,
            Self::Error(code) => 1 + code as usize,
        }
    }

    fn all() -> impl Iterator<Item = Self> {
        std::iter::once(Self::Ok).chain(ErrorCode::ALL.into_iter().map(Self::Error))
    }

    /// The `result` label value: `ok` or the error code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error(code) => code.as_str(),
        }
    }
}

/// Upstream commands by op and outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestCounts {
    counts: [[u64; OUTCOMES]; IngestOp::ALL.len()],
}

impl IngestCounts {
    /// Count one command.
    pub fn record(&mut self, op: IngestOp, outcome: IngestOutcome) {
        self.counts[op as usize][outcome.index()] += 1;
    }

    /// Commands of `op` that ended with `outcome`.
    pub fn get(&self, op: IngestOp, outcome: IngestOutcome) -> u64 {
        self.counts[op as usize][outcome.index()]
    }

    /// Commands of every op that ended with an error.
    pub fn errors(&self) -> u64 {
        self.counts.iter().map(|row| row[1..].iter().sum::<u64>()).sum()
    }

    /// `(op, result, count)` for every combination that happened at least once.
    pub fn labelled(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        IngestOp::ALL.into_iter().flat_map(move |op| {
            IngestOutcome::all().filter_map(move |outcome| {
                let n = self.get(op, outcome);
                (n > 0).then(|| (op.as_str(), outcome.as_str(), n))
            })
        })
    }

    /// Add another set of counts.
    pub fn merge(&mut self, other: &Self) {
        for (row, other_row) in self.counts.iter_mut().zip(other.counts) {
            for (a, b) in row.iter_mut().zip(other_row) {
                *a += b;
            }
        }
    }
}

/// Upper bounds of the latency buckets, in microseconds (the last bucket, above the largest
/// bound, is `+Inf`). From 50 us, what one loopback write costs, to 5 s.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

/// A fixed-bucket latency histogram (an array of counts, so merging is adding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket: `counts[i]` holds values up to `LATENCY_BUCKETS_US[i]` and
    /// above the bound before it; the last slot holds values above every bound.
    counts: [u64; LATENCY_BUCKETS_US.len() + 1],
    /// The sum of every observation, in microseconds.
    sum_us: u64,
}

impl LatencyHistogram {
    /// Count one observation of `us` microseconds.
    pub fn record(&mut self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|bound| *bound < us);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Observations per bucket (not cumulative), the last one being `+Inf`.
    pub fn buckets(&self) -> &[u64; LATENCY_BUCKETS_US.len() + 1] {
        &self.counts
    }

    /// Every observation together.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of every observation, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Add another histogram.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }
}

/// Everything one worker counts (see the module doc). Fields are public so the owner writes
/// them with `+=` where the event happens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Viewer connections open now, by listener (a gauge).
    pub connections_open: ByListener,
    /// Viewer connections accepted, by listener.
    pub connects: ByListener,
    /// Viewer connections closed, by close code.
    pub closes: CloseCounts,
    /// Rooms homed here now (a gauge).
    pub rooms: u64,
    /// Messages sequenced by the rooms homed here, by source.
    pub published: PublishCounts,
    /// Messages put on a connection's outbound queue (one per member per message).
    pub deliveries: u64,
    /// Write (or writev / TLS write) calls on viewer sockets: deliveries per write shows
    /// what batching saves.
    pub socket_writes: u64,
    /// Bytes written to viewer sockets.
    pub bytes_out: u64,
    /// Connections closed as slow consumers (4009).
    pub slow_consumer_closes: u64,
    /// Comments accepted and refused (by the rooms homed here).
    pub comments: CommentCounts,
    /// Upstream commands by op and outcome.
    pub ingest: IngestCounts,
    /// Presence ticks run.
    pub presence_ticks: u64,
    /// Distinct viewers summed over the rooms homed here (a gauge).
    pub online: u64,
    /// Viewers that left the rooms homed here, by reason.
    pub leaves: LeaveCounts,
    /// Time from a message's sequencing at its home to the first socket write that carried it
    /// to a member, in microseconds.
    pub publish_to_write: LatencyHistogram,
    /// Upgrades refused because the token was missing, invalid or expired (HTTP 401).
    pub auth_refusals: u64,
    /// Client messages refused by a rate limit (`rate_limited`, or the 4008 close).
    pub rate_limited: u64,
}

impl Counters {
    /// Errors: connections closed for bad input or an internal error (1002, 1003, 1007,
    /// 1008, 1009, 1011) plus upstream commands refused. Refused comments and slow consumers
    /// are counted on their own, not here.
    pub fn errors(&self) -> u64 {
        ERROR_CLOSE_CODES.iter().map(|c| self.closes.get(*c)).sum::<u64>() + self.ingest.errors()
    }

    /// Add another worker's counters.
    pub fn merge(&mut self, other: &Self) {
        self.connections_open.merge(&other.connections_open);
        self.connects.merge(&other.connects);
        self.closes.merge(&other.closes);
        self.rooms += other.rooms;
        self.published.merge(&other.published);
        self.deliveries += other.deliveries;
        self.socket_writes += other.socket_writes;
        self.bytes_out += other.bytes_out;
        self.slow_consumer_closes += other.slow_consumer_closes;
        self.comments.merge(&other.comments);
        self.ingest.merge(&other.ingest);
        self.presence_ticks += other.presence_ticks;
        self.online += other.online;
        self.leaves.merge(&other.leaves);
        self.publish_to_write.merge(&other.publish_to_write);
        self.auth_refusals += other.auth_refusals;
        self.rate_limited += other.rate_limited;
    }
}

/// What only makes sense per worker: how busy its loop is, how much mail waits for it, and how
/// often it lost its core while writing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    /// The worker.
    pub worker: WorkerId,
    /// Time its loop spent handling events (not waiting in poll), in microseconds, since
    /// start.
    pub busy_us: u64,
    /// Mail waiting in its mailbox when it answered.
    pub mailbox_depth: u64,
    /// Chunks of socket writes during which it lost its core, since start
    /// ([`crate::runtime::stall`]).
    pub write_stalls: u64,
    /// Their summed length, microseconds.
    pub write_stalled_us: u64,
}

impl WorkerLoad {
    /// Add another reading of the same worker (e.g. two parts of one loop).
    pub fn merge(&mut self, other: &Self) {
        self.busy_us += other.busy_us;
        self.mailbox_depth += other.mailbox_depth;
        self.write_stalls += other.write_stalls;
        self.write_stalled_us += other.write_stalled_us;
    }
}

/// What a scrape collects: every worker's counters added up, and each worker's load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Sum of every worker's [`Counters`].
    pub totals: Counters,
    /// One entry per worker, by worker id.
    pub workers: Vec<WorkerLoad>,
    /// The durable sinks and their spool, when the process runs them (read from the sinks'
    /// own counters, not the workers').
    pub sinks: Option<crate::sink::SinkMetrics>,
    /// The cluster broker, when the node is part of a cluster.
    pub cluster: Option<crate::broker::ClusterReport>,
}

impl Metrics {
    /// One worker's answer to a scrape.
    pub fn of_worker(counters: Counters, load: WorkerLoad) -> Self {
        Self { totals: counters, workers: vec![load], sinks: None, cluster: None }
    }

    /// Add another answer: totals are summed, loads of the same worker merged, the others
    /// kept in worker order.
    pub fn merge(&mut self, other: &Self) {
        self.totals.merge(&other.totals);
        if self.sinks.is_none() {
            self.sinks.clone_from(&other.sinks);
        }
        if self.cluster.is_none() {
            self.cluster.clone_from(&other.cluster);
        }
        for load in &other.workers {
            match self.workers.binary_search_by_key(&load.worker, |l| l.worker) {
                Ok(i) => self.workers[i].merge(load),
                Err(i) => self.workers.insert(i, *load),
            }
        }
    }
}

/// Events per second over a sliding window of whole seconds, for a room's comment rate.
///
/// The owner calls [`RateMeter::record`] per event and [`RateMeter::rate`] when asked, both
/// with its `now_ms`. Memory is fixed (one count per second of the window); seconds without
/// events cost nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateMeter {
    /// Events per second, indexed by `second % RATE_WINDOW_S`.
    slots: [u32; RATE_WINDOW_S as usize],
    /// The second (ms / 1000) each slot counts; a slot of an older second is stale.
    seconds: [u64; RATE_WINDOW_S as usize],
}

/// The window of [`RateMeter`], in seconds.
pub const RATE_WINDOW_S: u64 = 10;

impl RateMeter {
    /// Count `n` events at `now_ms`.
    pub fn record(&mut self, now_ms: u64, n: u32) {
        let second = now_ms / 1000;
        let i = (second % RATE_WINDOW_S) as usize;
        if self.seconds[i] != second {
            self.seconds[i] = second;
            self.slots[i] = 0;
        }
        self.slots[i] = self.slots[i].saturating_add(n);
    }

    /// Events per second over the last [`RATE_WINDOW_S`] whole seconds before `now_ms` (the
    /// current, unfinished second is left out so the rate does not dip at each second's
    /// start).
    pub fn rate(&self, now_ms: u64) -> f64 {
        let current = now_ms / 1000;
        let events: u64 = self
            .seconds
            .iter()
            .zip(self.slots)
            .filter(|(second, _)| **second < current && current - **second <= RATE_WINDOW_S)
            .map(|(_, n)| u64::from(n))
            .sum();
        events as f64 / RATE_WINDOW_S as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::LeaveReason;

    #[test]
    fn closes_count_known_codes_and_other() {
        let mut c = CloseCounts::default();
        for code in [1000, 4009, 4009, 3000, 3001] {
            c.record(code);
        }
        assert_eq!((c.get(1000), c.get(4009), c.get(1001), c.get(3000)), (1, 2, 0, 2));
        let mut later = c;
        later.record(1006);
        later.record(1000);
        assert_eq!(later.since(&c), "1000×1, 1006×1");
        assert_eq!(c.since(&c), "");
        let labelled: Vec<_> = c.labelled().filter(|(_, n)| *n > 0).collect();
        assert_eq!(labelled, [("1000".to_owned(), 1), ("4009".to_owned(), 2), ("other".to_owned(), 2)]);
    }

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let mut h = LatencyHistogram::default();
        for us in [0, 50, 51, 100, 5_000_001, 7] {
            h.record(us);
        }
        let b = h.buckets();
        assert_eq!((b[0], b[1], b[LATENCY_BUCKETS_US.len()]), (3, 2, 1));
        assert_eq!((h.count(), h.sum_us()), (6, 5_000_209));
        let mut m = h;
        m.merge(&h);
        assert_eq!((m.count(), m.buckets()[1]), (12, 4));
    }

    #[test]
    fn merged_counters_are_the_sum_of_the_workers() {
        let mut a = Counters::default();
        *a.connections_open.slot(ListenerKind::Ws) += 3;
        a.closes.record(1008);
        a.ingest.record(IngestOp::Publish, IngestOutcome::Ok);
        a.ingest.record(IngestOp::Kick, IngestOutcome::Error(ErrorCode::Unauthorized));
        a.published.add(Source::Http, 2);
        a.comments.rejected.record(ErrorCode::RateLimited);
        a.leaves.record(LeaveReason::Kicked);
        a.deliveries = 10;
        let mut b = a;
        *b.connections_open.slot(ListenerKind::Wss) += 1;
        b.publish_to_write.record(120);
        let mut total = Metrics::of_worker(
            a,
            WorkerLoad { worker: WorkerId(1), busy_us: 5, mailbox_depth: 2, ..WorkerLoad::default() },
        );
        total.merge(&Metrics::of_worker(
            b,
            WorkerLoad { worker: WorkerId(0), busy_us: 7, mailbox_depth: 0, ..WorkerLoad::default() },
        ));
        let t = &total.totals;
        assert_eq!((t.connections_open.ws, t.connections_open.wss, t.connections_open.sum()), (6, 1, 7));
        assert_eq!((t.deliveries, t.published.get(Source::Http), t.published.get(Source::Ingest)), (20, 4, 0));
        assert_eq!(t.ingest.get(IngestOp::Kick, IngestOutcome::Error(ErrorCode::Unauthorized)), 2);
        assert_eq!(t.errors(), 2 + 2, "two 1008 closes and two refused commands");
        assert_eq!(
            (t.comments.rejected.get(ErrorCode::RateLimited), t.leaves.kicked, t.publish_to_write.count()),
            (2, 2, 1)
        );
        assert_eq!(total.workers.iter().map(|w| w.worker.0).collect::<Vec<_>>(), [0, 1]);
        let labelled: Vec<_> = t.ingest.labelled().collect();
        assert_eq!(labelled, [("publish", "ok", 2), ("kick", "unauthorized", 2)]);
    }

    #[test]
    fn rate_meter_counts_whole_seconds_of_the_window() {
        let mut m = RateMeter::default();
        m.record(1_000, 5);
        m.record(1_999, 5);
        m.record(2_500, 4);
        assert_eq!(m.rate(2_600), 1.0, "the unfinished second is left out");
        assert_eq!(m.rate(3_000), 1.4);
        assert_eq!(m.rate(11_999), 1.4);
        assert_eq!(m.rate(12_000), 0.4, "second 1 left the window");
        m.record(21_000, 10);
        assert_eq!(m.rate(22_000), 1.0, "a reused slot forgets its old second");
    }
}
