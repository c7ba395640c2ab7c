//! One run over several loadgen processes (`--procs N`): past the per-process open-files limit
//! (20,000 here), connections are spread over child processes whose counts and histograms the
//! parent merges, so the report is the same as from one process.
//!
//! The parent re-executes its own binary N times with `--child I/N`; child I opens connections
//! `i` with `i % N == I`. The parent keeps everything that has one owner: the ingest publisher
//! and its timetable, the progress line, the server's CPU and RSS, the report files.
//!
//! Lines between them, one JSON object each:
//! - child -> parent (its stdout): [`ChildLine::Progress`] about every 200 ms, and one
//!   [`ChildLine::Totals`] after `stop`, its last line.
//! - parent -> child (its stdin): [`ParentLine::StartComments`] and [`ParentLine::Stop`] with
//!   each room's last seq (so a child counts lost events as a single process would). A child
//!   whose stdin closes (the parent died) stops too.
//!
//! Histograms cross as HdrHistogram's V2 serialization in hex, which merges without loss; an
//! IPC crate would add nothing over a pipe and serde_json here.

use crate::client::{latency_histogram, Shared, ThreadReport};
use crate::spread::{self, Spread};
use anyhow::{bail, Context};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a child reports its counters.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// How long children have to report after `stop` before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Declares [`Counters`] from one list of [`Shared`]'s counters, each with how two processes'
/// values combine (`sum`, or `max` for a worst case), so reading, merging and storing them
/// cannot drift apart.
macro_rules! counters {
    ($($field:ident: $combine:ident),* $(,)?) => {
        /// A snapshot of [`Shared`]'s counters: what a child reports and the parent sums.
        #[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counters {
            $(
                #[doc = concat!("See [`Shared::", stringify!($field), "`].")]
                pub $field: u64,
            )*
        }

        impl Counters {
            /// Read the counters now.
            pub fn read(s: &Shared) -> Self {
                Self { $($field: s.$field.load(Ordering::Relaxed)),* }
            }

            /// Add another process's counters.
            pub fn add(&mut self, o: &Self) {
                $(self.$field = $combine(self.$field, o.$field);)*
            }

            /// Make `s` show these counters (the parent's view of all children).
            pub fn store(&self, s: &Shared) {
                $(s.$field.store(self.$field, Ordering::Relaxed);)*
            }
        }
    };
}

fn sum(a: u64, b: u64) -> u64 {
    a + b
}

fn max(a: u64, b: u64) -> u64 {
    a.max(b)
}

counters! {
    connected: sum,
    joined: sum,
    failed: sum,
    closed: sum,
    deliveries: sum,
    errors: sum,
    acks: sum,
    comments: sum,
    send_lag_ns: max,
    late_comments: sum,
    reconnects: sum,
    recovered: sum,
    recovery_failed: sum,
    presence: sum,
}

/// Everything a run's client threads measured, merged: from threads within a process, and
/// from processes within a run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Totals {
    /// Delivery latency (us).
    #[serde(with = "hex_histogram")]
    pub latency: Histogram<u64>,
    /// Comment -> ack latency (us).
    #[serde(with = "hex_histogram")]
    pub ack_latency: Histogram<u64>,
    /// Connect start -> TCP connected (us).
    #[serde(with = "hex_histogram")]
    pub connect_latency: Histogram<u64>,
    /// Connect start -> `101` read (us).
    #[serde(with = "hex_histogram")]
    pub upgrade_latency: Histogram<u64>,
    /// Time from start to the last connection upgraded (the longest of all threads).
    pub connect_time: Duration,
    /// Comments sent.
    pub comments_sent: u64,
    /// Close codes received from the server.
    pub close_codes: HashMap<u16, u64>,
    /// Events received, each seq once per connection.
    pub delivered: u64,
    /// Events received more than once.
    pub duplicated: u64,
    /// Events received after a later one.
    pub reordered: u64,
    /// Events never received (up to each room's last published seq).
    pub lost: u64,
    /// Processes whose measurements these are.
    pub processes: u64,
    /// The same per endpoint (`--url`), in their order; empty with one endpoint.
    #[serde(default)]
    pub by_endpoint: Vec<EndpointTotals>,
    /// Each message's first and last delivery, by its stamp (ns).
    #[serde(default)]
    pub spread: BTreeMap<u64, Spread>,
}

