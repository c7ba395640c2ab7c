//! The byte layer under a viewer connection: a plain TCP stream or rustls over one.
//!
//! Everything above this module sees the same two operations, read plaintext into the worker's
//! scratch buffer and write an [`Outbound`] queue, so the WebSocket code is the same for ws
//! and wss. Writes are vectored: several queued frames go out in one `writev` (plain) or are
//! sealed together into as few TLS records as possible, written in one `writev` with whatever
//! TLS records were still waiting (a session ticket, a slow reader's rest); a single buffer,
//! what most writes of a fan-out are, goes out with `send` (see [`send`]).
//!
//! **TLS uses rustls' unbuffered API, because an idle connection must not hold buffers.** The
//! buffered `ServerConnection` keeps a 4 KiB read buffer per connection even when nothing is
//! pending (its deframer resizes it to `READ_SIZE` on every read) and queues of its own for the
//! records it seals: half of what an idle wss connection cost (8.2 KB against uWS's 5.6 KB;
//! BENCHMARKS.md, issue 13). With `UnbufferedServerConnection` the caller owns the bytes:
//!
//! - a worker reads ciphertext into one [`TlsBuffers`] of its own (64 KiB, shared by all its
//!   connections), rustls decrypts the records there, and the plaintext is copied into the
//!   worker's read scratch; a connection keeps only the tail of a record that has not fully
//!   arrived ([`TlsStream::unread`], empty and unallocated almost always);
//! - queued frames are copied into the worker's staging buffer (up to a record's 16 KiB) and
//!   sealed into its sealing buffer, one record for many frames, which goes straight to the
//!   socket; only what the socket does not take stays with the connection
//!   ([`TlsStream::unsent`], freed once written). The buffered API allocated two chunks per
//!   write (the plaintext's copy and the record); this path allocates nothing per delivery.
//!
//! So an idle wss connection holds the rustls state (keys of both directions, the key
//! schedule) and the socket, nothing else: 4.0 KB in all against 8.2 KB before (BENCHMARKS.md,
//! "Memory per idle connection"). A slow reader's `unsent` is bounded: frames are sealed only
//! while less than [`SEAL_LEN`] waits there, so it holds at most that plus one sealing (about
//! 82 KiB), beside the outbound budget that decides its 4009 (the buffered API held up to its
//! 64 KiB buffer limit the same way).
//!
//! Weighed against that: upstream's main branch removed the unbuffered API in 2026 for a
//! replacement, so this file changes again at rustls' next major version (the rest of the
//! shell does not: all of TLS stays behind [`Transport`]). And the state machine's dispatch
//! (handshake flights, `WriteTraffic`, close_notify, the alert on error) moves from rustls'
//! buffered wrapper into this file; what rustls decides (every handshake message, every
//! record's keys, key updates, what is an error) stays in rustls. The rules this file keeps,
//! from the API's contract:
//!
//! - `discard` bytes leave the front of the incoming bytes before the next
//!   `process_tls_records`; a connection's `unread` bytes are exactly the front that remains
//!   (rustls' handshake joiner keeps offsets into it), so every call passes them, the write
//!   path's too, never an empty slice in their place.
//! - Handshake records (`EncodeTlsData`) are appended to `unsent` in the order they come and
//!   marked done at once: they leave, in order, before any application record sealed after them.
//! - On an error, rustls has queued the alert that explains it: it is encoded and written (best
//!   effort) before the connection is reported broken, and the session is not driven again.
//! - A peer's close_notify is end of stream for the reader; our close_notify is sealed by
//!   [`Transport::shutdown_write`] after our close frame.
//! - 0-RTT is off in the config ([`crate::tls`]), so early data never arrives; if it did, the
//!   connection would fail rather than take it.
//!
//! Resumption (tickets, the session cache) is configured in [`crate::tls`]; it adds nothing
//! here: a resumed connection is the same rustls state with the same idle cost.

use super::nonblocking;
use crate::session::outbound::Outbound;
use mio::net::TcpStream;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, UnbufferedStatus, WriteTraffic,
};
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

