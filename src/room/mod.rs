//! A room's home state: the one place that numbers its messages.
//!
//! Every room has exactly one home worker (chosen by [`crate::shard::home_of`]). The home owns
//! the room's `seq`, `epoch`, state object, history ring and its audience: how many members
//! each worker holds and which distinct viewers are online. Because one thread owns all of it,
//! numbering needs no lock and members see a gap-free order.
//!
//! A published message is encoded here, once, into a WebSocket frame; the frame is kept in the
//! history ring and added to the room's *batch*. The shard sends the batch, as one buffer of
//! consecutive frames, to every worker with members ([`HomeRoom::take_batch`]). This module
//! never talks to other workers itself and never reads a clock: `now_ms` is a parameter.

pub mod history;
pub mod presence;

use crate::ids::{Seq, WorkerId};
use crate::wire::{frame, server_msg};
use bytes::{Bytes, BytesMut};
use history::History;
use presence::ViewerList;
use std::collections::HashMap;
use std::sync::Arc;

/// A distinct viewer of a room, however many connections it has in it.
#[derive(Debug)]
struct Viewer {
    conns: u32,
    joined_at_ms: u64,
}

/// Limits a room is created with.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Messages kept for recovery.
    pub history_len: usize,
    /// Oldest message kept for recovery.
    pub history_max_age_ms: u64,
    /// Above this many viewers presence carries `online` only, without lists.
    pub large_room: usize,
}

/// Presence changes since the last `presence` message: who came, who went. A viewer who came
/// and went within one interval appears in neither list.
#[derive(Debug, Default)]
struct PresenceDelta {
    joined: ViewerList,
    left: ViewerList,
    /// The lists grew past the large-room threshold: send `online` only this time.
    overflow: bool,
}

/// What a `join` gets back from the home: everything the member's worker needs to send.
#[derive(Debug)]
pub struct JoinReply {
    /// Missed messages to replay before `joined` (empty unless recovered).
    pub replay: Vec<Bytes>,
    /// The encoded `joined` frame.
    pub joined: Bytes,
}

/// The home state of one room. See the module doc.
#[derive(Debug)]
pub struct HomeRoom {
    name: Arc<str>,
    seq: Seq,
    epoch: u64,
    state: Option<Box<str>>,
    version: u64,
    history: History,
    /// Members per worker (index = worker id), pending joins included.
    audience: Vec<u32>,
    viewers: HashMap<Arc<str>, Viewer>,
    batch: Vec<Bytes>,
    batch_bytes: usize,
    last_active_ms: u64,
    /// Presence changes not yet announced; `None` when nothing changed.
    presence: Option<Box<PresenceDelta>>,
    /// Reaction counts by kind in the current interval.
    reactions: Vec<(Box<str>, u64)>,
    large_room: usize,
    /// `online` as last announced, so a join undone within the interval announces nothing.
    announced_online: u64,
    /// Already on the shard's list of rooms to announce at the next tick.
    announce_queued: bool,
    /// When the batch was last sent (`None`: never), for the batching window.
    last_flush_ms: Option<u64>,
    /// Already on the shard's list of rooms with a batch to send.
    batch_listed: bool,
}

/// Largest batch of consecutive frames sent as one buffer.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Reaction kinds counted per room per interval; more kinds in one interval are dropped, so a
/// client cannot grow a room's memory by inventing kinds.
const MAX_REACTION_KINDS: usize = 32;

impl HomeRoom {
    /// A fresh room (seq 0) with a new `epoch`, which must differ from any epoch this room
    /// name had before in this process.
    pub fn new(name: Arc<str>, epoch: u64, workers: usize, limits: RoomLimits, now_ms: u64) -> Self {
        Self {
            name,
            seq: Seq(0),
            epoch,
            state: None,
            version: 0,
            history: History::new(limits.history_len, limits.history_max_age_ms),
            audience: vec![0; workers],
            viewers: HashMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            last_active_ms: now_ms,
            presence: None,
            reactions: Vec::new(),
            large_room: limits.large_room,
            announced_online: 0,
            announce_queued: false,
            last_flush_ms: None,
            batch_listed: false,
        }
    }

    /// Whether presence or reactions changed and the room is not yet queued for the next
    /// tick; queues it. The shard keeps the list, so a tick touches only changed rooms.
    pub fn queue_announce(&mut self) -> bool {
        let changed = self.presence.is_some() || !self.reactions.is_empty();
        let newly = changed && !self.announce_queued;
        self.announce_queued |= changed;
        newly
    }

    /// The room's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The latest sequence number (0 before the first message).
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The epoch as shown on the wire.
    pub fn epoch_string(&self) -> String {
        format!("{:x}", self.epoch)
    }

    /// Distinct viewers with at least one connection in the room.
    pub fn online(&self) -> u64 {
        self.viewers.len() as u64
    }

