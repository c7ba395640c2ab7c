//! An upstream service's connection to the ingest protocol, without its transport.
//!
//! An [`Upstream`] turns the bytes an upstream sends (NDJSON commands, PROTOCOL.md "Ingest
//! socket") into mail for the rooms' homes, and the homes' answers into reply lines in command
//! order. It owns every rule of the protocol: the line limit (a longer line closes the
//! connection after its error), `auth` first when tokens are configured (a failed `auth`
//! closes it), `hello` and `"ack":false`, room validation, the kick fan-out to every worker,
//! and pausing: a connection whose replies pile up (it does not read them) stops being read
//! until they drain, so memory per upstream stays bounded ([`MAX_IN_FLIGHT`],
//! [`MAX_REPLY_BACKLOG`]). The ingest socket's loop only moves bytes in and out of it; the
//! admin port's `POST /api/publish` feeds the same machine one body at a time. Nothing here
//! touches a socket, a thread or a clock.
//!
//! Call order: [`Upstream::handle_bytes`] with what was read (then check
//! [`Upstream::wants_read`] before reading more), [`Upstream::handle_reply`] for each home
//! answer, [`Upstream::handle_eof`] at end of stream; write [`Upstream::output`] and report it
//! with [`Upstream::advance_output`]; after a reply or a write, [`Upstream::poll_resume`] says
//! when a paused connection must be read again; the connection is finished when
//! [`Upstream::is_done`].

mod replies;

pub use replies::Replies;

use crate::ids::{RoomName, WorkerId};
use crate::metrics::{IngestCounts, IngestOp, IngestOutcome, Source};
use crate::shard::home_of;
use crate::shard::mail::{post_to, IngestReply, Mail, ReplyTo};
use crate::wire::ingest::{self, IngestCmd};
use crate::wire::ErrorCode;
use replies::Slot;

/// Commands awaiting their reply before a connection stops being read.
pub const MAX_IN_FLIGHT: usize = 65_536;
/// Reply bytes waiting for the socket before a connection stops being read.
pub const MAX_REPLY_BACKLOG: usize = 4 * 1024 * 1024;
/// Buffers that grew past this are released once empty, so an idle upstream holds little.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What every upstream connection of the process shares.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Longest accepted line.
    pub max_line: usize,
    /// Accepted `auth` tokens; empty means none needed.
    pub tokens: Vec<String>,
    /// Number of workers (to find a room's home).
    pub workers: usize,
}

/// Mail for the homes produced by one read, one list per worker; the shell sends each
/// non-empty list as one batch (one channel push and one wake-up per home per read).
pub type Outgoing = [Vec<Mail>];

/// One upstream connection. See the module doc.
#[derive(Debug)]
pub struct Upstream {
    conn: usize,
    generation: u64,
    input: Vec<u8>,
    output: Vec<u8>,
    replies: Replies,
    acks: bool,
    authed: bool,
    /// Stop after writing `output` (failed auth, line over the limit).
    closing: bool,
    /// Not read while its replies pile up; resumed when they drain.
    paused: bool,
    /// The peer finished sending.
    eof: bool,
    /// Where its commands come from: the ingest socket, or one HTTP request of the admin
    /// port (which always gets its reply, whatever `ack` says).
    source: Source,
    /// Commands handled since [`Upstream::take_counts`], by op and outcome.
    counts: IngestCounts,
}

impl Upstream {
    /// A new ingest connection, known to the shell as `conn` (reused) of `generation` (not
    /// reused): home answers carry both.
    pub fn new(conn: usize, generation: u64, settings: &UpstreamSettings) -> Self {
        Self {
            conn,
            generation,
            input: Vec::new(),
            output: Vec::new(),
            replies: Replies::default(),
            acks: true,
            authed: settings.tokens.is_empty(),
            closing: false,
            paused: false,
            eof: false,
            source: Source::Ingest,
            counts: IngestCounts::default(),
        }
    }

