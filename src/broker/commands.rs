//! The broker's command thread: every script call to Redis, pipelined, in arrival order, and
//! the node's heartbeat.
//!
//! Requests from the homes (sequence, presence) and from the subscriber thread (snapshots)
//! queue on one channel. The thread takes everything waiting (up to `MAX_PIPELINE`) and
//! sends it as one pipeline, so one round trip carries a whole burst: a room's publishes are
//! sequenced in the order its home sent them, and Redis runs each script alone. The answers
//! go back by mail: ingest replies to the ingest loop, comment and delete answers and
//! snapshots to the room's home worker.
//!
//! Every `node_ttl_ms / 3` the heartbeat refreshes this node's key (expiring after
//! `node_ttl_ms`) and its entry in the node set, and checks the other members: a member whose
//! key expired is reaped (`scripts::REAP`: its users leave presence everywhere). If this node
//! finds itself missing from the set (it was reaped during an outage, or Redis lost its data)
//! every worker reports its presence again.
//!
//! Failures: any IO error drops the connection; sequence requests are then answered
//! `unavailable` at once (the workers also refuse new ones while the status says down), and
//! snapshots and presence reports wait (bounded) for the connection to come back, after a
//! backoff with jitter (100 ms doubling to 2 s). A request whose pipeline failed may still have
//! run in Redis; its publisher heard `unavailable` and a retry may publish it twice.
//!
//! The `redis` crate's synchronous connection, on this thread of its own, as the Redis sink
//! does: the calls must wait for their answers anyway, the socket timeouts bound each one, and
//! an async runtime would add a reactor for one socket.

use super::envelope;
use super::scripts;
use super::status::BrokerStatus;
use crate::ids::{RoomName, Seq};
use crate::runtime::mesh::{IngestMail, Mesh};
use crate::shard::cluster::{PresenceChange, SequenceRequest, Then, Unavailable};
use crate::shard::home_of;
use crate::shard::mail::{IngestReply, Mail};
use crate::wire::ErrorCode;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{Client, Connection, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most requests sent in one pipeline.
const MAX_PIPELINE: usize = 1_024;
/// Snapshots and presence reports kept while Redis is down; past this the oldest presence
/// reports are dropped (and every worker reports again when Redis is back).
const MAX_WAITING: usize = 100_000;

/// A request for the command thread.
#[derive(Debug)]
pub(super) enum Command {
    /// Sequence a message.
    Sequence(SequenceRequest),
    /// One node's presence changes and reaction counts in a room.
    Presence {
        /// The room.
        room: RoomName,
        /// Who came or went on this node.
        changes: Vec<PresenceChange>,
        /// Reaction counts of the interval.
        reactions: Vec<(Box<str>, u64)>,
    },
    /// Read a room's snapshot for its home (after the subscriber subscribed).
    Snapshot(RoomName),
    /// Tell every node to carry out a moderation command (from this node's upstream).
    Control(crate::shard::cluster::ClusterOp),
    /// The node is stopping: take its viewers out of presence now (rather than when its
    /// heartbeat expires), then answer.
    Leave(crossbeam_channel::Sender<()>),
}

/// The command thread's settings.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) node: String,
    pub(super) workers: usize,
    pub(super) history_size: usize,
    pub(super) large_room: usize,
    pub(super) node_ttl_ms: u64,
    pub(super) room_ttl_ms: u64,
    pub(super) timeout: Duration,
}

/// Exponential backoff with jitter between connection attempts.
#[derive(Debug)]
pub(super) struct Backoff {
    delay_ms: u64,
    next: Instant,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self { delay_ms: 0, next: Instant::now() }
    }

    /// Whether an attempt may be made now.
    pub(super) fn ready(&self) -> bool {
        Instant::now() >= self.next
    }

    /// How long until the next attempt.
    pub(super) fn wait(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// An attempt failed: wait longer before the next.
    pub(super) fn failed(&mut self) {
        self.delay_ms = (self.delay_ms * 2).clamp(100, 2_000);
        let jitter = fastrand::u64(0..=self.delay_ms / 2);
        self.next = Instant::now() + Duration::from_millis(self.delay_ms / 2 + jitter);
    }

    /// Connected: the next failure starts from the shortest delay again.
    pub(super) fn reset(&mut self) {
        self.delay_ms = 0;
    }
}

