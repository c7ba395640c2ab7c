//! The broker's subscriber thread: the node's one pub/sub connection to Redis, subscribed to
//! the channel of every room this node follows (and of every user with a connection here, for
//! private rooms), and nothing else: a room with no members here costs this node nothing.
//!
//! A home asks to follow a room when its first member joins; the thread subscribes, waits for
//! Redis to confirm, and only then asks the command thread for the room's snapshot, so every
//! message after the snapshot reaches this connection (the home drops what the snapshot
//! already holds). Each message is decoded and wrapped in its WebSocket frame here, once per
//! node, and mailed to the room's home worker.
//!
//! The `redis` crate's synchronous pub/sub is used on this thread of its own: reads wait with a
//! short timeout (`POLL`, 20 ms) so that follow requests are taken between messages (a pub/sub
//! connection cannot be written from another thread while it is read). If the connection
//! fails, the thread reconnects with backoff, subscribes to everything again and tells every
//! followed room's home to catch up (`Mail::Resync`): the home buffers, asks for a snapshot and
//! fills what it missed from the room's history stream, or closes its members with 1012 if the
//! history is gone (a new epoch, or trimmed past what they saw).

use super::commands::{connect, Backoff, Command};
use super::envelope::{self, Envelope};
use super::scripts;
use super::status::BrokerStatus;
use crate::ids::RoomName;
use crate::runtime::mesh::Mesh;
use crate::shard::cluster::ClusterOp;
use crate::shard::home_of;
use crate::shard::mail::Mail;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use redis::Client;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Longest a follow request waits for a read to time out on a busy-less connection.
const POLL: Duration = Duration::from_millis(20);
/// Follow requests taken between two reads of the connection: a storm of connections (each
/// following its user's private room) must not hold back the rooms' messages for long. Each
/// `SUBSCRIBE` names one channel and waits for Redis's answer: the crate's pub/sub returns at
/// the first answer of a command, so a command naming several channels would leave answers
/// that a later `SUBSCRIBE` would take for its own, and its room's snapshot could then be read
/// before Redis subscribed it.
const CONTROLS_PER_READ: usize = 256;

/// What the homes ask of the subscriber.
#[derive(Debug)]
pub(super) enum Control {
    /// Follow a room (or read its snapshot again, if followed).
    Follow(RoomName),
    /// Stop following a room.
    Unfollow(RoomName),
    /// A worker's first (`true`) or last connection of a user opened or closed.
    Private(Arc<str>, bool),
}

/// See the module doc.
pub(super) struct Subscriber {
    client: Client,
    rx: Receiver<Control>,
    commands: Sender<Command>,
    mesh: Arc<Mesh>,
    status: Arc<BrokerStatus>,
    workers: usize,
    timeout: Duration,
    rooms: HashSet<RoomName>,
    /// Private rooms followed, with the number of workers holding connections of the user.
    private: HashMap<RoomName, usize>,
}

impl Subscriber {
    pub(super) fn new(
        client: Client,
        rx: Receiver<Control>,
        (commands, mesh, status): (Sender<Command>, Arc<Mesh>, Arc<BrokerStatus>),
        workers: usize,
        timeout: Duration,
    ) -> Self {
        Self { client, rx, commands, mesh, status, workers, timeout, rooms: HashSet::new(), private: HashMap::new() }
    }

    /// Follow rooms until the homes are gone.
    pub(super) fn run(mut self) {
        let mut backoff = Backoff::new();
        let mut failing = false;
        loop {
            match self.session(&mut failing) {
                Ok(()) => return,
                Err(e) if failing => tracing::debug!(error = %e, "cluster: the subscription connection is still down"),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: the subscription connection failed; reconnecting with backoff");
                    self.status.reconnected();
                    failing = true;
                }
            }
            backoff.failed();
            // While Redis is away, keep track of what to follow.
            loop {
                let wait = backoff.wait();
                if wait.is_zero() {
                    break;
                }
                match self.rx.recv_timeout(wait) {
                    Ok(control) => {
                        let _ = self.note(control);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if let Ok(()) = self.probe() {
                backoff.reset();
            }
        }
    }

    /// Whether Redis answers at all (so a failing session does not spin).
    fn probe(&self) -> redis::RedisResult<()> {
        connect(&self.client, self.timeout).map(drop)
    }

    /// Track a request; what it asks of the connection: a room whose channel is to be
    /// subscribed (`true`) or unsubscribed, and a room whose snapshot is to be read. While not
    /// connected only the tracking counts (a reconnect subscribes everything and every room
    /// catches up).
    fn note(&mut self, control: Control) -> (Option<(RoomName, bool)>, Option<RoomName>) {
        let change = match control {
            Control::Follow(room) => (self.rooms.insert(room.clone()).then(|| (room.clone(), true)), Some(room)),
            Control::Unfollow(room) => (self.rooms.remove(&room).then_some((room, false)), None),
            Control::Private(user, open) => {
                (self.count_private(&user, open).then(|| (RoomName::private(&user), open)), None)
            }
        };
        self.status.set_followed(self.rooms.len() + self.private.len());
        change
    }

    /// Count a private room's holder; true when the room is to be subscribed (`open`) or
    /// unsubscribed.
    fn count_private(&mut self, user: &str, open: bool) -> bool {
        let room = RoomName::private(user);
        if open {
            let n = self.private.entry(room).or_insert(0);
            *n += 1;
            *n == 1
        } else if let Some(n) = self.private.get_mut(&room) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.private.remove(&room);
                return true;
            }
            false
        } else {
            false
        }
    }