/// Frames handed to one `writev`; Linux accepts up to 1024, a few dozen cover a busy turn.
const WRITE_SLICES: usize = 64;
/// The most plaintext one TLS record carries (RFC 8446 5.1).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// The largest record on the wire: header, payload and the expansion TLS 1.2 allows (rustls'
/// own limit, `MAX_WIRE_SIZE`).
const MAX_RECORD_WIRE: usize = 5 + MAX_RECORD_PLAINTEXT + 2048;
/// Ciphertext read at once: several records, and the largest handshake message rustls joins
/// (64 KiB) fits.
const TLS_READ_LEN: usize = 64 * 1024;
/// Records sealed before they are written: with [`MAX_RECORD_WIRE`] of room left past it, so
/// a record always fits.
const SEAL_LEN: usize = 32 * 1024;
/// Handshake calls in a row that make no progress before the connection is given up on: rustls
/// answers every call with a new state, so a loop that long is a bug, not a peer.
const MAX_STEPS: usize = 64;

/// A worker's TLS buffers, shared by all its connections (see the module doc). Allocated
/// zeroed, so a worker without a wss listener never touches their pages.
pub struct TlsBuffers {
    incoming: Box<[u8]>,
    sealed: Box<[u8]>,
    staging: Vec<u8>,
}

impl TlsBuffers {
    /// One worker's buffers.
    pub fn new() -> Self {
        Self {
            incoming: vec![0; TLS_READ_LEN].into_boxed_slice(),
            sealed: vec![0; SEAL_LEN + MAX_RECORD_WIRE].into_boxed_slice(),
            staging: Vec::new(),
        }
    }
}

impl Default for TlsBuffers {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TlsBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsBuffers").finish_non_exhaustive()
    }
}

/// A viewer connection's bytes. See the module doc.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream>),
}

/// A rustls server connection, its socket, and the bytes the worker's buffers could not keep.
pub struct TlsStream {
    sock: TcpStream,
    tls: UnbufferedServerConnection,
    /// Ciphertext read but not yet processed: the start of a record still arriving (or of a
    /// handshake message spanning records). Empty, without an allocation, almost always.
    unread: Vec<u8>,
    /// TLS records the socket has not taken yet, oldest first: handshake flights, a ticket,
    /// the rest of a write a slow reader left. Empty, without an allocation, once written.
    unsent: Vec<u8>,
    /// The peer ended the TLS stream (close_notify): reads return end of stream.
    peer_closed: bool,
    /// This read's last socket read took less than it asked for, and nothing read waits to
    /// be returned: asking again before the next readable event would get `WouldBlock`.
    drained: bool,
    /// rustls refused the peer's bytes and its alert is out: reads and writes fail, and the
    /// session is not driven again.
    failed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("sock", &self.sock)
            .field("unread", &self.unread.len())
            .field("unsent", &self.unsent.len())
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Wrap an accepted socket in a new TLS session.
    pub fn tls(sock: TcpStream, tls: UnbufferedServerConnection) -> Self {
        Self::Tls(Box::new(TlsStream {
            sock,
            tls,
            unread: Vec::new(),
            unsent: Vec::new(),
            peer_closed: false,
            drained: false,
            failed: false,
        }))
    }

    /// The socket, for (re)registration with mio.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => &mut t.sock,
        }
    }

    /// Read plaintext into `buf` (at least [`MAX_RECORD_PLAINTEXT`] long: a record is never
    /// split). `Ok(0)` is end of stream; `WouldBlock` means try again on the next readable
    /// event. For TLS this also runs the handshake; call [`Self::flush_tls`] afterwards so
    /// handshake records go out.
    pub fn read(&mut self, buf: &mut [u8], bufs: &mut TlsBuffers) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(t) => t.read(buf, bufs),
        }
    }

    /// Whether the read that returned `n` of `asked` bytes emptied the socket (it took less
    /// than it asked for), so that asking again now would only get `WouldBlock`.
    pub fn drained(&self, n: usize, asked: usize) -> bool {
        match self {
            Self::Plain(_) => n < asked,
            Self::Tls(t) => t.drained,
        }
    }

    /// Write as much of `out` as the socket takes. Returns true when everything (including
    /// TLS records still waiting) is written.
    pub fn write(&mut self, out: &mut Outbound, bufs: &mut TlsBuffers) -> io::Result<bool> {
        match self {
            Self::Plain(s) => write_plain(s, out),
            Self::Tls(t) => t.write(out, bufs),
        }
    }

    /// Push out TLS records still waiting (handshake, alerts). True when nothing is left.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        match self {
            Self::Plain(_) => Ok(true),
            Self::Tls(t) => t.send(&[]),
        }
    }

    /// Stop writing: after our close frame, so the peer sees end of stream once it read it.
    pub fn shutdown_write(&mut self) {
        if let Self::Tls(t) = self {
            t.send_close_notify();
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }
}

