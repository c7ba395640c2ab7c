//! The ingest loop: upstream services publish here, one NDJSON command per line.
//!
//! Commands are parsed, turned into mail for each room's home worker and sent in batches (one
//! channel push and one wake-up per home per read). Replies come back from the homes in any
//! order across rooms; [`Replies`] puts them back in command order per connection, so an
//! upstream can pipeline thousands of commands and read the replies as a stream. A connection
//! whose replies pile up (it does not read them) stops being read until they drain: memory per
//! upstream stays bounded.

use super::mesh::{IngestMail, Mesh, WorkerMail};
use crate::ids::WorkerId;
use crate::shard::home_of;
use crate::shard::mail::{IngestReply, Mail, ReplyTo};
use crate::wire::ingest::{self, IngestCmd};
use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);
/// Commands awaiting their reply before a connection stops being read.
const MAX_IN_FLIGHT: usize = 65_536;
/// Reply bytes waiting for the socket before a connection stops being read.
const MAX_REPLY_BACKLOG: usize = 4 * 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// One command's reply slot.
#[derive(Debug)]
enum Slot {
    /// The reply line is known.
    Ready(Vec<u8>),
    /// Waiting for `left` more parts from homes.
    Publish { seqs: Vec<u64>, left: u32, many: bool },
    /// Waiting for a state reply.
    State,
    /// Waiting for `left` more workers to report how many connections a kick affected.
    Kick { left: u32, closed: u64 },
    /// Waiting for a command without a value (close_room).
    Done,
}

/// A connection's replies, in command order. Pure: tested without sockets.
#[derive(Debug, Default)]
pub struct Replies {
    base: u64,
    slots: VecDeque<Slot>,
}

impl Replies {
    fn push(&mut self, slot: Slot) -> u64 {
        self.slots.push_back(slot);
        self.base + self.slots.len() as u64 - 1
    }

