//! The homes in a cluster: handing messages to the cluster's sequencer, and following the
//! cluster's order of the rooms this node has members in (`crate::shard::cluster` has the
//! rules). Every sequenced message reaches the members here exactly as on a single node: into
//! the room's batch, then one `Deliver` per worker with members.

use super::{send_release, CommentRequest, Homes, JoinRequest};
use crate::ids::RoomName;
use crate::metrics::Source;
use crate::shard::cluster::{
    Broadcast, ClusterPresence, CommentDone, Follow, SequenceRequest, Snapshot, Template, Then, Unavailable,
    MAX_BUFFERED,
};
use crate::shard::durable::Release;
use crate::shard::mail::{IngestReply, Mail, Router};
use crate::sink::SinkRecord;
use crate::wire::{frame, server_msg, ErrorCode};
use std::sync::Arc;

impl Homes {
    /// Hand a message to the cluster's sequencer; a refusal answers what waits with
    /// `unavailable` at once.
    pub(super) fn send_to_cluster(
        &mut self,
        name: &RoomName,
        (template, state): (Template, Option<Box<str>>),
        (source, then): (Source, Then),
        now_ms: u64,
        router: &mut Router,
    ) {
        let Some(broker) = self.broker.as_mut() else { return };
        let request = SequenceRequest { room: name.clone(), template, state, ts_ms: now_ms, then };
        match broker.sequence(request) {
            Ok(()) => self.counters.published.add(source, 1),
            Err(then) => self.sequenced(name, Err(Unavailable), then, now_ms, router),
        }
    }

    /// A viewer's comment, for the cluster to sequence; the sinks get it once it has its seq.
    pub(super) fn comment_to_cluster(
        &mut self,
        name: &RoomName,
        comment: CommentRequest<'_>,
        now_ms: u64,
        router: &mut Router,
    ) {
        let template = Template::comment(name, (comment.user, comment.name, comment.text), now_ms);
        let then = Then::Comment(CommentDone {
            from: comment.from,
            user: Arc::from(comment.user),
            name: Arc::from(comment.name),
            text: comment.text.into(),
            reference: comment.reference.cloned(),
        });
        self.send_to_cluster(name, (template, None), (Source::Comment, then), now_ms, router);
    }

    /// The cluster's answer to a message this node sent: replies and acks go out once the
    /// message reached this node's members (after its event, as on one node), comments and
    /// tombstones go to the sinks with their seq.
    pub(crate) fn sequenced(
        &mut self,
        name: &RoomName,
        outcome: Result<(u64, Box<str>), Unavailable>,
        then: Then,
        now_ms: u64,
        router: &mut Router,
    ) {
        const GONE: &str = "the cluster's sequencer (Redis) is unreachable; nothing was sent: try again shortly";
        match (then, outcome) {
            (Then::Nothing, _) => {}
            (Then::Ingest(to), Err(Unavailable)) => {
                let message = GONE.to_owned();
                router.reply(IngestReply::Refused { to, code: ErrorCode::Unavailable, message });
            }
            // The broker answers ingest commands itself.
            (Then::Ingest(_), Ok(_)) => {}
            (Then::Comment(c), Err(Unavailable)) => {
                self.refuse_comment(name, (c.from, &c.user, c.reference.as_ref()), GONE, router)
            }
            (Then::Comment(c), Ok((seq, epoch))) => {
                self.counters.comments.accepted += 1;
                if let Some(entry) = self.keys.get(&**name).and_then(|k| self.rooms.get_mut(*k)) {
                    entry.comments.accepted += 1;
                    entry.comment_rate.record(now_ms, 1);
                }
                let record = SinkRecord::Comment {
                    room: Arc::from(&**name),
                    seq,
                    id: format!("{epoch}-{seq}"),
                    user: c.user.to_string(),
                    name: c.name.to_string(),
                    text: c.text.into(),
                    ts_ms: now_ms,
                };
                // Already sequenced and on its way to every node: a sink that refuses it now
                // cannot stop it; the ack then does not wait (Redis's stream holds it).
                let ticket = self.durability.submit(record).unwrap_or(None);
                let ack = frame::text_frame_with(|out| server_msg::ack(out, c.reference.as_ref(), Some(seq)));
                self.after_seq(name, seq, (Release::Ack { to: c.from, frame: ack }, ticket), now_ms, router);
            }
            (Then::Delete { reply, .. }, Err(Unavailable)) => {
                if let Some(to) = reply {
                    router.reply(IngestReply::Refused { to, code: ErrorCode::Unavailable, message: GONE.to_owned() });
                }
            }
            (Then::Delete { id, reply }, Ok((seq, _))) => {
                let record = SinkRecord::Tombstone { room: Arc::from(&**name), id: id.into(), seq, ts_ms: now_ms };
                let ticket = self.durability.submit(record).unwrap_or(None);
                if let Some(to) = reply {
                    let release = Release::Ingest(IngestReply::Published { to, seq: crate::ids::Seq(seq) });
                    self.after_seq(name, seq, (release, ticket), now_ms, router);
                }
            }
        }
    }

