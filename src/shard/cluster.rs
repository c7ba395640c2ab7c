//! The homes' side of the cluster broker (`crate::broker`): what a home asks of it, and how a
//! followed room catches up with the cluster's order.
//!
//! With a broker, a home no longer sequences: every sequenced message is sent as a
//! [`SequenceRequest`] (the message's JSON with holes for what only the sequencer knows: the
//! seq, the state version, a comment's id) and comes back, sequenced by Redis, to every node
//! that follows the room, this one included, as [`Mail::Broadcast`](super::mail::Mail). The
//! home then fans it out to its local members exactly as a message it sequenced itself.
//!
//! A room is *followed* while this node has members in it. [`Follow`] is the catch-up rule:
//! the broker subscribes to the room's channel and then reads a snapshot (seq, epoch, state,
//! the history stream); broadcasts that arrive before the snapshot are buffered and those it
//! already holds are dropped; a broadcast that skips a seq (a subscription lost and taken
//! again) buffers and asks for a new snapshot. So members see every seq once, in order, or
//! are closed (1012) when the cluster lost the room's history (a new epoch).
//!
//! Everything here is pure: the port is a trait the shell implements over its channels.

use super::mail::{Origin, ReplyTo};
use crate::ids::RoomName;
pub use crate::room::cluster::{Broadcast, ClusterPresence, PresenceChange, Snapshot};
use crate::wire::{server_msg, Ref};
use std::sync::Arc;

/// The seq placeholder the templates are encoded with (never a real seq).
const SEQ_HOLE: u64 = u64::MAX;
/// The version placeholder of a `state` template.
const VERSION_HOLE: u64 = u64::MAX - 1;
/// The comment-id placeholder of a comment's `data`.
const ID_HOLE: &str = "@@roomcast-comment-id@@";

/// Broadcasts a room may buffer while it catches up; past this the buffer is dropped and the
/// next snapshot fills the gap from the history stream instead.
pub const MAX_BUFFERED: usize = 4_096;

/// A message's JSON with holes: `pieces` interleaved with the values named by `holes`
/// (`S`: the seq, `V`: the state version, `I`: the comment id `<epoch>-<seq>`), so the
/// sequencer fills them in one step with the seq it assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The JSON around the holes: one more piece than holes.
    pub pieces: Vec<Vec<u8>>,
    /// One letter per hole, in order.
    pub holes: String,
}

impl Template {
    /// An upstream `event`.
    pub fn event(room: &str, kind: &str, data: &str, ts_ms: u64) -> Self {
        let mut out = Vec::with_capacity(64 + room.len() + kind.len() + data.len());
        server_msg::event(&mut out, room, SEQ_HOLE, kind, data, ts_ms);
        Self::cut(out, &[(b'S', seq_hole())])
    }

    /// A viewer's comment: an `event` of type `comment` whose `data.id` is `<epoch>-<seq>`.
    pub fn comment(room: &str, (user, name, text): (&str, &str, &str), ts_ms: u64) -> Self {
        let mut data = Vec::with_capacity(text.len() + user.len() + name.len() + 64);
        server_msg::comment_data(&mut data, ID_HOLE, user, name, text);
        let data = String::from_utf8_lossy(&data);
        let mut out = Vec::with_capacity(64 + room.len() + data.len());
        server_msg::event(&mut out, room, SEQ_HOLE, "comment", &data, ts_ms);
        let id = format!("{{\"id\":\"{ID_HOLE}").into_bytes();
        Self::cut(out, &[(b'S', seq_hole()), (b'I', id)])
    }

    /// A `comment_deleted` event for comment `id`.
    pub fn comment_deleted(room: &str, id: &str, ts_ms: u64) -> Self {
        let mut data = Vec::with_capacity(id.len() + 10);
        data.extend_from_slice(b"{\"id\":");
        server_msg::push_str(&mut data, id);
        data.push(b'}');
        let data = String::from_utf8_lossy(&data);
        let mut out = Vec::with_capacity(64 + room.len() + data.len());
        server_msg::event(&mut out, room, SEQ_HOLE, "comment_deleted", &data, ts_ms);
        Self::cut(out, &[(b'S', seq_hole())])
    }