/// Open a connection with every socket timeout set.
pub(super) fn connect(client: &Client, timeout: Duration) -> redis::RedisResult<Connection> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// The loaded scripts' hashes.
#[derive(Debug)]
struct Scripts {
    sequence: redis::Script,
    snapshot: redis::Script,
    presence: redis::Script,
    reap: redis::Script,
    close: redis::Script,
}

/// See the module doc.
pub(super) struct Commands {
    client: Client,
    con: Option<Connection>,
    rx: Receiver<Command>,
    mesh: Arc<Mesh>,
    status: Arc<BrokerStatus>,
    cfg: Settings,
    scripts: Scripts,
    backoff: Backoff,
    /// Snapshots and presence reports that wait for Redis, in order.
    waiting: VecDeque<Command>,
    next_heartbeat: Instant,
    /// This node was in the node set before (so missing from it means it was reaped).
    registered: bool,
    /// Presence reports were dropped while Redis was down: report everything again.
    resync_presence: bool,
}

impl Commands {
    pub(super) fn new(
        client: Client,
        rx: Receiver<Command>,
        mesh: Arc<Mesh>,
        status: Arc<BrokerStatus>,
        cfg: Settings,
    ) -> Self {
        Self {
            client,
            con: None,
            rx,
            mesh,
            status,
            cfg,
            scripts: Scripts {
                sequence: redis::Script::new(&scripts::sequence()),
                snapshot: redis::Script::new(&scripts::snapshot()),
                presence: redis::Script::new(scripts::PRESENCE),
                reap: redis::Script::new(scripts::REAP),
                close: redis::Script::new(scripts::CLOSE),
            },
            backoff: Backoff::new(),
            waiting: VecDeque::new(),
            next_heartbeat: Instant::now(),
            registered: false,
            resync_presence: false,
        }
    }

