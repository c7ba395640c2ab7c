//! The byte layer under a viewer connection: a plain TCP stream or rustls over one.
//!
//! Everything above this module sees the same two operations, read plaintext into the worker's
//! scratch buffer and write an [`Outbound`] queue, so the WebSocket code is the same for ws
//! and wss. Writes are vectored: several queued frames go out in one `writev` (plain) or are
//! sealed together into as few TLS records as possible (rustls' `write_vectored`).
//!
//! TLS follows rustls' buffered API as in its `tlsserver-mio` example: `read_tls`,
//! `process_new_packets` (on error, what is pending, the alert, is still written), drain
//! `reader()`; write through `writer()` and `write_tls` while `wants_write()`. A write seals
//! the queued frames before it flushes, so records rustls already holds (the session ticket
//! made when the client's Finished arrived) leave in the same `writev` as the upgrade's 101
//! and `hello`: one write per connect fewer (the worker skips its after-read flush when the
//! read queued a reply).
//!
//! **What an idle wss connection costs, and why the buffered API stays (for now).** With
//! rustls 0.23.46 an idle `ServerConnection` holds about 7.5 KiB: 1,168 B inline (boxed here),
//! the record-layer keys of both directions, small queues, and a 4 KiB read buffer its deframer
//! keeps even when nothing is pending (`DeframerVecBuffer::prepare_read` resizes it to
//! `READ_SIZE` on every read). That buffer is half the cost and the one thing between roomcast
//! and uWS's ~5.6 KB (4 KiB is the aim). rustls 0.23's `rustls::unbuffered` API
//! (`UnbufferedServerConnection`) would remove it: the caller owns the bytes, so a worker would
//! decrypt in place in its one scratch buffer and keep per connection only a partial record
//! (almost always none), and seal straight into the socket's write. Weighed against that:
//! upstream's main branch removed the unbuffered API in 2026 for a replacement, so a transport
//! built on it is a rewrite again at the next major version, and it moves the state machine
//! (handshake flights, `WriteTraffic` vs `TransmitTlsData`, close_notify, key updates, the
//! alert on error) from rustls into this file, where a mistake is a security bug rather than a
//! slow path. The buffered API is the one upstream keeps, its `tlsserver-mio` shape is what the
//! rest of the shell mirrors, and the saving is memory, not CPU (~4 KiB x 100,000 viewers =
//! 400 MiB per box). So roomcast stays on it and keeps all of TLS behind [`Transport`]: when the
//! replacement API lands in a release, this file is the only one that changes, and the aim is
//! the plain transport's idle figure plus the record-layer keys. Nothing in this file may keep
//! a per-connection buffer of its own in the meantime.
//!
//! Resumption (tickets, the session cache) is configured in [`crate::tls`]; it adds nothing
//! here: a resumed connection is the same `ServerConnection` with the same idle cost.

use crate::session::outbound::Outbound;
use mio::net::TcpStream;
use rustls::ServerConnection;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

/// Frames handed to one `writev`; Linux accepts up to 1024, a few dozen cover a busy turn.
const WRITE_SLICES: usize = 64;

/// A viewer connection's bytes. See the module doc.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream>),
}

/// A rustls server connection and its socket.
#[derive(Debug)]
pub struct TlsStream {
    sock: TcpStream,
    tls: ServerConnection,
}

impl Transport {
    /// Wrap an accepted socket in a new TLS session.
    pub fn tls(sock: TcpStream, tls: ServerConnection) -> Self {
        Self::Tls(Box::new(TlsStream { sock, tls }))
    }

    /// The socket, for (re)registration with mio.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => &mut t.sock,
        }
    }

    /// Read plaintext into `buf`. `Ok(0)` is end of stream; `WouldBlock` means try again on
    /// the next readable event. For TLS this also runs the handshake; call [`Self::flush_tls`]
    /// afterwards so handshake records go out.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(t) => t.read(buf),
        }
    }

    /// Write as much of `out` as the socket takes. Returns true when everything (including
    /// TLS records rustls still held) is written.
    pub fn write(&mut self, out: &mut Outbound) -> io::Result<bool> {
        match self {
            Self::Plain(s) => write_plain(s, out),
            Self::Tls(t) => t.write(out),
        }
    }

    /// Write raw bytes that must go out before anything else (the HTTP upgrade response).
    /// They are small and the socket is fresh, so a short write is treated as an error.
    pub fn write_all_now(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(s) => {
                let n = s.write(bytes)?;
                if n == bytes.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::WriteZero, "short write of the upgrade response"))
                }
            }
            Self::Tls(t) => {
                t.tls.writer().write_all(bytes)?;
                t.flush().map(|_| ())
            }
        }
    }

    /// Push out TLS records rustls holds (handshake, alerts). True when nothing is left.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        match self {
            Self::Plain(_) => Ok(true),
            Self::Tls(t) => t.flush(),
        }
    }

    /// Stop writing: after our close frame, so the peer sees end of stream once it read it.
    pub fn shutdown_write(&mut self) {
        if let Self::Tls(t) = self {
            t.tls.send_close_notify();
            let _ = t.flush();
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}

fn write_plain(sock: &mut TcpStream, out: &mut Outbound) -> io::Result<bool> {
    while !out.is_empty() {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let n = out.slices(&mut slices);
        match sock.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => out.advance(written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Send the alert that explains the failure before the socket goes.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    fn write(&mut self, out: &mut Outbound) -> io::Result<bool> {
        loop {
            // Seal first, then write: records rustls already holds (a session ticket, an
            // earlier turn's rest) leave in the same `writev` as the new ones.
            let mut taken = 0;
            if !out.is_empty() {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let n = out.slices(&mut slices);
                // rustls seals the slices together into records; it takes less than offered
                // once its outgoing buffer is full, and the loop flushes before offering more.
                taken = self.tls.writer().write_vectored(&slices[..n])?;
                out.advance(taken);
            }
            let sealed = self.tls.wants_write();
            if !self.flush()? {
                return Ok(false);
            }
            if out.is_empty() {
                return Ok(true);
            }
            if taken == 0 && !sealed {
                // Nothing taken and nothing to flush: rustls holds the plaintext back (a
                // handshake still running); the next readable event moves it on.
                return Ok(false);
            }
        }
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
