//! Shared harness for the admin-port tests: a fake [`Backend`] whose world the test sets and
//! changes, the admin port started on a free loopback port, a minimal HTTP/1.1 client over a
//! real socket (`Connection: close`, parsed with httparse) and tungstenite's WebSocket client
//! for `/admin/stream`. Every read is bounded by [`WAIT`].

#![allow(dead_code, unreachable_pub)]

use roomcast::admin::{self, AdminHandle, AdminSettings, Backend, BackendError, Caller, Health, Tap, TapSender};
use roomcast::admin::{tap_channel, Offer, UpstreamOp};
use roomcast::metrics::{Metrics, WorkerLoad};
use roomcast::query::{
    CommentCounts, FeedItem, LeaveCounts, PageQuery, PresenceMember, PresencePage, RoomDetail, RoomSummary, RoomsPage,
    RoomsQuery, Since, Snapshot, SNAPSHOT_TOP_ROOMS,
};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A room of the fake world.
#[derive(Clone, Debug, Default)]
pub struct FakeRoom {
    pub online: u64,
    pub seq: u64,
    pub epoch: String,
    pub version: u64,
    pub state: Option<String>,
    pub comment_rate: f64,
    /// The history ring: `(seq, payload)`, consecutive seqs, oldest first.
    pub ring: Vec<(u64, String)>,
    pub members: Vec<PresenceMember>,
    pub leaves: LeaveCounts,
    pub comments: CommentCounts,
    pub created_at: u64,
}

impl FakeRoom {
    /// A room with `online` viewers and nothing published yet.
    pub fn new(online: u64) -> Self {
        Self { online, epoch: "1f2e".into(), created_at: 1_700_000_000_000, ..Self::default() }
    }

    /// Append a sequenced event as a home would; returns its seq and payload.
    pub fn publish(&mut self, room: &str, kind: &str, data: &str) -> (u64, String) {
        self.seq += 1;
        let payload = format!(
            r#"{{"op":"event","room":{},"seq":{},"type":{},"data":{data},"ts":{}}}"#,
            json_str(room),
            self.seq,
            json_str(kind),
            now_ms()
        );
        self.ring.push((self.seq, payload.clone()));
        (self.seq, payload)
    }
}

/// The wall clock, for timestamps that look real on the dashboard.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string encodes")
}

/// How each snapshot the dashboard asks for moves the fake's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step {
    /// Milliseconds the fake clock advances per snapshot.
    pub ms: u64,
    pub deliveries: u64,
    pub comments: u64,
    pub errors_closes: u64,
    pub slow: u64,
    /// Write stalls of worker 0.
    pub stalls: u64,
    /// Vary deliveries and comments from snapshot to snapshot (a livelier picture; rates are
    /// then not exact).
    pub wave: bool,
}

/// Everything the fake knows; tests change it between requests.
#[derive(Default)]
pub struct World {
    pub health: Option<Health>,
    pub rooms: BTreeMap<String, FakeRoom>,
    pub metrics: Metrics,
    /// Ingest tokens the fake's upstream logic accepts (none = no auth).
    pub ingest_tokens: Vec<String>,
    /// Every upstream command it was given.
    pub upstream_calls: Vec<(UpstreamOp, String, Caller)>,
    pub taps: Vec<(String, TapSender)>,
    pub clock_ms: u64,
    pub step: Step,
    pub snapshots: u64,
    /// Answer nothing until the deadline (a stuck worker).
    pub stuck: bool,
}

/// See the module doc.
#[derive(Default)]
pub struct Fake {
    world: Mutex<World>,
    /// Signalled after every snapshot.
    snapshot_taken: Condvar,
}

fn reply_error(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"ok": false, "error": code, "message": message})).expect("json")
}

