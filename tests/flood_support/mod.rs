//! Harness for the end-to-end sink tests (`tests/sinks_live.rs`): a comment flood from real
//! viewers over real WebSockets against a real `roomcast serve`, and readers for what the
//! server leaves on disk (the file sink's JSON Lines segments, a sink's spool), the server
//! frozen with SIGSTOP for checks made at one instant, a small HTTP client for the admin port
//! and a webhook receiver that can hold its answers.
//!
//! It sits next to `tests/support` (the server process and the viewer client) and
//! `tests/sink_support` (redis-server, the plain webhook receiver), which the including test
//! file declares as `mod support;` and `mod sink_support;`. Everything here reads what the
//! server exposes to the outside (frames, files, HTTP); it never links the server's own sink
//! code, so a test cannot agree with the server by sharing its bugs. Every wait has a deadline;
//! threads started here end with their sockets.

#![allow(dead_code, unreachable_pub)]

use crate::support::{Got, Server, Viewer};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any single wait here may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------- the flood

/// The shape of a flood: how many viewers, over how many rooms, how hard.
#[derive(Debug, Clone)]
pub struct FloodPlan {
    /// Viewer connections, each on its own thread (user `<prefix>-v<i>`).
    pub viewers: usize,
    /// Rooms `<prefix>-r<j>`.
    pub rooms: usize,
    /// Rooms each viewer joins (and comments in, round robin); neighbours overlap, so most
    /// rooms have several commenters and every room has members that see its events.
    pub rooms_per_viewer: usize,
    /// Comments a viewer keeps in flight (sent, not yet answered).
    pub window: usize,
    /// Characters of each comment's text (at least the length of its tag).
    pub text_chars: usize,
    /// Names rooms, users and texts.
    pub prefix: &'static str,
    /// With a full window, how long a viewer waits for an answer before it sends one more
    /// comment anyway, as a user who keeps typing would (`None`: it waits for answers). A
    /// server that holds comments it took, neither acked nor refused (a full spool), stops a
    /// patient flood; an impatient one goes on and hears `unavailable`. Pacing only: no
    /// check depends on it.
    pub patience: Option<Duration>,
}

impl FloodPlan {
    /// Six viewers over 24 rooms, 8 rooms each, 32 comments in flight each.
    pub fn new(prefix: &'static str) -> Self {
        Self { viewers: 6, rooms: 24, rooms_per_viewer: 8, window: 32, text_chars: 40, prefix, patience: None }
    }

    /// The rooms viewer `v` joins.
    pub fn rooms_of(&self, v: usize) -> Vec<String> {
        let step = (self.rooms / self.viewers).max(1);
        (0..self.rooms_per_viewer.min(self.rooms))
            .map(|k| format!("{}-r{}", self.prefix, (v * step + k) % self.rooms))
            .collect()
    }
}

/// A comment a viewer sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub user: String,
    pub room: String,
    pub text: String,
}

/// A comment that got its `ack`.
#[derive(Debug, Clone)]
pub struct Acked {
    pub reference: String,
    pub user: String,
    pub room: String,
    pub seq: u64,
    pub text: String,
}

/// A comment that got an `error`.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reference: String,
    pub room: String,
    /// The error's `room` field.
    pub error_room: Option<String>,
    pub code: String,
    pub message: String,
}

/// A `comment` event as members received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenComment {
    pub id: String,
    pub user: String,
    pub text: String,
}

/// Everything the flood's viewers sent and received, shared while it runs.
#[derive(Debug, Default, Clone)]
pub struct FloodLog {
    /// Every comment sent, by its `ref`.
    pub sent: HashMap<String, Sent>,
    /// Acks, in the order they arrived (per viewer).
    pub acked: Vec<Acked>,
    /// Errors to comments.
    pub refused: Vec<Refused>,
    /// `comment` events by (room, seq), as the first member to see one received it.
    pub comments: HashMap<(String, u64), SeenComment>,
    /// Broken promises seen by a viewer (a gap or reorder in a room's seq, an ack before its
    /// event, an event that differs between members, an unknown ref). Must stay empty.
    pub violations: Vec<String>,
    /// Viewers whose thread ended, with how.
    pub ended: Vec<String>,
}

