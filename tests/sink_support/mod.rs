//! Shared harness for the sink tests: a recording [`DurableNotify`], record builders, a real
//! `redis-server` on a free loopback port, and a small HTTP receiver written here (std
//! `TcpListener`). Every wait has a deadline; child processes are killed on drop.

#![allow(dead_code, unreachable_pub)]

use roomcast::sink::{DurableNotify, SinkConfig, SinkRecord};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// Remembers the highest durable ticket per origin and wakes waiters.
#[derive(Default)]
pub struct Durable {
    seen: Mutex<(HashMap<u16, u64>, u64)>,
    changed: Condvar,
}

impl DurableNotify for Durable {
    fn durable(&self, origin: u16, ticket: u64) {
        let mut seen = self.seen.lock().expect("lock");
        let entry = seen.0.entry(origin).or_insert(0);
        assert!(ticket > *entry, "origin {origin}: ticket {ticket} reported after {}", *entry);
        *entry = ticket;
        seen.1 += 1;
        self.changed.notify_all();
    }
}

impl Durable {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The highest ticket reported for `origin` (0 = none).
    pub fn max(&self, origin: u16) -> u64 {
        self.seen.lock().expect("lock").0.get(&origin).copied().unwrap_or(0)
    }

    /// How many `durable` calls there were.
    pub fn calls(&self) -> u64 {
        self.seen.lock().expect("lock").1
    }

    /// Wait until `origin` is durable up to `ticket`; panics after [`WAIT`].
    pub fn wait_for(&self, origin: u16, ticket: u64) {
        let deadline = Instant::now() + WAIT;
        let mut seen = self.seen.lock().expect("lock");
        while seen.0.get(&origin).copied().unwrap_or(0) < ticket {
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| {
                panic!("origin {origin}: ticket {ticket} not durable within {WAIT:?} (at {:?})", seen.0.get(&origin))
            });
            seen = self.changed.wait_timeout(seen, left).expect("lock").0;
        }
    }
}

/// Poll `condition` until it holds; panics after [`WAIT`] with `what`. For states that have no
/// event to wait on (counters in metrics).
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A sink config writing into `dir` (file sink on, quick retries).
pub fn config_in(dir: &Path) -> SinkConfig {
    let mut c = SinkConfig::default();
    c.file.dir = dir.join("data");
    c.retry.initial_ms = 20;
    c.retry.max_ms = 200;
    c
}

/// Comment number `seq` in `room`, with a text naming its origin and ticket.
pub fn comment(room: &str, seq: u64, origin: u16, ticket: u64) -> SinkRecord {
    SinkRecord::Comment {
        room: room.into(),
        seq,
        id: format!("e1-{seq}"),
        user: format!("user{}", seq % 7),
        name: "Viewer".into(),
        text: format!("o{origin}t{ticket}"),
        ts_ms: 1_764_576_000_000 + ticket,
    }
}

/// The `(origin, ticket)` a [`comment`] was made for.
pub fn origin_ticket(text: &str) -> (u16, u64) {
    let rest = text.strip_prefix('o').expect("o");
    let (o, t) = rest.split_once('t').expect("t");
    (o.parse().expect("origin"), t.parse().expect("ticket"))
}

/// A generator of comments spread over `rooms` rooms, numbering each room's seq.
pub struct Flood {
    pub origin: u16,
    pub rooms: usize,
    pub next_ticket: u64,
    seqs: Vec<u64>,
}

impl Flood {
    pub fn new(origin: u16, rooms: usize) -> Self {
        Self { origin, rooms, next_ticket: 1, seqs: vec![0; rooms] }
    }

    /// The next record and its ticket (not yet consumed: call [`Flood::taken`] when it was).
    pub fn peek(&self) -> (u64, SinkRecord) {
        let t = self.next_ticket;
        let r = (t as usize) % self.rooms;
        (t, comment(&format!("room-{}-{r}", self.origin), self.seqs[r] + 1, self.origin, t))
    }

    pub fn taken(&mut self) {
        let r = (self.next_ticket as usize) % self.rooms;
        self.seqs[r] += 1;
        self.next_ticket += 1;
    }
}