fn write_plain(sock: &mut TcpStream, out: &mut Outbound) -> io::Result<bool> {
    while !out.is_empty() {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let n = out.slices(&mut slices);
        let sent = nonblocking::call(|| match &slices[..n] {
            [one] => send(sock, one),
            many => sock.write_vectored(many),
        });
        match sent? {
            Some(0) => return Err(io::ErrorKind::WriteZero.into()),
            Some(written) => out.advance(written),
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// One buffer to the socket with `send(2)`: most writes of a fan-out are one frame (or one
/// record), and `send` goes straight to the socket layer where `write`/`writev` pass through
/// the VFS first (`vfs_writev` and `fdget_pos` were 9% of the server's CPU in a profile of the
/// 19,000-viewer fan-out; BENCHMARKS.md, issue 13). A closed peer is an `EPIPE` error, never a
/// `SIGPIPE` (`MSG_NOSIGNAL` on Linux; mio sets `SO_NOSIGPIPE` on Apple systems; and Rust's
/// runtime ignores the signal anyway).
fn send(sock: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    const FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    const FLAGS: libc::c_int = 0;
    socket2::SockRef::from(sock).send_with_flags(buf, FLAGS)
}

/// Where processing the bytes at hand left a read.
enum Step {
    /// The records at hand are used up (or the handshake waits for the peer): read the socket.
    NeedBytes,
    /// The plaintext buffer has no room for another record: hand over what it holds.
    BufferFull,
    /// The peer closed the TLS stream.
    PeerClosed,
    /// rustls refused the peer's bytes.
    Failed(rustls::Error),
}

impl TlsStream {
    fn read(&mut self, plain: &mut [u8], bufs: &mut TlsBuffers) -> io::Result<usize> {
        if self.failed {
            return Err(failed());
        }
        if self.peer_closed {
            return Ok(0);
        }
        let incoming = &mut bufs.incoming[..];
        self.drained = false;
        let mut filled = self.unread.len();
        incoming[..filled].copy_from_slice(&self.unread);
        self.unread = Vec::new();
        let mut start = 0;
        let mut got = 0;
        let mut failed = false;
        let result = loop {
            match self.process(&mut incoming[..filled], &mut start, plain, &mut got) {
                // Whole records may still wait in `unread`, and the end of stream must still be
                // returned: the caller asks again.
                Step::BufferFull => {
                    self.drained = false;
                    break Ok(got);
                }
                Step::PeerClosed => {
                    self.peer_closed = true;
                    self.drained = false;
                    break Ok(got);
                }
                Step::Failed(e) => {
                    failed = true;
                    break Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                Step::NeedBytes if got > 0 => break Ok(got),
                Step::NeedBytes if self.drained => break Err(io::ErrorKind::WouldBlock.into()),
                Step::NeedBytes => {
                    incoming.copy_within(start..filled, 0);
                    filled -= start;
                    start = 0;
                    if filled == incoming.len() {
                        break Err(io::Error::new(io::ErrorKind::InvalidData, "a TLS message larger than 64 KiB"));
                    }
                    match self.sock.read(&mut incoming[filled..]) {
                        Ok(0) => break Ok(0),
                        Ok(n) => {
                            self.drained = filled + n < incoming.len();
                            filled += n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        if start < filled {
            self.unread = incoming[start..filled].to_vec();
        }
        if failed {
            self.send_alert();
        }
        result
    }

    /// Run rustls over `incoming[*start..]`, copying plaintext to `plain[*got..]` and queueing
    /// handshake records in `unsent`, until it needs more bytes or something else happens.
    fn process(&mut self, incoming: &mut [u8], start: &mut usize, plain: &mut [u8], got: &mut usize) -> Step {
        loop {
            if plain.len() - *got < MAX_RECORD_PLAINTEXT {
                return Step::BufferFull;
            }
            let UnbufferedStatus { mut discard, state } = self.tls.process_tls_records(&mut incoming[*start..]);
            let step = match state {
                Ok(ConnectionState::ReadTraffic(mut traffic)) => match traffic.next_record() {
                    Some(Ok(record)) => {
                        discard += record.discard;
                        let end = *got + record.payload.len();
                        match plain.get_mut(*got..end) {
                            Some(room) => {
                                room.copy_from_slice(record.payload);
                                *got = end;
                                None
                            }
                            None => Some(Step::Failed(rustls::Error::General("a record larger than 16 KiB".into()))),
                        }
                    }
                    Some(Err(e)) => Some(Step::Failed(e)),
                    None => None,
                },
                Ok(ConnectionState::EncodeTlsData(mut record)) => match encode(&mut self.unsent, &mut record) {
                    Ok(()) => None,
                    Err(e) => Some(Step::Failed(e)),
                },
                // The records wait in `unsent`, in order: the flush after this read sends them.
                Ok(ConnectionState::TransmitTlsData(done)) => {
                    done.done();
                    None
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => Some(Step::NeedBytes),
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(Step::PeerClosed),
                Ok(_) => Some(Step::Failed(rustls::Error::General("unexpected early data".into()))),
                Err(e) => Some(Step::Failed(e)),
            };
            *start += discard;
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// Seal queued frames and write them behind the records already waiting.
    fn write(&mut self, out: &mut Outbound, bufs: &mut TlsBuffers) -> io::Result<bool> {
        if self.failed {
            return Err(failed());
        }
        loop {
            let sealed = if self.unsent.len() < SEAL_LEN && !out.is_empty() { self.seal(out, bufs)? } else { 0 };
            if self.unsent.is_empty() && sealed == 0 {
                // Nothing to write: everything is out, or rustls holds the plaintext back (a
                // handshake still running) and the next readable event moves it on.
                return Ok(out.is_empty());
            }
            if !self.send(&bufs.sealed[..sealed])? {
                return Ok(false);
            }
            if out.is_empty() {
                return Ok(true);
            }
        }
    }

    /// Seal frames from `out` into `bufs.sealed` (up to [`SEAL_LEN`]), taking them off the
    /// queue. Returns the sealed length; 0 while the handshake runs.
    fn seal(&mut self, out: &mut Outbound, bufs: &mut TlsBuffers) -> io::Result<usize> {
        let TlsBuffers { sealed, staging, .. } = bufs;
        let mut len = 0;
        self.with_write_traffic(|traffic| {
            while !out.is_empty() && len <= SEAL_LEN {
                // One record for as many frames as fit: most writes are one small frame, and a
                // batch (an event with presence riding it) is one record, not several.
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let n = out.slices(&mut slices);
                staging.clear();
                for slice in &slices[..n] {
                    let take = slice.len().min(MAX_RECORD_PLAINTEXT - staging.len());
                    staging.extend_from_slice(&slice[..take]);
                    if staging.len() == MAX_RECORD_PLAINTEXT {
                        break;
                    }
                }
                match traffic.encrypt(staging, &mut sealed[len..]) {
                    Ok(n) => len += n,
                    Err(EncryptError::InsufficientSize(_)) if len > 0 => break,
                    Err(e) => return Err(io::Error::other(e)),
                }
                out.advance(staging.len());
            }
            Ok(())
        })?;
        Ok(len)
    }

    /// Bring rustls to `WriteTraffic` (queueing handshake records it has first, such as the
    /// answer to a key update) and run `f` there. Returns `None` when the handshake is not
    /// done yet; an error once the session is closed or broken.
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>) -> io::Result<R>,
    ) -> io::Result<Option<R>> {
        let mut f = Some(f);
        for _ in 0..MAX_STEPS {
            let UnbufferedStatus { discard, state } = self.tls.process_tls_records(&mut self.unread);
            let result = match state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => f.take().map(|f| f(&mut traffic).map(Some)),
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    encode(&mut self.unsent, &mut record).map_err(io::Error::other)?;
                    None
                }
                Ok(ConnectionState::TransmitTlsData(done)) => {
                    done.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                // A record the read has not taken yet never waits here (a read runs until the
                // socket is empty), and a handshake still running waits for the peer.
                Ok(ConnectionState::BlockedHandshake | ConnectionState::ReadTraffic(_)) => Some(Ok(None)),
                Ok(ConnectionState::Closed) => {
                    Some(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the TLS session is closed")))
                }
                Ok(_) => Some(Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected early data"))),
                Err(e) => Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            };
            self.unread.drain(..discard);
            if let Some(result) = result {
                return result;
            }
        }
        Err(io::Error::other("the TLS state machine made no progress"))
    }

    /// Write `unsent`, then `sealed`, in one `writev` as far as the socket takes them; what it
    /// does not take stays in `unsent`. True when everything is written.
    fn send(&mut self, sealed: &[u8]) -> io::Result<bool> {
        let (mut from_unsent, mut from_sealed) = (0, 0);
        let result = loop {
            let (a, b) = (&self.unsent[from_unsent..], &sealed[from_sealed..]);
            if a.is_empty() && b.is_empty() {
                break Ok(true);
            }
            let sent = nonblocking::call(|| match (a.is_empty(), b.is_empty()) {
                (true, _) => send(&self.sock, b),
                (_, true) => send(&self.sock, a),
                _ => self.sock.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]),
            });
            match sent {
                Ok(Some(0)) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(Some(n)) => {
                    let taken = n.min(a.len());
                    from_unsent += taken;
                    from_sealed += n - taken;
                }
                Ok(None) => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        if from_unsent == self.unsent.len() && from_sealed == sealed.len() {
            self.unsent = Vec::new();
        } else {
            self.unsent.drain(..from_unsent);
            self.unsent.extend_from_slice(&sealed[from_sealed..]);
        }
        result
    }

    /// rustls queued an alert with the error: write it (best effort) before the socket goes,
    /// and touch the session no more ([`TlsStream::failed`]).
    ///
    /// One call only: rustls hands out what it queued before it looks at input again, and every
    /// record it queued before the error was taken already, so the first answer is the alert. A
    /// second call would deframe the bytes that failed again and queue a second alert (which
    /// rustls asserts never happens).
    fn send_alert(&mut self) {
        self.failed = true;
        let UnbufferedStatus { state, .. } = self.tls.process_tls_records(&mut self.unread);
        if let Ok(ConnectionState::EncodeTlsData(mut record)) = state {
            let _ = encode(&mut self.unsent, &mut record);
        }
        let _ = self.send(&[]);
    }

    /// Seal a close_notify behind everything written so far and send it (best effort).
    fn send_close_notify(&mut self) {
        if self.failed {
            return;
        }
        let mut alert = [0u8; 64];
        if let Ok(Some(n)) =
            self.with_write_traffic(|traffic| traffic.queue_close_notify(&mut alert).map_err(io::Error::other))
        {
            self.unsent.extend_from_slice(&alert[..n]);
        }
        let _ = self.send(&[]);
    }
}

/// What a failed session answers from then on.
fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the TLS session failed")
}

/// Append a handshake record rustls made to `unsent`.
fn encode(unsent: &mut Vec<u8>, record: &mut EncodeTlsData<'_, ServerConnectionData>) -> Result<(), rustls::Error> {
    let at = unsent.len();
    let need = match record.encode(&mut []) {
        Ok(_) | Err(EncodeError::AlreadyEncoded) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => required_size,
    };
    unsent.resize(at + need, 0);
    match record.encode(&mut unsent[at..]) {
        Ok(n) => {
            unsent.truncate(at + n);
            Ok(())
        }
        Err(e) => {
            unsent.truncate(at);
            Err(rustls::Error::General(e.to_string()))
        }
    }
}