    /// One HTTP request of the admin port (`POST /api/publish` and the like): the body is
    /// one command, `op` names it when the body does not, and the reply line is the response
    /// (always written, whatever `ack` says). `bearer` is the request's token, checked like an
    /// ingest `auth`; `operator` (the admin token was presented) skips the check.
    pub fn request(
        conn: usize,
        generation: u64,
        settings: &UpstreamSettings,
        (op, body): (&str, &[u8]),
        (bearer, operator): (Option<&str>, bool),
        outgoing: &mut Outgoing,
    ) -> Self {
        let mut up = Self::new(conn, generation, settings);
        up.source = Source::Http;
        up.authed = operator || up.authed || bearer.is_some_and(|b| settings.tokens.iter().any(|t| t == b));
        if !up.authed {
            up.counts.record(op_of(op), IngestOutcome::Error(ErrorCode::Unauthorized));
            up.ready_error(ErrorCode::Unauthorized, "a valid ingest token is needed (Authorization: Bearer)");
            up.replies.drain_ready(&mut up.output);
            up.closing = true;
            return up;
        }
        let line = request_line(op, body);
        up.handle_bytes(&line, settings, outgoing);
        up.handle_eof();
        up
    }

    /// The generation given at creation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes read from the peer: every complete line is handled (unless paused: then they
    /// wait in the buffer), its mail appended to `outgoing`.
    pub fn handle_bytes(&mut self, bytes: &[u8], settings: &UpstreamSettings, outgoing: &mut Outgoing) {
        if self.closing {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process_lines(settings, outgoing);
    }

    /// The peer finished sending (a last line without its `\n` is not a command).
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// A home's answer to one of this connection's commands.
    pub fn handle_reply(&mut self, reply: &IngestReply) {
        self.replies.fill(reply);
        self.replies.drain_ready(&mut self.output);
    }

    /// Whether the shell should read the socket now: not while closing, paused or finished.
    pub fn wants_read(&self) -> bool {
        !self.closing && !self.paused && !self.eof
    }

    /// Reply bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`Upstream::output`] were written.
    pub fn advance_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
        if self.output.is_empty() && self.output.capacity() > KEEP_CAPACITY {
            self.output = Vec::new();
        }
    }

    /// After replies or writes: whether a paused connection has drained enough to go on. Its
    /// buffered lines are handled now; `true` tells the shell to read the socket again (with
    /// edge-triggered readiness it will not be told of data that arrived meanwhile).
    pub fn poll_resume(&mut self, settings: &UpstreamSettings, outgoing: &mut Outgoing) -> bool {
        if !self.paused || self.replies.in_flight() >= MAX_IN_FLIGHT / 2 || self.output.len() >= MAX_REPLY_BACKLOG / 2 {
            return false;
        }
        self.paused = false;
        self.process_lines(settings, outgoing);
        self.wants_read()
    }

    /// Whether the connection is finished: closing with everything written, or the peer done
    /// sending and every reply written.
    pub fn is_done(&self) -> bool {
        let written = self.output.is_empty();
        (self.closing && written) || (self.eof && written && self.replies.in_flight() == 0)
    }

    /// Commands whose reply is not yet written.
    pub fn in_flight(&self) -> usize {
        self.replies.in_flight()
    }

    /// The commands counted since the last call, by op and outcome (the shell adds them to
    /// the process's counters).
    pub fn take_counts(&mut self) -> IngestCounts {
        std::mem::take(&mut self.counts)
    }

    /// Whether the connection is closing (failed auth, a line over the limit).
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    fn over_backlog(&self) -> bool {
        self.replies.in_flight() >= MAX_IN_FLIGHT || self.output.len() >= MAX_REPLY_BACKLOG
    }

    fn process_lines(&mut self, settings: &UpstreamSettings, outgoing: &mut Outgoing) {
        let input = std::mem::take(&mut self.input);
        let mut start = 0;
        while !self.closing {
            if self.over_backlog() {
                self.paused = true;
                break;
            }
            let Some(len) = memchr::memchr(b'\n', &input[start..]) else { break };
            let line = &input[start..start + len];
            start += len + 1;
            if line.len() > settings.max_line {
                self.over_limit(settings.max_line);
                break;
            }
            self.handle_line(line, settings, outgoing);
            self.replies.drain_ready(&mut self.output);
        }
        if !self.closing {
            let rest = &input[start.min(input.len())..];
            // Only the unterminated tail is a line in the making: complete lines waiting behind
            // a pause are judged when they are handled.
            let tail = memchr::memrchr(b'\n', rest).map_or(rest, |i| &rest[i + 1..]);
            if tail.len() > settings.max_line {
                self.over_limit(settings.max_line);
            } else if rest.is_empty() && input.capacity() > KEEP_CAPACITY {
                self.input = Vec::new();
            } else {
                let mut input = input;
                input.drain(..start.min(input.len()));
                self.input = input;
            }
        }
        self.replies.drain_ready(&mut self.output);
    }

