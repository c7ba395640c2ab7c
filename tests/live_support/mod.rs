//! Helpers for the admin-port tests against a real `roomcast serve` (started by
//! `support::Server`, every port 0): the admin address from the ready line, viewers placed on
//! a chosen worker, room names homed on a chosen worker, `/metrics` parsed by the
//! `prometheus-parse` crate, and a viewer that joins a room and then answers nothing.
//!
//! Needs `mod support;` and `mod admin_support;` in the test crate (the HTTP client and the
//! `/admin/stream` client are `admin_support`'s). Every wait is bounded by [`WAIT`].

#![allow(dead_code, unreachable_pub)]

use crate::admin_support::{self, Reply};
use crate::support::{Server, Viewer, WAIT};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;
use tungstenite::protocol::frame::coding::CloseCode;

/// The admin port of `server` (the ready line's `admin=`).
pub fn admin(server: &Server) -> SocketAddr {
    server.admin.as_deref().expect("the ready line names the admin port").parse().expect("admin=ADDR is an address")
}

/// `GET path` on the server's admin port, with an optional bearer token.
pub fn get(server: &Server, path: &str, token: Option<&str>) -> Reply {
    admin_support::get(admin(server), path, token)
}

/// `GET path` that must answer 200 with JSON.
pub fn get_json(server: &Server, path: &str) -> Value {
    let reply = get(server, path, None);
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    reply.json()
}

/// `POST path` with a JSON body on the server's admin port.
pub fn post(server: &Server, path: &str, token: Option<&str>, body: &Value) -> Reply {
    admin_support::post(admin(server), path, token, &body.to_string())
}

/// `POST path` that must answer 200; its JSON.
pub fn post_ok(server: &Server, path: &str, body: &Value) -> Value {
    let reply = post(server, path, None, body);
    assert_eq!(reply.status, 200, "POST {path} {body}: {}", reply.text());
    reply.json()
}

/// Milliseconds since the Unix epoch, the clock the server stamps `ts`, `joined_at` and
/// `last_seen` with.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// Spin until the wall clock shows a later millisecond than `after` (so two events are
/// stamped apart); bounded by [`WAIT`].
pub fn next_ms_after(after: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = wall_ms();
        if now > after {
            return now;
        }
        assert!(Instant::now() < deadline, "the wall clock did not move");
        std::thread::yield_now();
    }
}

/// The worker a connection lives on, from its `hello`: the server puts the worker id in the
/// top bits of the connection id (`ConnTable::insert`: worker << 40).
pub fn worker_of(hello: &Value) -> u64 {
    hello["conn"].as_u64().expect("hello.conn is a number") >> 40
}

/// A viewer as `user` on worker `worker`, with its `hello`. Connections are spread over the
/// workers by the kernel (`SO_REUSEPORT`), so connect until one lands there; a try that lands
/// elsewhere is closed (1000, its echo awaited) before the next, so `user` never has a stray
/// tab. Use it before counting closes, or where they do not matter.
pub fn viewer_on(server: &Server, user: &str, worker: u64) -> (Viewer, Value) {
    for _ in 0..64 {
        let mut v = server.viewer_raw(user);
        let hello = v.expect_hello();
        if worker_of(&hello) == worker {
            return (v, hello);
        }
        close_normally(v);
    }
    panic!("no connection landed on worker {worker} in 64 tries");
}

/// `count` viewers on each of `workers` workers, with their `hello`s, indexed by worker.
/// Each connection is opened as a fresh user `{stem}-N` and kept where it landed; those that
/// land on a worker that has enough are kept open, in no room, in `spares`, so that nothing
/// is closed (and counted) while placing.
pub fn place(
    server: &Server,
    stem: &str,
    workers: u64,
    count: usize,
    spares: &mut Vec<Viewer>,
) -> Vec<Vec<(Viewer, Value)>> {
    let mut placed: Vec<Vec<(Viewer, Value)>> = (0..workers).map(|_| Vec::new()).collect();
    let mut tries = 0;
    while placed.iter().any(|p| p.len() < count) {
        tries += 1;
        assert!(tries <= 64 * workers as usize * count, "connections do not spread over the workers");
        let mut v = server.viewer_raw(&format!("{stem}-{tries}"));
        let hello = v.expect_hello();
        let slot = placed.get_mut(worker_of(&hello) as usize).expect("a worker the server has");
        if slot.len() < count {
            slot.push((v, hello));
        } else {
            spares.push(v);
        }
    }
    placed
}

/// The user id a viewer got in its `hello`.
pub fn user_of(hello: &Value) -> String {
    hello["user"].as_str().expect("hello.user").to_owned()
}

