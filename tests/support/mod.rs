//! Shared harness for the black-box tests: start a `roomcast` process on free loopback ports,
//! read its ready line, connect viewers with tungstenite's client (plain, or rustls with a
//! client config built here from the generated certificate, never from the server's own TLS
//! code) and upstreams to the ingest socket. Every wait is bounded; the server is killed on
//! drop, and its log is printed when the test is failing.
//!
//! A [`Crowd`] holds hundreds of viewers in one thread: after the handshake their sockets turn
//! non-blocking and a mio poll wakes the thread for whichever has bytes.

#![allow(dead_code, unreachable_pub)]

use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// The most of the server log a failing test prints.
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// A running server; killed (SIGKILL) when dropped unless it already exited.
pub struct Server {
    child: Child,
    pub ws: String,
    pub wss: Option<String>,
    pub ingest: String,
    pub admin: Option<String>,
    pub cert_pem: Option<String>,
    dir: Option<PathBuf>,
    /// The sinks' data directory.
    pub data: PathBuf,
    log: Arc<Mutex<String>>,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_roomcast")
}

/// A fresh directory under the system temp dir, unique to this process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("roomcast-test-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Copy everything `from` produces into `log`, line by line, each line prefixed, until end of
/// stream.
fn drain_into(from: impl Read + Send + 'static, log: Arc<Mutex<String>>, prefix: &'static str) {
    std::thread::spawn(move || {
        // Whole lines only, so a reader of the log never sees half of one.
        let mut from = BufReader::new(from);
        let mut line = Vec::new();
        while from.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if let Ok(mut s) = log.lock() {
                s.push_str(prefix);
                s.push_str(&String::from_utf8_lossy(&line));
            }
            line.clear();
        }
    });
}

/// A rustls client config that trusts exactly the certificates in `cert_pem`, with the
/// protocol versions given (all safe defaults when empty).
pub fn client_tls_config(
    cert_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(cert.expect("certificate PEM parses")).expect("certificate is a usable root");
    }
    assert!(!roots.is_empty(), "cert.pem holds no certificate");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()));
    let builder = if versions.is_empty() {
        builder.with_safe_default_protocol_versions()
    } else {
        builder.with_protocol_versions(versions)
    }
    .expect("ring supports these protocol versions");
    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
}

impl Server {
    /// A plain server with 2 workers and `extra` flags.
    pub fn start(extra: &[&str]) -> Self {
        Self::spawn(extra, false)
    }

    /// A server that also serves wss with a fresh self-signed certificate.
    pub fn start_tls(extra: &[&str]) -> Self {
        Self::spawn(extra, true)
    }