struct FloodShared {
    stop: AtomicBool,
    log: Mutex<FloodLog>,
    changed: Condvar,
}

impl FloodShared {
    fn lock(&self) -> MutexGuard<'_, FloodLog> {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Viewers commenting as fast as their window allows, each on its own thread, until
/// [`Flood::finish`] (or until the server goes away: a killed server ends them all).
pub struct Flood {
    shared: Arc<FloodShared>,
    threads: Vec<JoinHandle<()>>,
    pub plan: FloodPlan,
}

impl Flood {
    /// Connect the viewers (through `connect(user)`, which returns a viewer past its `hello`),
    /// join their rooms, then start them all commenting.
    pub fn start(plan: FloodPlan, connect: impl Fn(&str) -> Viewer) -> Self {
        let shared =
            Arc::new(FloodShared { stop: AtomicBool::new(false), log: Mutex::default(), changed: Condvar::new() });
        let mut ready = Vec::new();
        for v in 0..plan.viewers {
            let user = format!("{}-v{v}", plan.prefix);
            let mut viewer = connect(&user);
            if let Some(patience) = plan.patience {
                viewer.tcp().set_read_timeout(Some(patience)).expect("set the read timeout");
            }
            let mut last_seq = HashMap::new();
            for room in plan.rooms_of(v) {
                let joined = viewer.join(&room);
                let seq = joined["seq"].as_u64().unwrap_or_else(|| panic!("joined without a seq: {joined}"));
                last_seq.insert(room, seq);
            }
            ready.push((user, viewer, last_seq, plan.rooms_of(v)));
        }
        let mut threads = Vec::new();
        for (v, (user, viewer, last_seq, rooms)) in ready.into_iter().enumerate() {
            let member = Member { v, user, viewer, last_seq, rooms, plan: plan.clone(), shared: Arc::clone(&shared) };
            let name = format!("flood-{}-{v}", plan.prefix);
            threads.push(std::thread::Builder::new().name(name).spawn(move || member.run()).expect("spawn a viewer"));
        }
        Self { shared, threads, plan }
    }

