//! A WebSocket echo server built from roomcast's own pure pieces (`wire::upgrade`,
//! `wire::frame`) over blocking std sockets, one thread per connection: every text and binary
//! message is sent back, pings are answered, a close is echoed. It exists to run the Autobahn
//! TestSuite's fuzzing client against the frame decoder before the server's own echo endpoint
//! (`testing.echo_path`) exists, and to reproduce a conformance failure in a few lines. It
//! is a test tool: no limits beyond the decoder's, no timeouts.
//!
//! Run: `cargo run --release --example echo -- [ADDR] [--tls CERT KEY TLS_ADDR]`
//! (default `127.0.0.1:9001`; upgrade path `/echo`). Prints `echo ready ws=ADDR wss=ADDR|off`.

use roomcast::wire::frame::{self, FrameReader, Incoming, Role};
use roomcast::wire::upgrade::{Handshake, UpgradePolicy};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::Arc;

/// Autobahn's largest messages are 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().filter(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "127.0.0.1:9001".into());
    let tls = match args.iter().position(|a| a == "--tls") {
        Some(i) => {
            let [cert, key, listen] = [1, 2, 3].map(|k| args.get(i + k).cloned().unwrap_or_default());
            let config = roomcast::tls::server_config(cert.as_ref(), key.as_ref(), Default::default())?;
            Some((config, TcpListener::bind(&listen)?))
        }
        None => None,
    };
    let plain = TcpListener::bind(&addr)?;
    let wss = tls.as_ref().and_then(|(_, l)| l.local_addr().ok()).map_or("off".into(), |a| a.to_string());
    println!("echo ready ws={} wss={wss}", plain.local_addr()?);
    if let Some((config, listener)) = tls {
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
                    serve(rustls::StreamOwned::new(conn, stream));
                });
            }
        });
    }
    for stream in plain.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
    Ok(())
}

/// The socket under a stream, to shut it down after the close handshake.
trait Socket: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

fn serve(mut stream: impl Socket) {
    let _ = stream.tcp().set_nodelay(true);
    let policy = UpgradePolicy { echo_path: Some("/echo".into()), ..UpgradePolicy::new("/ws") };
    let mut request = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (accepted, mut leftover) = loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        request.extend_from_slice(&buf[..n]);
        match policy.parse(&request) {
            Handshake::Incomplete => {}
            Handshake::Rejected(r) => {
                let _ = stream.write_all(&r.response);
                return;
            }
            Handshake::Accepted(a) => {
                let rest = request.split_off(a.consumed);
                break (a, rest);
            }
        }
    };
    if stream.write_all(&accepted.response).and_then(|()| stream.flush()).is_err() {
        return;
    }
    let mut reader = FrameReader::new(Role::Server);
    let mut out: Vec<bytes::Bytes> = Vec::new();
    let mut closing = false;
    let mut first = true;
    loop {
        let input: &mut [u8] = if first {
            first = false;
            &mut leftover
        } else {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => &mut buf[..n],
            }
        };
        let result = reader.feed(input, MAX_MESSAGE, |msg| {
            match msg {
                Incoming::Text(t) => out.push(frame::text_frame(t)),
                Incoming::Binary(b) => out.push(frame::binary_frame(b)),
                Incoming::Ping(p) => out.push(frame::pong_frame(p)),
                Incoming::Pong(_) => {}
                Incoming::Close(code, _) => {
                    // RFC 6455 5.5.1: the endpoint "typically echos the status code it received".
                    out.push(frame::close_frame(code.unwrap_or(frame::close_code::NORMAL), ""));
                    closing = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        if let Err(e) = result {
            out.push(frame::close_frame(e.close_code(), ""));
            closing = true;
        }
        for f in out.drain(..) {
            if stream.write_all(&f).is_err() {
                return;
            }
        }
        if stream.flush().is_err() {
            return;
        }
        if closing {
            // RFC 6455 7.1.1: the server closes the TCP connection first.
            let _ = stream.tcp().shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}
