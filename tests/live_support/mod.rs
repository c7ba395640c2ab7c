//! Helpers for the admin-port tests against a real `roomcast serve` (started by
//! `support::Server`, every port 0): the admin address from the ready line, viewers placed on
//! a chosen worker, room names homed on a chosen worker, `/metrics` parsed by the
//! `prometheus-parse` crate.
//!
//! Needs `mod support;` and `mod admin_support;` in the test crate (the HTTP client and the
//! `/admin/stream` client are `admin_support`'s). Every wait is bounded by [`WAIT`].

#![allow(dead_code, unreachable_pub)]

use crate::admin_support::{self, Reply};
use crate::support::{Server, Viewer, WAIT};
use serde_json::{json, Value};
use std::net::SocketAddr;
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
