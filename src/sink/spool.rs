//! The spool: local disk that holds, in order, the records one sink could not take yet, so a
//! sink that is down costs disk, not comments.
//!
//! Each sink has its own spool directory (`<spool dir>/<sink>/`), a [`SegmentLog`] of the same
//! JSON lines the sinks write plus a `cursor` file (segment and byte offset of the first line
//! not yet delivered), replaced atomically after each delivered batch. Replay starts at the
//! cursor, so after a crash at most the last delivered batch is sent again (delivery is at least
//! once; consumers dedupe by id). All spools share one [`SpoolBudget`] of
//! `sink.spool.max_bytes` undelivered bytes: an append that does not fit is refused (unless
//! every spool is empty: then one append is taken whatever its size, so none can wait forever;
//! the sink threads append at most one batch of their sink's size at a time), the caller keeps
//! its records (never reported durable), and the handles refuse new comments.
//!
//! Records a sink rejected for good (an error no retry can fix) are moved to
//! `<spool dir>/<sink>/rejected.jsonl` with an error log, for an operator to inspect or
//! replay: they leave the pipeline but are never dropped. This module must never talk to a
//! sink or decide when to retry.

use crate::sink::record::EncodedRecord;
use crate::sink::segment::{self, Recovery, SegmentLog};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const PREFIX: &str = "spool";
const CURSOR_FILE: &str = "cursor";
/// Name of the file that keeps records a sink rejected for good.
pub const REJECTED_FILE: &str = "rejected.jsonl";
/// Size at which a spool starts a new segment (consumed segments are deleted whole).
const SPOOL_SEGMENT_BYTES: u64 = 16 << 20;

/// Undelivered bytes allowed over all spools (`sink.spool.max_bytes`), shared by every sink
/// thread and read by the handles.
#[derive(Debug)]
pub struct SpoolBudget {
    max_bytes: u64,
    used_bytes: AtomicU64,
    records: AtomicU64,
    waiting: AtomicUsize,
}

impl SpoolBudget {
    /// A budget of `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes, used_bytes: AtomicU64::new(0), records: AtomicU64::new(0), waiting: AtomicUsize::new(0) }
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                // An empty spool takes any one batch, so a batch larger than the limit cannot
                // wait forever: the limit is exceeded by at most one batch.
                used.checked_add(bytes).filter(|total| used == 0 || *total <= self.max_bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64, records: u64) {
        self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.records.fetch_sub(records, Ordering::AcqRel);
    }

    /// Undelivered bytes in all spools.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }

    /// Undelivered records in all spools.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether new records can be taken: under the limit and no sink waiting for room.
    pub fn has_room(&self) -> bool {
        self.used_bytes() < self.max_bytes && self.waiting.load(Ordering::Acquire) == 0
    }

    /// A sink thread holds records the spool could not take (or no longer does).
    pub fn set_waiting(&self, waiting: bool, was: &mut bool) {
        if waiting != *was {
            if waiting {
                self.waiting.fetch_add(1, Ordering::AcqRel);
            } else {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            *was = waiting;
        }
    }
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// `sink.spool.max_bytes` would be exceeded: keep the records and try again later.
    #[error("spool full ({used} of {max} bytes)")]
    Full {
        /// Bytes in use.
        used: u64,
        /// The limit.
        max: u64,
    },
    /// The disk failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The spool directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Where replay stands: the first byte not yet delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    segment: u64,
    offset: u64,
}

/// Lines read from the spool's head, not yet consumed.
#[derive(Debug)]
pub struct Peeked {
    /// The records, in order.
    pub records: Vec<EncodedRecord>,
    /// Lines that are not records (disk corruption); consuming moves them to the rejected file.
    pub bad_lines: Vec<String>,
    end: Cursor,
    bytes: u64,
    lines: u64,
}

/// One sink's spool; see the module doc.
#[derive(Debug)]
pub struct Spool {
    log: SegmentLog,
    cursor: Cursor,
    bytes: u64,
    records: u64,
    head_ts: Option<u64>,
    budget: std::sync::Arc<SpoolBudget>,
}

fn read_cursor(dir: &Path) -> io::Result<Option<Cursor>> {
    match fs::read_to_string(dir.join(CURSOR_FILE)) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Cursor { segment, offset })),
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad spool cursor {text:?}"))),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_cursor(dir: &Path, cursor: Cursor) -> io::Result<()> {
    let tmp = dir.join(".cursor.tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{} {}", cursor.segment, cursor.offset)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(CURSOR_FILE))?;
    segment::sync_dir(dir)
}

