//! Harness for the cluster tests (`tests/cluster.rs`): one real `redis-server` (sink_support's
//! [`RedisServer`], run with `--appendonly yes --appendfsync always` in a temp dir, so a restart
//! on the same dir loses nothing that was acked) and three `roomcast serve` processes
//! (support's [`Server`]) pointed at it with `--cluster-redis-url`; viewers read on threads of
//! their own ([`Watch`]) that record every frame, and the test waits on what they recorded.
//!
//! It sits next to `tests/support` (the server process, the viewer and upstream clients),
//! `tests/sink_support` (redis-server) and `tests/flood_support` (the HTTP client for the admin
//! port), which the including test file declares as modules. Everything here talks to the nodes
//! as outside clients do (WebSocket frames, ingest lines, HTTP); it links none of the broker's
//! code. Every wait has a deadline; a [`Watch`] ends with its socket, a node or Redis with the
//! [`Cluster`] (SIGKILL on drop).

#![allow(dead_code, unreachable_pub)]

use crate::flood_support::http_post;
use crate::sink_support::RedisServer;
use crate::support::{Server, Upstream, Viewer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// How long one wait for a cluster-wide outcome (thousands of events through Redis, a dead
/// node's expiry, Redis coming back) may take before the test fails.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(90);

/// The nodes' labels, also their `--node-id`s (`node-a`, ...).
pub const NODES: [&str; 3] = ["a", "b", "c"];

/// The flags every node gets: the per-connection rate limits off, since these tests send far
/// faster than a person types.
const NODE_FLAGS: [&str; 6] = ["--comment-rate", "0", "--message-rate", "0", "--join-rate", "0"];

/// Three roomcast nodes sharing one redis-server. Dropped in field order: the nodes first
/// (SIGKILL), then Redis, then its directory.
pub struct Cluster {
    pub nodes: Vec<Server>,
    pub redis: RedisServer,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Redis (AOF, fsync always) on a free port, then three nodes `node-a`, `node-b`,
    /// `node-c`, each with `extra` flags.
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for redis");
        let redis = RedisServer::start(dir.path(), &["--appendonly", "yes", "--appendfsync", "always", "--save", ""]);
        let url = format!("{}/", redis.url());
        let nodes = NODES
            .iter()
            .map(|label| {
                let id = format!("node-{label}");
                let mut args = vec!["--cluster-redis-url", url.as_str(), "--node-id", id.as_str()];
                args.extend_from_slice(&NODE_FLAGS);
                args.extend_from_slice(extra);
                Server::start(&args)
            })
            .collect();
        Self { nodes, redis, dir }
    }

    /// Node `i` (0 = A).
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i]
    }

    /// `kill -9` node `i` and wait for it to be gone. Its [`Server`] stays, so a failing test
    /// still prints the node's log.
    pub fn kill_9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.signal(libc::SIGKILL);
        let status = node.wait_exit();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "node {} died of SIGKILL: {status:?}", NODES[i]);
    }

    /// A viewer of node `i` as `user`, joined to `room` from scratch; its `joined`.
    pub fn join(&self, i: usize, user: &str, room: &str) -> (Viewer, Value) {
        let mut viewer = self.node(i).viewer(user);
        let (replayed, joined) = join(&mut viewer, room, None);
        assert!(replayed.is_empty(), "{user}@{}: a fresh join replayed {replayed:?}", NODES[i]);
        (viewer, joined)
    }

    /// [`Cluster::join`], then a [`Watch`] on its own thread.
    pub fn watch(&self, i: usize, user: &str, room: &str) -> Watch {
        let (viewer, joined) = self.join(i, user, room);
        Watch::spawn(format!("{user}@{}", NODES[i]), viewer, joined, None)
    }
}

/// Send `join` for `room` (with `since` and `epoch` when given) and read up to its `joined`:
/// the events replayed before it, and the `joined`. Presence and reactions on the way are
/// skipped; anything else fails.
pub fn join(viewer: &mut Viewer, room: &str, since: Option<(u64, &Value)>) -> (Vec<Value>, Value) {
    let mut op = json!({"op": "join", "room": room});
    if let Some((seq, epoch)) = since {
        op["since"] = json!(seq);
        op["epoch"] = epoch.clone();
    }
    viewer.send_json(op.clone());
    let deadline = Instant::now() + CLUSTER_WAIT;
    let mut replayed = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "no joined for {op} within {CLUSTER_WAIT:?}");
        let m = viewer.next_json();
        match m["op"].as_str() {
            Some("joined") => {
                assert_eq!(m["room"], room, "joined names the room: {m}");
                return (replayed, m);
            }
            Some("event") => replayed.push(m),
            Some("presence" | "reactions") => {}
            _ => panic!("{op} answered with {m}"),
        }
    }
}