    /// `release` goes out once the room's members here were sent `seq` (at once if the room
    /// is not followed here) and its sinks' ticket is durable.
    fn after_seq(
        &mut self,
        name: &RoomName,
        seq: u64,
        (release, ticket): (Release, Option<u64>),
        now_ms: u64,
        router: &mut Router,
    ) {
        if let Some(&key) = self.keys.get(&**name) {
            let entry = &mut self.rooms[key];
            if !matches!(entry.follow, Follow::Off) && entry.room.seq().0 < seq {
                entry.after_seq.push_back((seq, release, ticket));
                return;
            }
            self.flush(key, now_ms, router);
        }
        self.release_when_durable(release, ticket, router);
    }

    fn release_when_durable(&mut self, release: Release, ticket: Option<u64>, router: &mut Router) {
        match ticket {
            Some(ticket) if !self.durability.is_durable(ticket) => self.durability.wait(ticket, release),
            _ => send_release(release, router),
        }
    }

    /// Release what waited for seqs the room's members have now been sent.
    fn release_after_seq(&mut self, key: usize, now_ms: u64, router: &mut Router) {
        let seq = self.rooms[key].room.seq().0;
        if self.rooms[key].after_seq.front().is_none_or(|(s, _, _)| *s > seq) {
            return;
        }
        self.flush(key, now_ms, router);
        while self.rooms[key].after_seq.front().is_some_and(|(s, _, _)| *s <= seq) {
            if let Some((_, release, ticket)) = self.rooms[key].after_seq.pop_front() {
                self.release_when_durable(release, ticket, router);
            }
        }
    }

    /// A join of a room this node does not follow yet waits for its snapshot (and starts
    /// following it); `Some` hands the join back when the room is in step (or not shared).
    pub(super) fn when_in_step(&mut self, key: usize, name: &RoomName, join: JoinRequest) -> Option<JoinRequest> {
        if name.is_private() {
            return Some(join);
        }
        let Some(broker) = self.broker.as_mut() else { return Some(join) };
        let entry = &mut self.rooms[key];
        match entry.follow {
            Follow::Live => return Some(join),
            Follow::Off => {
                entry.room.set_clustered();
                entry.follow = Follow::Syncing(Vec::new());
                broker.follow(name);
            }
            Follow::Syncing(_) => {}
        }
        entry.pending_joins.push(join);
        None
    }

    /// A message the cluster sequenced in `name`.
    pub(crate) fn broadcast(&mut self, name: &RoomName, message: Broadcast, now_ms: u64, router: &mut Router) {
        let key = match self.keys.get(&**name) {
            Some(&key) => key,
            // A private room needs no snapshot (nobody joins it): its home here is made by
            // its first message.
            None if name.is_private() => self.key(name, now_ms),
            // Not followed (any more): a message in flight after the unsubscribe.
            None => return,
        };
        let entry = &mut self.rooms[key];
        match &mut entry.follow {
            Follow::Syncing(buffered) => {
                if buffered.len() >= MAX_BUFFERED {
                    // The snapshot's history will fill it.
                    buffered.clear();
                }
                buffered.push(message);
                return;
            }
            Follow::Off if !name.is_private() => return,
            Follow::Off => entry.follow = Follow::Live,
            Follow::Live => {}
        }
        let last = entry.room.seq().0;
        let same_epoch = entry.room.epoch_is(&message.epoch);
        if same_epoch && message.seq <= last {
            // Already applied (a snapshot held it).
            return;
        }
        // Nothing to recover for a private room: any newer message is taken.
        if !name.is_private() && (!same_epoch || message.seq != last + 1) {
            // A gap (a subscription lost and taken again) or another epoch: catch up from a
            // snapshot, keeping what arrives meanwhile.
            entry.follow = Follow::Syncing(vec![message]);
            if let Some(broker) = self.broker.as_mut() {
                broker.follow(name);
            }
            return;
        }
        self.take(key, message, now_ms, router);
        self.release_after_seq(key, now_ms, router);
    }

