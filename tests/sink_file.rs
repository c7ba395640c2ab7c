//! The file sink through the whole runner: group commit, rotation read live by a real
//! `tail -F`, a torn last line cut on restart, and a process killed with SIGKILL in the middle
//! of a flood that keeps every record it had reported durable.

mod sink_support;

use roomcast::sink::{self, file, DurableNotify, SinkRecord};
use sink_support::{check_all_durable_in_order, config_in, Durable, Flood, WAIT};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn stored(dir: &std::path::Path) -> Vec<(String, u64, String)> {
    file::read_dir(dir)
        .expect("read the data dir")
        .into_iter()
        .filter_map(|r| match r.decode().expect("decodes") {
            SinkRecord::Comment { room, seq, text, .. } => Some((room.to_string(), seq, text)),
            _ => None,
        })
        .collect()
}

fn submit_all(handle: &sink::SinkHandle, flood: &mut Flood, count: u64) {
    let deadline = Instant::now() + WAIT;
    let end = flood.next_ticket + count;
    while flood.next_ticket < end {
        let (ticket, record) = flood.peek();
        match handle.try_submit(flood.origin, ticket, record) {
            Ok(()) => flood.taken(),
            Err(_) => {
                assert!(Instant::now() < deadline, "sinks refused for {WAIT:?}");
                std::thread::yield_now();
            }
        }
    }
}

#[test]
fn group_commit_gathers_records_between_fsyncs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config_in(tmp.path());
    config.file.fsync_ms = 1_000;
    config.file.fsync_records = 100;
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let handle = rt.handle();
    let mut flood = Flood::new(0, 4);
    submit_all(&handle, &mut flood, 1);
    durable.wait_for(0, 1);
    let burst_started = Instant::now();
    submit_all(&handle, &mut flood, 1_000);
    // Every 100 waiting records are committed without waiting for the interval: at most 99
    // may still wait for it.
    durable.wait_for(0, 1_001 - 99);
    let elapsed = burst_started.elapsed();
    let m = rt.shutdown();
    assert_eq!(durable.max(0), 1_001, "shutdown commits what waited");
    let fsyncs = m.sinks[0].batches;
    // One for the first record, one per 100 of the burst, at most one per started second of
    // interval, and the shutdown's.
    let bound = 1 + 10 + elapsed.as_secs() + 1 + 1;
    assert!(fsyncs <= bound, "{fsyncs} fsyncs for 1001 records (bound {bound})");
    assert_eq!(m.sinks[0].records_written, 1_001);
    assert!(durable.calls() <= bound, "one report per batch, not per record");
    assert_eq!(stored(&config.file.dir).len(), 1_001);
}

#[test]
fn a_small_interval_commits_a_lone_record_without_a_full_batch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config_in(tmp.path());
    config.file.fsync_ms = 5;
    config.file.fsync_records = 100_000;
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let handle = rt.handle();
    let mut flood = Flood::new(2, 1);
    for _ in 0..3 {
        let target = flood.next_ticket;
        submit_all(&handle, &mut flood, 1);
        durable.wait_for(2, target);
    }
    drop(rt);
}