    /// A `state` message.
    pub fn state(room: &str, state: &str) -> Self {
        let mut out = Vec::with_capacity(64 + room.len() + state.len());
        server_msg::state(&mut out, room, SEQ_HOLE, VERSION_HOLE, state);
        let version = format!("\"version\":{VERSION_HOLE}").into_bytes();
        Self::cut(out, &[(b'S', seq_hole()), (b'V', version)])
    }

    /// Cut `json` at the first occurrence of each marker, in the given order (each after the
    /// previous one). A marker is the key with its placeholder value: a JSON string cannot hold
    /// it unescaped before the real key (the room and kind come before, escaped), so the first
    /// match is the field. The key itself stays in the piece before the hole.
    fn cut(json: Vec<u8>, markers: &[(u8, Vec<u8>)]) -> Self {
        let mut pieces = Vec::with_capacity(markers.len() + 1);
        let mut holes = String::with_capacity(markers.len());
        let mut rest: &[u8] = &json;
        for (letter, marker) in markers {
            let Some(at) = memchr::memmem::find(rest, marker) else { continue };
            // The hole is the placeholder value: the marker minus its key.
            let value = placeholder(*letter);
            let key_len = marker.len() - value.len();
            pieces.push(rest[..at + key_len].to_vec());
            holes.push(char::from(*letter));
            rest = &rest[at + marker.len()..];
        }
        pieces.push(rest.to_vec());
        Self { pieces, holes }
    }

    /// The JSON with the holes filled (what the sequencer makes; for tests and checks).
    pub fn fill(&self, seq: u64, version: u64, epoch: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, piece) in self.pieces.iter().enumerate() {
            out.extend_from_slice(piece);
            match self.holes.as_bytes().get(i) {
                Some(b'S') => out.extend_from_slice(seq.to_string().as_bytes()),
                Some(b'V') => out.extend_from_slice(version.to_string().as_bytes()),
                Some(b'I') => out.extend_from_slice(format!("{epoch}-{seq}").as_bytes()),
                _ => {}
            }
        }
        out
    }
}

fn seq_hole() -> Vec<u8> {
    format!("\"seq\":{SEQ_HOLE}").into_bytes()
}

fn placeholder(letter: u8) -> Vec<u8> {
    match letter {
        b'S' => SEQ_HOLE.to_string().into_bytes(),
        b'V' => VERSION_HOLE.to_string().into_bytes(),
        _ => ID_HOLE.as_bytes().to_vec(),
    }
}

/// What happens once the cluster sequenced a message.
#[derive(Debug)]
pub enum Then {
    /// Nothing to report.
    Nothing,
    /// Reply to an ingest (or HTTP) command: its seq (and, for `state`, the version).
    Ingest(ReplyTo),
    /// A viewer's comment: its home on this node hands it to the sinks and acks it.
    Comment(CommentDone),
    /// A moderation delete: its home on this node writes the tombstone and replies.
    Delete {
        /// The deleted comment's id.
        id: Box<str>,
        /// Where the reply goes, if anywhere.
        reply: Option<ReplyTo>,
    },
}

/// A comment sent to the cluster, as its home needs it back.
#[derive(Debug)]
pub struct CommentDone {
    /// The commenter (gets the ack).
    pub from: Origin,
    /// The commenter's user id.
    pub user: Arc<str>,
    /// The commenter's display name.
    pub name: Arc<str>,
    /// The text.
    pub text: Box<str>,
    /// The comment's `ref`.
    pub reference: Option<Ref>,
}

/// One message for the cluster's sequencer.
#[derive(Debug)]
pub struct SequenceRequest {
    /// The room.
    pub room: RoomName,
    /// The message with holes.
    pub template: Template,
    /// For a `state` message: the new state (the room's state from now on).
    pub state: Option<Box<str>>,
    /// When it was published (the broker lag is measured from it).
    pub ts_ms: u64,
    /// What to do with the answer.
    pub then: Then,
}