/// What the viewers of one endpoint measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct EndpointTotals {
    /// Delivery latency (us).
    #[serde(with = "hex_histogram")]
    pub latency: Histogram<u64>,
    /// Events received, each seq once per connection.
    pub delivered: u64,
    /// Events never received (up to each room's last published seq).
    pub lost: u64,
}

impl Default for EndpointTotals {
    fn default() -> Self {
        Self { latency: latency_histogram(), delivered: 0, lost: 0 }
    }
}

impl EndpointTotals {
    /// Add another's.
    fn add(&mut self, o: &Self) -> anyhow::Result<()> {
        self.latency.add(&o.latency)?;
        self.delivered += o.delivered;
        self.lost += o.lost;
        Ok(())
    }
}

/// Endpoint `index` of `by`, grown to hold it.
fn endpoint_entry(by: &mut Vec<EndpointTotals>, index: usize) -> &mut EndpointTotals {
    if by.len() <= index {
        by.resize_with(index + 1, EndpointTotals::default);
    }
    &mut by[index]
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            latency: latency_histogram(),
            ack_latency: latency_histogram(),
            connect_latency: latency_histogram(),
            upgrade_latency: latency_histogram(),
            connect_time: Duration::ZERO,
            comments_sent: 0,
            close_codes: HashMap::new(),
            delivered: 0,
            duplicated: 0,
            reordered: 0,
            lost: 0,
            processes: 0,
            by_endpoint: Vec::new(),
            spread: BTreeMap::new(),
        }
    }
}

impl Totals {
    /// Add one client thread's report. `last_seq[r]` is the last seq published in room `r`
    /// (rooms are named `<prefix>-<r>`); empty when nothing was published.
    pub fn add_thread(&mut self, r: ThreadReport, last_seq: &[u64]) -> anyhow::Result<()> {
        self.latency.add(&r.latency)?;
        self.ack_latency.add(&r.ack_latency)?;
        self.connect_latency.add(&r.connect_latency)?;
        self.upgrade_latency.add(&r.upgrade_latency)?;
        self.connect_time = self.connect_time.max(r.connect_time);
        self.comments_sent += r.comments_sent;
        for (code, n) in r.close_codes {
            *self.close_codes.entry(code).or_default() += n;
        }
        let per_endpoint = !r.latency_by_endpoint.is_empty();
        for (index, h) in r.latency_by_endpoint.iter().enumerate() {
            endpoint_entry(&mut self.by_endpoint, index).latency.add(h)?;
        }
        spread::merge_into(&mut self.spread, &r.spread);
        for (room, endpoint, check) in r.streams {
            self.delivered += check.received;
            self.duplicated += check.duplicated;
            self.reordered += check.reordered;
            let index = room.rsplit('-').next().and_then(|i| i.parse::<usize>().ok()).unwrap_or(0);
            let lost = last_seq.get(index).map_or(0, |&upto| check.lost(upto));
            self.lost += lost;
            if per_endpoint {
                let e = endpoint_entry(&mut self.by_endpoint, endpoint);
                e.delivered += check.received;
                e.lost += lost;
            }
        }
        Ok(())
    }

    /// Add another process's totals.
    pub fn merge(&mut self, o: Self) -> anyhow::Result<()> {
        self.latency.add(&o.latency)?;
        self.ack_latency.add(&o.ack_latency)?;
        self.connect_latency.add(&o.connect_latency)?;
        self.upgrade_latency.add(&o.upgrade_latency)?;
        self.connect_time = self.connect_time.max(o.connect_time);
        self.comments_sent += o.comments_sent;
        for (code, n) in o.close_codes {
            *self.close_codes.entry(code).or_default() += n;
        }
        self.delivered += o.delivered;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.lost += o.lost;
        self.processes += o.processes;
        for (index, e) in o.by_endpoint.iter().enumerate() {
            endpoint_entry(&mut self.by_endpoint, index).add(e)?;
        }
        spread::merge_into(&mut self.spread, &o.spread);
        Ok(())
    }
}

