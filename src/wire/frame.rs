//! RFC 6455 framing without IO: a decoder that turns bytes into complete messages, and the
//! encoders for the frames a server (or a test client) sends.
//!
//! Headers are parsed with tungstenite's `FrameHeader::parse`; the rest (unmasking, reassembly,
//! the RFC's rules, limits) is here because tungstenite keeps it inside its `WebSocket` type,
//! which owns a large per-connection read buffer. This decoder works in place on the worker's
//! scratch buffer and keeps only an incomplete frame (and an unfinished fragmented message)
//! between reads, so an idle connection holds no heap at all. Unmasking is a few lines of
//! safe word-wise XOR (tungstenite's is private and uses `unsafe` alignment tricks).
//!
//! Server frames are encoded once, unmasked and final, into [`Bytes`] that every receiver
//! shares. This module must never allocate per receiver or read from a socket.

use bytes::Bytes;
use std::io::Cursor;
use std::ops::ControlFlow;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Close codes roomcast sends (RFC 6455 section 7.4 and PROTOCOL.md).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down or draining: reconnect elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the framing rules.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint does not accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// A text message that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy: repeated bad input.
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Service restart: reconnect after a delay (the cluster lost a room's history).
    pub const SERVICE_RESTART: u16 = 1012;
    /// Token expired and not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Rate limit exceeded repeatedly.
    pub const RATE_LIMITED: u16 = 4008;
    /// Slow consumer: could not keep up with its rooms.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// Kicked by an upstream service.
    pub const KICKED: u16 = 4010;
}

/// Which side's frames are decoded: they differ in masking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Decode client frames, which must be masked.
    Server,
    /// Decode server frames, which must not be masked (loadgen, tests).
    Client,
}

/// A complete message handed out by [`FrameReader::feed`].
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A text message, reassembled, unmasked and valid UTF-8; mutable so JSON can be parsed in
    /// place.
    Text(&'a mut [u8]),
    /// A binary message.
    Binary(&'a mut [u8]),
    /// A ping with its payload.
    Ping(&'a [u8]),
    /// A pong with its payload.
    Pong(&'a [u8]),
    /// A close frame: the code (`None` when the body was empty) and the reason.
    Close(Option<u16>, &'a str),
}

/// Why the decoder gave up; each maps to the close code the connection must be closed with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A framing rule was broken (1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message or frame over the size limit (1009).
    #[error("message too large")]
    TooLarge,
    /// A text message that is not valid UTF-8 (1007).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code this error closes the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => close_code::PROTOCOL_ERROR,
            Self::TooLarge => close_code::TOO_LARGE,
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
        }
    }
}

/// Incremental decoder of one connection's frames. See the module doc.
#[derive(Debug)]
pub struct FrameReader {
    role: Role,
    /// Bytes of an incomplete frame; empty (no capacity) between complete frames.
    pending: Vec<u8>,
    /// A fragmented message in progress. Boxed: it is rare, and the reader lives in every
    /// connection's slot.
    fragments: Option<Box<Fragments>>,
}

/// A fragmented message in progress.
#[derive(Debug)]
struct Fragments {
    /// Whether it is a text message (its UTF-8 is checked as fragments arrive).
    text: bool,
    /// The bytes so far.
    buf: Vec<u8>,
    /// Bytes of `buf` known to be valid UTF-8 (up to a character that may continue in the
    /// next fragment).
    checked: usize,
}

impl Fragments {
    /// Check the UTF-8 of what arrived since the last check. RFC 6455 8.1 asks to fail "as
    /// soon as" the stream is found invalid, so a bad fragment fails at once rather than
    /// after the (possibly megabytes long) rest; only a character cut at the end of a
    /// fragment waits for the next one, and not past the final fragment.
    fn check_utf8(&mut self, fin: bool) -> Result<(), FrameError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.checked..]) {
            Ok(_) => {
                self.checked = self.buf.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(FrameError::InvalidUtf8),
        }
    }
}

/// The largest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

impl FrameReader {
    /// A decoder for frames sent by the other side of `role`.
    pub fn new(role: Role) -> Self {
        Self { role, pending: Vec::new(), fragments: None }
    }