/// A moderation command every node carries out on its own connections and rooms (the node
/// that received it from its upstream tells the others through the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOp {
    /// Close a user's connections (4010), or take the user out of one room.
    Kick {
        /// The user id.
        user: Arc<str>,
        /// Only this room; `None`: every connection of the user.
        room: Option<RoomName>,
    },
    /// Close a room: its members get `left` with reason `closed`, its history is dropped (the
    /// room starts over with a new epoch, as on one node).
    CloseRoom {
        /// The room.
        room: RoomName,
    },
}

/// The broker refused a request (Redis unreachable, or too much waiting for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// Where a home sends what the cluster must do. Implemented by the shell over its channels to
/// the broker's threads; nothing here blocks.
pub trait BrokerPort: Send + std::fmt::Debug {
    /// Sequence a message; refused while Redis is unreachable (what waited for the answer
    /// comes back, to be answered `unavailable`).
    fn sequence(&mut self, request: SequenceRequest) -> Result<(), Then>;
    /// Start following `room` (subscribe, then a snapshot as [`Mail::Synced`](super::mail::Mail)),
    /// or read its snapshot again after a gap.
    fn follow(&mut self, room: &RoomName);
    /// Stop following `room`.
    fn unfollow(&mut self, room: &RoomName);
    /// This node's presence changes and reaction counts of `room` for the interval.
    fn presence(&mut self, room: &RoomName, changes: Vec<PresenceChange>, reactions: Vec<(Box<str>, u64)>);
    /// A connection of `user` opened (`true`) or closed on this node: its private room is
    /// followed while the node has any.
    fn private(&mut self, user: &Arc<str>, open: bool);
    /// Tell the other nodes to carry out `op` too (this node already did).
    fn control(&mut self, op: ClusterOp);
}

/// A followed room's catch-up state. See the module doc.
#[derive(Debug, Default)]
pub(crate) enum Follow {
    /// Not followed (a single node's room, or a room this node only publishes to).
    #[default]
    Off,
    /// Waiting for a snapshot; broadcasts meanwhile, in arrival order.
    Syncing(Vec<Broadcast>),
    /// In step with the cluster: the next broadcast should be `last + 1`.
    Live,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn an_event_template_is_the_event_with_its_seq_left_out() {
        // A room name holding the placeholder text cannot fool the cut: it is escaped.
        let room = "r\"seq\":18446744073709551615";
        let t = Template::event(room, "goal", r#"{"seq":18446744073709551615}"#, 7);
        assert_eq!(t.holes, "S");
        let v = parse(&t.fill(42, 0, "e1"));
        assert_eq!((v["room"].as_str(), v["seq"].as_u64(), v["ts"].as_u64()), (Some(room), Some(42), Some(7)));
        assert_eq!(v["data"]["seq"].as_u64(), Some(u64::MAX), "data is untouched");
    }

    #[test]
    fn a_comment_template_fills_seq_and_id() {
        let t = Template::comment("live", ("ann", "Ann", "@@roomcast-comment-id@@ hi"), 9);
        assert_eq!(t.holes, "SI");
        let v = parse(&t.fill(5, 0, "abc"));
        assert_eq!(v["seq"].as_u64(), Some(5));
        assert_eq!(v["data"]["id"].as_str(), Some("abc-5"));
        assert_eq!(v["data"]["text"].as_str(), Some("@@roomcast-comment-id@@ hi"));
        assert_eq!(v["type"].as_str(), Some("comment"));
    }

    #[test]
    fn a_state_template_fills_seq_and_version() {
        let t = Template::state("live", r#"{"score":[1,0]}"#);
        assert_eq!(t.holes, "SV");
        let v = parse(&t.fill(3, 2, "e"));
        assert_eq!((v["seq"].as_u64(), v["version"].as_u64()), (Some(3), Some(2)));
        assert_eq!(v["state"]["score"][0].as_u64(), Some(1));
    }

    #[test]
    fn a_delete_template_names_the_comment() {
        let v = parse(&Template::comment_deleted("live", "abc-5", 1).fill(6, 0, "abc"));
        assert_eq!(
            (v["type"].as_str(), v["data"]["id"].as_str(), v["seq"].as_u64()),
            (Some("comment_deleted"), Some("abc-5"), Some(6))
        );
    }
}