    fn over_limit(&mut self, max_line: usize) {
        self.counts.record(IngestOp::Unknown, IngestOutcome::Error(ErrorCode::TooLarge));
        let mut line = Vec::new();
        ingest::reply_error(&mut line, ErrorCode::TooLarge, &format!("line longer than {max_line} bytes; closing"));
        self.replies.push(Slot::Ready(line));
        self.closing = true;
    }

    fn ready(&mut self, line: Vec<u8>) {
        self.replies.push(Slot::Ready(line));
    }

    fn ready_ok(&mut self, wants_reply: bool) {
        if wants_reply {
            let mut out = Vec::new();
            ingest::reply_ok(&mut out);
            self.ready(out);
        }
    }

    fn ready_error(&mut self, code: ErrorCode, message: &str) {
        let mut out = Vec::new();
        ingest::reply_error(&mut out, code, message);
        self.ready(out);
    }

    /// A slot for a command answered by homes, when the connection wants its reply.
    fn reply_to(&mut self, wants_reply: bool, slot: Slot) -> Option<ReplyTo> {
        wants_reply.then(|| ReplyTo {
            conn: self.conn,
            generation: self.generation,
            serial: self.replies.push(slot),
            part: 0,
        })
    }

    fn handle_line(&mut self, line: &[u8], settings: &UpstreamSettings, outgoing: &mut Outgoing) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let (op, outcome) = self.apply_line(line, settings, outgoing);
        self.counts.record(op, outcome);
    }

    /// Refuse a command with `code`: its error reply, and the outcome to count.
    fn refuse(&mut self, op: IngestOp, code: ErrorCode, message: &str) -> (IngestOp, IngestOutcome) {
        self.ready_error(code, message);
        (op, IngestOutcome::Error(code))
    }

    /// Handle one command; its op and outcome, to count.
    fn apply_line(
        &mut self,
        line: &[u8],
        settings: &UpstreamSettings,
        outgoing: &mut Outgoing,
    ) -> (IngestOp, IngestOutcome) {
        let parsed = match ingest::decode_ingest_line(line) {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse(e.op.map_or(IngestOp::Unknown, op_of), e.code, &e.message),
        };
        let op = match &parsed.cmd {
            IngestCmd::Auth { .. } => IngestOp::Auth,
            IngestCmd::Hello { .. } => IngestOp::Hello,
            IngestCmd::Publish { .. } => IngestOp::Publish,
            IngestCmd::State { .. } => IngestOp::State,
            IngestCmd::Kick { .. } => IngestOp::Kick,
            IngestCmd::CloseRoom { .. } => IngestOp::CloseRoom,
            IngestCmd::DeleteComment { .. } => IngestOp::DeleteComment,
        };
        let wants_reply = (self.acks && parsed.ack) || self.source == Source::Http;
        if !self.authed {
            let ok = matches!(&parsed.cmd, IngestCmd::Auth { token } if settings.tokens.iter().any(|t| t == token));
            if ok {
                self.authed = true;
                self.ready_ok(true);
                return (op, IngestOutcome::Ok);
            }
            self.closing = true;
            return self.refuse(op, ErrorCode::Unauthorized, "auth with a valid token first; closing");
        }
        match self.route(parsed.cmd, wants_reply, settings, outgoing) {
            Ok(()) => (op, IngestOutcome::Ok),
            Err(BadRooms(why)) => self.refuse(op, ErrorCode::BadRequest, &why),
        }
    }

    /// Send an authorised command on to the homes (or workers) that carry it out; refused
    /// before anything is sent when a room name is not valid.
    fn route(
        &mut self,
        cmd: IngestCmd,
        wants_reply: bool,
        settings: &UpstreamSettings,
        outgoing: &mut Outgoing,
    ) -> Result<(), BadRooms> {
        match cmd {
            IngestCmd::Auth { .. } => self.ready_ok(wants_reply),
            IngestCmd::Hello { acks } => {
                self.acks = acks;
                self.ready_ok(true);
            }
            IngestCmd::Publish { rooms, many, kind, data } => {
                let rooms = rooms.iter().map(|r| room_name(r)).collect::<Result<Vec<_>, _>>()?;
                if rooms.is_empty() {
                    return Err(BadRooms("rooms is empty".into()));
                }
                let slot = Slot::Publish { seqs: vec![0; rooms.len()], left: rooms.len() as u32, many };
                let base = self.reply_to(wants_reply, slot);
                let data: Box<str> = data.get().into();
                for (part, room) in rooms.into_iter().enumerate() {
                    let reply = base.map(|r| ReplyTo { part: part as u32, ..r });
                    let home = home_of(&room, settings.workers);
                    let source = self.source;
                    let mail = Mail::Publish { room, kind: (*kind).into(), data: data.clone(), source, reply };
                    post_to(outgoing, home, mail);
                }
            }
            IngestCmd::State { room, state } => {
                let room = room_name(&room)?;
                let reply = self.reply_to(wants_reply, Slot::State);
                let home = home_of(&room, settings.workers);
                let source = self.source;
                post_to(outgoing, home, Mail::SetState { room, state: state.get().into(), source, reply });
            }
            IngestCmd::Kick { user, room } => {
                let room = room.as_deref().map(room_name).transpose()?;
                let slot = Slot::Kick { left: settings.workers as u32, closed: 0 };
                let reply = self.reply_to(wants_reply, slot);
                let user: std::sync::Arc<str> = std::sync::Arc::from(&*user);
                for w in 0..settings.workers {
                    let mail = Mail::Kick { user: std::sync::Arc::clone(&user), room: room.clone(), reply };
                    post_to(outgoing, WorkerId(w as u16), mail);
                }
            }
            IngestCmd::DeleteComment { room, id } => {
                let room = room_name(&room)?;
                let reply = self.reply_to(wants_reply, Slot::Publish { seqs: vec![0], left: 1, many: false });
                let home = home_of(&room, settings.workers);
                post_to(outgoing, home, Mail::DeleteComment { room, id: (*id).into(), reply });
            }
            IngestCmd::CloseRoom { room, .. } => {
                let room = room_name(&room)?;
                let reply = self.reply_to(wants_reply, Slot::Done);
                let home = home_of(&room, settings.workers);
                post_to(outgoing, home, Mail::CloseRoom { room, reply });
            }
        }
        Ok(())
    }
}

