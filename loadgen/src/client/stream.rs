//! A client connection's bytes: plain TCP or TLS (rustls' buffered API over a non-blocking
//! mio socket), read into the thread's scratch buffer and written from the connection's own
//! outbound buffer. It knows nothing of WebSocket or of the protocol above it, and it must never
//! block: every call returns at `WouldBlock`.

use mio::net::TcpStream;
use roomcast::runtime::nonblocking;
use std::io::{self, Read, Write};
use std::sync::Arc;

/// The transport of one connection.
pub(super) enum Stream {
    /// Plain TCP (`ws://`).
    Plain(TcpStream),
    /// TLS over TCP (`wss://`), boxed: the rustls state is large.
    Tls(Box<(TcpStream, rustls::ClientConnection)>),
}

impl Stream {
    /// Wrap a connecting socket: in TLS when `tls` is given, naming `host` to the server.
    pub(super) fn new(sock: TcpStream, tls: Option<&Arc<rustls::ClientConfig>>, host: &str) -> io::Result<Self> {
        let Some(cfg) = tls else { return Ok(Self::Plain(sock)) };
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = rustls::ClientConnection::new(Arc::clone(cfg), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Self::Tls(Box::new((sock, tls))))
    }

    /// Whether this is a TLS connection whose handshake resumed an earlier session (so the
    /// server did not sign anything).
    pub(super) fn resumed(&self) -> bool {
        matches!(self, Self::Tls(t) if t.1.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }

    /// The socket, to register with the poller and ask whether it connected.
    pub(super) fn socket(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => &mut t.0,
        }
    }

    /// Read plaintext into `buf`: `Ok(0)` when the peer closed, `WouldBlock` when nothing is
    /// there yet.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(t) => {
                let (sock, tls) = &mut **t;
                loop {
                    if let Some(n) = nonblocking::call(|| tls.reader().read(buf))? {
                        return Ok(n);
                    }
                    if tls.read_tls(sock)? == 0 {
                        return Ok(0);
                    }
                    tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    while tls.wants_write() && nonblocking::call(|| tls.write_tls(sock))?.is_some() {}
                }
            }
        }
    }

    /// Write `out` (draining what was written); Ok(true) when all is out.
    pub(super) fn write(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        match self {
            Self::Plain(s) => {
                while !out.is_empty() {
                    let Some(n) = nonblocking::call(|| s.write(out))? else { return Ok(false) };
                    out.drain(..n);
                }
                Ok(true)
            }
            Self::Tls(t) => {
                let (sock, tls) = &mut **t;
                if !out.is_empty() {
                    tls.writer().write_all(out)?;
                    out.clear();
                }
                while tls.wants_write() {
                    if nonblocking::call(|| tls.write_tls(sock))?.is_none() {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }
}