    /// Apply the cluster's next message to the room and batch it for the members.
    fn take(&mut self, key: usize, message: Broadcast, now_ms: u64, router: &mut Router) {
        self.rooms[key].room.apply(&message, now_ms);
        if let Some(full) = self.batcher.push(key, message.frame, now_ms) {
            self.send(key, &full.frames, (full.first_ms, full.messages), router);
        }
    }

    /// A followed room's snapshot: the room starts from it (first time), fills what its
    /// members missed (same epoch), or, when the cluster lost what the members have seen,
    /// closes them with 1012 and starts over. Then the joins that waited (at the snapshot's
    /// seq) and the broadcasts that waited go through.
    pub(crate) fn synced(&mut self, name: &RoomName, snapshot: &Snapshot, now_ms: u64, router: &mut Router) {
        let Some(&key) = self.keys.get(&**name) else { return };
        let entry = &mut self.rooms[key];
        let buffered = match std::mem::take(&mut entry.follow) {
            Follow::Syncing(buffered) => buffered,
            Follow::Live => Vec::new(),
            Follow::Off => return,
        };
        entry.follow = Follow::Live;
        let last = entry.room.seq().0;
        let same_epoch = entry.room.epoch_is(&snapshot.epoch);
        if entry.synced && same_epoch && snapshot.seq <= last {
            // Nothing newer than what the members have: an old answer (a second request
            // raced this one); the buffered broadcasts carry on from `last`.
        } else if entry.synced && same_epoch && snapshot.history.first().is_some_and(|m| m.seq <= last + 1) {
            for message in snapshot.history.iter().filter(|m| m.seq > last) {
                self.take(key, message.clone(), now_ms, router);
            }
        } else {
            if entry.synced {
                // What the members saw is no longer the cluster's history (a new epoch, or
                // trimmed past what they missed): they rejoin.
                self.flush(key, now_ms, router);
                let entry = &self.rooms[key];
                for worker in entry.room.subscribers() {
                    router.post(worker, Mail::Reset { room: name.clone() });
                }
            }
            let entry = &mut self.rooms[key];
            entry.room.adopt(snapshot, now_ms);
            entry.synced = true;
        }
        // The joins that waited start at the snapshot; what raced it follows as events.
        let joins = std::mem::take(&mut self.rooms[key].pending_joins);
        for join in joins {
            self.join(name.clone(), join, now_ms, router);
        }
        for message in buffered {
            self.broadcast(name, message, now_ms, router);
        }
        self.release_after_seq(key, now_ms, router);
    }

    /// The room's subscription was lost and taken again: buffer what arrives and catch up from
    /// a new snapshot (a room not in step yet already waits for one).
    pub(crate) fn resync(&mut self, name: &RoomName) {
        let Some(&key) = self.keys.get(&**name) else { return };
        let entry = &mut self.rooms[key];
        if matches!(entry.follow, Follow::Live) {
            entry.follow = Follow::Syncing(Vec::new());
        }
        if let Some(broker) = self.broker.as_mut() {
            broker.follow(name);
        }
    }

    /// The cluster's presence report of `name`: announced at the next tick.
    pub(crate) fn cluster_presence(&mut self, name: &RoomName, report: &ClusterPresence) {
        let Some(&key) = self.keys.get(&**name) else { return };
        self.rooms[key].room.cluster_presence(report);
        self.queue_announce(key);
    }

    /// The cluster lost this node's presence: report every room's viewers again.
    pub(crate) fn presence_resync(&mut self) {
        let Some(broker) = self.broker.as_mut() else { return };
        for (_, entry) in &self.rooms {
            if entry.room.is_clustered() && entry.synced {
                broker.presence(entry.room.name(), entry.room.full_report(), Vec::new());
            }
        }
    }

    /// Tell the other nodes to carry out a moderation command this node carried out.
    pub(crate) fn tell_cluster(&mut self, op: crate::shard::cluster::ClusterOp) {
        if let Some(broker) = self.broker.as_mut() {
            broker.control(op);
        }
    }

    /// A connection of `user` opened or closed on this worker (its first or last here).
    pub(crate) fn private(&mut self, user: &Arc<str>, open: bool) {
        if let Some(broker) = self.broker.as_mut() {
            broker.private(user, open);
        }
    }
}