    /// Wait until `done` holds for the log (checked after every message any viewer handles);
    /// fails after [`WAIT`] naming `what`.
    pub fn wait(&self, what: &str, mut done: impl FnMut(&FloodLog) -> bool) {
        let deadline = Instant::now() + WAIT;
        let mut log = self.shared.lock();
        while !done(&log) {
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| {
                panic!(
                    "timed out waiting for {what}: {} sent, {} acked, {} refused, ended: {:?}, violations: {:?}",
                    log.sent.len(),
                    log.acked.len(),
                    log.refused.len(),
                    log.ended,
                    log.violations
                )
            });
            log = self.shared.changed.wait_timeout(log, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// Wait until at least `n` comments were acked.
    pub fn wait_acks(&self, n: usize) {
        self.wait(&format!("{n} acks"), |log| log.acked.len() >= n);
    }

    /// A copy of the log as it is now.
    pub fn snapshot(&self) -> FloodLog {
        self.shared.lock().clone()
    }

    /// Acks so far.
    pub fn acks(&self) -> usize {
        self.shared.lock().acked.len()
    }

    /// Stop sending; every viewer waits for the answers to what it has in flight, then ends.
    /// Returns the log.
    pub fn finish(self) -> FloodLog {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Wait for every viewer thread to end (after a [`Flood::finish`] or once the server went
    /// away), bounded by their sockets' read timeouts.
    pub fn join(self) -> FloodLog {
        for t in self.threads {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let log = self.shared.lock().clone();
        log
    }
}

struct Member {
    v: usize,
    user: String,
    viewer: Viewer,
    /// The last seq this viewer saw per joined room.
    last_seq: HashMap<String, u64>,
    rooms: Vec<String>,
    plan: FloodPlan,
    shared: Arc<FloodShared>,
}

impl Member {
    fn run(mut self) {
        let mut in_flight: HashMap<String, String> = HashMap::new();
        let mut n = 0usize;
        let mut impatient = false;
        let mut stop_deadline = None;
        let end = loop {
            let stopping = self.shared.stop.load(Ordering::SeqCst);
            if stopping && in_flight.is_empty() {
                break "finished".to_owned();
            }
            if stopping && *stop_deadline.get_or_insert_with(|| Instant::now() + WAIT) < Instant::now() {
                break "gave up waiting for answers".to_owned();
            }
            if !stopping && (in_flight.len() < self.plan.window || std::mem::take(&mut impatient)) {
                n += 1;
                let room = self.rooms[n % self.rooms.len()].clone();
                let reference = format!("{}-{n}", self.v);
                let tag = format!("{} {reference}", self.user);
                let pad = self.plan.text_chars.saturating_sub(tag.chars().count() + 1);
                let text = format!("{tag} {}", "x".repeat(pad));
                let op = json!({"op": "comment", "room": room, "text": text, "ref": reference});
                self.shared
                    .lock()
                    .sent
                    .insert(reference.clone(), Sent { user: self.user.clone(), room: room.clone(), text });
                in_flight.insert(reference, room);
                if let Err(e) = self.viewer.ws.send(tungstenite::Message::text(op.to_string())) {
                    break format!("send failed: {e}");
                }
                continue;
            }
            match self.viewer.try_next() {
                Ok(Got::Json(msg)) => self.handle(&msg, &mut in_flight),
                Ok(Got::Closed(code)) => break format!("closed ({code:?})"),
                Err(tungstenite::Error::Io(e))
                    if self.plan.patience.is_some()
                        && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    impatient = true;
                }
                Err(e) => break format!("read failed: {e}"),
            }
        };
        let mut log = self.shared.lock();
        log.ended.push(format!("{}: {end} with {} in flight", self.user, in_flight.len()));
        self.shared.changed.notify_all();
    }

    fn handle(&mut self, msg: &Value, in_flight: &mut HashMap<String, String>) {
        let mut log = self.shared.lock();
        match msg["op"].as_str() {
            Some("event") => {
                let room = msg["room"].as_str().unwrap_or_default().to_owned();
                let seq = msg["seq"].as_u64().unwrap_or(0);
                match self.last_seq.get_mut(&room) {
                    Some(last) if seq == *last + 1 => *last = seq,
                    Some(last) => {
                        let problem = format!("{}: {room} seq {seq} after {last}", self.user);
                        log.violations.push(problem);
                        *last = seq;
                    }
                    None => log.violations.push(format!("{}: event of {room}, not joined", self.user)),
                }
                if msg["type"] == "comment" {
                    let data = &msg["data"];
                    let seen = SeenComment {
                        id: data["id"].as_str().unwrap_or_default().to_owned(),
                        user: data["user"].as_str().unwrap_or_default().to_owned(),
                        text: data["text"].as_str().unwrap_or_default().to_owned(),
                    };
                    match log.comments.get(&(room.clone(), seq)) {
                        Some(first) if *first != seen => {
                            let problem = format!("{room} seq {seq}: {first:?} to one member, {seen:?} to another");
                            log.violations.push(problem);
                        }
                        Some(_) => {}
                        None => {
                            log.comments.insert((room, seq), seen);
                        }
                    }
                }
            }
            Some("ack") => {
                let reference = msg["ref"].as_str().unwrap_or_default().to_owned();
                let seq = msg["seq"].as_u64().unwrap_or(0);
                match in_flight.remove(&reference) {
                    Some(room) => {
                        if self.last_seq.get(&room).is_none_or(|last| *last < seq) {
                            log.violations.push(format!("{}: ack of {room} seq {seq} before its event", self.user));
                        }
                        let text = log.sent.get(&reference).map(|s| s.text.clone()).unwrap_or_default();
                        log.acked.push(Acked { reference, user: self.user.clone(), room, seq, text });
                    }
                    None => log.violations.push(format!("{}: ack for unknown ref {msg}", self.user)),
                }
            }
            Some("error") => {
                let reference = msg["ref"].as_str().unwrap_or_default().to_owned();
                match in_flight.remove(&reference) {
                    Some(room) => log.refused.push(Refused {
                        reference,
                        room,
                        error_room: msg["room"].as_str().map(str::to_owned),
                        code: msg["code"].as_str().unwrap_or_default().to_owned(),
                        message: msg["message"].as_str().unwrap_or_default().to_owned(),
                    }),
                    None => log.violations.push(format!("{}: error without a known ref: {msg}", self.user)),
                }
            }
            _ => return,
        }
        self.shared.changed.notify_all();
    }
}

// ---------------------------------------------------------------- what the server wrote

/// One JSON Lines file's whole lines, parsed; a last line without its newline (a write in
/// progress, or torn by a crash) is returned apart. A whole line that is not JSON fails the
/// test: the sinks promise whole records only.
fn read_lines(path: &Path, from: u64) -> (Vec<Value>, Option<String>) {
    let mut text = String::new();
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(from)).expect("seek");
    file.read_to_string(&mut text).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut records = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find('\n') {
        let line = &rest[..at];
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: a line that is not a JSON record ({e}): {line:?}", path.display()));
        records.push(value);
        rest = &rest[at + 1..];
    }
    (records, (!rest.is_empty()).then(|| rest.to_owned()))
}

/// `<prefix>-<20 digits>.jsonl` files of `dir`, in number order.
fn segments(dir: &Path, prefix: &str) -> Vec<(u64, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries {
        let entry = entry.expect("read a directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let number = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".jsonl"))
            .filter(|d| d.len() == 20)
            .and_then(|d| d.parse::<u64>().ok());
        if let Some(n) = number {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    found
}

/// Every record of the file sink in `dir` (`segment-*.jsonl` by number, lines in order), and
/// whether the last segment ends in a partial line.
pub fn file_sink_records(dir: &Path) -> (Vec<Value>, bool) {
    let mut all = Vec::new();
    let mut torn = false;
    let segs = segments(dir, "segment");
    for (i, (_, path)) in segs.iter().enumerate() {
        let (records, rest) = read_lines(path, 0);
        assert!(rest.is_none() || i + 1 == segs.len(), "{}: a partial line inside the log", path.display());
        torn = rest.is_some();
        all.extend(records);
    }
    (all, torn)
}

/// Read the file sink in `dir` until `done` holds for its records (a record is in the file
/// only once it is on its way to the disk: there is no event to wait on but the file itself);
/// fails after [`WAIT`] naming `what`.
pub fn wait_for_file(dir: &Path, what: &str, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (records, _) = file_sink_records(dir);
        if done(&records) {
            return records;
        }
        assert!(Instant::now() < deadline, "the file sink never held {what}; it holds {} records", records.len());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A spool's `cursor` file: the segment and byte offset of its first undelivered line (none
/// before its first delivery).
fn spool_cursor(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("cursor")).ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Some((segment, offset)),
        _ => panic!("{}: unreadable cursor {text:?}", dir.display()),
    }
}

/// The records a sink's spool (`dir` = `<spool dir>/<sink>`) still holds for delivery: the
/// lines from its `cursor` (segment and byte offset) on.
pub fn spool_records(dir: &Path) -> Vec<Value> {
    let cursor = spool_cursor(dir);
    let mut all = Vec::new();
    for (n, path) in segments(dir, "spool") {
        let from = match cursor {
            Some((segment, _)) if n < segment => continue,
            Some((segment, offset)) if n == segment => offset,
            _ => 0,
        };
        all.extend(read_lines(&path, from).0);
    }
    all
}

/// Bytes a sink's spool (`dir` = `<spool dir>/<sink>`) still holds for delivery, counted
/// from its `cursor` on, as `sink.spool.max_bytes` counts them.
pub fn spool_bytes(dir: &Path) -> u64 {
    let cursor = spool_cursor(dir);
    segments(dir, "spool")
        .into_iter()
        .map(|(n, path)| {
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            match cursor {
                Some((segment, _)) if n < segment => 0,
                Some((segment, offset)) if n == segment => len.saturating_sub(offset),
                _ => len,
            }
        })
        .sum()
}

/// The `id`s of the comment records among `records`.
pub fn comment_ids(records: &[Value]) -> HashSet<String> {
    records.iter().filter(|r| r["type"] == "comment").filter_map(|r| r["id"].as_str().map(str::to_owned)).collect()
}

/// Where a record sits in its room's order: room, epoch (the prefix of its `id`, for a
/// tombstone the deleted comment's), seq.
pub type Place = (String, String, u64);

/// The epoch of an `<epoch>-<seq>` id.
pub fn epoch_of(id: &str) -> &str {
    id.rsplit_once('-').map_or_else(|| panic!("id {id:?} is not <epoch>-<seq>"), |(epoch, _)| epoch)
}

/// Check the at-least-once, in-order promise over the comment and tombstone records a sink
/// stored: per room and epoch, the first occurrence of each seq comes in seq order without
/// gaps (starting at 1 when `from_one`); a repeat is the same record; a comment's `id` is
/// `<epoch>-<seq>`. Returns the first occurrences by place.
pub fn check_room_order(records: &[Value], from_one: bool) -> HashMap<Place, Value> {
    let mut first: HashMap<Place, Value> = HashMap::new();
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    for r in records.iter().filter(|r| r["type"] == "comment" || r["type"] == "tombstone") {
        let room = r["room"].as_str().expect("a record names its room").to_owned();
        let seq = r["seq"].as_u64().expect("a comment or tombstone has a seq");
        let id = r["id"].as_str().expect("a comment or tombstone has an id");
        let epoch = epoch_of(id).to_owned();
        if r["type"] == "comment" {
            assert_eq!(id, format!("{epoch}-{seq}"), "the id of {room} seq {seq}");
        }
        let place = (room.clone(), epoch.clone(), seq);
        if let Some(before) = first.get(&place) {
            assert_eq!(before, r, "{room} seq {seq} stored twice, differently");
            continue;
        }
        let at = last.entry((room.clone(), epoch.clone())).or_insert(if from_one { 0 } else { seq - 1 });
        assert_eq!(seq, *at + 1, "{room} (epoch {epoch}): seq {seq} stored right after {at}");
        *at = seq;
        first.insert(place, r.clone());
    }
    first
}

/// Check that every acked comment of `log` is among `stored` (first occurrences, from
/// [`check_room_order`]) with the id its event carried (`data.id`), its author and its text.
pub fn check_acked_stored(log: &FloodLog, stored: &HashMap<Place, Value>, sink: &str) {
    assert!(log.violations.is_empty(), "viewers saw broken promises: {:?}", log.violations);
    for a in &log.acked {
        let event = log
            .comments
            .get(&(a.room.clone(), a.seq))
            .unwrap_or_else(|| panic!("{a:?}: acked, but no member saw its event"));
        assert_eq!((event.user.as_str(), event.text.as_str()), (a.user.as_str(), a.text.as_str()), "{a:?}");
        let place = (a.room.clone(), epoch_of(&event.id).to_owned(), a.seq);
        let record = stored.get(&place).unwrap_or_else(|| panic!("acked, but not in the {sink}: {a:?}"));
        assert_eq!(record["id"].as_str(), Some(event.id.as_str()), "{sink} id vs the event's data.id");
        assert_eq!(record["user"].as_str(), Some(a.user.as_str()));
        assert_eq!(record["text"].as_str(), Some(a.text.as_str()));
    }
}

// ---------------------------------------------------------------- freezing the server

/// The server stopped with SIGSTOP, every thread of it, until dropped (SIGCONT): what it holds
/// on disk and what it has sent can be compared at one instant, with nothing in between.
pub struct Frozen<'a> {
    server: &'a Server,
}

/// Stop `server` and wait until every one of its threads is stopped (`T` in
/// `/proc/<pid>/task/*/stat`: the kernel offers no event for it to a parent that is not
/// waiting in `waitpid`, so the state file is read until it says so, with a deadline).
pub fn freeze(server: &Server) -> Frozen<'_> {
    server.signal(libc::SIGSTOP);
    let frozen = Frozen { server };
    let tasks = PathBuf::from(format!("/proc/{}/task", server.pid()));
    let deadline = Instant::now() + WAIT;
    loop {
        let states: Vec<char> = std::fs::read_dir(&tasks)
            .expect("the server's task list")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
            .filter_map(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
            .collect();
        if !states.is_empty() && states.iter().all(|s| *s == 'T') {
            return frozen;
        }
        assert!(Instant::now() < deadline, "the server's threads never all stopped: {states:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.server.signal(libc::SIGCONT);
    }
}

// ---------------------------------------------------------------- config, HTTP

/// Write `toml` to `<dir>/roomcast.toml`; its path, for `--config`.
pub fn config_file(dir: &Path, toml: &str) -> String {
    let path = dir.join("roomcast.toml");
    std::fs::write(&path, toml).expect("write the config file");
    path.display().to_string()
}

/// One HTTP/1.1 `POST` of a JSON body to `addr` (`Connection: close`); the status and the
/// JSON answer.
pub fn http_post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    http(addr, "POST", path, Some(body))
}

/// One HTTP/1.1 `GET` from `addr` (`Connection: close`); the status and the JSON answer.
pub fn http_get(addr: &str, path: &str) -> (u16, Value) {
    http(addr, "GET", path, None)
}

/// One HTTP/1.1 `GET` from `addr`; the status and the body as text (`/metrics`).
pub fn http_get_text(addr: &str, path: &str) -> (u16, String) {
    http_raw(addr, "GET", path, None)
}

fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, body) = http_raw(addr, method, path, body);
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("answer body {body:?} is not JSON: {e}"));
    (status, value)
}

fn http_raw(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head:?}"));
    (status, body.to_owned())
}

// ---------------------------------------------------------------- a webhook that holds

/// One request a [`HeldHook`] got.
#[derive(Debug, Clone)]
pub struct HookRequest {
    pub body: Vec<u8>,
    /// Whether its answer (200) was sent, or is about to be.
    pub answered: bool,
}

#[derive(Default)]
struct HookState {
    holding: bool,
    requests: Vec<HookRequest>,
}

/// A webhook receiver on a loopback port that, while holding, keeps every request waiting
/// unanswered (what a backend stuck in a long write looks like); once released it answers each
/// with 200. Its serving threads end with their connections.
pub struct HeldHook {
    pub url: String,
    state: Arc<(Mutex<HookState>, Condvar)>,
}

impl HeldHook {
    /// A receiver that holds from the start.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let state = Arc::new((Mutex::new(HookState { holding: true, requests: Vec::new() }), Condvar::new()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve_held(conn, &shared));
            }
        });
        Self { url, state }
    }

    fn lock(&self) -> MutexGuard<'_, HookState> {
        self.state.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answer everything held, and everything from now on.
    pub fn release(&self) {
        self.lock().holding = false;
        self.state.1.notify_all();
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<HookRequest> {
        self.lock().requests.clone()
    }

    /// Wait until `done` holds for the requests so far; fails after [`WAIT`].
    pub fn wait_for(&self, what: &str, mut done: impl FnMut(&[HookRequest]) -> bool) {
        let deadline = Instant::now() + WAIT;
        let mut state = self.lock();
        while !done(&state.requests) {
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| panic!("timed out: {what}"));
            state = self.state.1.wait_timeout(state, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }
}

/// The records of a webhook request's body (a JSON array).
pub fn hook_records(body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice(body) {
        Ok(Value::Array(items)) => items,
        other => panic!("a webhook body is a JSON array of records, got {other:?}"),
    }
}

fn serve_held(conn: TcpStream, state: &(Mutex<HookState>, Condvar)) {
    let _ = conn.set_read_timeout(Some(WAIT));
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let index = {
            let mut s = state.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.requests.push(HookRequest { body, answered: false });
            state.1.notify_all();
            let index = s.requests.len() - 1;
            let deadline = Instant::now() + WAIT;
            while s.holding && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                s = state.1.wait_timeout(s, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
            }
            index
        };
        {
            // Marked before the answer leaves, so whatever the answer causes comes after.
            let mut s = state.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.requests[index].answered = true;
            state.1.notify_all();
        }
        if writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
            return;
        }
    }
}

/// Copy the directory tree `from` to `to` (a stopped process's data, to look at later).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}