    /// Serve requests until every sender is gone.
    pub(super) fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_PIPELINE);
        loop {
            let wake = if self.con.is_some() { self.next_heartbeat } else { Instant::now() + self.backoff.wait() };
            let timeout = wake.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match self.rx.recv_timeout(timeout) {
                Ok(command) => batch.push(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            batch.extend(self.rx.try_iter().take(MAX_PIPELINE - batch.len().min(MAX_PIPELINE)));
            let leaving = batch.iter().position(|c| matches!(c, Command::Leave(_))).map(|at| batch.split_off(at));
            self.ensure_connected();
            if self.con.is_none() {
                self.hold(&mut batch);
            } else {
                let mut all: Vec<Command> = self.waiting.drain(..).collect();
                all.append(&mut batch);
                for chunk in chunks(all) {
                    if let Err(left) = self.send(chunk) {
                        self.hold(&mut left.into_iter().collect());
                    }
                }
            }
            if let Some(Command::Leave(done)) = leaving.and_then(|rest| rest.into_iter().next()) {
                self.leave();
                let _ = done.send(());
                return;
            }
            if self.con.is_some() && Instant::now() >= self.next_heartbeat {
                self.heartbeat();
            }
        }
    }

    /// Connect if there is no connection and the backoff allows.
    fn ensure_connected(&mut self) {
        if self.con.is_some() || !self.backoff.ready() {
            return;
        }
        let loaded = connect(&self.client, self.cfg.timeout).and_then(|mut con| {
            let s = &self.scripts;
            for script in [&s.sequence, &s.snapshot, &s.presence, &s.reap, &s.close] {
                script.prepare_invoke().load(&mut con)?;
            }
            Ok(con)
        });
        match loaded {
            Ok(con) => {
                if !self.status.is_up() {
                    tracing::info!(node = %self.cfg.node, "cluster: Redis answers; sequencing resumes");
                }
                self.con = Some(con);
                self.status.set_up(true);
                self.backoff.reset();
                self.next_heartbeat = Instant::now();
            }
            Err(e) => self.fail(&e),
        }
    }

    fn fail(&mut self, e: &redis::RedisError) {
        if !self.status.is_down() || self.con.is_some() {
            tracing::warn!(node = %self.cfg.node, error = %e, "cluster: Redis failed; publishes answer unavailable until it is back");
            self.status.reconnected();
        } else {
            tracing::debug!(node = %self.cfg.node, error = %e, "cluster: Redis still unreachable");
        }
        self.con = None;
        self.status.set_up(false);
        self.backoff.failed();
    }

    /// Redis is unreachable: sequence requests are refused, the rest waits.
    fn hold(&mut self, batch: &mut Vec<Command>) {
        let mut refused = Answers::default();
        for command in batch.drain(..) {
            match command {
                Command::Sequence(request) => refused.refuse(request, &self.status),
                other => {
                    if self.waiting.len() >= MAX_WAITING {
                        if let Some(dropped) = self.waiting.pop_front() {
                            self.resync_presence |= matches!(dropped, Command::Presence { .. });
                        }
                    }
                    self.waiting.push_back(other);
                }
            }
        }
        refused.deliver(&self.mesh, self.cfg.workers);
    }

    /// Send one pipeline and hand out its answers; on a connection failure the commands that
    /// are to be kept come back.
    fn send(&mut self, chunk: Vec<Command>) -> Result<(), Vec<Command>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for command in &chunk {
            self.add(&mut pipe, command);
        }
        let Some(con) = self.con.as_mut() else { return Err(chunk) };
        let result: redis::RedisResult<Vec<redis::RedisResult<Value>>> = pipe.query(con);
        self.status.sent_commands(chunk.len());
        let replies = match result {
            Ok(replies) if replies.len() == chunk.len() => replies,
            Ok(_) => {
                return self.failed_pipeline(
                    chunk,
                    &redis::RedisError::from((redis::ErrorKind::Client, "pipeline answered short")),
                )
            }
            Err(e) => return self.failed_pipeline(chunk, &e),
        };
        let mut answers = Answers::default();
        let mut again = Vec::new();
        for (command, reply) in chunk.into_iter().zip(replies) {
            if reply.as_ref().err().and_then(redis::RedisError::code) == Some("NOSCRIPT") {
                // Someone flushed the scripts: load them again with the next connection.
                again.push(command);
                continue;
            }
            answers.take(command, reply, &self.status);
        }
        answers.deliver(&self.mesh, self.cfg.workers);
        if !again.is_empty() {
            self.con = None;
            return Err(again);
        }
        Ok(())
    }

    fn failed_pipeline(&mut self, chunk: Vec<Command>, e: &redis::RedisError) -> Result<(), Vec<Command>> {
        self.fail(e);
        let mut refused = Answers::default();
        let mut keep = Vec::new();
        for command in chunk {
            match command {
                Command::Sequence(request) => refused.refuse(request, &self.status),
                other => keep.push(other),
            }
        }
        refused.deliver(&self.mesh, self.cfg.workers);
        Err(keep)
    }

    fn add(&self, pipe: &mut redis::Pipeline, command: &Command) {
        match command {
            Command::Sequence(r) => {
                let kind = if r.state.is_some() { "s" } else { "e" };
                let c = pipe
                    .cmd("EVALSHA")
                    .arg(self.scripts.sequence.get_hash())
                    .arg(2)
                    .arg(scripts::meta(&r.room))
                    .arg(scripts::stream(&r.room))
                    .arg(scripts::channel(&r.room))
                    .arg(kind)
                    .arg(self.cfg.history_size)
                    .arg(self.cfg.room_ttl_ms)
                    .arg(r.ts_ms)
                    .arg(r.state.as_deref().unwrap_or(""))
                    .arg(&r.template.holes);
                for piece in &r.template.pieces {
                    c.arg(piece.as_slice());
                }
            }
            Command::Presence { room, changes, reactions } => {
                let c = pipe
                    .cmd("EVALSHA")
                    .arg(self.scripts.presence.get_hash())
                    .arg(3)
                    .arg(scripts::room_users(room))
                    .arg(scripts::node_users(room, &self.cfg.node))
                    .arg(scripts::node_rooms(&self.cfg.node))
                    .arg(scripts::channel(room))
                    .arg(room.as_str())
                    .arg(self.cfg.large_room)
                    .arg(reactions.len());
                for (kind, n) in reactions {
                    c.arg(&**kind).arg(*n);
                }
                for change in changes {
                    c.arg(if change.online { "1" } else { "0" }).arg(&*change.user).arg(&*change.name);
                }
            }
            Command::Leave(_) => {}
            Command::Control(op) => {
                let message = envelope::control(&self.cfg.node, op);
                match op {
                    crate::shard::cluster::ClusterOp::Kick { .. } => {
                        pipe.cmd("PUBLISH").arg(scripts::CONTROL).arg(message);
                    }
                    crate::shard::cluster::ClusterOp::CloseRoom { room } => {
                        pipe.cmd("EVALSHA")
                            .arg(self.scripts.close.get_hash())
                            .arg(2)
                            .arg(scripts::meta(room))
                            .arg(scripts::stream(room))
                            .arg(scripts::CONTROL)
                            .arg(message);
                    }
                }
            }
            Command::Snapshot(room) => {
                pipe.cmd("EVALSHA")
                    .arg(self.scripts.snapshot.get_hash())
                    .arg(2)
                    .arg(scripts::meta(room))
                    .arg(scripts::stream(room))
                    .arg(self.cfg.room_ttl_ms);
            }
        }
    }

    /// Leave the cluster: this node's viewers leave every room's presence at once (the reaping
    /// the others would do when its heartbeat expires) and its heartbeat goes.
    fn leave(&mut self) {
        let Some(con) = self.con.as_mut() else { return };
        let node = self.cfg.node.clone();
        let left = self.scripts.reap.prepare_invoke().arg(&node).arg(self.cfg.large_room).invoke::<i64>(con);
        let gone = redis::cmd("DEL").arg(scripts::heartbeat(&node)).query::<i64>(con);
        match (left, gone) {
            (Ok(rooms), Ok(_)) => {
                tracing::info!(node = %node, rooms, "cluster: left; this node's viewers left presence")
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(node = %node, error = %e, "cluster: could not leave cleanly; the others remove this node when its heartbeat expires")
            }
        }
    }

    /// Refresh this node's heartbeat, check the others, reap the dead.
    fn heartbeat(&mut self) {
        self.next_heartbeat = Instant::now() + Duration::from_millis(self.cfg.node_ttl_ms / 3);
        let Some(con) = self.con.as_mut() else { return };
        let node = self.cfg.node.clone();
        let beat: redis::RedisResult<((), i64, Vec<String>)> = redis::pipe()
            .cmd("SET")
            .arg(scripts::heartbeat(&node))
            .arg(crate::runtime::clock_ms())
            .arg("PX")
            .arg(self.cfg.node_ttl_ms)
            .cmd("SADD")
            .arg(scripts::NODES)
            .arg(&node)
            .cmd("SMEMBERS")
            .arg(scripts::NODES)
            .query(con);
        let (added, members) = match beat {
            Ok(((), added, members)) => (added, members),
            Err(e) => return self.fail(&e),
        };
        let others: Vec<String> = members.into_iter().filter(|m| *m != node).collect();
        let mut check = redis::pipe();
        for other in &others {
            check.cmd("EXISTS").arg(scripts::heartbeat(other));
        }
        let alive: Vec<i64> = if others.is_empty() {
            Vec::new()
        } else {
            match check.query(con) {
                Ok(alive) => alive,
                Err(e) => return self.fail(&e),
            }
        };
        let mut nodes = vec![node.clone()];
        for (other, alive) in others.into_iter().zip(alive) {
            if alive == 1 {
                nodes.push(other);
                continue;
            }
            match self.scripts.reap.prepare_invoke().arg(&other).arg(self.cfg.large_room).invoke::<i64>(con) {
                Ok(rooms) if rooms > 0 => {
                    tracing::info!(node = %other, rooms, "cluster: a node's heartbeat expired; its viewers left presence")
                }
                Ok(_) => {}
                Err(e) => return self.fail(&e),
            }
        }
        self.status.sent_commands(4 + nodes.len());
        self.status.set_nodes(nodes);
        let lost = added == 1 && self.registered;
        if lost || std::mem::take(&mut self.resync_presence) {
            tracing::info!(node = %node, "cluster: this node's presence was lost; every room reports its viewers again");
            for mailbox in &self.mesh.workers {
                mailbox.send_mail(vec![Mail::PresenceResync]);
            }
        }
        self.registered = true;
    }
}