/// A room name starting with `stem` whose home is worker `worker` of `workers` (the same
/// fixed hash the server uses, `roomcast::shard::home_of`).
pub fn room_homed_at(stem: &str, worker: u64, workers: usize) -> String {
    (0..1000)
        .map(|i| format!("{stem}-{i}"))
        .find(|name| u64::from(roomcast::shard::home_of(name, workers).0) == worker)
        .expect("some name hashes to each worker")
}

/// Close with 1000 and read until the server's echo: by then the server has acted on it.
pub fn close_normally(mut v: Viewer) {
    let frame = tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "".into() };
    v.ws.close(Some(frame)).expect("send the close frame");
    let code = v.close_code();
    assert_eq!(code, Some(1000), "the server echoes the close code");
}

/// One `/metrics` scrape, parsed by `prometheus-parse` (an independent reader of the text
/// format), with the text kept for failure messages.
pub struct Scrape {
    pub text: String,
    pub parsed: prometheus_parse::Scrape,
}

/// Scrape the server's `/metrics`.
pub fn scrape(server: &Server, token: Option<&str>) -> Scrape {
    let reply = get(server, "/metrics", token);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the text parses");
    Scrape { text, parsed }
}

impl Scrape {
    /// The value of the sample `name{labels}` (labels not named may be anything).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self
            .parsed
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
        match sample.map(|s| &s.value) {
            Some(
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v),
            ) => *v,
            Some(other) => panic!("{name} is {other:?}"),
            // This family lists only the op/result pairs that happened at least once.
            None if name == "roomcast_ingest_commands_total" => 0.0,
            None => panic!("no sample {name}{labels:?} in\n{}", self.text),
        }
    }

    /// How much `name{labels}` grew from `before` to this scrape.
    pub fn delta(&self, before: &Self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels) - before.value(name, labels)
    }

    /// The buckets of histogram `name`: `(le, cumulative count)`, in order.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let sample = self
            .parsed
            .samples
            .iter()
            .find(|s| s.metric == name && matches!(s.value, prometheus_parse::Value::Histogram(_)))
            .unwrap_or_else(|| panic!("no histogram {name} in\n{}", self.text));
        let prometheus_parse::Value::Histogram(buckets) = &sample.value else { unreachable!() };
        let mut out: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// Whether the text declares `name` with `# TYPE name kind`.
    pub fn declares(&self, name: &str, kind: &str) -> bool {
        self.text.lines().any(|l| l == format!("# TYPE {name} {kind}"))
    }
}

/// A viewer that joins one room right after its upgrade and then never writes again, not
/// even a pong: a frozen client, as the server's heartbeat sees it. Frames are read raw
/// (RFC 6455 5.2: unmasked from a server); its one frame is masked (5.3).
pub struct SilentViewer {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl SilentViewer {
    /// Upgrade as `user`, send `join room`, and read until `joined` (pings on the way are
    /// not answered). Returns the viewer and its `joined`.
    pub fn join(server: &Server, user: &str, room: &str) -> (Self, Value) {
        let mut sock = TcpStream::connect(&server.ws).expect("connect");
        sock.set_read_timeout(Some(WAIT)).expect("read timeout");
        let request = format!(
            "GET /ws?user={user} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.ws
        );
        sock.write_all(request.as_bytes()).expect("send the upgrade");
        let mut v = Self { sock, buf: Vec::new() };
        let head = v.read_until(b"\r\n\r\n");
        assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused: {}", String::from_utf8_lossy(&head));
        v.send_text(&json!({"op": "join", "room": room}).to_string());
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no joined within {WAIT:?}");
            match v.frame() {
                Some((0x1, payload)) => {
                    let m: Value = serde_json::from_slice(&payload).expect("JSON text");
                    if m["op"] == "joined" {
                        return (v, m);
                    }
                }
                Some(_) => {}
                None => panic!("closed before joined"),
            }
        }
    }

    fn send_text(&mut self, text: &str) {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).expect("a short frame").to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.sock.write_all(&frame).expect("send a frame");
    }

    fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                return self.buf.drain(..at + end.len()).collect();
            }
            assert!(Instant::now() < deadline, "nothing ended with {end:?} within {WAIT:?}");
            assert!(self.fill() > 0, "closed while reading");
        }
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = self.sock.read(&mut chunk).expect("read from the server");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next server frame: opcode and payload, or `None` at end of stream.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (opcode, len7) = (self.buf[0] & 0x0F, usize::from(self.buf[1] & 0x7F));
                let (header, len) = match len7 {
                    126 if self.buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]))),
                    127 if self.buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        (10, usize::try_from(u64::from_be_bytes(n)).expect("frame length fits"))
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n),
                };
                if header != usize::MAX && self.buf.len() >= header + len {
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Some((opcode, payload));
                }
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// Read, answering nothing, until the server's close frame; its code and the pings seen.
    pub fn close_code(&mut self) -> (Option<u16>, usize) {
        let deadline = Instant::now() + WAIT;
        let mut pings = 0;
        loop {
            assert!(Instant::now() < deadline, "no close frame within {WAIT:?}");
            match self.frame() {
                Some((0x8, payload)) => return (payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])), pings),
                Some((0x9, _)) => pings += 1,
                Some(_) => {}
                None => return (None, pings),
            }
        }
    }
}

