//! A room's home state: the one place that numbers its messages.
//!
//! Every room has exactly one home worker (chosen by [`crate::shard::home_of`]). The home owns
//! the room's `seq`, `epoch`, state object, history ring and its audience: how many members
//! each worker holds and which distinct viewers are online. Because one thread owns all of it,
//! numbering needs no lock and members see a gap-free order.
//!
//! Every sequenced message (an upstream event, a viewer's comment, a state replacement) goes
//! through one path, [`HomeRoom::sequence`]: it takes the next seq, encodes the WebSocket
//! frame once, keeps it in the history ring and hands it back; when and how the frame reaches
//! the members is the shard's business (its batching window). This module never talks to
//! other workers itself, never reads a clock (`now_ms` is a parameter) and knows nothing of
//! the shard's lists.
//!
//! In a cluster the numbering moves to the cluster's sequencer: the room then follows the
//! cluster's order and presence instead of making its own (`cluster.rs`).

pub mod cluster;
pub mod history;
pub mod presence;

use crate::ids::{RoomName, Seq, WorkerId};
use crate::wire::{frame, server_msg};
use bytes::Bytes;
use history::History;
use presence::ViewerList;
use std::collections::HashMap;
use std::sync::Arc;

/// A distinct viewer of a room, however many connections it has in it.
#[derive(Debug)]
struct Viewer {
    /// Its display name (shared with its session: no copy).
    name: Arc<str>,
    conns: u32,
    joined_at_ms: u64,
}

/// One distinct viewer as the home sees it, for the presence listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerInfo<'a> {
    /// The user id.
    pub user: &'a str,
    /// The display name.
    pub name: &'a str,
    /// When its first connection joined (ms).
    pub joined_at_ms: u64,
    /// Its connections in the room.
    pub connections: u32,
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

impl PresenceDelta {
    /// `user` came: announced at the tick, unless it went within the same interval (then
    /// nothing is), or past `large` names (then `online` alone is).
    fn came(&mut self, user: &str, name: &str, large: usize) {
        Self::note(&mut self.joined, &mut self.left, &mut self.overflow, user, name, large);
    }

    /// `user` went: the mirror of [`PresenceDelta::came`].
    fn went(&mut self, user: &str, name: &str, large: usize) {
        Self::note(&mut self.left, &mut self.joined, &mut self.overflow, user, name, large);
    }

    fn note(
        list: &mut ViewerList,
        opposite: &mut ViewerList,
        overflow: &mut bool,
        user: &str,
        name: &str,
        large: usize,
    ) {
        if opposite.remove(user) {
            // Came and went (or went and came back) within the interval: nothing to announce.
        } else if list.len() < large {
            list.push(user, name);
        } else {
            *overflow = true;
        }
    }
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
    name: RoomName,
    seq: Seq,
    epoch: u64,
    state: Option<Box<str>>,
    version: u64,
    history: History,
    /// Members per worker (index = worker id), pending joins included.
    audience: Vec<u32>,
    viewers: HashMap<Arc<str>, Viewer>,
    last_active_ms: u64,
    /// Presence changes not yet announced; `None` when nothing changed.
    presence: Option<Box<PresenceDelta>>,
    /// Reaction counts by kind in the current interval.
    reactions: Vec<(Box<str>, u64)>,
    large_room: usize,
    /// `online` as last announced, so a join undone within the interval announces nothing.
    announced_online: u64,
    /// The room's view of the cluster when it is shared with other nodes (`cluster.rs`).
    cluster: Option<Box<cluster::ClusterView>>,
}

/// A message to sequence in a room. See [`HomeRoom::sequence`].
#[derive(Debug)]
pub enum Message<'a> {
    /// An upstream event: `event` with this `type` and raw JSON `data`.
    Event {
        /// The event's `type`.
        kind: &'a str,
        /// The event's `data`, raw JSON.
        data: &'a str,
    },
    /// A viewer's comment: an `event` of type `comment` with `{id, user, name, text}`.
    Comment {
        /// The commenter's user id.
        user: &'a str,
        /// The commenter's display name.
        name: &'a str,
        /// The validated text.
        text: &'a str,
    },
    /// A state replacement: a `state` message, and the room's state from now on.
    State(Box<str>),
    /// A comment taken back by moderation: an `event` of type `comment_deleted` with `{id}`.
    CommentDeleted {
        /// The deleted comment's id.
        id: &'a str,
    },
}