    fn spawn(extra: &[&str], tls: bool) -> Self {
        let mut args: Vec<String> = [
            "serve",
            "--workers",
            "2",
            "--ws-listen",
            "127.0.0.1:0",
            "--ingest-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Its durable sinks write into a directory of its own, removed with the server.
        let data = temp_dir("data");
        if !extra.contains(&"--sink-dir") {
            args.extend(["--sink-dir".to_owned(), data.display().to_string()]);
        }
        let mut dir = None;
        let mut cert_pem = None;
        if tls {
            let d = temp_dir("tls");
            let out = Command::new(bin()).args(["gen-cert", "--out"]).arg(&d).output().expect("gen-cert runs");
            assert!(out.status.success(), "gen-cert failed: {}", String::from_utf8_lossy(&out.stderr));
            cert_pem = Some(std::fs::read_to_string(d.join("cert.pem")).expect("gen-cert wrote cert.pem"));
            assert!(d.join("key.pem").exists(), "gen-cert wrote key.pem");
            args.extend(["--wss-listen".into(), "127.0.0.1:0".into(), "--tls-cert".into()]);
            args.push(d.join("cert.pem").display().to_string());
            args.push("--tls-key".into());
            args.push(d.join("key.pem").display().to_string());
            dir = Some(d);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(bin())
            .args(&args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server starts");
        let log = Arc::new(Mutex::new(String::new()));
        drain_into(child.stderr.take().expect("stderr piped"), Arc::clone(&log), "");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let rest_of_stdout = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so a later print never meets a closed pipe.
            drain_into(reader, rest_of_stdout, "[stdout] ");
        });
        let mut server =
            Self { child, ws: String::new(), wss: None, ingest: String::new(), admin: None, cert_pem, dir, data, log };
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => panic!("no ready line within {WAIT:?}; args {args:?}"),
        };
        assert!(line.starts_with("roomcast ready "), "unexpected first stdout line: {line:?}");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("ready line {line:?} lacks {name}="))
        };
        let on = |v: String| (v != "off").then_some(v);
        server.ws = on(field("ws")).expect("ws listener is on");
        server.wss = on(field("wss"));
        server.ingest = on(field("ingest")).expect("ingest listener is on");
        server.admin = on(field("admin"));
        assert_eq!(server.wss.is_some(), tls, "wss= in the ready line matches the TLS flags: {line:?}");
        server
    }

    /// What the server logged so far (for failure messages).
    /// The log once `done` says it holds what a test waits for (the log arrives through a
    /// pipe, so there is no other event to wait on); fails after [`WAIT`].
    pub fn wait_for_log(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if done(&log) {
                return log;
            }
            assert!(Instant::now() < deadline, "the server log never showed what was expected:\n{log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Send `signal` to the server process.
    pub fn signal(&self, signal: i32) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) touches no memory of ours; the pid is our own child, not yet reaped
        // (we only reap in `wait_exit` and `drop`), so it cannot name another process.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed: {}", self.pid(), std::io::Error::last_os_error());
    }

    /// Wait, bounded by [`WAIT`], for the process to exit and return its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the server") {
                return status;
            }
            assert!(Instant::now() < deadline, "server still running {WAIT:?} after the signal\n{}", self.log());
            // Polling a child's exit status has no readiness event to wait on.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Connect a TCP socket to `addr` with [`WAIT`] as read and write timeout.
    fn tcp(addr: &str) -> TcpStream {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(WAIT)).expect("set read timeout");
        stream.set_write_timeout(Some(WAIT)).expect("set write timeout");
        stream.set_nodelay(true).expect("set nodelay");
        stream
    }

    /// A TCP socket to `addr` whose receive buffer is tiny (which also turns off the kernel's
    /// buffer autotuning), so a viewer that stops reading backs up into the server quickly
    /// instead of into megabytes of kernel memory.
    fn small_window_tcp(addr: &str) -> TcpStream {
        let addr: std::net::SocketAddr = addr.parse().expect("socket address");
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(4096).expect("set SO_RCVBUF");
        socket.connect(&addr.into()).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT)).expect("set read timeout");
        stream.set_write_timeout(Some(WAIT)).expect("set write timeout");
        stream
    }

    /// Upgrade `stream` (to the ws or, with `tls`, the wss listener) as `user`; no hello read.
    fn upgrade(
        &self,
        stream: TcpStream,
        user: &str,
        tls: Option<&[&'static rustls::SupportedProtocolVersion]>,
    ) -> Viewer {
        let (ws, response) = match tls {
            None => {
                let url = format!("ws://{}/ws?user={user}", self.ws);
                tungstenite::client(url, MaybeTlsStream::Plain(stream)).expect("ws upgrade")
            }
            Some(versions) => {
                let addr = self.wss.as_ref().expect("server has wss");
                let config = client_tls_config(self.cert_pem.as_deref().expect("cert"), versions);
                let port = addr.rsplit(':').next().expect("port");
                let url = format!("wss://localhost:{port}/ws?user={user}");
                tungstenite::client_tls_with_config(url, stream, None, Some(tungstenite::Connector::Rustls(config)))
                    .expect("wss upgrade")
            }
        };
        assert_eq!(response.status(), 101);
        Viewer { ws }
    }

    /// Upgrade a plain socket to a viewer as `user` (no hello read yet).
    pub fn viewer_raw(&self, user: &str) -> Viewer {
        self.upgrade(Self::tcp(&self.ws), user, None)
    }

    /// Open a plain viewer connection as `user` and read its `hello`.
    pub fn viewer(&self, user: &str) -> Viewer {
        let mut v = self.viewer_raw(user);
        v.expect_hello();
        v
    }

    /// Open a viewer that, after its upgrade, answers nothing, not even the server's pings:
    /// what a frozen client or a dead network path looks like to the server.
    pub fn deaf_viewer(&self, user: &str) -> DeafViewer {
        let mut sock = TcpStream::connect(&self.ws).expect("connect");
        sock.set_read_timeout(Some(WAIT)).expect("read timeout");
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = format!(
            "GET /ws?user={user} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.ws
        );
        sock.write_all(request.as_bytes()).expect("send the upgrade");
        let mut deaf = DeafViewer { sock, buf: Vec::new() };
        let head = deaf.read_until(b"\r\n\r\n");
        assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused: {}", String::from_utf8_lossy(&head));
        deaf
    }

    /// Open a plain viewer with a tiny receive window (see `small_window_tcp`), read `hello`.
    pub fn viewer_small_window(&self, user: &str) -> Viewer {
        let mut v = self.upgrade(Self::small_window_tcp(&self.ws), user, None);
        v.expect_hello();
        v
    }

    /// Open a TLS viewer with a tiny receive window, read `hello`.
    pub fn tls_viewer_small_window(&self, user: &str) -> Viewer {
        let addr = self.wss.clone().expect("server has wss");
        let mut v = self.upgrade(Self::small_window_tcp(&addr), user, Some(&[]));
        v.expect_hello();
        v
    }

    /// Open a TLS viewer connection as `user` (safe default TLS versions) and read its `hello`.
    pub fn tls_viewer(&self, user: &str) -> Viewer {
        self.tls_viewer_with(user, &[])
    }

    /// Open a TLS viewer limited to `versions` and read its `hello`.
    pub fn tls_viewer_with(&self, user: &str, versions: &[&'static rustls::SupportedProtocolVersion]) -> Viewer {
        let addr = self.wss.clone().expect("server has wss");
        let mut v = self.upgrade(Self::tcp(&addr), user, Some(versions));
        v.expect_hello();
        v
    }

    /// A connection to the ingest socket.
    pub fn upstream(&self) -> Upstream {
        let stream = Self::tcp(&self.ingest);
        Upstream { reader: BufReader::new(stream.try_clone().expect("clone")), writer: stream }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let mut from = log.len().saturating_sub(LOG_TAIL_BYTES);
            while !log.is_char_boundary(from) {
                from += 1;
            }
            eprintln!(
                "---- roomcast log (last {} bytes) ----\n{}\n---- end of log ----",
                log.len() - from,
                &log[from..]
            );
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A viewer connection.
pub struct Viewer {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

/// What reading a viewer produced.
#[derive(Debug, PartialEq)]
pub enum Got {
    Json(Value),
    Closed(Option<u16>),
}

impl Viewer {
    /// The TCP socket under the WebSocket (and TLS, if any).
    pub fn tcp(&self) -> &TcpStream {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => s,
            MaybeTlsStream::Rustls(s) => s.get_ref(),
            _ => unreachable!("only plain and rustls streams are built here"),
        }
    }

    /// Read the first message and check it is `hello`.
    pub fn expect_hello(&mut self) -> Value {
        let hello = self.next_json();
        assert_eq!(hello["op"], "hello", "first message is hello: {hello}");
        hello
    }

    pub fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    /// The next text message or close, skipping pings and pongs.
    pub fn next(&mut self) -> Got {
        self.try_next().unwrap_or_else(|e| panic!("read failed: {e}"))
    }

    /// Like [`Viewer::next`], but a read error (such as the read timeout) is returned.
    pub fn try_next(&mut self) -> Result<Got, tungstenite::Error> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return Ok(Got::Json(
                        serde_json::from_str(&t).unwrap_or_else(|e| panic!("server sent non-JSON {t:?}: {e}")),
                    ))
                }
                Ok(Message::Close(frame)) => return Ok(Got::Closed(frame.map(|f| u16::from(f.code)))),
                Ok(Message::Binary(b)) => panic!("server sent a binary message: {b:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Got::Closed(None))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next JSON message; fails on a close.
    pub fn next_json(&mut self) -> Value {
        match self.next() {
            Got::Json(v) => v,
            Got::Closed(code) => panic!("connection closed ({code:?}) while a message was expected"),
        }
    }

    /// The next message that is not coalesced noise (`presence`, `reactions`), which may
    /// arrive at any moment and carries no seq.
    pub fn next_msg(&mut self) -> Value {
        loop {
            let v = self.next_json();
            if v["op"] != "presence" && v["op"] != "reactions" {
                return v;
            }
        }
    }

    /// Skip messages until one with `op`, returning it (within [`WAIT`] overall).
    pub fn until_op(&mut self, op: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no {op:?} within {WAIT:?}");
            let v = self.next_json();
            if v["op"] == op {
                return v;
            }
        }
    }

    /// Read until the close frame and return its code (within [`WAIT`] overall, however
    /// many pings and messages arrive meanwhile).
    pub fn close_code(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no close frame within {WAIT:?}");
            if let Got::Closed(code) = self.next() {
                return code;
            }
        }
    }

    pub fn join(&mut self, room: &str) -> Value {
        self.send_json(serde_json::json!({"op": "join", "room": room}));
        self.until_op("joined")
    }
}

/// A viewer that never writes after its upgrade. See [`Server::deaf_viewer`].
pub struct DeafViewer {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl DeafViewer {
    /// Send `join room` (its one frame, masked as RFC 6455 5.3 asks of a client) and read
    /// until `joined` (pings on the way are not answered); the `joined`.
    pub fn join(&mut self, room: &str) -> Value {
        let text = serde_json::json!({"op": "join", "room": room}).to_string();
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).expect("a join fits a short frame")];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.sock.write_all(&frame).expect("send the join");
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no joined within {WAIT:?}");
            match self.frame() {
                Some((0x1, payload)) => {
                    let m: Value = serde_json::from_slice(&payload).expect("JSON text");
                    if m["op"] == "joined" {
                        return m;
                    }
                }
                Some(_) => {}
                None => panic!("closed before joined"),
            }
        }
    }

    /// Read until `end` appears; everything up to and including it.
    fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                return self.buf.drain(..at + end.len()).collect();
            }
            assert!(Instant::now() < deadline, "nothing ended with {end:?} within {WAIT:?}");
            self.fill();
        }
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = self.sock.read(&mut chunk).expect("read from the server");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next server frame (RFC 6455 5.2: unmasked from a server): opcode and payload, or
    /// `None` at end of stream.
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

    /// Read (without answering anything) until the server's close frame; its code. Counts
    /// the pings seen on the way.
    pub fn close_code(&mut self) -> (Option<u16>, usize) {
        let deadline = Instant::now() + WAIT;
        let mut pings = 0;
        loop {
            assert!(Instant::now() < deadline, "no close frame within {WAIT:?}");
            match self.frame() {
                Some((0x8, payload)) => {
                    return (payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])), pings);
                }
                Some((0x9, _)) => pings += 1,
                Some(_) => {}
                None => return (None, pings),
            }
        }
    }
}