/// Split the commands into pipelines of at most [`MAX_PIPELINE`].
fn chunks(mut all: Vec<Command>) -> Vec<Vec<Command>> {
    let mut out = Vec::new();
    while all.len() > MAX_PIPELINE {
        let rest = all.split_off(MAX_PIPELINE);
        out.push(std::mem::replace(&mut all, rest));
    }
    if !all.is_empty() {
        out.push(all);
    }
    out
}

/// A pipeline's answers, gathered per destination and sent as one mail each.
#[derive(Default)]
struct Answers {
    replies: Vec<IngestReply>,
    /// Snapshots and answers for the rooms' homes.
    mail: Vec<Mail>,
}

impl Answers {
    fn refuse(&mut self, request: SequenceRequest, status: &BrokerStatus) {
        status.published(false);
        status.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.answer(request.room, Err(Unavailable), request.then, false);
    }

    fn take(&mut self, command: Command, reply: redis::RedisResult<Value>, status: &BrokerStatus) {
        match command {
            Command::Sequence(request) => {
                status.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let sequenced = reply.map_err(|e| e.to_string()).and_then(|v| parse_sequenced(&v));
                match sequenced {
                    Ok((seq, version, epoch)) => {
                        status.published(true);
                        let state = request.state.is_some();
                        self.answer(request.room, Ok((seq, version, epoch)), request.then, state);
                    }
                    Err(e) => {
                        tracing::warn!(room = %request.room, error = %e, "cluster: a message could not be sequenced");
                        status.published(false);
                        self.answer(request.room, Err(Unavailable), request.then, false);
                    }
                }
            }
            Command::Snapshot(room) => {
                match reply.map_err(|e| e.to_string()).and_then(|v| envelope::parse_snapshot(&v).map_err(str::to_owned))
                {
                    Ok(snapshot) => self.mail.push(Mail::Synced { room, snapshot: Box::new(snapshot) }),
                    Err(e) => tracing::warn!(room = %room, error = %e, "cluster: a room's snapshot could not be read"),
                }
            }
            Command::Presence { room, .. } => {
                if let Err(e) = reply {
                    tracing::warn!(room = %room, error = %e, "cluster: a presence report was refused");
                }
            }
            Command::Control(op) => {
                if let Err(e) = reply {
                    tracing::warn!(?op, error = %e, "cluster: a moderation command could not reach the other nodes");
                }
            }
            Command::Leave(_) => {}
        }
    }

