//! A home room shared with other nodes (`crate::broker`): the cluster numbers its messages, and
//! the room follows.
//!
//! A followed room starts from a [`Snapshot`] of the cluster's copy ([`HomeRoom::adopt`]: its
//! epoch, seq, state and history ring) and then applies each sequenced message the cluster
//! broadcasts, in seq order ([`HomeRoom::apply`]), instead of numbering its own. Presence is
//! split the same way: the room records which local viewers came or went on this node
//! ([`HomeRoom::take_report`], sent to the cluster at the tick) and announces what the cluster
//! reports back ([`HomeRoom::cluster_presence`]), coalesced per interval as on one node.
//!
//! The messages a shared room takes in ([`Broadcast`], [`Snapshot`], [`ClusterPresence`]) and
//! reports ([`PresenceChange`]) are defined here, beside the room that applies them, so the
//! room depends on nothing above it; `crate::shard::cluster` re-exports them for the homes and
//! the broker.

use super::{HomeRoom, PresenceDelta, MAX_REACTION_KINDS};
use crate::ids::Seq;
use bytes::Bytes;
use std::sync::Arc;

/// A local viewer of a room came online or went offline on this node (reported at the tick).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The user id.
    pub user: Arc<str>,
    /// The display name.
    pub name: Arc<str>,
    /// Online here now (else offline here).
    pub online: bool,
}

/// A sequenced message as the cluster delivers it to a node.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// Its seq in the room.
    pub seq: u64,
    /// The room's epoch it was sequenced in.
    pub epoch: Box<str>,
    /// For a `state` message: the version and the new state.
    pub state: Option<(u64, Box<str>)>,
    /// When it was published.
    pub ts_ms: u64,
    /// The encoded frame.
    pub frame: Bytes,
}

/// A room's snapshot: what a newly followed (or resynced) room starts from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The room's epoch.
    pub epoch: Box<str>,
    /// The latest seq.
    pub seq: u64,
    /// The state version.
    pub version: u64,
    /// The state, if any.
    pub state: Option<Box<str>>,
    /// The history stream, oldest first (at most `history.size` messages, consecutive seqs).
    pub history: Vec<Broadcast>,
}

/// Cluster presence as the room's channel carries it: the room's users over all nodes, and
/// who came and went cluster-wide in one node's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPresence {
    /// Distinct users over all nodes.
    pub online: u64,
    /// Users now online somewhere who were online nowhere.
    pub joined: Vec<(Arc<str>, Arc<str>)>,
    /// Users now online nowhere.
    pub left: Vec<(Arc<str>, Arc<str>)>,
    /// The lists were too long to carry (a large room): `online` only.
    pub overflow: bool,
    /// Reaction counts of one node's interval.
    pub reactions: Vec<(Box<str>, u64)>,
}

/// What a shared room keeps about the cluster.
#[derive(Debug, Default)]
pub(super) struct ClusterView {
    /// Distinct users over all nodes, as last reported.
    pub(super) online: u64,
    /// Users whose presence on this node changed since the last report (their state now is
    /// whether the room lists them).
    changes: Vec<(Arc<str>, Arc<str>)>,
    /// This node's reaction counts since the last report.
    pub(super) reactions: Vec<(Box<str>, u64)>,
}

impl ClusterView {
    /// Whether there is something to report at the tick.
    pub(super) fn has_report(&self) -> bool {
        !self.changes.is_empty() || !self.reactions.is_empty()
    }

    /// `user`'s presence on this node changed.
    pub(super) fn changed(&mut self, user: &Arc<str>, name: &Arc<str>) {
        self.changes.push((Arc::clone(user), Arc::clone(name)));
    }
}

/// Add `n` to `kind` in `counts`; a kind past [`MAX_REACTION_KINDS`] is dropped.
pub(super) fn count(counts: &mut Vec<(Box<str>, u64)>, kind: &str, n: u64) {
    if let Some(entry) = counts.iter_mut().find(|(k, _)| &**k == kind) {
        entry.1 += n;
    } else if counts.len() < MAX_REACTION_KINDS {
        counts.push((kind.into(), n));
    }
}