/// Close code as a number, for comparisons with tungstenite's enum.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// One JSON line per command, for pipelining.
pub fn ndjson<'a>(commands: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for c in commands {
        out.push_str(&c.to_string());
        out.push('\n');
    }
    out
}

/// An ingest connection.
pub struct Upstream {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Upstream {
    pub fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).expect("write");
        self.writer.write_all(b"\n").expect("write");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    pub fn reply(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("reply arrives");
        assert!(n > 0, "ingest connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
    }

    /// Send one command and read its reply.
    pub fn call(&mut self, v: Value) -> Value {
        self.send_line(&v.to_string());
        self.reply()
    }

    /// The reading and writing halves, for a writer thread next to a reading test.
    pub fn into_split(self) -> (BufReader<TcpStream>, TcpStream) {
        (self.reader, self.writer)
    }

    /// True when the server closed the connection: the read ends the stream, or is reset
    /// (a socket closed while lines it had not read were still arriving ends in RST, not FIN).
    pub fn is_closed(&mut self) -> bool {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }
}

/// Many viewers served by one thread. Sockets are non-blocking after [`Crowd::add`]; a mio
/// poll (edge-triggered) says which to read, and each is read until it would block.
pub struct Crowd {
    pub members: Vec<Viewer>,
    poll: mio::Poll,
}

impl Default for Crowd {
    fn default() -> Self {
        Self::new()
    }
}

impl Crowd {
    pub fn new() -> Self {
        Self { members: Vec::new(), poll: mio::Poll::new().expect("mio poll") }
    }

