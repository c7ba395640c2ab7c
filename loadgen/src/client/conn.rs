//! One client connection: its transport, its frame decoder, the upgrade response while it is
//! read, and the [`Viewer`] the decoded messages go to. It moves bytes between the socket and
//! the viewer and decides nothing about the protocol itself.
//!
//! It must never block (every read and write stops at `WouldBlock`) and never panic on what
//! the server sends: a malformed response or frame breaks this connection only.

use super::stream::Stream;
use super::tally::Tally;
use super::viewer::{Phase, Viewer};
use super::{ConnPlan, Endpoint};
use mio::net::TcpStream;
use roomcast::runtime::nonblocking;
use roomcast::wire::frame::{FrameReader, Role};
use roomcast::wire::upgrade;
use std::io;

/// Largest server message accepted (far above anything roomcast sends).
const MAX_MESSAGE: usize = 1 << 24;

/// The key of every upgrade request: the RFC 6455 example nonce (the server's accept is not
/// checked, so the key need not be random).
const UPGRADE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// What a connect event meant. See [`Conn::on_connect_event`].
pub(super) enum Connect {
    /// Connected; the upgrade request is queued.
    Done,
    /// Not connected yet (a spurious wake-up).
    NotYet,
    /// The connect failed.
    Failed,
}

/// One connection. See the module doc.
pub(super) struct Conn {
    stream: Stream,
    reader: FrameReader,
    /// The upgrade response so far (empty once upgraded).
    response: Vec<u8>,
    /// Its protocol state.
    pub(super) viewer: Viewer,
}

impl Conn {
    /// A connection over `stream` (connecting) for `viewer`.
    pub(super) fn new(stream: Stream, viewer: Viewer) -> Self {
        Self { stream, reader: FrameReader::new(Role::Client), response: Vec::new(), viewer }
    }

    /// The socket, for the poller.
    pub(super) fn socket(&mut self) -> &mut TcpStream {
        self.stream.socket()
    }

    /// The socket became writable (or reported an error) while connecting: if it connected,
    /// queue the upgrade request for `plan`'s user (and token).
    pub(super) fn on_connect_event(
        &mut self,
        target: &Endpoint,
        plan: &ConnPlan,
        error: bool,
        tally: &mut Tally<'_>,
    ) -> Connect {
        match self.stream.socket().peer_addr() {
            Ok(_) => {
                tally.connected(self.viewer.opened_at);
                let mut path = format!("{}?user={}", target.path, plan.user);
                if let Some(token) = &plan.token {
                    path.push_str("&token=");
                    path.push_str(token);
                }
                self.viewer.on_connected(upgrade::client_request(&target.host, &path, UPGRADE_KEY));
                Connect::Done
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected && !error => Connect::NotYet,
            Err(_) => Connect::Failed,
        }
    }

    /// Write what the viewer has queued. `Err` when the connection broke.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        if !self.viewer.out.is_empty() {
            self.stream.write(&mut self.viewer.out)?;
        }
        Ok(())
    }

    /// Read everything there is (through `scratch`) and hand it to the viewer; `room` is the
    /// one to join once upgraded. Returns true when the connection is over: closed, broken, or
    /// closed by the server.
    pub(super) fn read(&mut self, scratch: &mut [u8], room: Option<&str>, tally: &mut Tally<'_>) -> bool {
        loop {
            let n = match nonblocking::call(|| self.stream.read(scratch)) {
                Ok(Some(0)) | Err(_) => return true,
                Ok(Some(n)) => n,
                Ok(None) => return false,
            };
            let over = if self.viewer.phase == Phase::Upgrading {
                match self.take_response(&scratch[..n]) {
                    Err(()) => return true,
                    Ok(None) => continue,
                    Ok(Some(mut rest)) => {
                        tally.upgraded(self.viewer.opened_at, self.stream.resumed());
                        self.viewer.on_upgraded(room);
                        self.feed(&mut rest, tally)
                    }
                }
            } else {
                self.feed(&mut scratch[..n], tally)
            };
            if over {
                return true;
            }
            // The join, or a pong, goes out before the next read.
            if self.flush().is_err() {
                return true;
            }
        }
    }

    /// Add `data` to the upgrade response: `Ok(Some(bytes after it))` once it is a complete
    /// `101`, `Ok(None)` while incomplete, `Err` when the upgrade was refused.
    fn take_response(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        self.response.extend_from_slice(data);
        match upgrade::parse_client_response(&self.response) {
            Ok(None) => Ok(None),
            Err(_) => Err(()),
            Ok(Some(used)) => {
                let rest = self.response.split_off(used);
                self.response = Vec::new();
                Ok(Some(rest))
            }
        }
    }

    /// Decode frames and hand them to the viewer; true when the stream broke or was closed.
    fn feed(&mut self, data: &mut [u8], tally: &mut Tally<'_>) -> bool {
        let viewer = &mut self.viewer;
        let mut closed = false;
        let result = self.reader.feed(data, MAX_MESSAGE, |msg| {
            let flow = viewer.on_message(msg, tally);
            closed |= flow.is_break();
            flow
        });
        result.is_err() || closed
    }
}