    /// Bytes held between feeds (partial frame plus unfinished fragmented message).
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.fragments.as_ref().map_or(0, |f| f.buf.len())
    }

    /// Decode every complete frame of what was pending followed by `input`, calling `on` for
    /// each complete message in order. `on` returns `Break` to stop; the rest is discarded.
    /// An incomplete tail is kept for the next call. `max_message` bounds each message
    /// (reassembled) and so the bytes kept.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        max_message: usize,
        mut on: impl FnMut(Incoming<'_>) -> ControlFlow<()>,
    ) -> Result<(), FrameError> {
        if self.pending.is_empty() {
            let (used, stopped) = self.decode(input, max_message, &mut on)?;
            if !stopped && used < input.len() {
                self.pending = input[used..].to_vec();
            }
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(input);
        let (used, stopped) = self.decode(&mut buf, max_message, &mut on)?;
        if !stopped && used < buf.len() {
            buf.drain(..used);
            self.pending = buf;
        }
        Ok(())
    }

    /// Decode complete frames from the front of `buf`; returns bytes used and whether `on`
    /// asked to stop.
    fn decode(
        &mut self,
        buf: &mut [u8],
        max_message: usize,
        on: &mut impl FnMut(Incoming<'_>) -> ControlFlow<()>,
    ) -> Result<(usize, bool), FrameError> {
        let mut pos = 0;
        while pos < buf.len() {
            let mut cursor = Cursor::new(&buf[pos..]);
            let parsed = FrameHeader::parse(&mut cursor).map_err(|_| FrameError::Protocol("invalid frame header"))?;
            let Some((header, len)) = parsed else {
                if buf.len() - pos > MAX_HEADER {
                    return Err(FrameError::Protocol("invalid frame header"));
                }
                break;
            };
            let header_len = cursor.position() as usize;
            self.check_header(&header, len, max_message)?;
            let len = len as usize;
            if buf.len() - pos - header_len < len {
                if header.opcode == OpCode::Data(Data::Text) {
                    check_partial_text(&buf[pos + header_len..], header.mask)?;
                }
                break;
            }
            let start = pos + header_len;
            pos = start + len;
            let payload = &mut buf[start..pos];
            if let Some(mask) = header.mask {
                unmask(payload, mask);
            }
            if self.message(&header, payload, max_message, on)?.is_break() {
                return Ok((pos, true));
            }
        }
        Ok((pos, false))
    }

    fn check_header(&self, header: &FrameHeader, len: u64, max_message: usize) -> Result<(), FrameError> {
        // RFC 6455 5.2: "RSV1, RSV2, RSV3 [...] MUST be 0 unless an extension is negotiated".
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        match (self.role, header.mask.is_some()) {
            // RFC 6455 5.1: "a client MUST mask all frames that it sends to the server [...]
            // A server MUST close the connection upon receiving a frame that is not masked."
            (Role::Server, false) => return Err(FrameError::Protocol("client frame not masked")),
            // "A server MUST NOT mask any frames that it sends to the client. A client MUST
            // close a connection if it detects a masked frame."
            (Role::Client, true) => return Err(FrameError::Protocol("server frame masked")),
            _ => {}
        }
        if let OpCode::Control(_) = header.opcode {
            // RFC 6455 5.5: "All control frames MUST have a payload length of 125 bytes or
            // less and MUST NOT be fragmented."
            if len > 125 {
                return Err(FrameError::Protocol("control frame longer than 125 bytes"));
            }
            if !header.is_final {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
        } else if len > max_message as u64 {
            return Err(FrameError::TooLarge);
        }
        Ok(())
    }

    fn message(
        &mut self,
        header: &FrameHeader,
        payload: &mut [u8],
        max_message: usize,
        on: &mut impl FnMut(Incoming<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, FrameError> {
        match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) => {
                // RFC 6455 5.4: "The fragments of one message MUST NOT be interleaved between
                // the fragments of another message".
                if self.fragments.is_some() {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                let text = header.opcode == OpCode::Data(Data::Text);
                if !header.is_final {
                    let mut fragments = Fragments { text, buf: payload.to_vec(), checked: 0 };
                    fragments.check_utf8(false)?;
                    self.fragments = Some(Box::new(fragments));
                    return Ok(ControlFlow::Continue(()));
                }
                complete(text, payload, on)
            }
            OpCode::Data(Data::Continue) => {
                // RFC 6455 5.4: a fragmented message starts with a non-continuation frame.
                let Some(mut fragments) = self.fragments.take() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                if fragments.buf.len() + payload.len() > max_message {
                    return Err(FrameError::TooLarge);
                }
                fragments.buf.extend_from_slice(payload);
                fragments.check_utf8(header.is_final)?;
                if !header.is_final {
                    self.fragments = Some(fragments);
                    return Ok(ControlFlow::Continue(()));
                }
                let Fragments { text, mut buf, .. } = *fragments;
                if text {
                    // Every byte was checked above.
                    return Ok(on(Incoming::Text(&mut buf)));
                }
                Ok(on(Incoming::Binary(&mut buf)))
            }
            OpCode::Control(Control::Ping) => Ok(on(Incoming::Ping(payload))),
            OpCode::Control(Control::Pong) => Ok(on(Incoming::Pong(payload))),
            OpCode::Control(Control::Close) => {
                let (code, reason) = parse_close(payload)?;
                Ok(on(Incoming::Close(code, reason)))
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                Err(FrameError::Protocol("reserved opcode"))
            }
        }
    }
}

fn complete(
    text: bool,
    payload: &mut [u8],
    on: &mut impl FnMut(Incoming<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, FrameError> {
    if !text {
        return Ok(on(Incoming::Binary(payload)));
    }
    // RFC 6455 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that
    // the byte stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the
    // WebSocket Connection_." (Fragmented messages are checked fragment by fragment, in
    // `Fragments::check_utf8`.)
    if std::str::from_utf8(payload).is_err() {
        return Err(FrameError::InvalidUtf8);
    }
    Ok(on(Incoming::Text(payload)))
}

/// Most bytes of an incomplete text frame looked at on each read (see
/// [`check_partial_text`]): bounds the cost of a frame that arrives slowly.
const PARTIAL_UTF8_CHECK_BYTES: usize = 4096;

/// Fail a text frame whose bytes so far are already invalid UTF-8, before the rest arrives
/// (RFC 6455 8.1 asks to fail "as soon as" the stream is seen to be invalid). The available
/// payload is still masked and stays so (it is decoded again once complete), so its first
/// [`PARTIAL_UTF8_CHECK_BYTES`] are unmasked into a copy. A character cut by the end of what
/// arrived is not an error; a bad byte further in is found when the frame is complete.
fn check_partial_text(payload: &[u8], mask: Option<[u8; 4]>) -> Result<(), FrameError> {
    let mut prefix = [0u8; PARTIAL_UTF8_CHECK_BYTES];
    let n = payload.len().min(PARTIAL_UTF8_CHECK_BYTES);
    prefix[..n].copy_from_slice(&payload[..n]);
    if let Some(mask) = mask {
        unmask(&mut prefix[..n], mask);
    }
    match std::str::from_utf8(&prefix[..n]) {
        Err(e) if e.error_len().is_some() => Err(FrameError::InvalidUtf8),
        _ => Ok(()),
    }
}

fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &str), FrameError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(FrameError::Protocol("close frame with a 1-byte body")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            // RFC 6455 5.5.1: the reason "is not guaranteed to be human readable" but is UTF-8
            // (7.1.6), and 8.1 fails a connection on invalid UTF-8 with 1007.
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

/// Whether a peer may send `code` in a close frame. RFC 6455 7.4.1 defines 1000-1003 and
/// 1007-1011; 1004 is reserved, and 1005, 1006 and 1015 "MUST NOT be set as a status code in
/// a Close control frame by an endpoint". IANA's registry (7.4.2, "1000-2999 [...] reserved
/// for definition by this protocol, its future revisions, and extensions") has since added
/// 1012 (service restart), 1013 (try again later) and 1014 (bad gateway), which roomcast
/// itself sends (PROTOCOL.md). 3000-3999 are registered and 4000-4999 private use.
/// Everything else (0-999, 1016-2999, 5000 and up) is refused.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XOR `buf` with the 4-byte `mask`, 8 bytes at a time (RFC 6455 5.3).
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Room reserved in front of a payload for the largest server frame header.
const SERVER_HEADER_ROOM: usize = 10;

/// Write a server (unmasked, final) header for `len` bytes right-aligned before `end` in `buf`;
/// returns where it starts.
fn put_header(buf: &mut [u8], end: usize, opcode: u8, len: usize) -> usize {
    let first = 0x80 | opcode;
    match len {
        0..=125 => {
            buf[end - 2..end].copy_from_slice(&[first, len as u8]);
            end - 2
        }
        126..=0xFFFF => {
            buf[end - 4..end - 2].copy_from_slice(&[first, 126]);
            buf[end - 2..end].copy_from_slice(&(len as u16).to_be_bytes());
            end - 4
        }
        _ => {
            buf[end - 10..end - 8].copy_from_slice(&[first, 127]);
            buf[end - 8..end].copy_from_slice(&(len as u64).to_be_bytes());
            end - 10
        }
    }
}

fn server_frame_with(opcode: u8, capacity: usize, build: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut buf = Vec::with_capacity(SERVER_HEADER_ROOM + capacity);
    buf.resize(SERVER_HEADER_ROOM, 0);
    build(&mut buf);
    let len = buf.len() - SERVER_HEADER_ROOM;
    let start = put_header(&mut buf, SERVER_HEADER_ROOM, opcode, len);
    Bytes::from(buf).slice(start..)
}

/// A server text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    server_frame_with(0x1, payload.len(), |out| out.extend_from_slice(payload))
}

/// A server text frame whose payload `build` writes in place after reserved header room, so
/// the payload is never copied a second time.
pub fn text_frame_with(build: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    server_frame_with(0x1, 128, build)
}

/// [`text_frame_with`] for a payload of about `capacity` bytes, allocated once.
pub fn text_frame_sized(capacity: usize, build: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    server_frame_with(0x1, capacity, build)
}

/// A server binary frame carrying `payload` (roomcast itself sends only text; the testing
/// echo endpoint sends binary messages back).
pub fn binary_frame(payload: &[u8]) -> Bytes {
    server_frame_with(0x2, payload.len(), |out| out.extend_from_slice(payload))
}

/// A pong answering a ping with `payload` (RFC 6455 5.5.3: "Application data" is echoed).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    server_frame_with(0xA, payload.len(), |out| out.extend_from_slice(payload))
}

/// A close frame with `code` and `reason` (the reason is cut to fit 125 bytes on a character
/// boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    server_frame_with(0x8, 2 + cut, |out| {
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&reason.as_bytes()[..cut]);
    })
}