fn encode_lines(records: &[&EncodedRecord]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(records.iter().map(|r| r.line.len() + 1).sum());
    for r in records {
        bytes.extend_from_slice(r.line.as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

impl Spool {
    /// Open `dir` (created if needed), repair a torn tail, count what is left to replay and
    /// charge it to `budget` (which may then be over its limit until replay catches up).
    pub fn open(dir: &Path, budget: std::sync::Arc<SpoolBudget>) -> Result<(Self, Recovery), SpoolError> {
        let err = |source| SpoolError::Io { path: dir.to_owned(), source };
        let (log, recovery) = SegmentLog::open(dir, PREFIX, None, SPOOL_SEGMENT_BYTES).map_err(err)?;
        let segments = log.segments().map_err(err)?;
        let first = segments.first().copied().unwrap_or(1);
        let mut cursor = read_cursor(dir).map_err(err)?.unwrap_or(Cursor { segment: first, offset: 0 });
        if cursor.segment < first {
            cursor = Cursor { segment: first, offset: 0 };
        }
        let (mut bytes, mut records) = (0, 0);
        for &n in segments.iter().filter(|&&n| n >= cursor.segment) {
            let text = fs::read(log.path_of(n)).map_err(err)?;
            let from = if n == cursor.segment { (cursor.offset as usize).min(text.len()) } else { 0 };
            bytes += (text.len() - from) as u64;
            records += memchr::memchr_iter(b'\n', &text[from..]).count() as u64;
        }
        budget.used_bytes.fetch_add(bytes, Ordering::AcqRel);
        budget.records.fetch_add(records, Ordering::AcqRel);
        let mut spool = Self { log, cursor, bytes, records, head_ts: None, budget };
        if records > 0 {
            spool.head_ts = spool.peek(1).map_err(err)?.records.first().map(|r| r.ts_ms);
        }
        Ok((spool, recovery))
    }

    /// Whether every spooled record was delivered.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Undelivered records.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Undelivered bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `ts` of the oldest undelivered record.
    pub fn head_ts(&self) -> Option<u64> {
        self.head_ts
    }

    /// Append `records` after everything spooled so far and fsync them.
    pub fn append(&mut self, records: &[&EncodedRecord]) -> Result<(), SpoolError> {
        if records.is_empty() {
            return Ok(());
        }
        let bytes = encode_lines(records);
        let len = bytes.len() as u64;
        if !self.budget.try_reserve(len) {
            return Err(SpoolError::Full { used: self.budget.used_bytes(), max: self.budget.max_bytes });
        }
        if let Err(source) = self.log.append(&bytes) {
            self.budget.used_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(SpoolError::Io { path: self.log.dir().to_owned(), source });
        }
        self.budget.records.fetch_add(records.len() as u64, Ordering::AcqRel);
        if self.records == 0 {
            self.head_ts = records.first().map(|r| r.ts_ms);
        }
        self.bytes += len;
        self.records += records.len() as u64;
        Ok(())
    }

    /// Read up to `max` records from the head without consuming them.
    pub fn peek(&mut self, max: usize) -> io::Result<Peeked> {
        let mut peeked = Peeked { records: Vec::new(), bad_lines: Vec::new(), end: self.cursor, bytes: 0, lines: 0 };
        let (active, _) = self.log.position();
        let mut line = String::new();
        while (peeked.records.len() + peeked.bad_lines.len()) < max && peeked.lines < self.records {
            let mut file = File::open(self.log.path_of(peeked.end.segment))?;
            file.seek(SeekFrom::Start(peeked.end.offset))?;
            let mut reader = BufReader::new(file);
            while (peeked.records.len() + peeked.bad_lines.len()) < max {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                peeked.end.offset += n as u64;
                peeked.bytes += n as u64;
                peeked.lines += 1;
                let text = &line[..line.len() - 1];
                match EncodedRecord::from_line(text) {
                    Ok(record) => peeked.records.push(record),
                    Err(_) => peeked.bad_lines.push(text.to_owned()),
                }
            }
            if (peeked.records.len() + peeked.bad_lines.len()) >= max {
                break;
            }
            if peeked.end.segment >= active {
                break;
            }
            // The rest of this segment is read: go on in the next one.
            peeked.end = Cursor { segment: peeked.end.segment + 1, offset: 0 };
        }
        Ok(peeked)
    }

    /// Mark what `peeked` read as delivered: persist the cursor, free the budget, delete
    /// segments left behind, and start afresh once everything is delivered.
    pub fn consume(&mut self, peeked: Peeked) -> io::Result<()> {
        if !peeked.bad_lines.is_empty() {
            tracing::error!(
                spool = %self.log.dir().display(),
                lines = peeked.bad_lines.len(),
                "spool lines that are not records moved to {REJECTED_FILE}"
            );
            let mut bytes = Vec::new();
            for l in &peeked.bad_lines {
                bytes.extend_from_slice(l.as_bytes());
                bytes.push(b'\n');
            }
            self.append_rejected(&bytes)?;
        }
        let mut cursor = peeked.end;
        let (active, active_len) = self.log.position();
        let drained = peeked.lines >= self.records;
        if drained && cursor.segment == active && cursor.offset >= active_len {
            self.log.rotate()?;
            cursor = Cursor { segment: self.log.position().0, offset: 0 };
        }
        write_cursor(self.log.dir(), cursor)?;
        for n in self.log.segments()? {
            if n < cursor.segment {
                fs::remove_file(self.log.path_of(n))?;
            }
        }
        self.cursor = cursor;
        self.bytes -= peeked.bytes.min(self.bytes);
        self.records -= peeked.lines.min(self.records);
        self.budget.release(peeked.bytes, peeked.lines);
        self.head_ts = if self.records == 0 { None } else { self.peek(1)?.records.first().map(|r| r.ts_ms) };
        Ok(())
    }

    /// Keep records a sink refused for good in `rejected.jsonl` (fsynced).
    pub fn reject(&mut self, records: &[&EncodedRecord]) -> io::Result<()> {
        self.append_rejected(&encode_lines(records))
    }

    fn append_rejected(&mut self, bytes: &[u8]) -> io::Result<()> {
        let path = self.log.dir().join(REJECTED_FILE);
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        self.log.dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::record::SinkRecord;
    use std::sync::Arc;

    fn record(n: u64) -> EncodedRecord {
        SinkRecord::Tombstone { room: "r".into(), id: format!("e-{n}"), seq: n, ts_ms: n }.encode()
    }

    fn ids(records: &[EncodedRecord]) -> Vec<u64> {
        records.iter().map(|r| r.ts_ms).collect()
    }

    #[test]
    fn replays_in_order_across_reopen_and_frees_the_budget() {
        let tmp = tempfile::tempdir().expect("tmp");
        let budget = Arc::new(SpoolBudget::new(1 << 20));
        let (mut spool, _) = Spool::open(tmp.path(), Arc::clone(&budget)).expect("open");
        let batch: Vec<EncodedRecord> = (1..=10).map(record).collect();
        spool.append(&batch.iter().collect::<Vec<_>>()).expect("append");
        assert_eq!((spool.records(), budget.records()), (10, 10));
        let p = spool.peek(4).expect("peek");
        assert_eq!(ids(&p.records), [1, 2, 3, 4]);
        spool.consume(p).expect("consume");
        assert_eq!(spool.head_ts(), Some(5));
        drop(spool);
        let budget = Arc::new(SpoolBudget::new(1 << 20));
        let (mut spool, _) = Spool::open(tmp.path(), Arc::clone(&budget)).expect("reopen");
        assert_eq!((spool.records(), budget.records()), (6, 6));
        let p = spool.peek(100).expect("peek");
        assert_eq!(ids(&p.records), [5, 6, 7, 8, 9, 10]);
        spool.consume(p).expect("consume");
        assert!(spool.is_empty());
        assert_eq!((budget.used_bytes(), budget.records()), (0, 0));
        assert_eq!(spool.log.segments().expect("segs").len(), 1, "drained segments are deleted");
        spool.append(&[&record(11)]).expect("append");
        assert_eq!(ids(&spool.peek(10).expect("peek").records), [11]);
    }

    #[test]
    fn a_full_budget_refuses_and_keeps_nothing_half_done() {
        let tmp = tempfile::tempdir().expect("tmp");
        let one = record(1).line.len() as u64 + 1;
        let budget = Arc::new(SpoolBudget::new(one * 3));
        let (mut spool, _) = Spool::open(tmp.path(), Arc::clone(&budget)).expect("open");
        let batch: Vec<EncodedRecord> = (1..=2).map(record).collect();
        spool.append(&batch.iter().collect::<Vec<_>>()).expect("fits");
        assert!(matches!(spool.append(&batch.iter().collect::<Vec<_>>()), Err(SpoolError::Full { .. })));
        assert_eq!(spool.records(), 2);
        assert!(budget.has_room());
        spool.append(&[&record(3)]).expect("fits exactly");
        assert!(!budget.has_room());
        let p = spool.peek(2).expect("peek");
        spool.consume(p).expect("consume");
        assert!(budget.has_room());
    }

    #[test]
    fn reading_crosses_segments_and_bad_lines_are_rejected() {
        let tmp = tempfile::tempdir().expect("tmp");
        let budget = Arc::new(SpoolBudget::new(1 << 20));
        let (mut spool, _) = Spool::open(tmp.path(), Arc::clone(&budget)).expect("open");
        spool.append(&[&record(1)]).expect("append");
        spool.log.rotate().expect("rotate");
        let raw = b"{\"not\":\"a record\"}\n";
        spool.log.append(raw).expect("raw");
        spool.records += 1;
        spool.bytes += raw.len() as u64;
        budget.used_bytes.fetch_add(raw.len() as u64, Ordering::AcqRel);
        budget.records.fetch_add(1, Ordering::AcqRel);
        spool.append(&[&record(2)]).expect("append");
        let p = spool.peek(10).expect("peek");
        assert_eq!((ids(&p.records), p.bad_lines.len()), (vec![1, 2], 1));
        spool.consume(p).expect("consume");
        let rejected = fs::read_to_string(tmp.path().join(REJECTED_FILE)).expect("rejected");
        assert_eq!(rejected, "{\"not\":\"a record\"}\n");
        assert!(spool.is_empty());
    }
}
