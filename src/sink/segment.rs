//! An append-only directory of JSON Lines segment files: what the file sink writes and what
//! the spool keeps.
//!
//! Segments are `<prefix>-<20-digit number>.jsonl`, numbered in write order and never renamed,
//! so a consumer can remember "segment N, byte offset O". A batch is appended with one `write`
//! and made durable with `fdatasync` before [`SegmentLog::append`] returns; a new segment is
//! started once the active one reaches its size limit (only between batches, so a line never
//! spans two files) and the directory is fsynced so the new file survives a crash. With a link
//! name configured, a hard link (`current.jsonl`) is moved atomically (rename) to the active
//! segment after every rotation: `tail -F current.jsonl` follows the log across rotations.
//!
//! On open, the last segment is checked: bytes after its last newline (a write torn by a
//! crash) and a last line that is not JSON are truncated and reported, never fatal. Those bytes
//! were never reported durable: a batch counts only after its newline-terminated lines are
//! fsynced. This module must never decide what a line means beyond "is it JSON".

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What opening a log found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from the end of the last segment (a torn last line), 0 when it was clean.
    pub truncated_bytes: u64,
    /// The segment that was cut.
    pub segment: Option<PathBuf>,
}

/// See the module doc.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    prefix: &'static str,
    link: Option<&'static str>,
    max_segment_bytes: u64,
    active: File,
    active_number: u64,
    active_len: u64,
}

/// The file name of segment `number`.
pub fn segment_name(prefix: &str, number: u64) -> String {
    format!("{prefix}-{number:020}.jsonl")
}

/// Segment numbers present in `dir` for `prefix`, ascending.
pub fn list_segments(dir: &Path, prefix: &str) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.strip_suffix(".jsonl"))
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(n) = number {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Make a directory entry (a new file, a rename) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).read(true).open(path)
}

/// Cut a torn tail off `path`: everything after the last newline, then a last line that is not
/// JSON. Returns the bytes removed.
fn repair_tail(path: &Path) -> io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut keep = last_newline_end(&mut file, len)?;
    if keep > 0 {
        // The last complete line must be JSON; a crash of the OS (not just the process) can
        // leave garbage that happens to end in a newline.
        let start = last_newline_end(&mut file, keep - 1)?;
        let mut line = vec![0; (keep - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut line)?;
        if serde_json::from_slice::<serde::de::IgnoredAny>(&line).is_err() {
            keep = start;
        }
    }
    if keep < len {
        file.set_len(keep)?;
        file.sync_all()?;
    }
    Ok(len - keep)
}

/// The offset just past the last `\n` in `file[..end]`, or 0 without one.
fn last_newline_end(file: &mut File, end: u64) -> io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(BLOCK);
        let chunk = &mut buf[..(hi - lo) as usize];
        file.seek(SeekFrom::Start(lo))?;
        file.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(lo + i as u64 + 1);
        }
        hi = lo;
    }
    Ok(0)
}

impl SegmentLog {
    /// Open (creating `dir` if needed) and repair the last segment's tail.
    pub fn open(
        dir: &Path,
        prefix: &'static str,
        link: Option<&'static str>,
        max_segment_bytes: u64,
    ) -> io::Result<(Self, Recovery)> {
        fs::create_dir_all(dir)?;
        let mut recovery = Recovery::default();
        let number = match list_segments(dir, prefix)?.last() {
            Some(&n) => {
                let path = dir.join(segment_name(prefix, n));
                recovery.truncated_bytes = repair_tail(&path)?;
                if recovery.truncated_bytes > 0 {
                    recovery.segment = Some(path);
                }
                n
            }
            None => 1,
        };
        let path = dir.join(segment_name(prefix, number));
        let active = open_append(&path)?;
        let active_len = active.metadata()?.len();
        sync_dir(dir)?;
        let log =
            Self { dir: dir.to_owned(), prefix, link, max_segment_bytes, active, active_number: number, active_len };
        log.point_link()?;
        Ok((log, recovery))
    }

    /// Append newline-terminated lines and fsync them. On error nothing of this call is left
    /// in the segment (it is cut back), so the caller may retry or spool the same bytes.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
        if bytes.is_empty() {
            return Ok(());
        }
        let before = self.active_len;
        let written = self.active.write_all(bytes).and_then(|()| self.active.sync_data());
        if let Err(e) = written {
            // A partial write must not stay in front of the next batch.
            let _ = self.active.set_len(before).and_then(|()| self.active.sync_data());
            return Err(e);
        }
        self.active_len += bytes.len() as u64;
        if self.active_len >= self.max_segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Start the next segment now.
    pub fn rotate(&mut self) -> io::Result<()> {
        let number = self.active_number + 1;
        let file = open_append(&self.dir.join(segment_name(self.prefix, number)))?;
        sync_dir(&self.dir)?;
        self.active = file;
        self.active_number = number;
        self.active_len = 0;
        self.point_link()
    }