/// The epoch as the cluster writes it (hex), as the room keeps it; `None` if it is not one.
fn parse_epoch(epoch: &str) -> Option<u64> {
    u64::from_str_radix(epoch, 16).ok()
}

impl HomeRoom {
    /// Share the room with the cluster from now on: its numbers and presence come from there.
    pub fn set_clustered(&mut self) {
        if self.cluster.is_none() {
            self.cluster = Some(Box::default());
        }
    }

    /// Whether the room is shared with the cluster.
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Whether `epoch` (as on the wire) is the room's.
    pub fn epoch_is(&self, epoch: &str) -> bool {
        parse_epoch(epoch) == Some(self.epoch)
    }

    /// Start over from the cluster's copy: epoch, seq, state and the history ring.
    pub fn adopt(&mut self, snapshot: &Snapshot, now_ms: u64) {
        self.epoch = parse_epoch(&snapshot.epoch).unwrap_or(self.epoch);
        self.seq = Seq(snapshot.seq);
        self.version = snapshot.version;
        self.state = snapshot.state.clone();
        self.history = super::History::new(self.history.max_len(), self.history.max_age_ms());
        for message in snapshot.history.iter().filter(|m| m.seq <= snapshot.seq) {
            self.history.push_after_gap(message.seq, message.ts_ms, message.frame.clone());
        }
        self.history.prune(now_ms);
        self.last_active_ms = now_ms;
    }

    /// Take the cluster's next message (the caller checked it is `seq() + 1`, or, for a
    /// private room, any later seq): the room's seq, state and history follow it.
    pub fn apply(&mut self, message: &Broadcast, now_ms: u64) {
        // The same epoch for a followed room; a private room (no snapshot) takes it from here.
        self.epoch = parse_epoch(&message.epoch).unwrap_or(self.epoch);
        self.seq = Seq(message.seq);
        if let Some((version, state)) = &message.state {
            self.version = *version;
            self.state = Some(state.clone());
        }
        self.last_active_ms = now_ms;
        self.history.prune(now_ms);
        self.history.push_after_gap(message.seq, message.ts_ms, message.frame.clone());
    }

    /// This node's presence changes and reaction counts since the last report, for the
    /// cluster: each changed user once, online if the room lists it now.
    pub fn take_report(&mut self) -> (Vec<PresenceChange>, Vec<(Box<str>, u64)>) {
        let Some(cluster) = &mut self.cluster else { return (Vec::new(), Vec::new()) };
        let mut changes: Vec<PresenceChange> = Vec::with_capacity(cluster.changes.len());
        for (user, name) in cluster.changes.drain(..) {
            if changes.iter().any(|c| c.user == user) {
                continue;
            }
            let online = self.viewers.contains_key(&user);
            changes.push(PresenceChange { user, name, online });
        }
        (changes, std::mem::take(&mut cluster.reactions))
    }

    /// Every local viewer as online (the cluster lost this node's presence: it is told again).
    pub fn full_report(&self) -> Vec<PresenceChange> {
        self.viewers
            .iter()
            .map(|(user, v)| PresenceChange { user: Arc::clone(user), name: Arc::clone(&v.name), online: true })
            .collect()
    }

    /// What the cluster reports: `online` over all nodes, who came and went, reaction counts.
    /// Merged into the interval's announcement by the single-node rules.
    pub fn cluster_presence(&mut self, report: &ClusterPresence) {
        let Some(cluster) = &mut self.cluster else { return };
        cluster.online = report.online;
        for (kind, n) in &report.reactions {
            count(&mut self.reactions, kind, *n);
        }
        let large = self.large_room;
        let delta = self.presence.get_or_insert_with(Box::<PresenceDelta>::default);
        delta.overflow |= report.overflow;
        for (user, name) in &report.joined {
            delta.came(user, name, large);
        }
        for (user, name) in &report.left {
            delta.went(user, name, large);
        }
    }
}