    /// One connection's life: subscribe to everything followed, then serve messages and
    /// requests. `Ok` when the homes are gone.
    fn session(&mut self, failing: &mut bool) -> redis::RedisResult<()> {
        let mut con = connect(&self.client, self.timeout)?;
        let mut pubsub = con.as_pubsub();
        let all: Vec<String> =
            self.rooms.iter().chain(self.private.keys()).map(|room| scripts::channel(room)).collect();
        pubsub.subscribe(scripts::CONTROL)?;
        for channel in &all {
            pubsub.subscribe(channel)?;
        }
        if std::mem::take(failing) {
            tracing::info!(
                rooms = all.len(),
                "cluster: subscribed again; every followed room catches up from its snapshot"
            );
        }
        // Whatever was missed while away: every followed room catches up. Its home first
        // buffers what this subscription brings and asks for a snapshot (through
        // `Control::Follow`), so the snapshot is read after the home stopped applying.
        let mut resync: Vec<Vec<Mail>> = (0..self.workers).map(|_| Vec::new()).collect();
        for room in &self.rooms {
            if let Some(out) = resync.get_mut(usize::from(home_of(room, self.workers).0)) {
                out.push(Mail::Resync { room: room.clone() });
            }
        }
        for (mailbox, mail) in self.mesh.workers.iter().zip(resync) {
            if !mail.is_empty() {
                mailbox.send_mail(mail);
            }
        }
        pubsub.set_read_timeout(Some(POLL))?;
        loop {
            let mut answering = false;
            for _ in 0..CONTROLS_PER_READ {
                match self.rx.try_recv() {
                    Ok(control) => {
                        if !answering {
                            // Redis's answer to a (un)subscribe may wait behind a burst of
                            // messages: give it the full call timeout, not the poll's.
                            pubsub.set_read_timeout(Some(self.timeout))?;
                            answering = true;
                        }
                        self.control(&mut pubsub, control)?;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            if answering {
                pubsub.set_read_timeout(Some(POLL))?;
            }
            match pubsub.get_message() {
                Ok(msg) => self.message(msg.get_channel_name(), msg.get_payload_bytes()),
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn control(&mut self, pubsub: &mut redis::PubSub<'_>, control: Control) -> redis::RedisResult<()> {
        let (channel, snapshot) = self.note(control);
        match channel {
            Some((room, true)) => pubsub.subscribe(scripts::channel(&room))?,
            Some((room, false)) => pubsub.unsubscribe(scripts::channel(&room))?,
            None => {}
        }
        if let Some(room) = snapshot {
            // Subscribed (Redis answered): the snapshot cannot miss a later message.
            let _ = self.commands.send(Command::Snapshot(room));
        }
        Ok(())
    }

    /// A moderation command from another node: a kick to every worker, a close to the
    /// room's home.
    fn moderation(&self, payload: &[u8]) {
        let (node, op) = match envelope::parse_control(payload) {
            Ok(control) => control,
            Err(e) => return tracing::warn!(error = e, "cluster: a control message that is not roomcast's, dropped"),
        };
        if node == self.status.node() {
            return;
        }
        tracing::info!(from = %node, ?op, "cluster: a moderation command from another node");
        match &op {
            ClusterOp::Kick { .. } => {
                for mailbox in &self.mesh.workers {
                    mailbox.send_mail(vec![Mail::ClusterOp { op: op.clone() }]);
                }
            }
            ClusterOp::CloseRoom { room } => {
                if let Some(mailbox) = self.mesh.workers.get(usize::from(home_of(room, self.workers).0)) {
                    mailbox.send_mail(vec![Mail::ClusterOp { op }]);
                }
            }
        }
    }

    /// A message on a room channel: to the room's home worker.
    fn message(&self, channel: &str, payload: &[u8]) {
        if channel == scripts::CONTROL {
            return self.moderation(payload);
        }
        let room =
            scripts::room_of_channel(channel).and_then(|r| match r.strip_prefix(crate::ids::PRIVATE_ROOM_PREFIX) {
                Some(user) => Some(RoomName::private(user)),
                None => RoomName::new(r).ok(),
            });
        let Some(room) = room else {
            tracing::debug!(channel, "cluster: a message on an unknown channel");
            return;
        };
        let home = usize::from(home_of(&room, self.workers).0);
        let mail = match envelope::parse(payload) {
            Ok(Envelope::Message(message)) => {
                self.status.received(crate::runtime::clock_ms().saturating_sub(message.ts_ms));
                Mail::Broadcast { room, message }
            }
            Ok(Envelope::Presence(report)) => Mail::ClusterPresence { room, report: Box::new(report) },
            Err(e) => {
                tracing::warn!(room = %room, error = e, "cluster: a message that is not roomcast's, dropped");
                return;
            }
        };
        if let Some(mailbox) = self.mesh.workers.get(home) {
            mailbox.send_mail(vec![mail]);
        }
    }
}