/// Check that `records` (texts of comments, in stored order, per room) hold every ticket up
/// to `durable[origin]`, and that each room's first occurrences come in seq order.
pub fn check_all_durable_in_order(records: &[(String, u64, String)], durable: &HashMap<u16, u64>) {
    let mut seen: HashMap<(u16, u64), ()> = HashMap::new();
    let mut last_seq: HashMap<&str, u64> = HashMap::new();
    for (room, seq, text) in records {
        let (origin, ticket) = origin_ticket(text);
        if seen.insert((origin, ticket), ()).is_some() {
            continue; // at least once: a replayed duplicate
        }
        let last = last_seq.entry(room.as_str()).or_insert(0);
        if *seq != *last + 1 {
            let around: Vec<u64> = records.iter().filter(|r| &r.0 == room).map(|r| r.1).collect();
            let at = around.iter().position(|s| s == seq).unwrap_or(0);
            let later = around.iter().skip(at).any(|s| *s == *last + 1);
            panic!(
                "room {room}: seq {seq} after {last} (seq {} comes later: {later}); around: {:?}",
                *last + 1,
                &around[at.saturating_sub(5)..(at + 40).min(around.len())]
            );
        }
        *last = *seq;
    }
    for (&origin, &max) in durable {
        for ticket in 1..=max {
            assert!(seen.contains_key(&(origin, ticket)), "origin {origin}: durable ticket {ticket} missing");
        }
    }
}

// ---------------------------------------------------------------- redis-server

/// The `redis-server` binary the tests run.
pub fn redis_binary() -> PathBuf {
    let path = std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("/usr/bin/redis-server"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: install it with `apt-get install -y redis-server` (or set REDIS_SERVER)",
        path.display()
    );
    path
}

/// A `redis-server` child on a loopback port; killed (SIGKILL) on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl RedisServer {
    /// Start with `args` (e.g. `--appendonly yes`) in `dir`, on a free port (retrying if the
    /// port was taken in between).
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let mut server = Self { child: None, port: free_port(), args: args.clone(), dir: dir.to_owned() };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free port in 5 tries");
    }

    /// Start again on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        assert!(self.spawn(), "redis-server did not restart on port {}", self.port);
    }

    fn spawn(&mut self) -> bool {
        let mut child = Command::new(redis_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(&self.dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so redis never blocks on a full pipe.
                    continue;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("Ready to accept connections") => {
                    self.child = Some(child);
                    return true;
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// SIGKILL the server and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("client");
        client.get_connection_with_timeout(Duration::from_secs(5)).expect("connect")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- HTTP receiver

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Request {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
}

/// A webhook receiver on a loopback port: answers every `POST` with the current status.
pub struct Receiver {
    pub url: String,
    status: Arc<AtomicU16>,
    requests: Arc<(Mutex<Vec<Request>>, Condvar)>,
}

impl Receiver {
    pub fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let status = Arc::new(AtomicU16::new(status));
        let requests = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (s, r) = (Arc::clone(&status), Arc::clone(&requests));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                std::thread::spawn(move || serve(conn, &s, &r));
            }
        });
        Self { url, status, requests }
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.0.lock().expect("lock").clone()
    }

    /// Wait until `pred` holds for the requests so far.
    pub fn wait_for(&self, what: &str, mut pred: impl FnMut(&[Request]) -> bool) {
        let deadline = Instant::now() + WAIT;
        let mut got = self.requests.0.lock().expect("lock");
        while !pred(&got) {
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_else(|| panic!("timed out: {what}"));
            got = self.requests.1.wait_timeout(got, left).expect("lock").0;
        }
    }
}

fn serve(conn: TcpStream, status: &AtomicU16, requests: &(Mutex<Vec<Request>>, Condvar)) {
    let _ = conn.set_read_timeout(Some(WAIT));
    let mut writer = conn.try_clone().expect("clone");
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let code = status.load(Ordering::SeqCst);
        {
            let mut got = requests.0.lock().expect("lock");
            got.push(Request { headers, body, status: code });
            requests.1.notify_all();
        }
        let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Verify a webhook signature the way a receiver would, with an HMAC implementation other
/// than the one roomcast signs with.
pub fn verify_signature(secret: &[u8], request: &Request) -> bool {
    use hmac::Mac;
    let (Some(ts), Some(sig)) =
        (request.headers.get("x-roomcast-timestamp"), request.headers.get("x-roomcast-signature"))
    else {
        return false;
    };
    let Some(hex) = sig.strip_prefix("sha256=") else { return false };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else { return false };
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    expected == hex
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