/// A sequenced message, as the home recorded it.
#[derive(Debug)]
pub struct Recorded {
    /// Its seq.
    pub seq: Seq,
    /// The room's state version after it (changed only by [`Message::State`]).
    pub version: u64,
    /// The encoded frame, shared with the history ring.
    pub frame: Bytes,
}

/// Reaction kinds counted per room per interval; more kinds in one interval are dropped, so a
/// client cannot grow a room's memory by inventing kinds.
const MAX_REACTION_KINDS: usize = 32;

impl HomeRoom {
    /// A fresh room (seq 0) with a new `epoch`, which must differ from any epoch this room
    /// name had before in this process.
    pub fn new(name: RoomName, epoch: u64, workers: usize, limits: RoomLimits, now_ms: u64) -> Self {
        Self {
            name,
            seq: Seq(0),
            epoch,
            state: None,
            version: 0,
            history: History::new(limits.history_len, limits.history_max_age_ms),
            audience: vec![0; workers],
            viewers: HashMap::new(),
            last_active_ms: now_ms,
            presence: None,
            reactions: Vec::new(),
            large_room: limits.large_room,
            announced_online: 0,
            cluster: None,
        }
    }

    /// Whether presence or reactions changed since they were last announced.
    pub fn has_announcement(&self) -> bool {
        self.presence.is_some() || !self.reactions.is_empty() || self.cluster.as_ref().is_some_and(|c| c.has_report())
    }

    /// The room's name.
    pub fn name(&self) -> &RoomName {
        &self.name
    }

    /// The latest sequence number (0 before the first message).
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The id of the comment sequenced as `seq` (its `data.id`): `<epoch>-<seq>`, unique for
    /// the life of the process and across restarts (the epoch changes).
    pub fn comment_id(&self, seq: Seq) -> String {
        format!("{:x}-{}", self.epoch, seq.0)
    }

    /// The seq the next sequenced message will get.
    pub fn next_seq(&self) -> Seq {
        Seq(self.seq.0 + 1)
    }

    /// The epoch as shown on the wire.
    pub fn epoch_string(&self) -> String {
        format!("{:x}", self.epoch)
    }

    /// Distinct viewers with at least one connection in the room (on any node, for a room
    /// shared with other nodes: as the cluster last reported it, and at least this node's).
    pub fn online(&self) -> u64 {
        let here = self.viewers.len() as u64;
        self.cluster.as_ref().map_or(here, |c| c.online.max(here))
    }

