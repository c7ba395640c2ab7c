//! The file sink, roomcast's embedded default: append-only JSON Lines segments in
//! `sink.file.dir` (default `./data`), fsynced in groups.
//!
//! Files: `segment-<20-digit number>.jsonl`, one record per line (the shape in
//! [`crate::sink::record`]), a new segment once one reaches `sink.file.segment_bytes`, and
//! `current.jsonl`, a hard link to the active one (moved by rename at each rotation), so `tail -n +1 -F data/current.jsonl` reads the
//! log live across rotations and `cat data/segment-*.jsonl` reads all of it in order. A batch
//! is one `write` plus one `fdatasync` ([`SegmentLog::append`]); the runner's
//! [`crate::sink::batch::BatchPolicy`] turns `sink.file.fsync_ms` / `sink.file.fsync_records`
//! into group commit. On start the last segment's torn tail (from a crash) is cut and logged.
//!
//! Plain `std::fs` is the right tool: the whole job is `write` + `fdatasync` on one thread, and
//! every log crate would add a format of its own in front of the JSON lines consumers read.
//! Must never write a line that is not a whole record, nor report a batch before its fsync.

use crate::sink::config::FileSinkConfig;
use crate::sink::record::EncodedRecord;
use crate::sink::segment::{self, Recovery, SegmentLog};
use crate::sink::{Sink, SinkFailure};
use std::io;
use std::path::{Path, PathBuf};

/// Segment file prefix.
pub const SEGMENT_PREFIX: &str = "segment";
/// The hard link to the active segment.
pub const CURRENT_LINK: &str = "current.jsonl";

/// The file sink's errors.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    /// The data directory or its last segment could not be opened.
    #[error("file sink: cannot open {dir}: {source}")]
    Open {
        /// `sink.file.dir`.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A batch could not be written or fsynced (nothing of it stays in the segment).
    #[error("file sink: write to {dir} failed: {source}")]
    Write {
        /// `sink.file.dir`.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Whether a failed write may succeed later. Every write error is: a full disk gets space, a
/// failing one gets replaced; meanwhile the records wait in the spool (which an operator can put
/// on another disk with `sink.spool.dir`).
pub fn is_retriable(error: &FileSinkError) -> bool {
    match error {
        FileSinkError::Write { .. } => true,
        FileSinkError::Open { .. } => false,
    }
}

impl From<FileSinkError> for SinkFailure {
    fn from(error: FileSinkError) -> Self {
        Self::new(is_retriable(&error), error.to_string())
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct FileSink {
    log: SegmentLog,
    buf: Vec<u8>,
}

impl FileSink {
    /// Build: create the directory, open the last segment and cut a torn tail (logged).
    pub fn open(config: &FileSinkConfig) -> Result<(Self, Recovery), FileSinkError> {
        let (log, recovery) = SegmentLog::open(&config.dir, SEGMENT_PREFIX, Some(CURRENT_LINK), config.segment_bytes)
            .map_err(|source| FileSinkError::Open { dir: config.dir.clone(), source })?;
        if let Some(path) = &recovery.segment {
            tracing::warn!(
                segment = %path.display(),
                bytes = recovery.truncated_bytes,
                "file sink: cut a torn last line left by a crash (it was never acknowledged)"
            );
        }
        Ok((Self { log, buf: Vec::with_capacity(64 * 1024) }, recovery))
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn health_check(&mut self) -> Result<(), SinkFailure> {
        // Opening the directory and its last segment was the check.
        Ok(())
    }

    fn write_batch(&mut self, batch: &[&EncodedRecord]) -> Result<(), SinkFailure> {
        self.buf.clear();
        for record in batch {
            self.buf.extend_from_slice(record.line.as_bytes());
            self.buf.push(b'\n');
        }
        let result = self.log.append(&self.buf);
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::with_capacity(64 * 1024);
        }
        result.map_err(|source| FileSinkError::Write { dir: self.log.dir().to_owned(), source }.into())
    }
}

/// Every record in a file sink directory, in write order (segments by number, lines in
/// order). For tools and tests; a line that is not a record is an error.
pub fn read_dir(dir: &Path) -> io::Result<Vec<EncodedRecord>> {
    let mut records = Vec::new();
    for n in segment::list_segments(dir, SEGMENT_PREFIX)? {
        let text = std::fs::read_to_string(dir.join(segment::segment_name(SEGMENT_PREFIX, n)))?;
        for line in text.lines() {
            records.push(
                EncodedRecord::from_line(line)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
            );
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::record::SinkRecord;

    #[test]
    fn writes_whole_lines_that_read_back() {
        let tmp = tempfile::tempdir().expect("tmp");
        let config = FileSinkConfig { dir: tmp.path().to_owned(), ..FileSinkConfig::default() };
        let (mut sink, _) = FileSink::open(&config).expect("open");
        let records: Vec<EncodedRecord> = (1..=3)
            .map(|n| SinkRecord::Tombstone { room: "r".into(), id: format!("e-{n}"), seq: n, ts_ms: n }.encode())
            .collect();
        sink.write_batch(&records.iter().collect::<Vec<_>>()).expect("write");
        sink.write_batch(&[]).expect("empty batch");
        assert_eq!(read_dir(tmp.path()).expect("read"), records);
        let current = std::fs::read_to_string(tmp.path().join(CURRENT_LINK)).expect("link resolves");
        assert_eq!(current.lines().count(), 3);
    }
}