// ---------------------------------------------------------------- watchers

/// What a [`Watch`] recorded, in arrival order per kind.
#[derive(Debug, Default)]
pub struct Seen {
    /// The `joined` that preceded the watch.
    pub joined: Value,
    pub events: Vec<Value>,
    pub presence: Vec<Value>,
    pub acks: Vec<Value>,
    pub errors: Vec<Value>,
    /// Any other frame.
    pub other: Vec<Value>,
    /// Why the reader stopped (a close frame, a read error), if it did.
    pub end: Option<String>,
    /// The close code when the server closed the connection.
    pub close_code: Option<u16>,
}

impl Seen {
    /// `online` as this viewer last heard it: the latest presence frame's, else `joined`'s.
    pub fn online(&self) -> Option<u64> {
        self.presence.last().unwrap_or(&self.joined)["online"].as_u64()
    }

    /// The seq of the last event seen, or `joined.seq` before any.
    pub fn last_seq(&self) -> u64 {
        self.events.last().unwrap_or(&self.joined)["seq"].as_u64().expect("events and joined carry a seq")
    }
}

/// Comments a [`Watch`] sends from its thread: `count` of them into `room`, keeping at most
/// `window` unanswered; comment `i` has text and ref `<name>#<i>`.
#[derive(Clone, Debug)]
pub struct CommentPlan {
    pub room: String,
    pub count: usize,
    pub window: usize,
}

/// The text (and ref) of comment `i` of the watcher `name`.
pub fn comment_text(name: &str, i: usize) -> String {
    format!("{name}#{i}")
}

struct Shared {
    seen: Mutex<Seen>,
    changed: Condvar,
}