impl Fake {
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().expect("the fake's lock")
    }

    /// Offer `item` to every feed of `room`, as a home would.
    pub fn feed(&self, room: &str, item: impl Fn() -> FeedItem) {
        let mut w = self.world();
        w.taps.retain_mut(|(r, tap)| r != room || tap.offer(item()) != Offer::Closed);
    }

    /// Wait until the dashboard asked for at least `n` snapshots in all.
    pub fn wait_snapshots(&self, n: u64) {
        let (w, timeout) =
            self.snapshot_taken.wait_timeout_while(self.world(), WAIT, |w| w.snapshots < n).expect("the fake's lock");
        assert!(!timeout.timed_out(), "only {} of {n} snapshots were asked for within {WAIT:?}", w.snapshots);
    }

    /// Publish an event into `room` as its home would: sequenced, kept in the ring and
    /// offered to the room's feeds.
    pub fn publish(&self, room: &str, kind: &str, data: &str) -> u64 {
        let mut w = self.world();
        let (seq, payload) = w.rooms.get_mut(room).expect("the room exists").publish(room, kind, data);
        Self::offer(&mut w, room, &payload);
        seq
    }

    fn offer(w: &mut World, room: &str, payload: &str) {
        w.taps.retain_mut(|(name, tap)| {
            name != room || tap.offer(FeedItem::message(payload).expect("json")) != Offer::Closed
        });
    }

    /// Open feeds of `room`.
    pub fn taps(&self, room: &str) -> usize {
        self.world().taps.iter().filter(|(r, tap)| r == room && !tap.is_closed()).count()
    }

    fn gate(&self, deadline: Instant) -> Result<(), BackendError> {
        if self.world().stuck {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            return Err(BackendError::Timeout);
        }
        Ok(())
    }

    fn summaries(w: &World) -> Vec<RoomSummary> {
        w.rooms
            .iter()
            .map(|(name, r)| RoomSummary {
                room: name.clone(),
                online: r.online,
                seq: r.seq,
                epoch: r.epoch.clone(),
                comment_rate: r.comment_rate,
                version: r.version,
            })
            .collect()
    }

    fn apply(w: &mut World, op: UpstreamOp, body: &Value) -> Vec<u8> {
        let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
        let Some(room) = field("room").or_else(|| (op == UpstreamOp::Kick).then(String::new)) else {
            return reply_error("bad_request", "missing field `room`");
        };
        match op {
            UpstreamOp::Publish => {
                let Some(kind) = field("type") else { return reply_error("bad_request", "missing field `type`") };
                let data = body.get("data").map_or("null".to_owned(), Value::to_string);
                let r = w.rooms.entry(room.clone()).or_insert_with(|| FakeRoom::new(0));
                let (seq, payload) = r.publish(&room, &kind, &data);
                Self::offer(w, &room, &payload);
                format!(r#"{{"ok":true,"seq":{seq}}}"#).into_bytes()
            }
            UpstreamOp::State => {
                let Some(state) = body.get("state").filter(|s| s.is_object()) else {
                    return reply_error("bad_request", "`state` must be a JSON object");
                };
                let r = w.rooms.entry(room.clone()).or_insert_with(|| FakeRoom::new(0));
                r.seq += 1;
                r.version += 1;
                r.state = Some(state.to_string());
                let (seq, version) = (r.seq, r.version);
                let payload = format!(
                    r#"{{"op":"state","room":{},"seq":{seq},"version":{version},"state":{state}}}"#,
                    json_str(&room)
                );
                r.ring.push((seq, payload.clone()));
                Self::offer(w, &room, &payload);
                format!(r#"{{"ok":true,"seq":{seq},"version":{version}}}"#).into_bytes()
            }
            UpstreamOp::Kick => br#"{"ok":true,"closed":0}"#.to_vec(),
            UpstreamOp::CloseRoom => {
                w.rooms.remove(&room);
                for (name, tap) in &mut w.taps {
                    if *name == room {
                        tap.offer(FeedItem::Closed);
                    }
                }
                w.taps.retain(|(name, _)| *name != room);
                b"{\"ok\":true}\n".to_vec()
            }
            UpstreamOp::DeleteComment => match w.rooms.get_mut(&room) {
                Some(r) => {
                    r.seq += 1;
                    format!(r#"{{"ok":true,"seq":{}}}"#, r.seq).into_bytes()
                }
                None => reply_error("bad_request", "no such room"),
            },
        }
    }
}

impl Backend for Fake {
    fn health(&self, deadline: Instant) -> Result<Health, BackendError> {
        self.gate(deadline)?;
        Ok(self.world().health.unwrap_or(Health::Ready))
    }

    fn rooms(&self, query: &RoomsQuery, deadline: Instant) -> Result<RoomsPage, BackendError> {
        self.gate(deadline)?;
        Ok(query.select(Self::summaries(&self.world())))
    }

    fn room(&self, room: &str, since: &Since, deadline: Instant) -> Result<RoomDetail, BackendError> {
        self.gate(deadline)?;
        let w = self.world();
        let r = w.rooms.get(room).ok_or_else(|| BackendError::UnknownRoom(room.to_owned()))?;
        let raw = |s: &str| RawValue::from_string(s.to_owned()).expect("json");
        // The all-or-nothing rule of `join` recovery.
        let (events, recovered): (Vec<&(u64, String)>, Option<bool>) = match since.since {
            None => (r.ring.iter().collect(), None),
            Some(_) if since.epoch.as_ref().is_some_and(|e| *e != r.epoch) => (Vec::new(), Some(false)),
            Some(s) if s >= r.seq => (Vec::new(), Some(true)),
            Some(s) => match r.ring.first() {
                Some((first, _)) if *first <= s + 1 => {
                    (r.ring.iter().filter(|(seq, _)| *seq > s).collect(), Some(true))
                }
                _ => (Vec::new(), Some(false)),
            },
        };
        Ok(RoomDetail {
            room: room.to_owned(),
            epoch: r.epoch.clone(),
            seq: r.seq,
            version: r.version,
            state: r.state.as_deref().map(raw),
            online: r.online,
            comment_rate: r.comment_rate,
            created_at: r.created_at,
            events: events.into_iter().map(|(_, p)| raw(p)).collect(),
            recovered,
            leaves: r.leaves,
            comments: r.comments,
        })
    }

    fn presence(&self, room: &str, page: &PageQuery, deadline: Instant) -> Result<PresencePage, BackendError> {
        self.gate(deadline)?;
        let w = self.world();
        let r = w.rooms.get(room).ok_or_else(|| BackendError::UnknownRoom(room.to_owned()))?;
        Ok(page.select(room, r.online, r.members.iter().filter(|m| page.admits(&m.user)).cloned()))
    }

    fn upstream(
        &self,
        op: UpstreamOp,
        body: &[u8],
        caller: &Caller,
        deadline: Instant,
    ) -> Result<Vec<u8>, BackendError> {
        self.gate(deadline)?;
        let mut w = self.world();
        w.upstream_calls.push((op, String::from_utf8_lossy(body).into_owned(), caller.clone()));
        if let Caller::Upstream { bearer } = caller {
            if !w.ingest_tokens.is_empty() && !bearer.as_ref().is_some_and(|b| w.ingest_tokens.contains(b)) {
                return Ok(reply_error("unauthorized", "not a valid ingest token"));
            }
        }
        let body: Value = serde_json::from_slice(body).expect("the admin port forwards JSON objects only");
        Ok(Self::apply(&mut w, op, &body))
    }

    fn counters(&self, deadline: Instant) -> Result<Metrics, BackendError> {
        self.gate(deadline)?;
        Ok(self.world().metrics.clone())
    }

    /// Each snapshot advances the fake clock and counters by one [`Step`], so the rates the
    /// dashboard shows are exact.
    fn snapshot(&self, deadline: Instant) -> Result<Snapshot, BackendError> {
        self.gate(deadline)?;
        let mut w = self.world();
        let step = w.step;
        w.snapshots += 1;
        // The fake clock starts at the wall clock and moves one step per snapshot.
        if w.clock_ms == 0 {
            w.clock_ms = now_ms();
        }
        w.clock_ms += step.ms.max(1);
        // A deterministic wobble of up to +-40% around the step's figures.
        let wobble = |n: u64, at: u64| if step.wave { n * (60 + (at * 37 % 81)) / 100 } else { n };
        let at = w.snapshots;
        let t = &mut w.metrics.totals;
        t.deliveries += wobble(step.deliveries, at);
        t.comments.accepted += wobble(step.comments, at + 3);
        t.slow_consumer_closes += step.slow;
        for _ in 0..step.errors_closes {
            t.closes.record(1008);
        }
        if w.metrics.workers.is_empty() {
            w.metrics.workers.push(WorkerLoad::default());
        }
        w.metrics.workers[0].write_stalls += step.stalls;
        let t = w.metrics.totals;
        let top = RoomsQuery::top(SNAPSHOT_TOP_ROOMS).select(Self::summaries(&w));
        self.snapshot_taken.notify_all();
        Ok(Snapshot {
            at_ms: w.clock_ms,
            connections: t.connections_open.sum(),
            rooms: w.rooms.len() as u64,
            online: w.rooms.values().map(|r| r.online).sum(),
            top_rooms: top.rooms,
            deliveries: t.deliveries,
            comments: t.comments.accepted,
            comments_rejected: t.comments.rejected.sum(),
            slow_consumer_closes: t.slow_consumer_closes,
            write_stalls: w.metrics.workers.iter().map(|l| l.write_stalls).sum(),
            errors: t.errors(),
        })
    }

    fn tap(&self, room: &str, deadline: Instant) -> Result<Tap, BackendError> {
        self.gate(deadline)?;
        let mut w = self.world();
        if !w.rooms.contains_key(room) {
            return Err(BackendError::UnknownRoom(room.to_owned()));
        }
        let (tx, rx) = tap_channel(admin::backend::TAP_CAPACITY);
        w.taps.push((room.to_owned(), tx));
        Ok(rx)
    }
}

/// The admin port on a free loopback port, answering from a fresh fake.
pub fn start(settings: AdminSettings) -> (AdminHandle, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let handle = start_on("127.0.0.1:0".parse().expect("addr"), &fake, settings);
    (handle, fake)
}

/// The admin port on `addr` (e.g. the address of one that was shut down), answering from
/// `fake`.
pub fn start_on(addr: SocketAddr, fake: &Arc<Fake>, settings: AdminSettings) -> AdminHandle {
    let listener = std::net::TcpListener::bind(addr).expect("bind the admin address");
    admin::spawn(listener, Arc::clone(fake) as Arc<dyn Backend>, settings).expect("admin port starts")
}

/// A member for presence lists.
pub fn member(user: &str, connections: u32) -> PresenceMember {
    PresenceMember {
        user: user.to_owned(),
        name: format!("{user} (name)"),
        joined_at: 1_700_000_000_000,
        last_seen: 1_700_000_005_000,
        silent_ms: 2_000,
        connections,
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON error body's `error`, after checking the status.
    pub fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "an error says why: {v}");
        v["error"].as_str().expect("error code").to_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut sock = TcpStream::connect(addr).expect("connect to the admin port");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    sock.set_write_timeout(Some(WAIT)).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).expect("write the request");
    // A server may answer (413) before reading the whole body and close: a failed write of
    // the rest is fine, the reply is what the test checks.
    let _ = sock.write_all(body);
    let mut raw = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!("reading the reply to {method} {path}: {e}"),
        }
        assert!(started.elapsed() < WAIT, "the reply to {method} {path} did not end within {WAIT:?}");
    }
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(raw).expect("an HTTP response") else {
        panic!("incomplete HTTP response: {}", String::from_utf8_lossy(raw));
    };
    let status = response.code.expect("status");
    let headers: Vec<(String, String)> =
        response.headers.iter().map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned())).collect();
    let rest = &raw[head_len..];
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    if let Some((_, len)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        assert_eq!(body.len(), len.parse::<usize>().expect("length"), "body length");
    }
    Reply { status, headers, body }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).expect("hex").trim(), 16).expect("hex");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `GET path` with optional bearer token.