    fn point_link(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let Some(link) = self.link else { return Ok(()) };
        let target = self.dir.join(segment_name(self.prefix, self.active_number));
        let path = self.dir.join(link);
        let same = |a: &Path, b: &Path| -> bool {
            matches!((fs::metadata(a), fs::metadata(b)), (Ok(x), Ok(y)) if x.ino() == y.ino() && x.dev() == y.dev())
        };
        if same(&path, &target) {
            return Ok(());
        }
        // A hard link, replaced by rename: `tail -F` sees the name move to a new file and
        // follows it (it does not notice a symlink changing its target).
        let tmp = self.dir.join(format!(".{link}.tmp"));
        let _ = fs::remove_file(&tmp);
        fs::hard_link(&target, &tmp)?;
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The active segment's number and length.
    pub fn position(&self) -> (u64, u64) {
        (self.active_number, self.active_len)
    }

    /// Path of segment `number`.
    pub fn path_of(&self, number: u64) -> PathBuf {
        self.dir.join(segment_name(self.prefix, number))
    }

    /// Segment numbers present, ascending.
    pub fn segments(&self) -> io::Result<Vec<u64>> {
        list_segments(&self.dir, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(dir: &Path, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for n in list_segments(dir, prefix).expect("list") {
            let text = fs::read_to_string(dir.join(segment_name(prefix, n))).expect("read");
            out.extend(text.lines().map(str::to_owned));
        }
        out
    }

    #[test]
    fn rotates_between_batches_and_points_the_link() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut log, rec) = SegmentLog::open(tmp.path(), "segment", Some("current.jsonl"), 4096).expect("open");
        assert_eq!(rec, Recovery::default());
        let line = format!("{{\"n\":\"{}\"}}\n", "x".repeat(100));
        for _ in 0..100 {
            log.append(line.as_bytes()).expect("append");
        }
        let segs = log.segments().expect("segments");
        assert!(segs.len() >= 3, "{segs:?}");
        for n in &segs {
            let len = fs::metadata(log.path_of(*n)).expect("meta").len();
            assert!(len < 4096 + line.len() as u64, "segment {n} has {len} bytes");
        }
        let link = fs::read(tmp.path().join("current.jsonl")).expect("link");
        assert_eq!(link, fs::read(log.path_of(log.position().0)).expect("active"));
        assert_eq!(lines(tmp.path(), "segment").len(), 100);
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut log, _) = SegmentLog::open(tmp.path(), "segment", None, 1 << 20).expect("open");
        log.append(b"{\"a\":1}\n{\"a\":2}\n").expect("append");
        let path = log.path_of(1);
        drop(log);
        OpenOptions::new().append(true).open(&path).expect("open").write_all(b"{\"a\":3,\"b\":\"to").expect("w");
        let (mut log, rec) = SegmentLog::open(tmp.path(), "segment", None, 1 << 20).expect("reopen");
        assert_eq!(rec.truncated_bytes, 14);
        assert_eq!(rec.segment.as_deref(), Some(path.as_path()));
        log.append(b"{\"a\":4}\n").expect("append");
        assert_eq!(lines(tmp.path(), "segment"), ["{\"a\":1}", "{\"a\":2}", "{\"a\":4}"]);
    }

    #[test]
    fn a_garbage_last_line_is_cut_and_a_clean_log_is_kept() {
        let tmp = tempfile::tempdir().expect("tmp");
        fs::write(tmp.path().join(segment_name("spool", 7)), b"{\"a\":1}\n\0\0\0}\n").expect("write");
        let (_, rec) = SegmentLog::open(tmp.path(), "spool", None, 1 << 20).expect("open");
        assert_eq!(rec.truncated_bytes, 5);
        let (log, rec) = SegmentLog::open(tmp.path(), "spool", None, 1 << 20).expect("reopen");
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(log.position(), (7, 8));
        fs::write(tmp.path().join(segment_name("spool", 8)), b"\0\0\0\0").expect("write");
        let (log, rec) = SegmentLog::open(tmp.path(), "spool", None, 1 << 20).expect("reopen");
        assert_eq!((rec.truncated_bytes, log.position()), (4, (8, 0)));
    }
}
