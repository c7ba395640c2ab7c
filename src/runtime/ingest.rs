//! The ingest loop: upstream services publish here, one NDJSON command per line.
//!
//! This loop only moves bytes: it accepts upstream connections, reads what they send into the
//! connection's [`Upstream`] (the protocol itself, with its ordering, auth, limits and pausing,
//! is the core's), sends the resulting mail to the homes in batches (one channel push and one
//! wake-up per home per turn), hands the homes' answers back, and writes the reply lines.
//!
//! Besides each connection's own pausing, the loop stops reading every upstream while any
//! worker's mailbox is deep ([`MailPressure`]; `runtime::mesh` explains why that bounds the
//! queues) and polls the depth every millisecond until it drains.
//!
//! The admin port's `POST /api/publish` (and `state`, `kick`, `close_room`) comes here too, as
//! one command per request ([`IngestMail::Http`]): it gets an [`Upstream`] of its own, so the
//! HTTP API follows exactly the socket's rules, and its reply line is the response.

use super::mesh::{IngestMail, Mesh};
use super::nonblocking;
use crate::metrics::IngestCounts;
use crate::shard::mail::{IngestReply, Mail};
use crate::upstream::{MailPressure, Upstream, UpstreamSettings};
use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

const WAKER: Token = Token(usize::MAX);
const LISTENER: Token = Token(usize::MAX - 1);
const READ_CHUNK: usize = 64 * 1024;
/// How often the workers' queue depth is looked at while reading is paused for it.
const PRESSURE_POLL: Duration = Duration::from_millis(1);

/// One upstream connection: its transport and its protocol state.
#[derive(Debug)]
struct Client {
    peer: Peer,
    up: Upstream,
}

/// Where an upstream's bytes come from and its replies go.
#[derive(Debug)]
enum Peer {
    /// An ingest socket.
    Socket(TcpStream),
    /// One HTTP request of the admin port: the reply lines go back once all are known.
    Http(Sender<Vec<u8>>),
}

