//! Shared harness for the black-box tests: start a `roomcast` process on free loopback ports,
//! read its ready line, connect viewers with tungstenite's client (plain or rustls) and
//! upstreams to the ingest socket. Every wait is bounded; the server is killed on drop.

#![allow(dead_code, unreachable_pub)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running server; killed (SIGKILL) when dropped unless it already exited.
pub struct Server {
    child: Child,
    pub ws: String,
    pub wss: Option<String>,
    pub ingest: String,
    pub cert_pem: Option<String>,
    dir: Option<PathBuf>,
    stderr: Arc<std::sync::Mutex<String>>,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_roomcast")
}

fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("roomcast-test-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
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
        let mut dir = None;
        let mut cert_pem = None;
        if tls {
            let d = temp_dir("tls");
            let status = Command::new(bin())
                .args(["gen-cert", "--out"])
                .arg(&d)
                .stdout(Stdio::null())
                .status()
                .expect("gen-cert runs");
            assert!(status.success(), "gen-cert failed");
            cert_pem = Some(std::fs::read_to_string(d.join("cert.pem")).expect("cert written"));
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
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server starts");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).expect("server prints its ready line");
        let field =
            |name: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{name}="))).map(str::to_owned);
        assert!(line.starts_with("roomcast ready"), "unexpected first line: {line:?}");
        let wss = field("wss").filter(|v| v != "off");
        Self {
            child,
            ws: field("ws").expect("ws address"),
            wss,
            ingest: field("ingest").expect("ingest address"),
            cert_pem,
            dir,
            stderr,
        }
    }

    /// What the server logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        #[allow(unsafe_code)]
        // SAFETY: kill has no memory effects; pid is our live child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open a plain viewer connection as `user` and read its `hello`.
    pub fn viewer(&self, user: &str) -> Viewer {
        let stream = TcpStream::connect(&self.ws).expect("connect ws");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let url = format!("ws://{}/ws?user={user}", self.ws);
        let (ws, _) = tungstenite::client(url, MaybeTlsStream::Plain(stream)).expect("upgrade");
        let mut v = Viewer { ws };
        let hello = v.next_json();
        assert_eq!(hello["op"], "hello", "first message is hello");
        v
    }

    /// Open a plain viewer whose socket receive buffer is tiny (which also turns off the
    /// kernel's buffer autotuning), so a viewer that stops reading backs up into the server
    /// quickly instead of into tens of megabytes of kernel memory.
    pub fn viewer_small_window(&self, user: &str) -> Viewer {
        let addr: std::net::SocketAddr = self.ws.parse().expect("address");
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        socket.connect(&addr.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let url = format!("ws://{}/ws?user={user}", self.ws);
        let (ws, _) = tungstenite::client(url, MaybeTlsStream::Plain(stream)).expect("upgrade");
        let mut v = Viewer { ws };
        assert_eq!(v.next_json()["op"], "hello");
        v
    }

    /// Open a TLS viewer connection as `user` and read its `hello`.
    pub fn tls_viewer(&self, user: &str) -> Viewer {
        let addr = self.wss.as_ref().expect("server has wss");
        let stream = TcpStream::connect(addr).expect("connect wss");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let config =
            roomcast::tls::client_config_trusting(self.cert_pem.as_deref().expect("cert")).expect("client config");
        let url = format!("wss://localhost:{}/ws?user={user}", addr.rsplit(':').next().expect("port"));
        let (ws, _) =
            tungstenite::client_tls_with_config(url, stream, None, Some(tungstenite::Connector::Rustls(config)))
                .expect("tls upgrade");
        let mut v = Viewer { ws };
        assert_eq!(v.next_json()["op"], "hello");
        v
    }

    /// A connection to the ingest socket.
    pub fn upstream(&self) -> Upstream {
        let stream = TcpStream::connect(&self.ingest).expect("connect ingest");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Upstream { reader: BufReader::new(stream.try_clone().expect("clone")), writer: stream }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A viewer connection.
pub struct Viewer {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

/// What reading a viewer produced.
#[derive(Debug)]
pub enum Got {
    Json(Value),
    Closed(Option<u16>),
}

impl Viewer {
    pub fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    /// The next text message or close, skipping pings and pongs.
    pub fn next(&mut self) -> Got {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Got::Json(serde_json::from_str(&t).expect("server sends JSON")),
                Ok(Message::Close(frame)) => return Got::Closed(frame.map(|f| u16::from(f.code))),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Got::Closed(None)
                }
                Err(e) => panic!("read failed: {e}"),
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

    /// Skip messages until one with `op`, returning it.
    pub fn until_op(&mut self, op: &str) -> Value {
        loop {
            let v = self.next_json();
            if v["op"] == op {
                return v;
            }
        }
    }

    /// Read until the close frame and return its code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
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

/// Close code as a number, for comparisons with tungstenite's enum.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
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
        serde_json::from_str(&line).expect("reply is JSON")
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

    /// True when the server closed the connection (reads end of stream).
    pub fn is_closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.reader.read_line(&mut line), Ok(0))
    }
}