/// The counting op of an HTTP command's path.
fn op_of(op: &str) -> IngestOp {
    IngestOp::ALL.into_iter().find(|o| o.as_str() == op).unwrap_or(IngestOp::Unknown)
}

/// An HTTP body as one ingest line: `op` is added when the body has none (the admin port has
/// checked that a present `op` is this one), and line breaks, which JSON allows only between
/// tokens, become spaces so a pretty-printed body stays one line.
fn request_line(op: &str, body: &[u8]) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        op: Option<std::borrow::Cow<'a, str>>,
    }
    let mut line: Vec<u8> = body.iter().map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b }).collect();
    let has_op = serde_json::from_slice::<Op<'_>>(&line).is_ok_and(|o| o.op.is_some());
    if !has_op {
        if let Some(open) = line.iter().position(|b| *b == b'{') {
            let rest = line.split_off(open + 1);
            let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
            let close = if empty { "" } else { "," };
            line.extend_from_slice(format!("\"op\":\"{op}\"{close}").as_bytes());
            line.extend_from_slice(&rest);
        }
    }
    line.push(b'\n');
    line
}

/// Whether the ingest side should stop reading upstreams because the workers' mailboxes are
/// deep (see `runtime::mesh`): on above [`MailPressure::HIGH`] mails waiting in any worker's
/// mailbox, off again below [`MailPressure::LOW`], so it does not flap around one mark.
#[derive(Debug, Default)]
pub struct MailPressure {
    paused: bool,
}

impl MailPressure {
    /// Mails waiting in one worker's mailbox at which reading stops: about 100k publishes of
    /// a few hundred bytes, tens of MiB.
    pub const HIGH: usize = 100_000;
    /// Mails waiting at which reading resumes.
    pub const LOW: usize = Self::HIGH / 2;

    /// Update with the deepest worker queue; returns whether reading is paused now.
    pub fn update(&mut self, deepest: usize) -> bool {
        if self.paused && deepest <= Self::LOW {
            self.paused = false;
        } else if !self.paused && deepest >= Self::HIGH {
            self.paused = true;
        }
        self.paused
    }

    /// Whether reading is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

/// Why a command's rooms were refused: the text of its `bad_request` reply.
struct BadRooms(String);

/// A command's room name, or the refusal that names what is wrong with it.
fn room_name(raw: &str) -> Result<RoomName, BadRooms> {
    RoomName::new(raw).map_err(|why| BadRooms(format!("bad room name: {why}")))
}

#[cfg(test)]
mod tests;