    fn answer(&mut self, room: RoomName, outcome: Result<(u64, u64, Box<str>), Unavailable>, then: Then, state: bool) {
        match then {
            Then::Nothing => {}
            Then::Ingest(to) => self.replies.push(match outcome {
                Ok((seq, version, _)) if state => IngestReply::State { to, seq: Seq(seq), version },
                Ok((seq, _, _)) => IngestReply::Published { to, seq: Seq(seq) },
                Err(Unavailable) => IngestReply::Refused {
                    to,
                    code: ErrorCode::Unavailable,
                    message: "the cluster's sequencer (Redis) is unreachable; nothing was published: try again shortly"
                        .to_owned(),
                },
            }),
            then => {
                let outcome = outcome.map(|(seq, _, epoch)| (seq, epoch));
                self.mail.push(Mail::Sequenced { room, outcome, then });
            }
        }
    }

    /// Send the replies to the ingest loop and each mail to its room's home worker.
    fn deliver(self, mesh: &Mesh, workers: usize) {
        if !self.replies.is_empty() {
            mesh.ingest.send(IngestMail::Replies(self.replies));
        }
        let mut per_worker: Vec<Vec<Mail>> = (0..workers).map(|_| Vec::new()).collect();
        for mail in self.mail {
            let room = match &mail {
                Mail::Synced { room, .. } | Mail::Sequenced { room, .. } => room,
                _ => continue,
            };
            if let Some(out) = per_worker.get_mut(usize::from(home_of(room, workers).0)) {
                out.push(mail);
            }
        }
        for (mailbox, mail) in mesh.workers.iter().zip(per_worker) {
            if !mail.is_empty() {
                mailbox.send_mail(mail);
            }
        }
    }
}

/// `{seq, version, epoch}` from `scripts::sequence`.
fn parse_sequenced(v: &Value) -> Result<(u64, u64, Box<str>), String> {
    let Value::Array(parts) = v else { return Err(format!("unexpected reply {v:?}")) };
    match parts.as_slice() {
        [Value::Int(seq), Value::Int(version), Value::BulkString(epoch)] => Ok((
            u64::try_from(*seq).map_err(|e| e.to_string())?,
            u64::try_from(*version).map_err(|e| e.to_string())?,
            String::from_utf8_lossy(epoch).into(),
        )),
        _ => Err(format!("unexpected reply {v:?}")),
    }
}

/// `Unavailable` answers for what waits when the thread stops.
impl Drop for Commands {
    fn drop(&mut self) {
        let mut batch: Vec<Command> = self.rx.try_iter().collect();
        self.con = None;
        self.hold(&mut batch);
    }
}