/// A viewer read by a thread of its own until its socket ends; the test waits on what it saw.
/// Dropping it shuts the socket down (the server sees the viewer go) and joins the thread.
pub struct Watch {
    pub name: String,
    shared: Arc<Shared>,
    sock: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Read `viewer` (which got `joined` already) on a new thread, sending `plan`'s comments
    /// from there if given.
    pub fn spawn(name: String, viewer: Viewer, joined: Value, plan: Option<CommentPlan>) -> Self {
        let sock = viewer.tcp().try_clone().expect("clone the viewer's socket");
        // The reader blocks until its socket ends: the waits below carry the deadlines.
        sock.set_read_timeout(None).expect("clear the read timeout");
        let shared = Arc::new(Shared { seen: Mutex::new(Seen { joined, ..Seen::default() }), changed: Condvar::new() });
        let (for_thread, thread_name) = (Arc::clone(&shared), name.clone());
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || read_all(&thread_name, viewer, &for_thread, plan))
            .expect("spawn a watcher thread");
        Self { name, shared, sock, thread: Some(thread) }
    }

    /// What it saw so far.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.shared.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wait until `done` holds for what it saw; fails at once if the reader stopped first, or
    /// after `limit` naming `what`.
    pub fn wait(&self, limit: Duration, what: &str, mut done: impl FnMut(&Seen) -> bool) -> MutexGuard<'_, Seen> {
        let deadline = Instant::now() + limit;
        let mut seen = self.seen();
        loop {
            if done(&seen) {
                return seen;
            }
            if let Some(end) = &seen.end {
                panic!("{}: {end} while waiting for {what}; {}", self.name, summary(&seen));
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{}: no {what} within {limit:?}; {}", self.name, summary(&seen)));
            seen = self.shared.changed.wait_timeout(seen, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Wait until it saw `n` events.
    pub fn wait_events(&self, n: usize) -> MutexGuard<'_, Seen> {
        self.wait(CLUSTER_WAIT, &format!("{n} events"), |s| s.events.len() >= n)
    }

    /// Wait until `online` as it last heard it is `n`.
    pub fn wait_online(&self, n: u64) -> MutexGuard<'_, Seen> {
        self.wait(CLUSTER_WAIT, &format!("online = {n}"), |s| s.online() == Some(n))
    }

    /// Wait until its reader stopped (the node died or closed it); why.
    pub fn wait_end(&self) -> MutexGuard<'_, Seen> {
        let deadline = Instant::now() + CLUSTER_WAIT;
        let mut seen = self.seen();
        while seen.end.is_none() {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{}: still connected after {CLUSTER_WAIT:?}", self.name));
            seen = self.shared.changed.wait_timeout(seen, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        seen
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a [`Watch`] saw, in one line, for failure messages.
fn summary(seen: &Seen) -> String {
    format!(
        "{} events (last seq {}), {} presence (last {}), {} acks, errors {:?}, other {:?}, end {:?}",
        seen.events.len(),
        seen.last_seq(),
        seen.presence.len(),
        seen.presence.last().map_or_else(|| "none".to_owned(), Value::to_string),
        seen.acks.len(),
        seen.errors,
        seen.other,
        seen.end
    )
}

/// The watcher thread: send what `plan` allows, read one frame, record it; until the socket
/// ends. Nothing here panics: a failure is written into [`Seen::end`] for the waiter.
fn read_all(name: &str, mut viewer: Viewer, shared: &Shared, plan: Option<CommentPlan>) {
    let mut sent = 0;
    let mut answered = 0;
    let end: (String, Option<u16>) = 'read: loop {
        if let Some(plan) = &plan {
            while sent < plan.count && sent - answered < plan.window {
                let text = comment_text(name, sent);
                let op = json!({"op": "comment", "room": plan.room, "text": text, "ref": text});
                if let Err(e) = viewer.ws.send(Message::text(op.to_string())) {
                    break 'read (format!("sending {op} failed: {e}"), None);
                }
                sent += 1;
            }
        }
        let m: Value = match viewer.ws.read() {
            Ok(Message::Text(t)) => match serde_json::from_str(&t) {
                Ok(m) => m,
                Err(e) => break (format!("non-JSON frame {t:?}: {e}"), None),
            },
            Ok(Message::Close(frame)) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                break (format!("closed by the server ({frame:?})"), code);
            }
            Ok(Message::Binary(b)) => break (format!("a binary frame {b:?}"), None),
            Ok(_) => continue,
            Err(e) => break (format!("read ended: {e}"), None),
        };
        let mut seen = shared.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match m["op"].as_str() {
            Some("event") => seen.events.push(m),
            Some("presence") => seen.presence.push(m),
            Some("ack") => {
                answered += 1;
                seen.acks.push(m);
            }
            Some("error") => {
                if !m["ref"].is_null() {
                    answered += 1;
                }
                seen.errors.push(m);
            }
            Some("reactions") => {}
            _ => seen.other.push(m),
        }
        drop(seen);
        shared.changed.notify_all();
    };
    let mut seen = shared.seen.lock().unwrap_or_else(PoisonError::into_inner);
    seen.end = Some(end.0);
    seen.close_code = end.1;
    drop(seen);
    shared.changed.notify_all();
}

// ---------------------------------------------------------------- publishing

/// One acknowledged publish: the seq the cluster gave it and the `data` it carried.
#[derive(Clone, Debug, PartialEq)]
pub struct Acked {
    pub seq: u64,
    pub data: Value,
}

/// The `data` of publish `n` from `source`.
pub fn payload(source: &str, n: usize) -> Value {
    json!({"from": source, "n": n})
}

/// The ingest `publish` of `data` into `room`.
pub fn publish_op(room: &str, data: &Value) -> Value {
    json!({"op": "publish", "room": room, "type": "tick", "data": data})
}

/// Publish `count` events into `room` over `up`, `batch` lines written before their replies are
/// read; payloads `payload(source, from..from + count)`. Every reply must be `ok` with a seq.
pub fn publish_ingest(
    up: &mut Upstream,
    room: &str,
    source: &str,
    from: usize,
    count: usize,
    batch: usize,
) -> Vec<Acked> {
    let mut acked = Vec::with_capacity(count);
    let mut n = from;
    while n < from + count {
        let end = (n + batch).min(from + count);
        let ops: Vec<Value> = (n..end).map(|i| publish_op(room, &payload(source, i))).collect();
        up.send_raw(crate::support::ndjson(&ops).as_bytes());
        for op in &ops {
            let reply = up.reply();
            assert_eq!(reply["ok"], true, "{source}: {op} was refused: {reply}");
            let seq = reply["seq"].as_u64().unwrap_or_else(|| panic!("{source}: {op} acked without a seq: {reply}"));
            acked.push(Acked { seq, data: op["data"].clone() });
        }
        n = end;
    }
    acked
}

/// `POST /api/publish` of `data` into `room` on `node`'s admin port: the status and the answer.
pub fn publish_http(node: &Server, room: &str, data: &Value) -> (u16, Value) {
    let admin = node.admin.as_deref().expect("the node has an admin port");
    http_post(admin, "/api/publish", &json!({"room": room, "type": "tick", "data": data}))
}

/// Publish `count` events into `room` by `POST /api/publish`, one at a time; every answer must
/// be 200 with a seq.
pub fn publish_http_many(node: &Server, room: &str, source: &str, from: usize, count: usize) -> Vec<Acked> {
    (from..from + count)
        .map(|n| {
            let data = payload(source, n);
            let (status, reply) = publish_http(node, room, &data);
            assert_eq!(status, 200, "{source}: POST /api/publish {data} answered {status} {reply}");
            let seq = reply["seq"].as_u64().unwrap_or_else(|| panic!("{source}: {data} acked without a seq: {reply}"));
            Acked { seq, data }
        })
        .collect()
}

/// Check that the seqs one publisher got grow (its commands are applied in order).
pub fn assert_increasing(source: &str, acked: &[Acked]) {
    for pair in acked.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "{source}: {:?} was acked before {:?}", pair[0], pair[1]);
    }
}