/// A child's line to the parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildLine {
    /// Counters so far, and the latency histogram so far for the progress line.
    Progress {
        /// The child's counters.
        counters: Counters,
        /// Its latency so far (absent before the first delivery).
        #[serde(with = "hex_histogram_opt")]
        latency: Option<Histogram<u64>>,
    },
    /// The child's final measurements; its last line.
    Totals(Box<Totals>),
}

/// The parent's line to a child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentLine {
    /// Every connection of every child has joined: start commenting.
    StartComments,
    /// Churn: publishing is over, stop disconnecting.
    Quiesce,
    /// End the run and report; `last_seq[r]` is room r's last published seq.
    Stop {
        /// Last seq per room.
        last_seq: Vec<u64>,
    },
}

/// Which child this process is: `I/N` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildIndex {
    /// This child's index, 0-based.
    pub index: usize,
    /// Number of children.
    pub count: usize,
}

impl std::str::FromStr for ChildIndex {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("expected I/N")?;
        let index = i.parse().map_err(|_| format!("bad child index {i:?}"))?;
        let count: usize = n.parse().map_err(|_| format!("bad child count {n:?}"))?;
        if index >= count {
            return Err(format!("child index {index} is not below {count}"));
        }
        Ok(Self { index, count })
    }
}

/// Write one line to the parent (stdout), flushed at once.
pub fn send_to_parent(line: &ChildLine) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Latest news from every child, kept by the parent's reader threads.
#[derive(Default)]
struct Board {
    counters: Vec<Counters>,
    latency: Vec<Option<Histogram<u64>>>,
    totals: Vec<Option<Totals>>,
    /// The child's stdout closed (it exited).
    ended: Vec<bool>,
}

/// The parent's handle on its children.
pub struct Children {
    shared: Arc<Shared>,
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    readers: Vec<JoinHandle<()>>,
    /// Each reader thread sends its child's index here when the child's output ends.
    ended_rx: mpsc::Receiver<usize>,
    board: Arc<Mutex<Board>>,
}