/// The ingest thread. Built on the main thread, then [`IngestLoop::run`] in its own.
pub struct IngestLoop {
    poll: Poll,
    listener: TcpListener,
    inbox: Receiver<IngestMail>,
    mesh: Arc<Mesh>,
    settings: UpstreamSettings,
    conns: Slab<Client>,
    next_generation: u64,
    outgoing: Vec<Vec<Mail>>,
    scratch: Vec<u8>,
    pressure: MailPressure,
    /// Every command handled so far, by op and outcome.
    counts: IngestCounts,
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
        settings: UpstreamSettings,
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
            pressure: MailPressure::default(),
            counts: IngestCounts::default(),
        })
    }

    /// Serve until shutdown.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if self.pressure.is_paused() { PRESSURE_POLL } else { Duration::from_secs(1) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(key) => self.service(key),
                }
            }
            while let Ok(mail) = self.inbox.try_recv() {
                match mail {
                    IngestMail::Replies(replies) => self.deliver_replies(&replies),
                    IngestMail::Http { op, body, bearer, operator, reply } => {
                        self.http(op, &body, (bearer.as_deref(), operator), reply)
                    }
                    IngestMail::Counters { reply } => {
                        let _ = reply.send(self.counts);
                    }
                    IngestMail::Shutdown => return Ok(()),
                }
            }
            self.send_mail();
            let was_paused = self.pressure.is_paused();
            if was_paused && !self.pressure.update(self.mesh.deepest_worker_queue()) {
                // Edge-triggered: data that arrived while paused was announced then, not now.
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.service(key);
                }
                self.send_mail();
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match nonblocking::call(|| self.listener.accept()) {
                Ok(Some((mut sock, peer))) => {
                    let _ = sock.set_nodelay(true);
                    self.next_generation += 1;
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, Token(key), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    tracing::debug!(%peer, "ingest connection");
                    let up = Upstream::new(key, self.next_generation, &self.settings);
                    entry.insert(Client { peer: Peer::Socket(sock), up });
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "ingest accept failed");
                    return;
                }
            }
        }
    }

    /// Read what the connection has (unless it or the loop is paused), write its replies, and
    /// go on while writing lets a paused connection resume.
    fn service(&mut self, key: usize) {
        loop {
            self.read(key);
            if !self.write(key) {
                return;
            }
            let Some(client) = self.conns.get_mut(key) else { return };
            if !client.up.poll_resume(&self.settings, &mut self.outgoing) {
                return;
            }
        }
    }

    /// Read chunk by chunk while the connection wants it and the workers keep up; each chunk's
    /// mail is sent at once, so the depth the pressure check reads includes it.
    fn read(&mut self, key: usize) {
        loop {
            if self.pressure.update(self.mesh.deepest_worker_queue()) {
                return;
            }
            let Some(client) = self.conns.get_mut(key) else { return };
            let Peer::Socket(sock) = &mut client.peer else { return };
            if !client.up.wants_read() {
                return;
            }
            match nonblocking::call(|| sock.read(&mut self.scratch)) {
                Ok(Some(0)) => client.up.handle_eof(),
                Ok(Some(n)) => {
                    client.up.handle_bytes(&self.scratch[..n], &self.settings, &mut self.outgoing);
                    self.counts.merge(&client.up.take_counts());
                    self.send_mail();
                }
                Ok(None) => return,
                Err(_) => client.up.handle_eof(),
            }
        }
    }

    /// Write the connection's replies; false when it is finished (and removed).
    fn write(&mut self, key: usize) -> bool {
        let Some(client) = self.conns.get_mut(key) else { return false };
        let sock = match &mut client.peer {
            Peer::Socket(sock) => sock,
            Peer::Http(reply) => {
                if client.up.in_flight() > 0 {
                    return true;
                }
                // Every reply is known: the response is the reply line.
                let _ = reply.send(client.up.output().to_vec());
                self.conns.remove(key);
                return false;
            }
        };
        let mut broken = false;
        while !client.up.output().is_empty() {
            match nonblocking::call(|| sock.write(client.up.output())) {
                Ok(Some(0)) | Ok(None) => break,
                Ok(Some(n)) => client.up.advance_output(n),
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken || client.up.is_done() {
            if let Peer::Socket(mut sock) = self.conns.remove(key).peer {
                let _ = self.poll.registry().deregister(&mut sock);
                discard_unread(&mut sock, &mut self.scratch);
            }
            return false;
        }
        true
    }

    /// One command over HTTP: an [`Upstream`] for the request, answered like a socket's.
    fn http(&mut self, op: &'static str, body: &[u8], caller: (Option<&str>, bool), reply: Sender<Vec<u8>>) {
        self.next_generation += 1;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut up =
            Upstream::request(key, self.next_generation, &self.settings, (op, body), caller, &mut self.outgoing);
        self.counts.merge(&up.take_counts());
        entry.insert(Client { peer: Peer::Http(reply), up });
        self.write(key);
    }

    fn deliver_replies(&mut self, replies: &[IngestReply]) {
        let mut touched = Vec::new();
        for reply in replies {
            let to = reply.to();
            let Some(client) = self.conns.get_mut(to.conn) else { continue };
            if client.up.generation() != to.generation {
                continue;
            }
            client.up.handle_reply(reply);
            if touched.last() != Some(&to.conn) {
                touched.push(to.conn);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            self.service(key);
        }
    }

    fn send_mail(&mut self) {
        for (w, mail) in self.outgoing.iter_mut().enumerate() {
            if !mail.is_empty() {
                if let Some(mailbox) = self.mesh.workers.get(w) {
                    mailbox.send_mail(std::mem::take(mail));
                }
            }
        }
    }
}

/// Read and drop what a peer sent after the command that ended its connection (lines after a
/// refused auth, say). Closing a socket with unread input makes the kernel send RST instead of
/// FIN, and a reset can destroy the reply the peer is about to read. Bounded: a peer that
/// keeps sending gets its reset.
fn discard_unread(sock: &mut TcpStream, scratch: &mut [u8]) {
    for _ in 0..16 {
        match nonblocking::call(|| sock.read(scratch)) {
            Ok(Some(n)) if n > 0 => {}
            _ => return,
        }
    }
}
