//! The rooms this worker is home to: creating them, sequencing their messages, sending their
//! frames to the workers with members, announcing presence, freeing the quiet ones, and
//! answering questions about them.
//!
//! Rooms live in a slab so the per-turn and per-tick lists name them by key: a tick walks only
//! the rooms that changed, without hashing a name or chasing a string. The lists are the
//! shard's, not the room's: the [`Batcher`] decides when a room's frames leave; `announce`
//! holds the rooms whose presence or reactions changed since the last tick; `empty` the rooms
//! that are candidates for eviction. A key is reused after its room is freed; freeing takes
//! the key off every list, so no list acts for a room it was not filled by.
//!
//! Every frame a home sends goes out through one function, [`Homes::send`]: one `Deliver` mail
//! per worker with members (a refcount of the same [`Bytes`], never a copy), and a copy of
//! each message for the room's live feeds ([`FeedSink`]) when an operator watches. Besides the
//! room's own state, each homed room keeps the numbers that explain it to operators: why its
//! viewers left and how many comments it took or refused since it was created, and its comment
//! rate.
//!
//! Durability (`durable.rs`): a comment (or tombstone) is handed to the sinks before it is
//! sequenced; in `durable` mode the room's stream then waits behind it. Every frame sequenced
//! while the room waits is held with the ticket that gates it (the latest such record before
//! it), and released, in seq order, as the sinks report tickets durable, each record's ack
//! right after its frames: a steady flow of comments is released in steps, never starved. A
//! newcomer joins at the last seq the members were sent and receives the held frames with
//! them.
//!
//! In a cluster (`homes/follow.rs`), the homes hand every message to the cluster's sequencer
//! instead of numbering it, follow the rooms this node has members in, and fan out what the
//! cluster broadcasts through the same batches; presence goes to the cluster at the tick and
//! comes back as the cluster's.

mod follow;

use super::ask::FeedSink;
use super::batcher::{Batch, Batcher};
use super::cluster::{BrokerPort, Follow, Template, Then};
use super::durable::{Durability, Release, SinkPort};
use super::mail::{IngestReply, Mail, Origin, ReplyTo, Router};
use super::ShardConfig;
use crate::ids::{RoomName, Seq, WorkerId};
use crate::metrics::{Counters, RateMeter, Source};
use crate::query::{
    CommentCounts, FeedItem, LeaveCounts, LeaveReason, PageQuery, PresenceMember, PresencePage, RoomDetail,
    RoomSummary, RoomsPart, RoomsQuery,
};
use crate::room::{HomeRoom, Message, Recorded, RoomLimits};
use crate::sink::{PresenceKind, PresenceRecord, SinkRecord};
use crate::wire::{frame, server_msg, ErrorCode, Ref};
use bytes::Bytes;
use serde_json::value::RawValue;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A homed room with the shard's bookkeeping about it.
#[derive(Debug)]
struct HomeEntry {
    room: HomeRoom,
    /// On `announce` for the next tick.
    announce_queued: bool,
    created_at_ms: u64,
    leaves: LeaveCounts,
    comments: CommentCounts,
    comment_rate: RateMeter,
    /// Live feeds of this room (dashboards watching it); usually none.
    taps: Vec<Box<dyn FeedSink>>,
    /// The ticket new frames wait for while the room waits for durability (`None`: they go
    /// out at once).
    gate: Option<u64>,
    /// Frames sequenced while the room waits: (gating ticket, seq, frame), in seq order.
    held: VecDeque<(u64, Seq, Bytes)>,
    /// What goes out right after the held frames of its ticket (acks, ingest replies).
    held_releases: VecDeque<(u64, Release)>,
    /// In a cluster: whether and how the room follows the cluster's order (`cluster.rs`).
    follow: Follow,
    /// In a cluster: the room took a snapshot at least once (its epoch is the cluster's).
    synced: bool,
    /// In a cluster: joins waiting for the room's first snapshot.
    pending_joins: Vec<JoinRequest>,
    /// In a cluster: what waits for a seq to reach the members (this node's acks and
    /// replies), with the sinks' ticket it also waits for: (seq, release, ticket).
    after_seq: VecDeque<(u64, Release, Option<u64>)>,
}