#[test]
fn segments_rotate_and_tail_f_reads_every_record_across_rotations() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = config_in(tmp.path());
    config.file.segment_bytes = 64 * 1024;
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let link = config.file.dir.join(file::CURRENT_LINK);
    let mut tail = Command::new("tail")
        .args(["-n", "+1", "-F", "-s", "0.05"])
        .arg(&link)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tail from coreutils (apt-get install -y coreutils)");
    let stdout = tail.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let handle = rt.handle();
    let mut flood = Flood::new(1, 3);
    const N: u64 = 4_000;
    const STEP: u64 = 100;
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    // Steps smaller than a segment, each read by tail before the next: every segment is
    // current while tail looks (a reader that sleeps through a whole segment's life can miss
    // it by name; it reads segments by number instead).
    for _ in 0..N / STEP {
        let target = flood.next_ticket + STEP - 1;
        submit_all(&handle, &mut flood, STEP);
        durable.wait_for(1, target);
        while (seen.len() as u64) < target {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let m = rt.shutdown();
    let segments = std::fs::read_dir(&config.file.dir)
        .expect("dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("segment-")))
        .count();
    assert!(segments >= 6, "only {segments} segments");
    assert_eq!(m.sinks[0].records_written, N);
    if seen.len() as u64 != N {
        let texts: Vec<&str> = seen.iter().filter_map(|l| l.split("\"text\":\"").nth(1)?.split('"').next()).collect();
        let missing: Vec<u64> = (1..=N).filter(|t| !texts.contains(&format!("o1t{t}").as_str())).collect();
        panic!("tail -F saw {} of {N} lines; missing {:?}..{:?}", seen.len(), missing.first(), missing.last());
    }
    let texts: Vec<String> = seen
        .iter()
        .map(|l| match sink::EncodedRecord::from_line(l).expect("a record").decode().expect("decodes") {
            SinkRecord::Comment { text, .. } => text,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let expected: Vec<String> = (1..=N).map(|t| format!("o1t{t}")).collect();
    assert_eq!(texts, expected, "tail -F reads every record once, in order");
}

#[test]
fn a_torn_last_line_is_cut_on_restart_and_writing_goes_on() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = config_in(tmp.path());
    let durable = Durable::new();
    let mut flood = Flood::new(0, 2);
    let rt = sink::start(&config, durable.clone()).expect("start");
    submit_all(&rt.handle(), &mut flood, 10);
    rt.shutdown();
    let segment = config.file.dir.join(sink::segment::segment_name(file::SEGMENT_PREFIX, 1));
    let clean_len = std::fs::metadata(&segment).expect("segment").len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&segment).expect("open");
    f.write_all(b"{\"type\":\"comment\",\"room\":\"room-0-1\",\"seq\":6,\"id\":\"e1-").expect("torn write");
    drop(f);
    let rt = sink::start(&config, durable).expect("a torn line is never fatal");
    assert_eq!(std::fs::metadata(&segment).expect("segment").len(), clean_len, "the torn line is cut");
    submit_all(&rt.handle(), &mut flood, 5);
    rt.shutdown();
    let texts: Vec<String> = stored(&config.file.dir).into_iter().map(|(_, _, t)| t).collect();
    let expected: Vec<String> = (1..=15).map(|t| format!("o0t{t}")).collect();
    assert_eq!(texts, expected);
}

const FLOOD_DIR: &str = "ROOMCAST_SINK_FLOOD_DIR";

/// Prints every durable report on stdout, flushed, for the parent test to read.
struct PrintDurable;

impl DurableNotify for PrintDurable {
    fn durable(&self, origin: u16, ticket: u64) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "durable {origin} {ticket}");
        let _ = out.flush();
    }
}

/// The child process of [`sigkill_mid_flood_keeps_every_durable_record`]: floods a file sink
/// from two worker threads over 100 rooms until it is killed (or two minutes pass).
#[test]
#[ignore = "the child process of sigkill_mid_flood_keeps_every_durable_record"]
fn flood_child() {
    let Some(dir) = std::env::var_os(FLOOD_DIR) else { return };
    let config = config_in(std::path::Path::new(&dir));
    let rt = sink::start(&config, Arc::new(PrintDurable)).expect("start");
    let threads: Vec<_> = (0..2u16)
        .map(|origin| {
            let handle = rt.handle();
            std::thread::spawn(move || {
                let mut flood = Flood::new(origin, 50);
                let stop = Instant::now() + Duration::from_secs(120);
                while Instant::now() < stop {
                    let (ticket, record) = flood.peek();
                    match handle.try_submit(origin, ticket, record) {
                        Ok(()) => flood.taken(),
                        Err(_) => std::thread::yield_now(),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn sigkill_mid_flood_keeps_every_durable_record() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["flood_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(FLOOD_DIR, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the flood child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut durable: HashMap<u16, u64> = HashMap::new();
    let record = |line: &str, durable: &mut HashMap<u16, u64>| {
        let mut parts = line.strip_prefix("durable ").map(|r| r.split(' '));
        if let Some(parts) = &mut parts {
            let origin: u16 = parts.next().and_then(|s| s.parse().ok()).expect("origin");
            let ticket: u64 = parts.next().and_then(|s| s.parse().ok()).expect("ticket");
            let max = durable.entry(origin).or_insert(0);
            assert!(ticket > *max, "reports only grow");
            *max = ticket;
        }
    };
    let deadline = Instant::now() + WAIT;
    while durable.len() < 2 || durable.values().any(|&t| t < 20_000) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the flood child did not report 20000 durable records per worker in time ({durable:?})")
        });
        record(&line, &mut durable);
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Reports already in the pipe were made before the kill: they count too.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        record(&line, &mut durable);
    }
    // Restart on the same directory: the torn tail (if any) is cut, and everything reported is
    // there, in per-room seq order.
    let config = config_in(tmp.path());
    let rt = sink::start(&config, Durable::new()).expect("restart after SIGKILL");
    rt.shutdown();
    let records = stored(&config.file.dir);
    assert!(records.len() as u64 >= durable.values().sum::<u64>());
    check_all_durable_in_order(&records, &durable);
}