    /// Commands whose reply is not yet written.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    fn fill(&mut self, reply: &IngestReply) {
        let to = reply.to();
        let Some(index) = to.serial.checked_sub(self.base).map(|i| i as usize) else { return };
        let Some(slot) = self.slots.get_mut(index) else { return };
        let mut line = Vec::new();
        match (slot, reply) {
            (Slot::Publish { seqs, left, many }, IngestReply::Published { seq, .. }) => {
                if let Some(s) = seqs.get_mut(to.part as usize) {
                    *s = seq.0;
                }
                *left = left.saturating_sub(1);
                if *left > 0 {
                    return;
                }
                if *many {
                    ingest::reply_seqs(&mut line, seqs);
                } else {
                    ingest::reply_seq(&mut line, seq.0);
                }
            }
            (Slot::State, IngestReply::State { seq, version, .. }) => ingest::reply_state(&mut line, seq.0, *version),
            (Slot::Kick { left, closed }, IngestReply::Kicked { closed: n, .. }) => {
                *closed += n;
                *left = left.saturating_sub(1);
                if *left > 0 {
                    return;
                }
                ingest::reply_closed(&mut line, *closed);
            }
            (Slot::Done, IngestReply::Done { .. }) => ingest::reply_ok(&mut line),
            _ => return,
        }
        self.slots[index] = Slot::Ready(line);
    }

    /// Move every reply that is next in order into `out`.
    fn drain_ready(&mut self, out: &mut Vec<u8>) {
        while let Some(front) = self.slots.front() {
            match front {
                Slot::Ready(line) => out.extend_from_slice(line),
                Slot::Publish { .. } | Slot::State | Slot::Kick { .. } | Slot::Done => break,
            }
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

/// One upstream connection.
#[derive(Debug)]
struct Upstream {
    sock: TcpStream,
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
    /// The socket reported end of stream.
    eof: bool,
}

/// Settings of the ingest loop.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Longest accepted line.
    pub max_line: usize,
    /// Accepted `auth` tokens; empty means none needed.
    pub tokens: Vec<String>,
    /// Number of workers (to find a room's home).
    pub workers: usize,
}

/// The ingest thread. Built on the main thread, then [`IngestLoop::run`] in its own.
pub struct IngestLoop {
    poll: Poll,
    listener: TcpListener,
    inbox: Receiver<IngestMail>,
    mesh: Arc<Mesh>,
    settings: IngestSettings,
    conns: Slab<Upstream>,
    next_generation: u64,
    outgoing: Vec<Vec<Mail>>,
    scratch: Vec<u8>,
}

impl IngestLoop {
    /// The token the ingest waker must be created with.
    pub const WAKER_TOKEN: Token = WAKER;

    /// An ingest loop around an existing poll and listener.
    pub fn new(
        poll: Poll,
        mut listener: TcpListener,
        inbox: Receiver<IngestMail>,
        mesh: Arc<Mesh>,
        settings: IngestSettings,
    ) -> io::Result<Self> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let workers = settings.workers;
        Ok(Self {
            poll,
            listener,
            inbox,
            mesh,
            settings,
            conns: Slab::new(),
            next_generation: 0,
            outgoing: (0..workers).map(|_| Vec::new()).collect(),
            scratch: vec![0; READ_CHUNK],
        })
    }

    /// Serve until shutdown.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_secs(1))) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(key) => {
                        if event.is_writable() {
                            self.write(key);
                        }
                        if event.is_readable() || event.is_read_closed() {
                            self.read(key);
                        }
                    }
                }
            }
            while let Ok(mail) = self.inbox.try_recv() {
                match mail {
                    IngestMail::Replies(replies) => self.deliver_replies(&replies),
                    IngestMail::Shutdown => return Ok(()),
                }
            }
            self.send_mail();
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    self.next_generation += 1;
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key());
                    if self.poll.registry().register(&mut sock, token, Interest::READABLE | Interest::WRITABLE).is_err()
                    {
                        continue;
                    }
                    tracing::debug!(%peer, "ingest connection");
                    entry.insert(Upstream {
                        sock,
                        generation: self.next_generation,
                        input: Vec::new(),
                        output: Vec::new(),
                        replies: Replies::default(),
                        acks: true,
                        authed: self.settings.tokens.is_empty(),
                        closing: false,
                        paused: false,
                        eof: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "ingest accept failed");
                    return;
                }
            }
        }
    }

    fn read(&mut self, key: usize) {
        let Some(up) = self.conns.get_mut(key) else { return };
        if up.closing {
            return;
        }
        loop {
            if up.replies.in_flight() >= MAX_IN_FLIGHT || up.output.len() >= MAX_REPLY_BACKLOG {
                up.paused = true;
                break;
            }
            match up.sock.read(&mut self.scratch) {
                Ok(0) => {
                    up.eof = true;
                    break;
                }
                Ok(n) => {
                    up.input.extend_from_slice(&self.scratch[..n]);
                    process_lines(up, key, &self.settings, &mut self.outgoing);
                    if up.closing {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    up.eof = true;
                    break;
                }
            }
        }
        self.write(key);
    }

    fn write(&mut self, key: usize) {
        let Some(up) = self.conns.get_mut(key) else { return };
        let mut broken = false;
        while !up.output.is_empty() {
            match up.sock.write(&up.output) {
                Ok(0) => break,
                Ok(n) => {
                    up.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if up.output.is_empty() && up.output.capacity() > READ_CHUNK {
            up.output = Vec::new();
        }
        let done_closing = up.closing && up.output.is_empty();
        let done_eof = up.eof && up.output.is_empty() && up.replies.in_flight() == 0;
        if broken || done_closing || done_eof {
            self.conns.remove(key);
            return;
        }
        if up.paused && up.replies.in_flight() < MAX_IN_FLIGHT / 2 && up.output.len() < MAX_REPLY_BACKLOG / 2 {
            up.paused = false;
            // Lines already buffered first, then the socket (edge-triggered: it will not
            // announce data that arrived while we were not reading).
            process_lines(up, key, &self.settings, &mut self.outgoing);
            self.read(key);
        }
    }

    fn deliver_replies(&mut self, replies: &[IngestReply]) {
        let mut touched = Vec::new();
        for reply in replies {
            let to = reply.to();
            let Some(up) = self.conns.get_mut(to.conn) else { continue };
            if up.generation != to.generation {
                continue;
            }
            up.replies.fill(reply);
            if touched.last() != Some(&to.conn) {
                touched.push(to.conn);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            if let Some(up) = self.conns.get_mut(key) {
                up.replies.drain_ready(&mut up.output);
            }
            self.write(key);
        }
    }

    fn send_mail(&mut self) {
        for (w, mail) in self.outgoing.iter_mut().enumerate() {
            if !mail.is_empty() {
                if let Some(mailbox) = self.mesh.workers.get(w) {
                    mailbox.send(WorkerMail::Mail(std::mem::take(mail)));
                }
            }
        }
    }
}

/// Handle every complete line buffered on `up`, appending mail for homes to `outgoing`.
fn process_lines(up: &mut Upstream, key: usize, settings: &IngestSettings, outgoing: &mut [Vec<Mail>]) {
    let mut input = std::mem::take(&mut up.input);
    let mut start = 0;
    while !up.paused && !up.closing {
        let Some(len) = input[start..].iter().position(|b| *b == b'\n') else { break };
        let line = &input[start..start + len];
        start += len + 1;
        if line.len() > settings.max_line {
            over_limit(up, settings.max_line);
            break;
        }
        handle_line(up, key, line, settings, outgoing);
        if up.replies.in_flight() >= MAX_IN_FLIGHT {
            up.paused = true;
        }
    }
    if !up.closing {
        input.drain(..start.min(input.len()));
        up.input = input;
    }
    if !up.closing && up.input.len() > settings.max_line {
        over_limit(up, settings.max_line);
    }
    up.replies.drain_ready(&mut up.output);
    if up.input.is_empty() && up.input.capacity() > READ_CHUNK {
        up.input = Vec::new();
    }
}

fn over_limit(up: &mut Upstream, max_line: usize) {
    let mut line = Vec::new();
    ingest::reply_error(&mut line, "too_large", &format!("line longer than {max_line} bytes; closing"));
    up.replies.push(Slot::Ready(line));
    up.closing = true;
}

fn handle_line(up: &mut Upstream, key: usize, line: &[u8], settings: &IngestSettings, outgoing: &mut [Vec<Mail>]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let parsed = match ingest::decode_ingest_line(line) {
        Ok(parsed) => parsed,
        Err(e) => {
            let mut out = Vec::new();
            ingest::reply_error(&mut out, e.code, &e.message);
            up.replies.push(Slot::Ready(out));
            return;
        }
    };
    let wants_reply = up.acks && parsed.ack;
    if !up.authed {
        let ok = matches!(&parsed.cmd, IngestCmd::Auth { token } if settings.tokens.iter().any(|t| t == token));
        let mut out = Vec::new();
        if ok {
            up.authed = true;
            ingest::reply_ok(&mut out);
        } else {
            ingest::reply_error(&mut out, "unauthorized", "auth with a valid token first; closing");
            up.closing = true;
        }
        up.replies.push(Slot::Ready(out));
        return;
    }
    let reply_to = |up: &mut Upstream, slot: Slot| -> Option<ReplyTo> {
        wants_reply.then(|| ReplyTo { conn: key, generation: up.generation, serial: up.replies.push(slot), part: 0 })
    };
    match parsed.cmd {
        IngestCmd::Auth { .. } => ready_ok(up, wants_reply),
        IngestCmd::Hello { acks } => {
            up.acks = acks;
            ready_ok(up, true);
        }
        IngestCmd::Publish { rooms, many, kind, data } => {
            if let Some(bad) = rooms.iter().find_map(|r| crate::wire::validate_room(r).err()) {
                return ready_error(up, "bad_request", &format!("bad room name: {bad}"));
            }
            if rooms.is_empty() {
                return ready_error(up, "bad_request", "rooms is empty");
            }
            let slot = Slot::Publish { seqs: vec![0; rooms.len()], left: rooms.len() as u32, many };
            let base = reply_to(up, slot);
            let data: Box<str> = data.get().into();
            for (part, room) in rooms.iter().enumerate() {
                let reply = base.map(|r| ReplyTo { part: part as u32, ..r });
                let room: Arc<str> = Arc::from(&**room);
                let home = home_of(&room, settings.workers);
                push_mail(outgoing, home, Mail::Publish { room, kind: (*kind).into(), data: data.clone(), reply });
            }
        }
        IngestCmd::State { room, state } => {
            if let Err(bad) = crate::wire::validate_room(&room) {
                return ready_error(up, "bad_request", &format!("bad room name: {bad}"));
            }
            let reply = reply_to(up, Slot::State);
            let room: Arc<str> = Arc::from(&*room);
            let home = home_of(&room, settings.workers);
            push_mail(outgoing, home, Mail::SetState { room, state: state.get().into(), reply });
        }
        IngestCmd::Kick { user, room } => {
            if let Some(Err(bad)) = room.as_deref().map(crate::wire::validate_room) {
                return ready_error(up, "bad_request", &format!("bad room name: {bad}"));
            }
            let slot = Slot::Kick { left: settings.workers as u32, closed: 0 };
            let reply = reply_to(up, slot);
            let (user, room): (Arc<str>, Option<Arc<str>>) = (Arc::from(&*user), room.map(|r| Arc::from(&*r)));
            for w in 0..settings.workers {
                let mail = Mail::Kick { user: Arc::clone(&user), room: room.clone(), reply };
                push_mail(outgoing, WorkerId(w as u16), mail);
            }
        }
        IngestCmd::CloseRoom { room, .. } => {
            if let Err(bad) = crate::wire::validate_room(&room) {
                return ready_error(up, "bad_request", &format!("bad room name: {bad}"));
            }
            let reply = reply_to(up, Slot::Done);
            let room: Arc<str> = Arc::from(&*room);
            let home = home_of(&room, settings.workers);
            push_mail(outgoing, home, Mail::CloseRoom { room, reply });
        }
    }
}

fn push_mail(outgoing: &mut [Vec<Mail>], home: WorkerId, mail: Mail) {
    if let Some(out) = outgoing.get_mut(usize::from(home.0)) {
        out.push(mail);
    }
}

fn ready_ok(up: &mut Upstream, wants_reply: bool) {
    if wants_reply {
        let mut out = Vec::new();
        ingest::reply_ok(&mut out);
        up.replies.push(Slot::Ready(out));
    }
}

fn ready_error(up: &mut Upstream, code: &str, message: &str) {
    let mut out = Vec::new();
    ingest::reply_error(&mut out, code, message);
    up.replies.push(Slot::Ready(out));
}