/// What a [`Witness`] saw of one room.
#[derive(Debug, Default)]
pub struct Seen {
    /// Its `joined`.
    pub joined: Value,
    /// Its sequenced messages (`event`, `state`; replayed ones too), in order.
    pub messages: Vec<Value>,
    /// The `online` it was last told (`joined` or `presence`).
    pub online: u64,
    /// Its `left` messages.
    pub left: Vec<Value>,
}

/// A viewer that remembers, per room, everything it was sent: the yardstick the query API
/// is held against ("agrees with what a viewer saw").
pub struct Witness {
    pub v: Viewer,
    pub hello: Value,
    pub rooms: std::collections::HashMap<String, Seen>,
}

impl Witness {
    /// Take over a viewer whose `hello` was read.
    pub fn new(v: Viewer, hello: Value) -> Self {
        Self { v, hello, rooms: std::collections::HashMap::new() }
    }

    /// A fresh plain viewer as `user`.
    pub fn open(server: &Server, user: &str) -> Self {
        let mut v = server.viewer_raw(user);
        let hello = v.expect_hello();
        Self::new(v, hello)
    }

    /// The user id from `hello`.
    pub fn user(&self) -> String {
        user_of(&self.hello)
    }

    /// What it saw of `room`.
    pub fn seen(&self, room: &str) -> &Seen {
        self.rooms.get(room).unwrap_or_else(|| panic!("{} saw nothing of {room}", self.user()))
    }

    /// The next message, recorded.
    pub fn read(&mut self) -> Value {
        let m = self.v.next_json();
        let Some(room) = m["room"].as_str() else { return m };
        let seen = self.rooms.entry(room.to_owned()).or_default();
        match m["op"].as_str() {
            Some("event" | "state") => seen.messages.push(m.clone()),
            Some("presence") => seen.online = m["online"].as_u64().expect("presence.online"),
            Some("joined") => {
                seen.online = m["online"].as_u64().expect("joined.online");
                seen.joined = m.clone();
            }
            Some("left") => seen.left.push(m.clone()),
            _ => {}
        }
        m
    }

    /// Read until a message for which `done` holds; returns it.
    pub fn until(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "{}: no {what} within {WAIT:?}", self.user());
            let m = self.read();
            if done(&m) {
                return m;
            }
        }
    }

    /// `join` (with an optional recovery position) and read until `joined`.
    pub fn join_since(&mut self, room: &str, since: Option<(u64, Option<&str>)>) -> Value {
        let mut op = json!({"op": "join", "room": room});
        if let Some((seq, epoch)) = since {
            op["since"] = json!(seq);
            if let Some(epoch) = epoch {
                op["epoch"] = json!(epoch);
            }
        }
        self.v.send_json(op);
        self.until("joined", |m| m["op"] == "joined" && m["room"] == room)
    }

    /// `join` and read until `joined`.
    pub fn join(&mut self, room: &str) -> Value {
        self.join_since(room, None)
    }

    /// `leave` and read until `left`.
    pub fn leave(&mut self, room: &str) -> Value {
        self.v.send_json(json!({"op": "leave", "room": room}));
        self.until("left", |m| m["op"] == "left" && m["room"] == room)
    }

    /// The next sequenced message of `room`.
    pub fn next_sequenced(&mut self, room: &str) -> Value {
        self.until("event or state", |m| (m["op"] == "event" || m["op"] == "state") && m["room"] == room)
    }

    /// Read everything the server sent before now: `ping`, then read until `pong`. After it,
    /// a presence the witness reads was announced after this call, never before.
    pub fn sync(&mut self) {
        self.v.send_json(json!({"op": "ping"}));
        self.until("pong", |m| m["op"] == "pong");
    }

    /// Read until it was told `room` has `online` viewers (at once if it already was). A
    /// count the room passed through earlier may still be queued: [`Witness::sync`] first
    /// when the count was reached before.
    pub fn until_online(&mut self, room: &str, online: u64) {
        if self.rooms.get(room).is_some_and(|s| s.online == online) {
            return;
        }
        self.until("presence", |m| m["op"] == "presence" && m["room"] == room && m["online"] == online);
    }

    /// Send a comment and read until its `ack` or `error`.
    pub fn comment(&mut self, room: &str, text: &str, reference: u64) -> Value {
        self.v.send_json(json!({"op": "comment", "room": room, "text": text, "ref": reference}));
        self.until("ack", |m| (m["op"] == "ack" || m["op"] == "error") && m["ref"] == reference)
    }
}