    /// Whether the room is private (`user:<id>`): never in presence.
    pub fn is_private(&self) -> bool {
        self.name.is_private()
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

    /// Sequence `message`: the one path every sequenced message takes. It gets the next seq,
    /// its frame is encoded once and kept in the history ring, and the frame is handed back
    /// for the members. A comment's id is `<epoch>-<seq>`, unique for the life of the process
    /// and across restarts (the epoch changes).
    pub fn sequence(&mut self, message: Message<'_>, now_ms: u64) -> Recorded {
        self.seq.0 += 1;
        self.last_active_ms = now_ms;
        let (room, seq) = (&self.name, self.seq);
        let frame = match message {
            Message::Event { kind, data } => {
                frame::text_frame_with(|out| server_msg::event(out, room, seq.0, kind, data, now_ms))
            }
            Message::Comment { user, name, text } => {
                let id = self.comment_id(seq);
                let mut data = Vec::with_capacity(text.len() + user.len() + name.len() + 48);
                server_msg::comment_data(&mut data, &id, user, name, text);
                let data = String::from_utf8_lossy(&data);
                frame::text_frame_with(|out| server_msg::event(out, room, seq.0, "comment", &data, now_ms))
            }
            Message::CommentDeleted { id } => {
                let mut data = Vec::with_capacity(id.len() + 10);
                data.extend_from_slice(b"{\"id\":");
                server_msg::push_str(&mut data, id);
                data.push(b'}');
                let data = String::from_utf8_lossy(&data);
                frame::text_frame_with(|out| server_msg::event(out, room, seq.0, "comment_deleted", &data, now_ms))
            }
            Message::State(state) => {
                self.version += 1;
                let version = self.version;
                let frame = frame::text_frame_with(|out| server_msg::state(out, room, seq.0, version, &state));
                self.state = Some(state);
                frame
            }
        };
        self.history.prune(now_ms);
        self.history.push(seq.0, now_ms, frame.clone());
        Recorded { seq, version: self.version, frame }
    }

    /// A member joins from `worker`. The caller must have sent every frame sequenced before
    /// (the batch), so that the member's worker receives every frame after `joined.seq` and
    /// none before it.
    ///
    /// `reference` is the `join`'s `ref`, echoed in `joined`. `sent` is the latest seq the
    /// members have been sent (the room's latest, unless frames wait for durability): the
    /// newcomer starts after it and receives the waiting frames with the other members.
    ///
    /// Recovery: with `since` and the room's current `epoch`, and a history ring that still holds
    /// every message after `since`, those are replayed and `recovered` is true; otherwise nothing
    /// is replayed and the client must reload.
    pub fn join(
        &mut self,
        worker: WorkerId,
        viewer: (&Arc<str>, &Arc<str>),
        since: Option<(u64, &str)>,
        reference: Option<&crate::wire::Ref>,
        sent: Seq,
        now_ms: u64,
    ) -> JoinReply {
        self.add_member(worker, viewer, now_ms);
        let mut replay = Vec::new();
        let mut recovered = false;
        if let Some((since, epoch)) = since {
            if epoch == self.epoch_string() {
                self.history.prune(now_ms);
                if let Some(frames) = self.history.replay(since, sent.0) {
                    replay.extend(frames.cloned());
                    recovered = true;
                }
            }
        }
        let epoch = self.epoch_string();
        let (room, seq, online, state) = (&self.name, sent.0, self.online(), self.state.as_deref());
        let joined = server_msg::Joined { room, seq, epoch: &epoch, recovered, online, state };
        let joined = frame::text_frame_with(|out| server_msg::joined(out, joined, reference));
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
        let viewer = self.viewers.entry(Arc::clone(user)).or_insert_with(|| Viewer {
            name: Arc::clone(name),
            conns: 0,
            joined_at_ms: now_ms,
        });
        viewer.conns += 1;
        if viewer.conns == 1 {
            if let Some(cluster) = &mut self.cluster {
                // Reported to the cluster at the tick; presence frames come back from it.
                cluster.changed(user, name);
                return;
            }
            let large = self.large_room;
            self.presence.get_or_insert_with(Box::default).came(user, name, large);
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
        let Some(gone) = self.viewers.remove(user) else { return };
        if let Some(cluster) = &mut self.cluster {
            cluster.changed(&Arc::from(user), &gone.name);
            return;
        }
        let large = self.large_room;
        self.presence.get_or_insert_with(Box::default).went(user, name, large);
    }

    /// Count a reaction for this interval.
    pub fn react(&mut self, kind: &str) {
        if let Some(cluster) = &mut self.cluster {
            // Summed over the nodes: this node's counts go to the cluster at the tick.
            cluster::count(&mut cluster.reactions, kind, 1);
            return;
        }
        cluster::count(&mut self.reactions, kind, 1);
    }

    /// The coalesced `presence` message for the interval that ends now, if anything changed.
    /// Rooms with more than `large_room` viewers get `online` without lists.
    pub fn take_presence(&mut self) -> Option<Bytes> {
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

    /// Every distinct viewer, in no particular order.
    pub fn viewers(&self) -> impl Iterator<Item = ViewerInfo<'_>> {
        self.viewers.iter().map(|(user, v)| ViewerInfo {
            user,
            name: &v.name,
            joined_at_ms: v.joined_at_ms,
            connections: v.conns,
        })
    }

    /// The state object as last set (raw JSON), if any.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The state's version (0 before the first `state`).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The history ring's frames after `since` in `epoch`, by the `join` recovery rule: all
    /// of them or nothing, and `recovered` says which. A position without an epoch recovers
    /// nothing, as a `join` without one: the server cannot tell it is the same history.
    /// Without a position: the whole ring, and no `recovered`. Nothing after `sent` (the last
    /// seq members have been sent) is shown: a room waiting for its sinks holds comments that
    /// are not durable yet, and a reader must not see what a member has not.
    pub fn history_since(
        &mut self,
        since: Option<(u64, Option<&str>)>,
        sent: Seq,
        now_ms: u64,
    ) -> (Vec<Bytes>, Option<bool>) {
        self.history.prune(now_ms);
        let Some((since, epoch)) = since else { return (self.history.frames_through(sent.0).cloned().collect(), None) };
        if epoch.is_none_or(|e| e != self.epoch_string()) {
            return (Vec::new(), Some(false));
        }
        match self.history.replay(since, sent.0) {
            Some(frames) => (frames.cloned().collect(), Some(true)),
            None => (Vec::new(), Some(false)),
        }
    }
}