pub fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(addr, "GET", path, &headers, b"")
}

/// `POST path` with a body and optional bearer token.
pub fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    headers.push(("Content-Type", "application/json"));
    request(addr, "POST", path, &headers, body.as_bytes())
}

/// A client of `/admin/stream`.
pub struct Stream {
    ws: tungstenite::WebSocket<TcpStream>,
}

/// Open `/admin/stream` with `query` (e.g. `room=live-1&token=t`); `Err` carries the HTTP
/// status of a refused upgrade.
pub fn stream(addr: SocketAddr, query: &str) -> Result<Stream, u16> {
    let sock = TcpStream::connect(addr).expect("connect to the admin port");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let url = format!("ws://{addr}/admin/stream?{query}");
    match tungstenite::client(url.as_str(), sock) {
        Ok((ws, _)) => Ok(Stream { ws }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("stream handshake: {e}"),
    }
}

impl Stream {
    /// The next JSON frame; panics on close or after [`WAIT`].
    pub fn next(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a frame from the stream") {
                tungstenite::Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                tungstenite::Message::Close(frame) => panic!("the stream closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next frame of `type` (others skipped), bounded by [`WAIT`] in all.
    pub fn next_of(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no `{kind}` frame within {WAIT:?}");
            let v = self.next();
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Read until the server closes; returns the close code.
    pub fn close_code(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "the stream did not close within {WAIT:?}");
            match self.ws.read() {
                Ok(tungstenite::Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

/// `s` percent-encoded for a URL path segment or query value (RFC 3986 unreserved kept).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