    /// Take over `viewer` (whose handshake is done); returns its index.
    pub fn add(&mut self, viewer: Viewer) -> usize {
        let index = self.members.len();
        viewer.tcp().set_nonblocking(true).expect("set non-blocking");
        let fd = viewer.tcp().as_raw_fd();
        self.poll
            .registry()
            .register(&mut mio::unix::SourceFd(&fd), mio::Token(index), mio::Interest::READABLE)
            .expect("register with mio");
        self.members.push(viewer);
        index
    }

    /// Read every member that has something, handing each JSON message to `on_msg(index, msg)`,
    /// until `on_msg` has returned true for every member ("this one is done"), or fail at
    /// `deadline` naming `what` was awaited. A close or a read error fails at once.
    pub fn pump(&mut self, deadline: Instant, what: &str, mut on_msg: impl FnMut(usize, Value) -> bool) {
        let mut done = vec![false; self.members.len()];
        let mut left = self.members.len();
        // Messages may already sit in tungstenite's or rustls' buffers, where no readiness
        // event will announce them: read every member once first.
        let mut ready: Vec<usize> = (0..self.members.len()).collect();
        let mut events = mio::Events::with_capacity(1024);
        while left > 0 {
            for &i in &ready {
                loop {
                    match self.members[i].ws.read() {
                        Ok(Message::Text(t)) => {
                            let v: Value =
                                serde_json::from_str(&t).unwrap_or_else(|e| panic!("member {i}: non-JSON {t:?}: {e}"));
                            if on_msg(i, v) && !done[i] {
                                done[i] = true;
                                left -= 1;
                            }
                        }
                        Ok(Message::Close(frame)) => {
                            panic!("member {i} closed by the server ({frame:?}) while waiting for {what}")
                        }
                        Ok(Message::Binary(_)) => panic!("member {i}: binary message"),
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => panic!("member {i}: read failed while waiting for {what}: {e}"),
                    }
                }
            }
            if left == 0 {
                break;
            }
            let now = Instant::now();
            assert!(now < deadline, "{left} of {} members still waiting for {what} at the deadline", done.len());
            match self.poll.poll(&mut events, Some(deadline - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("mio poll: {e}"),
            }
            ready = events.iter().map(|e| e.token().0).collect();
        }
    }
}