impl HomeEntry {
    /// Offer `item` (made only when someone watches) to every feed; drop the feeds whose
    /// reader is gone.
    fn feed(&mut self, item: impl Fn() -> Option<FeedItem>) {
        if self.taps.is_empty() {
            return;
        }
        self.taps.retain_mut(|tap| item().is_none_or(|item| tap.offer(item)));
    }

    /// The latest seq the room's members have been sent (or are about to be, in its batch):
    /// what readers outside (the query API) may see; held comments are not durable yet.
    fn sent_seq(&self) -> Seq {
        self.held.front().map_or(self.room.seq(), |(_, seq, _)| Seq(seq.0 - 1))
    }

    fn summary(&self, now_ms: u64) -> RoomSummary {
        RoomSummary {
            room: self.room.name().to_string(),
            online: self.room.online(),
            seq: self.sent_seq().0,
            epoch: self.room.epoch_string(),
            comment_rate: self.comment_rate.rate(now_ms),
            version: self.room.version(),
        }
    }
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Homes {
    me: WorkerId,
    workers: usize,
    limits: RoomLimits,
    epoch_seed: u64,
    next_epoch: u64,
    rooms: Slab<HomeEntry>,
    keys: HashMap<RoomName, usize>,
    batcher: Batcher,
    /// Batches the batcher let go this turn (kept to reuse its buffer).
    due: Vec<(usize, Batch)>,
    announce: Vec<usize>,
    empty: Vec<usize>,
    interval_ms: u64,
    idle_ms: u64,
    next_tick_ms: u64,
    /// The homes' share of the worker's counters (published, comments, leaves, ticks).
    counters: Counters,
    /// The seam to the durable sinks and what waits for them.
    durability: Durability,
    /// Rooms that wait for durability (their keys).
    gated: Vec<usize>,
    /// The cluster's sequencer (`None`: a single node, the homes sequence).
    broker: Option<Box<dyn BrokerPort>>,
}

impl Homes {
    /// No rooms yet.
    pub(crate) fn new(me: WorkerId, cfg: &ShardConfig) -> Self {
        Self {
            me,
            workers: cfg.workers,
            limits: cfg.room_limits,
            epoch_seed: cfg.epoch_seed,
            next_epoch: 0,
            rooms: Slab::new(),
            keys: HashMap::new(),
            batcher: Batcher::new(cfg.batch_window_ms),
            due: Vec::new(),
            announce: Vec::new(),
            empty: Vec::new(),
            interval_ms: cfg.presence_interval_ms,
            idle_ms: cfg.room_idle_ms,
            next_tick_ms: 0,
            counters: Counters::default(),
            durability: Durability::new(None),
            gated: Vec::new(),
            broker: None,
        }
    }

    /// Share the rooms with other nodes through `port`: from now on the cluster sequences.
    pub(crate) fn set_broker(&mut self, port: Box<dyn BrokerPort>) {
        self.broker = Some(port);
    }

    /// Hand comments, tombstones and presence to durable sinks through `port`.
    pub(crate) fn set_sink(&mut self, port: Box<dyn SinkPort>) {
        self.durability = Durability::new(Some(port));
    }

    /// The homed room `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&HomeRoom> {
        self.keys.get(name).and_then(|key| self.rooms.get(*key)).map(|e| &e.room)
    }