/// [`assert_increasing`] for each source (`data.from`) of `acked`, in the order they were acked.
pub fn assert_each_source_in_order(acked: &[Acked]) {
    let mut by_source: BTreeMap<String, Vec<Acked>> = BTreeMap::new();
    for a in acked {
        let source = a.data["from"].as_str().expect("payloads name their source").to_owned();
        by_source.entry(source).or_default().push(a.clone());
    }
    for (source, acks) in &by_source {
        assert_increasing(source, acks);
    }
}

// ---------------------------------------------------------------- checking what was seen

/// The events of a room one viewer saw: seq -> (type, data).
pub type View = BTreeMap<u64, (String, Value)>;

/// The events of `room` that `name` saw, checked to be gap-free from `first`: seq -> (type,
/// data). Fails naming the first gap, duplicate or foreign room.
pub fn gap_free(name: &str, room: &str, events: &[Value], first: u64) -> View {
    let mut map = BTreeMap::new();
    for (want, (i, e)) in (first..).zip(events.iter().enumerate()) {
        assert_eq!(e["room"], room, "{name}: event {i} is of another room: {e}");
        let seq = e["seq"].as_u64().unwrap_or_else(|| panic!("{name}: event {i} has no seq: {e}"));
        if seq != want {
            let around: Vec<u64> = events[i.saturating_sub(3)..(i + 4).min(events.len())]
                .iter()
                .filter_map(|e| e["seq"].as_u64())
                .collect();
            panic!("{name}: event {i} has seq {seq} where {want} was due (seqs around it: {around:?})");
        }
        let kind = e["type"].as_str().unwrap_or_else(|| panic!("{name}: event {i} has no type: {e}"));
        map.insert(seq, (kind.to_owned(), e["data"].clone()));
    }
    map
}

/// Check that every viewer's seq -> (type, data) mapping is the first one's, naming the first
/// seq where two differ.
pub fn assert_same_mapping(views: &[(String, View)]) {
    let Some((first_name, first)) = views.first() else { return };
    for (name, view) in &views[1..] {
        if let Some((seq, theirs)) = view.iter().find(|(seq, v)| first.get(seq) != Some(v)) {
            panic!("{name} saw seq {seq} as {theirs:?}, {first_name} as {:?}", first.get(seq));
        }
        assert_eq!(view.len(), first.len(), "{name} and {first_name} saw different numbers of events");
    }
}

/// Check that every acked publish is in `view` at its seq, with its data.
pub fn assert_acked_seen(name: &str, view: &View, acked: &[Acked]) {
    for a in acked {
        match view.get(&a.seq) {
            Some((kind, data)) if kind == "tick" && data == &a.data => {}
            other => panic!("{name}: acked publish {a:?} was seen as {other:?}"),
        }
    }
}

/// Every publish of `acked`, checked to hold each seq once and to be exactly `1..=n`.
pub fn assert_seqs_are_one_to(acked: &[Acked], n: u64) {
    let mut seqs: Vec<u64> = acked.iter().map(|a| a.seq).collect();
    seqs.sort_unstable();
    let want: Vec<u64> = (1..=n).collect();
    if seqs != want {
        let dup = seqs.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
        let missing = want.iter().find(|s| seqs.binary_search(s).is_err());
        panic!("the acked seqs are not 1..={n}: {} of them, a duplicate {dup:?}, a missing {missing:?}", seqs.len());
    }
}

/// The `user`s named in the `key` lists (`joined` or `left`) of `frames`.
pub fn listed(frames: &[Value], key: &str) -> Vec<String> {
    frames
        .iter()
        .filter_map(|p| p[key].as_array())
        .flatten()
        .filter_map(|m| m["user"].as_str().map(str::to_owned))
        .collect()
}