impl Children {
    /// Start `count` children: `exe args... --child I/count`. Their counters show in
    /// [`Children::shared`] as they arrive, summed.
    pub fn spawn(exe: &Path, args: &[OsString], count: usize) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let board = Arc::new(Mutex::new(Board {
            counters: vec![Counters::default(); count],
            latency: (0..count).map(|_| None).collect(),
            totals: (0..count).map(|_| None).collect(),
            ended: vec![false; count],
        }));
        let (ended_tx, ended_rx) = mpsc::channel();
        let mut me = Self { shared, children: Vec::new(), stdins: Vec::new(), readers: Vec::new(), ended_rx, board };
        for index in 0..count {
            let mut child = Command::new(exe)
                .args(args)
                .arg("--child")
                .arg(format!("{index}/{count}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting loadgen child {index} ({})", exe.display()))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                bail!("loadgen child {index} has no pipes");
            };
            let (shared, board, ended) = (Arc::clone(&me.shared), Arc::clone(&me.board), ended_tx.clone());
            me.readers.push(std::thread::spawn(move || {
                read_child(index, stdout, &shared, &board);
                let _ = ended.send(index);
            }));
            me.stdins.push(stdin);
            me.children.push(child);
        }
        Ok(me)
    }

    /// The children's counters, summed.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The children's process ids (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The first child that exited before it was told to stop (it printed its error).
    pub fn ended_early(&self) -> Option<usize> {
        let board = self.board.lock().ok()?;
        board.ended.iter().position(|ended| *ended)
    }

    /// Tell every child to start commenting.
    pub fn start_comments(&mut self) -> anyhow::Result<()> {
        self.tell_all(&ParentLine::StartComments)
    }

    /// Tell every child to stop churning.
    pub fn quiesce(&mut self) -> anyhow::Result<()> {
        self.tell_all(&ParentLine::Quiesce)
    }

    fn tell_all(&mut self, line: &ParentLine) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        for (index, stdin) in self.stdins.iter_mut().enumerate() {
            stdin
                .write_all(text.as_bytes())
                .and_then(|()| stdin.flush())
                .with_context(|| format!("loadgen child {index} is gone"))?;
        }
        Ok(())
    }

    /// Stop every child and merge what they measured. Fails, naming the child, when one
    /// ended without reporting (its own error is on stderr).
    pub fn finish(mut self, last_seq: &[u64]) -> anyhow::Result<Totals> {
        let told = self.tell_all(&ParentLine::Stop { last_seq: last_seq.to_vec() });
        self.stdins.clear();
        // A child that does not report in time is killed, so the run still ends.
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut ended = 0;
        while ended < self.children.len() {
            match self.ended_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => ended += 1,
                Err(_) => {
                    eprintln!("loadgen: children did not report within {STOP_TIMEOUT:?} of stop; killing them");
                    for child in &mut self.children {
                        let _ = child.kill();
                    }
                    break;
                }
            }
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let mut statuses = Vec::new();
        for child in &mut self.children {
            statuses.push(child.wait()?);
        }
        let mut board = self.board.lock().map_err(|_| anyhow::anyhow!("child board poisoned"))?;
        let mut all = Totals::default();
        for (index, totals) in board.totals.iter_mut().enumerate() {
            match totals.take() {
                Some(t) => all.merge(t)?,
                None => bail!("loadgen child {index} ended ({}) without a report", statuses[index]),
            }
        }
        told?;
        Ok(all)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A parent's reader thread for one child: keeps the board and the summed counters current.
fn read_child(index: usize, stdout: std::process::ChildStdout, shared: &Shared, board: &Mutex<Board>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let parsed: ChildLine = match serde_json::from_str(&line) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("loadgen child {index}: unreadable line ({e}): {line}");
                continue;
            }
        };
        let Ok(mut board) = board.lock() else { return };
        match parsed {
            ChildLine::Progress { counters, latency } => {
                board.counters[index] = counters;
                board.latency[index] = latency;
                let mut sum = Counters::default();
                board.counters.iter().for_each(|c| sum.add(c));
                sum.store(shared);
                let mut merged: Option<Histogram<u64>> = None;
                for h in board.latency.iter().flatten() {
                    match &mut merged {
                        Some(m) => {
                            let _ = m.add(h);
                        }
                        None => merged = Some(h.clone()),
                    }
                }
                if let Ok(mut progress) = shared.progress.lock() {
                    *progress = merged;
                }
            }
            ChildLine::Totals(totals) => board.totals[index] = Some(*totals),
        }
    }
    if let Ok(mut board) = board.lock() {
        board.ended[index] = true;
    }
}

/// Hex text of a histogram's V2 serialization.
fn histogram_to_hex(h: &Histogram<u64>) -> Result<String, String> {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).map_err(|e| format!("{e:?}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn histogram_from_hex(text: &str) -> Result<Histogram<u64>, String> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return Err("odd or non-ASCII hex".into());
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("{e:?}"))
}