    /// Whether the room is private (`user:<id>`): never in presence.
    pub fn is_private(&self) -> bool {
        self.name.starts_with(crate::shard::PRIVATE_ROOM_PREFIX)
    }

    /// Workers that hold at least one member (or pending member) of the room. A private room
    /// keeps no audience (its members join locally, see [`crate::shard`]): all workers.
    pub fn subscribers(&self) -> impl Iterator<Item = WorkerId> + '_ {
        let private = self.is_private();
        self.audience.iter().enumerate().filter(move |(_, n)| private || **n > 0).map(|(w, _)| WorkerId(w as u16))
    }

    /// Whether no worker holds a member (always, for a private room: it is freed when quiet).
    pub fn is_empty(&self) -> bool {
        self.audience.iter().all(|n| *n == 0)
    }

    /// Last time a member joined or left, or a message was sequenced.
    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms
    }

    /// Sequence an upstream event: returns its seq.
    pub fn publish(&mut self, kind: &str, data: &str, now_ms: u64) -> Seq {
        let seq = self.next_seq(now_ms);
        let name = &self.name;
        let frame = frame::text_frame_with(|out| server_msg::event(out, name, seq.0, kind, data, now_ms));
        self.record(seq, frame, now_ms);
        seq
    }

    /// Sequence a viewer's comment: returns its seq. The comment id is `<epoch>-<seq>`, unique
    /// for the life of the process and across restarts (the epoch changes).
    pub fn comment(&mut self, user: &str, name: &str, text: &str, now_ms: u64) -> Seq {
        let seq = self.next_seq(now_ms);
        let id = format!("{:x}-{}", self.epoch, seq.0);
        let mut data = Vec::with_capacity(text.len() + user.len() + name.len() + 48);
        server_msg::comment_data(&mut data, &id, user, name, text);
        let data = String::from_utf8_lossy(&data);
        let room = &self.name;
        let frame = frame::text_frame_with(|out| server_msg::event(out, room, seq.0, "comment", &data, now_ms));
        self.record(seq, frame, now_ms);
        seq
    }

    /// Replace the room's state object: returns its seq and the new version.
    pub fn set_state(&mut self, state: Box<str>, now_ms: u64) -> (Seq, u64) {
        let seq = self.next_seq(now_ms);
        self.version += 1;
        let (room, version) = (&self.name, self.version);
        let frame = frame::text_frame_with(|out| server_msg::state(out, room, seq.0, version, &state));
        self.state = Some(state);
        self.record(seq, frame, now_ms);
        (seq, self.version)
    }

    fn next_seq(&mut self, now_ms: u64) -> Seq {
        self.seq.0 += 1;
        self.last_active_ms = now_ms;
        self.seq
    }

    fn record(&mut self, seq: Seq, frame: Bytes, now_ms: u64) {
        self.history.prune(now_ms);
        self.history.push(seq.0, now_ms, frame.clone());
        self.batch_bytes += frame.len();
        self.batch.push(frame);
    }

    /// Whether the batch reached [`MAX_BATCH_BYTES`] and must be sent now: a batch is one
    /// buffer in every member's queue, so it must stay small next to the outbound budget.
    pub fn batch_full(&self) -> bool {
        self.batch_bytes >= MAX_BATCH_BYTES
    }

    /// Frames sequenced since the last call, as one shared buffer of consecutive frames (the
    /// frame itself when there is one: no copy). `None` when nothing is pending. `now_ms`
    /// starts the next batching window when something was taken.
    pub fn take_batch(&mut self, now_ms: u64) -> Option<Bytes> {
        self.batch_bytes = 0;
        if !self.batch.is_empty() {
            self.last_flush_ms = Some(now_ms);
        }
        match self.batch.len() {
            0 => None,
            1 => self.batch.pop(),
            _ => {
                let len = self.batch.iter().map(Bytes::len).sum();
                let mut buf = BytesMut::with_capacity(len);
                for frame in self.batch.drain(..) {
                    buf.extend_from_slice(&frame);
                }
                Some(buf.freeze())
            }
        }
    }

    /// Whether frames wait in the batch.
    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// When a batch may next be sent under a batching window of `window_ms`: a room whose
    /// last batch went out longer ago than the window (or never) may send at once.
    pub fn batch_due_ms(&self, window_ms: u64) -> u64 {
        self.last_flush_ms.map_or(0, |at| at.saturating_add(window_ms))
    }

    /// Mark the room as on the shard's list of rooms with a batch; false if it already was.
    pub fn list_batch(&mut self) -> bool {
        !std::mem::replace(&mut self.batch_listed, true)
    }

    /// The room left the shard's list of rooms with a batch.
    pub fn unlist_batch(&mut self) {
        self.batch_listed = false;
    }

    /// A member joins from `worker`. The caller must have flushed the batch first, so that the
    /// member's worker receives every frame after `joined.seq` and none before it.
    ///
    /// Recovery: with `since` and the room's current `epoch`, and a history ring that still holds
    /// every message after `since`, those are replayed and `recovered` is true; otherwise nothing
    /// is replayed and the client must reload.
    pub fn join(
        &mut self,
        worker: WorkerId,
        viewer: (&Arc<str>, &Arc<str>),
        since: Option<(u64, &str)>,
        now_ms: u64,
    ) -> JoinReply {
        self.add_member(worker, viewer, now_ms);
        let mut replay = Vec::new();
        let mut recovered = false;
        if let Some((since, epoch)) = since {
            if epoch == self.epoch_string() {
                self.history.prune(now_ms);
                if let Some(frames) = self.history.replay(since, self.seq.0) {
                    replay.extend(frames.cloned());
                    recovered = true;
                }
            }
        }
        let epoch = self.epoch_string();
        let (room, seq, online, state) = (&self.name, self.seq.0, self.online(), self.state.as_deref());
        let joined = frame::text_frame_with(|out| server_msg::joined(out, room, seq, &epoch, recovered, online, state));
        JoinReply { replay, joined }
    }

    fn add_member(&mut self, worker: WorkerId, (user, name): (&Arc<str>, &Arc<str>), now_ms: u64) {
        if let Some(n) = self.audience.get_mut(usize::from(worker.0)) {
            *n += 1;
        }
        self.last_active_ms = now_ms;
        if self.is_private() {
            return;
        }
        let viewer = self.viewers.entry(Arc::clone(user)).or_insert_with(|| Viewer { conns: 0, joined_at_ms: now_ms });
        viewer.conns += 1;
        if viewer.conns == 1 {
            let large = self.large_room;
            let delta = self.presence.get_or_insert_with(Box::default);
            if delta.left.remove(user) {
                // Went and came back within the interval: nothing to announce.
            } else if delta.joined.len() < large {
                delta.joined.push(user, name);
            } else {
                delta.overflow = true;
            }
        }
    }

    /// A member of `worker` left (or its connection closed); `viewer` is its user id and
    /// display name.
    pub fn leave(&mut self, worker: WorkerId, (user, name): (&str, &Arc<str>), now_ms: u64) {
        if let Some(n) = self.audience.get_mut(usize::from(worker.0)) {
            *n = n.saturating_sub(1);
        }
        self.last_active_ms = now_ms;
        let Some(v) = self.viewers.get_mut(user) else { return };
        v.conns -= 1;
        if v.conns > 0 {
            return;
        }
        if self.viewers.remove(user).is_none() {
            return;
        }
        let large = self.large_room;
        let delta = self.presence.get_or_insert_with(Box::default);
        if delta.joined.remove(user) {
            // Came and went within the interval: nothing to announce.
        } else if delta.left.len() < large {
            delta.left.push(user, name);
        } else {
            delta.overflow = true;
        }
    }

    /// Count a reaction for this interval.
    pub fn react(&mut self, kind: &str) {
        if let Some(entry) = self.reactions.iter_mut().find(|(k, _)| &**k == kind) {
            entry.1 += 1;
        } else if self.reactions.len() < MAX_REACTION_KINDS {
            self.reactions.push((kind.into(), 1));
        }
    }

    /// The coalesced `presence` message for the interval that ends now, if anything changed.
    /// Rooms with more than `large_room` viewers get `online` without lists.
    pub fn take_presence(&mut self) -> Option<Bytes> {
        self.announce_queued = false;
        let delta = self.presence.take()?;
        let online = self.online();
        if delta.joined.is_empty() && delta.left.is_empty() && !delta.overflow && online == self.announced_online {
            return None;
        }
        self.announced_online = online;
        let (room, lists) = (&self.name, !delta.overflow && online <= self.large_room as u64);
        let lists = lists.then(|| (delta.joined.json(), delta.left.json()));
        let size = 96 + room.len() + lists.map_or(0, |(j, l)| j.len() + l.len());
        Some(frame::text_frame_sized(size, |out| server_msg::presence(out, room, online, lists)))
    }

    /// The coalesced `reactions` message for the interval that ends now, if any arrived.
    pub fn take_reactions(&mut self) -> Option<Bytes> {
        if self.reactions.is_empty() {
            return None;
        }
        let counts: Vec<(&str, u64)> = self.reactions.iter().map(|(k, n)| (&**k, *n)).collect();
        let frame = frame::text_frame_with(|out| server_msg::reactions(out, &self.name, &counts));
        self.reactions = Vec::new();
        Some(frame)
    }

    /// When `user` joined (first connection), if online.
    pub fn viewer_joined_at(&self, user: &str) -> Option<u64> {
        self.viewers.get(user).map(|v| v.joined_at_ms)
    }
}