/// The opcodes and payloads of the consecutive server frames in `buf` (unmasked and final, as
/// this module encodes them), in order: what a member reads out of one delivered buffer, for
/// the admin port's live feed and the query API's recent events. Stops at the first bytes that
/// are not a complete server frame.
pub fn server_frames(mut buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let [first, second, rest @ ..] = buf else { return None };
        if second & 0x80 != 0 {
            return None;
        }
        let (len, rest) = match second & 0x7F {
            126 => {
                let [a, b, rest @ ..] = rest else { return None };
                (usize::from(u16::from_be_bytes([*a, *b])), rest)
            }
            127 => {
                let (len, rest) = rest.split_first_chunk::<8>()?;
                (usize::try_from(u64::from_be_bytes(*len)).ok()?, rest)
            }
            n => (usize::from(n), rest),
        };
        let payload = rest.get(..len)?;
        buf = &rest[len..];
        Some((first & 0x0F, payload))
    })
}

/// Append a client frame (final, masked with `mask`) to `out`. `opcode`: 0x1 text, 0x2
/// binary, 0x8 close, 0x9 ping, 0xA pong.
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | (opcode & 0x0F));
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn client(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_client_frame(opcode, payload, MASK, &mut out);
        out
    }

    fn fragment(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = client(opcode, payload);
        if !fin {
            f[0] &= 0x7F;
        }
        f
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn decode_all(reader: &mut FrameReader, bytes: &[u8], max: usize) -> Result<Vec<Got>, FrameError> {
        let mut got = Vec::new();
        let mut buf = bytes.to_vec();
        reader.feed(&mut buf, max, |m| {
            got.push(match m {
                Incoming::Text(t) => Got::Text(String::from_utf8(t.to_vec()).expect("utf8")),
                Incoming::Binary(b) => Got::Binary(b.to_vec()),
                Incoming::Ping(p) => Got::Ping(p.to_vec()),
                Incoming::Pong(p) => Got::Pong(p.to_vec()),
                Incoming::Close(c, r) => Got::Close(c, r.to_owned()),
            });
            ControlFlow::Continue(())
        })?;
        Ok(got)
    }

    fn server() -> FrameReader {
        FrameReader::new(Role::Server)
    }

    #[test]
    fn masked_text_is_unmasked_at_every_length_class() {
        for len in [0usize, 1, 7, 8, 125, 126, 1000, 70_000] {
            let text = "a".repeat(len);
            let got = decode_all(&mut server(), &client(0x1, text.as_bytes()), 100_000).expect("valid");
            assert_eq!(got, [Got::Text(text)]);
        }
    }

    #[test]
    fn every_split_point_gives_the_same_messages_and_no_heap_is_kept_after() {
        let mut stream = client(0x1, "héllo wörld".as_bytes());
        stream.extend(client(0x9, b"p"));
        stream.extend(fragment(0x2, false, b"ab"));
        stream.extend(client(0xA, b"q"));
        stream.extend(fragment(0x0, true, b"cd"));
        let want = decode_all(&mut server(), &stream, 4096).expect("valid");
        assert_eq!(want.len(), 4);
        assert_eq!(want[3], Got::Binary(b"abcd".to_vec()));
        for split in 0..stream.len() {
            let mut r = server();
            let mut got = decode_all(&mut r, &stream[..split], 4096).expect("valid prefix");
            got.extend(decode_all(&mut r, &stream[split..], 4096).expect("valid suffix"));
            assert_eq!(got, want, "split at {split}");
            assert_eq!(r.buffered(), 0);
            assert_eq!(r.pending.capacity(), 0, "an idle reader holds no heap");
        }
    }

    #[test]
    fn utf8_split_across_fragments_is_accepted_and_bad_utf8_rejected() {
        let bytes = "é".as_bytes();
        let mut stream = fragment(0x1, false, &bytes[..1]);
        stream.extend(fragment(0x0, true, &bytes[1..]));
        assert_eq!(decode_all(&mut server(), &stream, 100), Ok(vec![Got::Text("é".into())]));
        let err = decode_all(&mut server(), &client(0x1, &[0xff, 0xfe]), 100).expect_err("invalid");
        assert_eq!(err.close_code(), 1007);
    }

    #[test]
    fn limits_apply_to_single_frames_and_reassembled_messages() {
        let err = decode_all(&mut server(), &client(0x1, &[b'a'; 101]), 100).expect_err("too large");
        assert_eq!(err.close_code(), 1009);
        let mut stream = fragment(0x1, false, &[b'a'; 60]);
        stream.extend(fragment(0x0, true, &[b'a'; 60]));
        assert_eq!(decode_all(&mut server(), &stream, 100), Err(FrameError::TooLarge));
        // A huge length is refused from the header alone, before any payload arrives.
        let header = &client(0x2, &[0; 70_000])[..14];
        assert_eq!(decode_all(&mut server(), header, 4096), Err(FrameError::TooLarge));
    }

    #[test]
    fn framing_rules_are_enforced() {
        let unmasked = [0x81, 0x01, b'a'];
        assert_eq!(decode_all(&mut server(), &unmasked, 100).map_err(|e| e.close_code()), Err(1002));
        let masked_to_client = client(0x1, b"a");
        assert!(decode_all(&mut FrameReader::new(Role::Client), &masked_to_client, 100).is_err());
        let mut rsv = client(0x1, b"a");
        rsv[0] |= 0x40;
        assert!(decode_all(&mut server(), &rsv, 100).is_err());
        assert!(decode_all(&mut server(), &client(0x9, &[0; 126]), 1000).is_err(), "long ping");
        assert!(decode_all(&mut server(), &fragment(0x9, false, b"x"), 100).is_err(), "fragmented ping");
        assert!(decode_all(&mut server(), &client(0x0, b"x"), 100).is_err(), "stray continuation");
        assert!(decode_all(&mut server(), &client(0x3, b"x"), 100).is_err(), "reserved opcode");
        let mut interleaved = fragment(0x1, false, b"a");
        interleaved.extend(client(0x1, b"b"));
        assert!(decode_all(&mut server(), &interleaved, 100).is_err());
    }

    #[test]
    fn close_frames_are_parsed_and_checked() {
        let mut body = 4000u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"bye");
        assert_eq!(decode_all(&mut server(), &client(0x8, &body), 100), Ok(vec![Got::Close(Some(4000), "bye".into())]));
        assert_eq!(decode_all(&mut server(), &client(0x8, &[]), 100), Ok(vec![Got::Close(None, String::new())]));
        assert!(decode_all(&mut server(), &client(0x8, &[3]), 100).is_err());
        assert!(decode_all(&mut server(), &client(0x8, &1005u16.to_be_bytes()), 100).is_err());
    }

    #[test]
    fn break_stops_and_discards_the_rest() {
        let mut stream = client(0x8, &1000u16.to_be_bytes());
        stream.extend(client(0x1, b"after close"));
        let mut r = server();
        let mut n = 0;
        r.feed(&mut stream, 100, |_| {
            n += 1;
            ControlFlow::Break(())
        })
        .expect("valid");
        assert_eq!((n, r.buffered()), (1, 0));
    }

    #[test]
    fn server_frames_decode_as_a_client_sees_them() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = "z".repeat(len);
            let f = text_frame_with(|out| out.extend_from_slice(payload.as_bytes()));
            assert_eq!(f, text_frame(payload.as_bytes()));
            let got = decode_all(&mut FrameReader::new(Role::Client), &f, 1 << 20).expect("valid");
            assert_eq!(got, [Got::Text(payload)]);
        }
        let close = close_frame(4009, &"é".repeat(100));
        let got = decode_all(&mut FrameReader::new(Role::Client), &close, 100).expect("valid");
        assert!(matches!(&got[0], Got::Close(Some(4009), r) if r.len() <= 123));
        assert_eq!(&pong_frame(b"hi")[..], &[0x8A, 2, b'h', b'i']);
    }

    fn code_of(r: Result<Vec<Got>, FrameError>) -> Option<u16> {
        r.err().map(|e| e.close_code())
    }

    #[test]
    fn each_rsv_bit_and_every_reserved_opcode_is_a_protocol_error() {
        for bit in [0x40u8, 0x20, 0x10] {
            let mut f = client(0x1, b"a");
            f[0] |= bit;
            assert_eq!(code_of(decode_all(&mut server(), &f, 100)), Some(1002), "rsv {bit:#x}");
            let mut ping = client(0x9, b"");
            ping[0] |= bit;
            assert_eq!(code_of(decode_all(&mut server(), &ping, 100)), Some(1002), "rsv {bit:#x} on a ping");
        }
        for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(code_of(decode_all(&mut server(), &client(opcode, b""), 100)), Some(1002), "opcode {opcode:#x}");
            // Also in the middle of a fragmented message.
            let mut stream = fragment(0x1, false, b"a");
            stream.extend(client(opcode, b"x"));
            assert_eq!(code_of(decode_all(&mut server(), &stream, 100)), Some(1002));
        }
    }

    #[test]
    fn control_frames_interleave_with_fragments_but_data_frames_do_not() {
        let mut stream = fragment(0x1, false, b"fr");
        stream.extend(client(0x9, b"ping"));
        stream.extend(fragment(0x0, false, b"ag"));
        stream.extend(client(0xA, b""));
        stream.extend(fragment(0x0, true, b"ment"));
        let got = decode_all(&mut server(), &stream, 100).expect("valid");
        assert_eq!(got, [Got::Ping(b"ping".to_vec()), Got::Pong(vec![]), Got::Text("fragment".into())]);
        // 125 bytes is the longest control payload.
        assert!(decode_all(&mut server(), &client(0x9, &[7; 125]), 1000).is_ok());
        assert_eq!(code_of(decode_all(&mut server(), &client(0xA, &[7; 126]), 1000)), Some(1002));
        let mut binary_in_text = fragment(0x1, false, b"a");
        binary_in_text.extend(client(0x2, b"b"));
        assert_eq!(code_of(decode_all(&mut server(), &binary_in_text, 100)), Some(1002));
        let mut continuation_after_end = client(0x1, b"done");
        continuation_after_end.extend(fragment(0x0, true, b"more"));
        assert_eq!(code_of(decode_all(&mut server(), &continuation_after_end, 100)), Some(1002));
    }

    #[test]
    fn close_codes_follow_rfc_6455_and_the_iana_registry() {
        for code in [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
        {
            let got = decode_all(&mut server(), &client(0x8, &code.to_be_bytes()), 100);
            assert_eq!(got, Ok(vec![Got::Close(Some(code), String::new())]), "{code} is valid");
        }
        for code in [0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            let got = decode_all(&mut server(), &client(0x8, &code.to_be_bytes()), 100);
            assert_eq!(code_of(got), Some(1002), "{code} is invalid");
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason
            .extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80]);
        assert_eq!(code_of(decode_all(&mut server(), &client(0x8, &bad_reason), 100)), Some(1007));
        assert_eq!(code_of(decode_all(&mut server(), &client(0x8, &[0x03]), 100)), Some(1002), "1-byte body");
    }

    #[test]
    fn utf8_is_checked_fragment_by_fragment_and_fails_fast() {
        // A bad second fragment fails before the final one arrives.
        let mut stream = fragment(0x1, false, "κόσμε".as_bytes());
        stream.extend(fragment(0x0, false, &[0xce, 0xba, 0xf4, 0x90, 0x80, 0x80]));
        let mut r = server();
        assert_eq!(code_of(decode_all(&mut r, &stream, 1000)), Some(1007));
        // A bad first fragment fails at once too.
        assert_eq!(code_of(decode_all(&mut server(), &fragment(0x1, false, &[0xff]), 100)), Some(1007));
        // A 4-byte character cut over three fragments is fine.
        let smile = "😀".as_bytes();
        let mut stream = fragment(0x1, false, &smile[..1]);
        stream.extend(fragment(0x0, false, &smile[1..3]));
        stream.extend(fragment(0x0, true, &smile[3..]));
        assert_eq!(decode_all(&mut server(), &stream, 100), Ok(vec![Got::Text("😀".into())]));
        // ... but not one the final fragment leaves unfinished.
        let mut stream = fragment(0x1, false, b"a");
        stream.extend(fragment(0x0, true, &smile[..2]));
        assert_eq!(code_of(decode_all(&mut server(), &stream, 100)), Some(1007));
        // Binary fragments are never checked.
        let mut stream = fragment(0x2, false, &[0xff]);
        stream.extend(fragment(0x0, true, &[0xfe]));
        assert_eq!(decode_all(&mut server(), &stream, 100), Ok(vec![Got::Binary(vec![0xff, 0xfe])]));
        // Surrogates encoded in UTF-8 (CESU) are invalid.
        assert_eq!(code_of(decode_all(&mut server(), &client(0x1, &[0xed, 0xa0, 0x80]), 100)), Some(1007));
    }

    #[test]
    fn a_text_frame_with_bad_utf8_fails_before_it_is_complete() {
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload
            .extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xf4, 0x90, 0x80]);
        payload.extend_from_slice(b"edited");
        let whole = client(0x1, &payload);
        // Only the first part of the frame arrives: the bad bytes are in it.
        let mut r = server();
        assert_eq!(code_of(decode_all(&mut r, &whole[..6 + 24], 100)), Some(1007));
        // A character cut by the end of what arrived is fine, and so is the frame once whole.
        let good = client(0x1, "κόσμε".as_bytes());
        let mut r = server();
        assert_eq!(decode_all(&mut r, &good[..6 + 3], 100), Ok(vec![]));
        assert_eq!(decode_all(&mut r, &good[6 + 3..], 100), Ok(vec![Got::Text("κόσμε".into())]));
        for split in 0..good.len() {
            let mut r = server();
            let mut got = decode_all(&mut r, &good[..split], 100).expect("valid prefix");
            got.extend(decode_all(&mut r, &good[split..], 100).expect("valid suffix"));
            assert_eq!(got, [Got::Text("κόσμε".into())], "split at {split}");
        }
    }
}