    /// Rooms homed here.
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }

    /// The homes' counters, with the gauges (rooms, online) read now.
    pub(crate) fn counters(&self) -> Counters {
        let mut counters = self.counters;
        counters.rooms = self.rooms.len() as u64;
        counters.online = self.rooms.iter().map(|(_, e)| e.room.online()).sum();
        counters
    }

    /// The key of `name`, created when it is new.
    fn key(&mut self, name: &RoomName, now_ms: u64) -> usize {
        if let Some(key) = self.keys.get(&**name) {
            return *key;
        }
        self.next_epoch += 1;
        // A new epoch for every room created in this process: a re-created room never shares
        // an epoch with its former self, and the seed differs between runs.
        let epoch = self.epoch_seed ^ ((self.next_epoch << 8) | u64::from(self.me.0));
        let room = HomeRoom::new(name.clone(), epoch, self.workers, self.limits, now_ms);
        let key = self.rooms.insert(HomeEntry {
            room,
            announce_queued: false,
            created_at_ms: now_ms,
            leaves: LeaveCounts::default(),
            comments: CommentCounts::default(),
            comment_rate: RateMeter::default(),
            taps: Vec::new(),
            gate: None,
            held: VecDeque::new(),
            held_releases: VecDeque::new(),
            follow: Follow::Off,
            synced: false,
            pending_joins: Vec::new(),
            after_seq: VecDeque::new(),
        });
        self.keys.insert(name.clone(), key);
        // A room starts without members: if none come it is an eviction candidate.
        self.empty.push(key);
        key
    }

    /// Send `frames` (`messages` of them) of the room under `key` to every worker with
    /// members, and to its feeds.
    fn send(&mut self, key: usize, frames: &Bytes, (sequenced_ms, messages): (Option<u64>, u32), router: &mut Router) {
        let Some(entry) = self.rooms.get_mut(key) else { return };
        for worker in entry.room.subscribers() {
            let room = entry.room.name().clone();
            router.post(worker, Mail::Deliver { room, frames: frames.clone(), sequenced_ms, messages });
        }
        if !entry.taps.is_empty() {
            for (_, payload) in frame::server_frames(frames) {
                entry.feed(|| std::str::from_utf8(payload).ok().and_then(FeedItem::message));
            }
        }
    }

    /// Send the room's batch now, whatever the window.
    fn flush(&mut self, key: usize, now_ms: u64, router: &mut Router) {
        if let Some(batch) = self.batcher.take(key, now_ms) {
            self.send(key, &batch.frames, (batch.first_ms, batch.messages), router);
        }
    }

    /// An upstream event in `name`: sequenced here, or by the cluster (the reply then comes
    /// from the broker).
    pub(crate) fn publish(
        &mut self,
        name: &RoomName,
        (kind, data): (&str, &str),
        source: Source,
        reply: Option<ReplyTo>,
        now_ms: u64,
        router: &mut Router,
    ) {
        if self.broker.is_some() {
            let template = Template::event(name, kind, data, now_ms);
            let then = reply.map_or(Then::Nothing, Then::Ingest);
            return self.send_to_cluster(name, (template, None), (source, then), now_ms, router);
        }
        let seq = self.sequence(name, Message::Event { kind, data }, source, now_ms, router).seq;
        if let Some(to) = reply {
            router.reply(IngestReply::Published { to, seq });
        }
    }

    /// An upstream state replacement in `name`, like [`Homes::publish`].
    pub(crate) fn set_state(
        &mut self,
        name: &RoomName,
        state: Box<str>,
        source: Source,
        reply: Option<ReplyTo>,
        now_ms: u64,
        router: &mut Router,
    ) {
        if self.broker.is_some() {
            let template = Template::state(name, &state);
            let then = reply.map_or(Then::Nothing, Then::Ingest);
            return self.send_to_cluster(name, (template, Some(state)), (source, then), now_ms, router);
        }
        let recorded = self.sequence(name, Message::State(state), source, now_ms, router);
        if let Some(to) = reply {
            router.reply(IngestReply::State { to, seq: recorded.seq, version: recorded.version });
        }
    }

    /// Sequence `message` from `source` in room `name` (created when new): the one path of
    /// every sequenced message. Its frame joins the room's batch (sent at once when the batch
    /// is full).
    pub(crate) fn sequence(
        &mut self,
        name: &RoomName,
        message: Message<'_>,
        source: Source,
        now_ms: u64,
        router: &mut Router,
    ) -> Recorded {
        let key = self.key(name, now_ms);
        let entry = &mut self.rooms[key];
        if matches!(message, Message::Comment { .. }) {
            entry.comments.accepted += 1;
            entry.comment_rate.record(now_ms, 1);
            self.counters.comments.accepted += 1;
        }
        self.counters.published.add(source, 1);
        let recorded = entry.room.sequence(message, now_ms);
        if let Some(gate) = entry.gate {
            entry.held.push_back((gate, recorded.seq, recorded.frame.clone()));
        } else if let Some(full) = self.batcher.push(key, recorded.frame.clone(), now_ms) {
            self.send(key, &full.frames, (full.first_ms, full.messages), router);
        }
        recorded
    }

    /// A viewer's comment in `name`: handed to the sinks, then sequenced, fanned out and acked
    /// in the order the ack mode asks for (module doc). Refused by the sinks, it is not
    /// sequenced and the commenter hears `unavailable`.
    pub(crate) fn comment(&mut self, name: &RoomName, comment: CommentRequest<'_>, now_ms: u64, router: &mut Router) {
        if self.broker.is_some() {
            return self.comment_to_cluster(name, comment, now_ms, router);
        }
        let key = self.key(name, now_ms);
        let room = &self.rooms[key].room;
        let seq = room.next_seq();
        let record = SinkRecord::Comment {
            room: Arc::from(&**name),
            seq: seq.0,
            id: room.comment_id(seq),
            user: comment.user.to_string(),
            name: comment.name.to_string(),
            text: comment.text.to_owned(),
            ts_ms: now_ms,
        };
        let from = comment.from;
        let wait = match self.durability.submit(record) {
            Ok(wait) => wait,
            Err(refusal) => {
                let message =
                    format!("the comment could not be stored ({refusal}); nothing was sent: try again shortly");
                return self.refuse_comment(name, (from, comment.user, comment.reference), &message, router);
            }
        };
        if let Some(ticket) = wait {
            self.gate(key, ticket);
        }
        let message = Message::Comment { user: comment.user, name: comment.name, text: comment.text };
        let recorded = self.sequence(name, message, Source::Comment, now_ms, router);
        let ack = frame::text_frame_with(|out| server_msg::ack(out, comment.reference, Some(recorded.seq.0)));
        match wait {
            Some(ticket) => self.rooms[key].held_releases.push_back((ticket, Release::Ack { to: from, frame: ack })),
            None => {
                // Not held by the window either: the commenter waits for its ack, and the ack
                // must follow the event (both travel on the same FIFO mailboxes).
                self.flush(key, now_ms, router);
                router.post(from.worker, Mail::ToConn { to: from, frame: ack });
            }
        }
    }

    /// A comment that was not sequenced: the commenter hears `unavailable`, the room counts it.
    fn refuse_comment(
        &mut self,
        name: &RoomName,
        (from, user, reference): (Origin, &str, Option<&Ref>),
        message: &str,
        router: &mut Router,
    ) {
        self.rejected(name, user, ErrorCode::Unavailable);
        let error = |out: &mut Vec<u8>| server_msg::error(out, reference, Some(name), ErrorCode::Unavailable, message);
        router.post(from.worker, Mail::ToConn { to: from, frame: frame::text_frame_with(error) });
    }

    /// Moderation takes comment `id` back: a `comment_deleted` event to the room in seq order
    /// and a tombstone to the sinks; the upstream's reply carries the event's seq.
    pub(crate) fn delete_comment(
        &mut self,
        name: &RoomName,
        id: &str,
        reply: Option<ReplyTo>,
        now_ms: u64,
        router: &mut Router,
    ) {
        if self.broker.is_some() {
            let template = Template::comment_deleted(name, id, now_ms);
            let then = Then::Delete { id: id.into(), reply };
            return self.send_to_cluster(name, (template, None), (Source::Ingest, then), now_ms, router);
        }
        let refuse = |router: &mut Router, code: ErrorCode, message: String| {
            if let Some(to) = reply {
                router.reply(IngestReply::Refused { to, code, message });
            }
        };
        let Some(&key) = self.keys.get(&**name) else {
            return refuse(router, ErrorCode::BadRequest, format!("no room {name:?}: it has no comments to delete"));
        };
        let seq = self.rooms[key].room.next_seq();
        let record = SinkRecord::Tombstone { room: Arc::from(&**name), id: id.to_owned(), seq: seq.0, ts_ms: now_ms };
        let wait = match self.durability.submit(record) {
            Ok(wait) => wait,
            Err(refusal) => {
                return refuse(router, ErrorCode::Unavailable, format!("the tombstone could not be stored ({refusal})"))
            }
        };
        if let Some(ticket) = wait {
            self.gate(key, ticket);
        }
        let recorded = self.sequence(name, Message::CommentDeleted { id }, Source::Ingest, now_ms, router);
        let Some(to) = reply else { return };
        let answer = IngestReply::Published { to, seq: recorded.seq };
        match wait {
            Some(ticket) => self.rooms[key].held_releases.push_back((ticket, Release::Ingest(answer))),
            None => router.reply(answer),
        }
    }

    /// From now on, the room's frames wait for `ticket`.
    fn gate(&mut self, key: usize, ticket: u64) {
        let entry = &mut self.rooms[key];
        if entry.gate.is_none() && entry.held.is_empty() {
            self.gated.push(key);
        }
        entry.gate = Some(ticket);
    }

    /// The sinks report every record of this worker up to `ticket` durable: release what
    /// waited for it, room by room, each record's frames then its ack.
    pub(crate) fn durable(&mut self, ticket: u64, now_ms: u64, router: &mut Router) {
        let mut loose = Vec::new();
        self.durability.durable(ticket, &mut loose);
        for release in loose {
            send_release(release, router);
        }
        let mut gated = std::mem::take(&mut self.gated);
        gated.retain(|&key| self.release(key, now_ms, router));
        gated.append(&mut self.gated);
        self.gated = gated;
    }

    /// Release what of room `key` is durable; true while it still waits.
    fn release(&mut self, key: usize, now_ms: u64, router: &mut Router) -> bool {
        let mut released = false;
        loop {
            let Some(entry) = self.rooms.get_mut(key) else { return false };
            if !entry.held.front().is_some_and(|(gate, _, _)| self.durability.is_durable(*gate)) {
                break;
            }
            let Some((_, _, frame)) = entry.held.pop_front() else { break };
            released = true;
            if let Some(full) = self.batcher.push(key, frame, now_ms) {
                self.send(key, &full.frames, (full.first_ms, full.messages), router);
            }
        }
        if released {
            self.flush(key, now_ms, router);
        }
        let Some(entry) = self.rooms.get_mut(key) else { return false };
        while entry.held_releases.front().is_some_and(|(t, _)| self.durability.is_durable(*t)) {
            if let Some((_, release)) = entry.held_releases.pop_front() {
                send_release(release, router);
            }
        }
        if entry.held.is_empty() && entry.gate.is_some_and(|t| self.durability.is_durable(t)) {
            entry.gate = None;
        }
        entry.gate.is_some() || !entry.held.is_empty()
    }

    /// The room closes while frames wait for the sinks: they are never sent (a member must
    /// not see a comment that may not be stored); the acks still wait for their tickets, so a
    /// commenter hears of a comment only once it is stored.
    fn abandon_held(&mut self, key: usize) {
        let Some(entry) = self.rooms.get_mut(key) else { return };
        entry.held.clear();
        entry.gate = None;
        let releases: Vec<(u64, Release)> = entry.held_releases.drain(..).collect();
        for (ticket, release) in releases {
            self.durability.wait(ticket, release);
        }
        self.gated.retain(|k| *k != key);
    }

    /// The latest seq the room's members have been sent (or are about to be, in its batch).
    fn sent_seq(&self, key: usize) -> Seq {
        self.rooms[key].sent_seq()
    }

    /// Try again the presence records the sinks could not take (once per turn).
    pub(crate) fn retry_presence(&mut self) {
        self.durability.retry_presence();
    }

    /// A presence transition of `name`, for the sinks that want them.
    fn presence(&mut self, name: &RoomName, kind: PresenceKind, now_ms: u64) {
        self.durability.presence(PresenceRecord { room: Arc::from(&**name), kind, ts_ms: now_ms });
    }

    /// A member of worker `from.worker` joins `name`: everything sequenced before goes out
    /// first, then the home's answer goes back to the member's worker on the same mailbox.
    pub(crate) fn join(&mut self, name: RoomName, join: JoinRequest, now_ms: u64, router: &mut Router) {
        let key = self.key(&name, now_ms);
        let Some(join) = self.when_in_step(key, &name, join) else { return };
        self.flush(key, now_ms, router);
        let since = join.since.as_ref().map(|(s, e)| (*s, &**e));
        let viewer = (&join.user, &join.name);
        let sent = self.sent_seq(key);
        let room = &mut self.rooms[key].room;
        let (was_online, was_occupied) = (room.viewer_joined_at(&join.user).is_some(), room.online() > 0);
        let reply = room.join(join.from.worker, viewer, since, join.reference.as_ref(), sent, now_ms);
        if !name.is_private() && self.durability.wants_presence() {
            if !was_occupied {
                self.presence(&name, PresenceKind::Occupied, now_ms);
            }
            if !was_online {
                let (user, display) = (join.user.to_string(), join.name.to_string());
                self.presence(&name, PresenceKind::Online { user, name: display }, now_ms);
            }
        }
        self.queue_announce(key);
        router.post(join.from.worker, Mail::Joined { room: name, to: join.from, join_id: join.join_id, reply });
    }

    /// A member of `worker` left `name`, for `reason`.
    pub(crate) fn leave(
        &mut self,
        name: &str,
        worker: WorkerId,
        (user, display): (&str, &Arc<str>),
        reason: LeaveReason,
        now_ms: u64,
    ) {
        let Some(&key) = self.keys.get(name) else { return };
        let entry = &mut self.rooms[key];
        let was_online = entry.room.viewer_joined_at(user).is_some();
        entry.room.leave(worker, (user, display), now_ms);
        let (gone, vacated) = (was_online && entry.room.viewer_joined_at(user).is_none(), entry.room.online() == 0);
        if gone && !entry.room.is_private() && self.durability.wants_presence() {
            let name = entry.room.name().clone();
            let (user, display) = (user.to_owned(), display.to_string());
            self.presence(&name, PresenceKind::Offline { user, name: display }, now_ms);
            if vacated {
                self.presence(&name, PresenceKind::Vacated, now_ms);
            }
        }
        let entry = &mut self.rooms[key];
        entry.leaves.record(reason);
        self.counters.leaves.record(reason);
        entry.feed(|| Some(FeedItem::Left { user: user.to_owned(), reason }));
        if entry.room.is_empty() {
            self.empty.push(key);
        }
        self.queue_announce(key);
    }

    /// A comment in `name` was refused with `code` on the commenter's worker.
    pub(crate) fn rejected(&mut self, name: &str, user: &str, code: ErrorCode) {
        self.counters.comments.rejected.record(code);
        let Some(&key) = self.keys.get(name) else { return };
        let entry = &mut self.rooms[key];
        entry.comments.rejected.record(code);
        entry.feed(|| Some(FeedItem::Rejected { user: user.to_owned(), reason: code }));
    }

    /// A reaction in `name`, counted for the interval.
    pub(crate) fn react(&mut self, name: &str, kind: &str) {
        let Some(&key) = self.keys.get(name) else { return };
        self.rooms[key].room.react(kind);
        self.queue_announce(key);
    }

    /// Close `name`: what it sequenced goes out, then every worker with members is told and
    /// the room is freed (its feeds get [`FeedItem::Closed`]). False when no such room is
    /// homed here.
    pub(crate) fn close(&mut self, name: &str, now_ms: u64, router: &mut Router) -> bool {
        let Some(&key) = self.keys.get(name) else { return false };
        self.abandon_held(key);
        self.flush(key, now_ms, router);
        let Some(mut entry) = self.remove(key) else { return false };
        for _ in 0..entry.room.online() {
            self.counters.leaves.record(LeaveReason::RoomClosed);
        }
        for worker in entry.room.subscribers() {
            router.post(worker, Mail::RoomClosed { room: entry.room.name().clone() });
        }
        entry.feed(|| Some(FeedItem::Closed));
        true
    }

    /// Watch `name` live: `sink` gets every message, leave and refused comment from now on.
    /// False when no such room is homed here.
    pub(crate) fn tap(&mut self, name: &str, sink: Box<dyn FeedSink>) -> bool {
        let Some(&key) = self.keys.get(name) else { return false };
        self.rooms[key].taps.push(sink);
        true
    }

    fn queue_announce(&mut self, key: usize) {
        let Some(entry) = self.rooms.get_mut(key) else { return };
        if entry.room.has_announcement() && !entry.announce_queued {
            entry.announce_queued = true;
            self.announce.push(key);
        }
    }

    fn remove(&mut self, key: usize) -> Option<HomeEntry> {
        let entry = self.rooms.try_remove(key)?;
        if let (Some(broker), false) = (self.broker.as_mut(), matches!(entry.follow, Follow::Off)) {
            if !entry.room.is_private() {
                broker.unfollow(entry.room.name());
            }
        }
        self.keys.remove(&**entry.room.name());
        self.batcher.forget(key);
        self.announce.retain(|k| *k != key);
        self.empty.retain(|k| *k != key);
        self.gated.retain(|k| *k != key);
        Some(entry)
    }

    // --- questions ---

    /// This worker's share of a room list: its public rooms matching the query.
    pub(crate) fn list(&self, query: &RoomsQuery, now_ms: u64) -> RoomsPart {
        let mut total = 0;
        let mut candidates = Vec::new();
        for (_, entry) in &self.rooms {
            let name = entry.room.name();
            if name.is_private() || !query.matches(name) {
                continue;
            }
            total += 1;
            if query.admits(name, entry.room.online()) {
                candidates.push(entry.summary(now_ms));
            }
        }
        query.part(candidates, total)
    }

    /// One room in full; `since` picks its recent events by the `join` recovery rule.
    pub(crate) fn detail(&mut self, name: &str, since: Option<(u64, Option<&str>)>, now_ms: u64) -> Option<RoomDetail> {
        let &key = self.keys.get(name)?;
        let entry = &mut self.rooms[key];
        let sent = entry.sent_seq();
        let (frames, recovered) = entry.room.history_since(since, sent, now_ms);
        let events = crate::query::events_of(&frames);
        let summary = entry.summary(now_ms);
        Some(RoomDetail {
            room: summary.room,
            epoch: summary.epoch,
            seq: summary.seq,
            version: summary.version,
            state: entry.room.state().and_then(|s| RawValue::from_string(s.to_owned()).ok()),
            online: summary.online,
            comment_rate: summary.comment_rate,
            created_at: entry.created_at_ms,
            events,
            recovered,
            leaves: entry.leaves,
            comments: entry.comments,
        })
    }

    /// A page of the room's distinct viewers as the home knows them (`last_seen` and
    /// `silent_ms` are the viewers' workers' to fill in).
    pub(crate) fn members(&self, name: &str, page: &PageQuery) -> Option<PresencePage> {
        let entry = self.rooms.get(*self.keys.get(name)?)?;
        let members = entry.room.viewers().filter(|v| page.admits(v.user)).map(|v| PresenceMember {
            user: v.user.to_owned(),
            name: v.name.to_owned(),
            joined_at: v.joined_at_ms,
            last_seen: 0,
            silent_ms: 0,
            connections: v.connections,
        });
        Some(page.select(name, entry.room.online(), members))
    }

    // --- time ---

    /// When [`Homes::tick`] is next due.
    pub(crate) fn next_tick_ms(&self) -> u64 {
        self.next_tick_ms
    }

    /// When this part next has work: the tick, or a batch held by its window.
    pub(crate) fn next_wake_ms(&self) -> u64 {
        self.batcher.next_due_ms().map_or(self.next_tick_ms, |due| due.min(self.next_tick_ms))
    }

    /// The end of a presence interval: announce presence and reactions of the rooms that
    /// changed (at most one message of each per room per interval) and free rooms that have
    /// been empty and quiet for the idle time. Cost is proportional to the rooms that changed
    /// or emptied, never to all rooms. Calling it early does nothing.
    pub(crate) fn tick(&mut self, now_ms: u64, router: &mut Router) {
        if now_ms < self.next_tick_ms {
            return;
        }
        self.next_tick_ms = now_ms + self.interval_ms;
        self.counters.presence_ticks += 1;
        let mut announce = std::mem::take(&mut self.announce);
        for key in announce.drain(..) {
            let Some(entry) = self.rooms.get_mut(key) else { continue };
            entry.announce_queued = false;
            if let (Some(broker), true) = (self.broker.as_mut(), entry.room.is_clustered()) {
                // This node's share goes to the cluster; what the room announces is the
                // cluster's report (`Homes::cluster_presence`).
                let (changes, reactions) = entry.room.take_report();
                if !changes.is_empty() || !reactions.is_empty() {
                    broker.presence(entry.room.name(), changes, reactions);
                }
            }
            let frames = [entry.room.take_presence(), entry.room.take_reactions()];
            if self.batcher.active_within(key, now_ms, self.interval_ms) {
                // An active room (a batch within the last interval): they ride its next
                // batch, at the latest just before the next tick (so one tick's frames have
                // left before the next tick's are made).
                for frame in frames.into_iter().flatten() {
                    self.batcher.ride(key, frame, now_ms + self.interval_ms - 1);
                }
            } else if let Some(batch) = self.batcher.take_with(key, frames.into_iter().flatten(), now_ms) {
                // A quiet room's go now, while its entry is in cache.
                self.send(key, &batch.frames, (batch.first_ms, batch.messages), router);
            }
        }
        self.announce = announce;
        let mut empty = std::mem::take(&mut self.empty);
        let mut keep = Vec::new();
        for key in empty.drain(..) {
            let Some(entry) = self.rooms.get(key) else { continue };
            if !entry.room.is_empty() {
                continue;
            }
            let waiting = entry.gate.is_some() || !entry.held.is_empty() || !entry.pending_joins.is_empty();
            if entry.room.last_active_ms() + self.idle_ms <= now_ms && !self.batcher.has_batch(key) && !waiting {
                if let Some(mut entry) = self.remove(key) {
                    entry.feed(|| Some(FeedItem::Closed));
                }
            } else {
                keep.push(key);
            }
        }
        keep.append(&mut self.empty);
        self.empty = keep;
    }

    /// The end of a loop turn: send the batches the window lets go.
    pub(crate) fn end_turn(&mut self, now_ms: u64, router: &mut Router) {
        let mut due = std::mem::take(&mut self.due);
        self.batcher.poll_due(now_ms, &mut due);
        for (key, batch) in due.drain(..) {
            self.send(key, &batch.frames, (batch.first_ms, batch.messages), router);
        }
        self.due = due;
    }

    /// Send every waiting batch now (shutdown). Frames waiting for the sinks stay held: they
    /// go out as their tickets become durable during the drain, or never.
    pub(crate) fn flush_all(&mut self, now_ms: u64, router: &mut Router) {
        let mut due = std::mem::take(&mut self.due);
        self.batcher.take_all(now_ms, &mut due);
        for (key, batch) in due.drain(..) {
            self.send(key, &batch.frames, (batch.first_ms, batch.messages), router);
        }
        self.due = due;
    }
}

/// What a `join` carries to the home.
#[derive(Debug)]
pub(crate) struct JoinRequest {
    /// Who joins.
    pub(crate) from: Origin,
    /// The session's id for this join.
    pub(crate) join_id: u32,
    /// The viewer's user id.
    pub(crate) user: Arc<str>,
    /// The viewer's display name.
    pub(crate) name: Arc<str>,
    /// Recovery position: last seq seen and its epoch.
    pub(crate) since: Option<(u64, Box<str>)>,
    /// The `join`'s `ref`.
    pub(crate) reference: Option<Ref>,
}

/// A viewer's comment as it reaches the home.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommentRequest<'a> {
    /// Who commented; gets the ack.
    pub(crate) from: Origin,
    /// The commenter's user id.
    pub(crate) user: &'a str,
    /// The commenter's display name.
    pub(crate) name: &'a str,
    /// The validated text.
    pub(crate) text: &'a str,
    /// The client's `ref`, echoed in the ack.
    pub(crate) reference: Option<&'a Ref>,
}

fn send_release(release: Release, router: &mut Router) {
    match release {
        Release::Ack { to, frame } => router.post(to.worker, Mail::ToConn { to, frame }),
        Release::Ingest(reply) => router.reply(reply),
    }
}