mod hex_histogram {
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::histogram_to_hex(h).map_err(serde::ser::Error::custom)?)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        super::histogram_from_hex(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod hex_histogram_opt {
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(h: &Option<Histogram<u64>>, s: S) -> Result<S::Ok, S::Error> {
        match h {
            Some(h) => s.serialize_some(&super::histogram_to_hex(h).map_err(serde::ser::Error::custom)?),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Histogram<u64>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::histogram_from_hex(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::SeqCheck;

    #[test]
    fn totals_cross_a_line_and_merge_exactly() {
        let mut a = Totals::default();
        let mut b = Totals::default();
        for v in [120u64, 450, 9_000, 1_000_000] {
            a.latency.record(v).expect("in range");
        }
        b.latency.record_n(77, 5).expect("in range");
        b.ack_latency.record(3_000).expect("in range");
        a.delivered = 4;
        b.delivered = 5;
        b.lost = 2;
        a.close_codes.insert(1001, 3);
        b.close_codes.insert(1001, 1);
        b.close_codes.insert(4010, 1);
        let line = serde_json::to_string(&ChildLine::Totals(Box::new(b))).expect("serializes");
        let ChildLine::Totals(b) = serde_json::from_str(&line).expect("parses") else { panic!("wrong line: {line}") };
        a.merge(*b).expect("same bounds");
        assert_eq!(a.latency.len(), 9);
        assert_eq!(a.latency.count_at(77), 5);
        assert_eq!(a.latency.max(), a.latency.highest_equivalent(1_000_000));
        assert_eq!(a.ack_latency.len(), 1);
        assert_eq!((a.delivered, a.lost), (9, 2));
        assert_eq!(a.close_codes, HashMap::from([(1001, 4), (4010, 1)]));
    }

    #[test]
    fn per_endpoint_totals_cross_a_line_and_merge_by_index() {
        // A thread of two endpoints: a stream on each, room 0 published up to seq 4.
        let mut on_both = latency_histogram();
        on_both.record(100).expect("in range");
        let mut checks = [SeqCheck::starting_after(0), SeqCheck::starting_after(0)];
        [1, 2, 3, 4].iter().for_each(|&s| {
            checks[0].observe(s);
        });
        checks[1].observe(1);
        let [first, second] = checks;
        let report = ThreadReport {
            latency: latency_histogram(),
            latency_by_endpoint: vec![on_both.clone(), on_both],
            ack_latency: latency_histogram(),
            connect_latency: latency_histogram(),
            upgrade_latency: latency_histogram(),
            streams: vec![("lg-0".into(), 0, first), ("lg-0".into(), 1, second)],
            close_codes: HashMap::new(),
            connect_time: Duration::ZERO,
            comments_sent: 0,
            spread: HashMap::new(),
        };
        let mut a = Totals::default();
        a.add_thread(report, &[4]).expect("adds");
        assert_eq!((a.delivered, a.lost), (5, 3));
        let by: Vec<_> = a.by_endpoint.iter().map(|e| (e.delivered, e.lost, e.latency.len())).collect();
        assert_eq!(by, [(4, 0, 1), (1, 3, 1)]);
        // Another process saw only endpoint 2 (of three).
        let mut b = Totals { by_endpoint: (0..3).map(|_| EndpointTotals::default()).collect(), ..Totals::default() };
        b.by_endpoint[2].delivered = 7;
        let line = serde_json::to_string(&ChildLine::Totals(Box::new(b))).expect("serializes");
        let ChildLine::Totals(b) = serde_json::from_str(&line).expect("parses") else { panic!("wrong line: {line}") };
        a.merge(*b).expect("same bounds");
        let by: Vec<_> = a.by_endpoint.iter().map(|e| (e.delivered, e.lost)).collect();
        assert_eq!(by, [(4, 0), (1, 3), (7, 0)]);
        // One endpoint: threads report no per-endpoint histograms and nothing is kept.
        let mut single = Totals::default();
        let mut check = SeqCheck::starting_after(0);
        check.observe(1);
        let report = ThreadReport {
            latency: latency_histogram(),
            latency_by_endpoint: Vec::new(),
            ack_latency: latency_histogram(),
            connect_latency: latency_histogram(),
            upgrade_latency: latency_histogram(),
            streams: vec![("lg-0".into(), 0, check)],
            close_codes: HashMap::new(),
            connect_time: Duration::ZERO,
            comments_sent: 0,
            spread: HashMap::new(),
        };
        single.add_thread(report, &[1]).expect("adds");
        assert!(single.by_endpoint.is_empty() && single.delivered == 1);
    }

    #[test]
    fn counters_sum_and_keep_the_largest_lag() {
        let mut sum = Counters { joined: 3, send_lag_ns: 50, ..Counters::default() };
        sum.add(&Counters { joined: 4, deliveries: 10, send_lag_ns: 20, ..Counters::default() });
        assert_eq!((sum.joined, sum.deliveries, sum.send_lag_ns), (7, 10, 50));
        let shared = Shared::default();
        sum.store(&shared);
        assert_eq!(Counters::read(&shared), sum);
    }

    #[test]
    fn progress_without_latency_round_trips() {
        let line = ChildLine::Progress { counters: Counters::default(), latency: None };
        let text = serde_json::to_string(&line).expect("serializes");
        assert!(matches!(serde_json::from_str(&text).expect("parses"), ChildLine::Progress { latency: None, .. }));
    }

    #[test]
    fn child_index_is_checked() {
        assert_eq!("1/3".parse::<ChildIndex>(), Ok(ChildIndex { index: 1, count: 3 }));
        assert!("3/3".parse::<ChildIndex>().is_err());
        assert!("x".parse::<ChildIndex>().is_err());
        assert!(histogram_from_hex("abc").is_err());
    }
}
