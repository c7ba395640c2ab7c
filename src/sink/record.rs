//! What the homes hand to the sinks, and the one JSON Lines shape every sink writes.
//!
//! A record is encoded exactly once, by the sink runner, into an [`EncodedRecord`]; the file
//! sink appends its line, the Redis sink stores it in a stream entry, the webhook sink posts a
//! JSON array of them and the spool keeps the same lines. So a consumer reads one shape
//! whichever sink it reads. This module must never do IO or read a clock.
//!
//! The encoding (one JSON object per line, always with `type`, `room` and `ts`, milliseconds
//! since the Unix epoch):
//!
//! ```text
//! {"type":"comment","room":"live-1","seq":12,"id":"1f3a-12","user":"alice","name":"Alice","text":"hi","ts":1764576000000}
//! {"type":"tombstone","room":"live-1","id":"1f3a-12","seq":13,"ts":1764576000500}
//! {"type":"presence","room":"live-1","kind":"online","user":"alice","name":"Alice","ts":1764576000000}
//! {"type":"presence","room":"live-1","kind":"offline","user":"alice","name":"Alice","ts":1764576090000}
//! {"type":"presence","room":"live-1","kind":"occupied","ts":1764576000000}
//! {"type":"presence","room":"live-1","kind":"vacated","ts":1764576090000}
//! ```
//!
//! A comment's `id` (`<epoch>-<seq>`) is stable across retries and replays: delivery to a sink is
//! at least once, and consumers dedupe by `id`. A tombstone's `seq` is the seq of the
//! `comment_deleted` event; its `id` is the deleted comment's. A presence record's `ts` is when
//! the change happened (for `offline`: when the user's last connection went, not when the grace
//! period ended).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// One record for the sinks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkRecord {
    /// A sequenced viewer comment.
    Comment {
        /// The room.
        room: Arc<str>,
        /// The comment event's seq in the room.
        seq: u64,
        /// `<epoch>-<seq>`, as in the `comment` event's `data.id`.
        id: String,
        /// The author's user id.
        user: String,
        /// The author's display name.
        name: String,
        /// The comment text.
        text: String,
        /// When it was sequenced (ms since the Unix epoch).
        #[serde(rename = "ts")]
        ts_ms: u64,
    },
    /// A comment taken back by moderation.
    Tombstone {
        /// The room.
        room: Arc<str>,
        /// The deleted comment's id.
        id: String,
        /// The seq of the `comment_deleted` event.
        seq: u64,
        /// When it was sequenced (ms since the Unix epoch).
        #[serde(rename = "ts")]
        ts_ms: u64,
    },
    /// A debounced presence change.
    Presence(PresenceRecord),
}

/// A presence change of a room or of a user in a room.
///
/// Homes submit the raw transitions (see [`crate::sink::SinkHandle::try_submit_presence`]); the
/// sinks receive them debounced (see [`crate::sink::presence`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The room.
    pub room: Arc<str>,
    /// What changed.
    #[serde(flatten)]
    pub kind: PresenceKind,
    /// When it changed (ms since the Unix epoch).
    #[serde(rename = "ts")]
    pub ts_ms: u64,
}

/// What a presence record says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PresenceKind {
    /// The room got its first viewer.
    Occupied,
    /// The room's last viewer left.
    Vacated,
    /// A user's first connection in the room.
    Online {
        /// The user id.
        user: String,
        /// The display name.
        name: String,
    },
    /// A user's last connection in the room went away.
    Offline {
        /// The user id.
        user: String,
        /// The display name.
        name: String,
    },
}

impl PresenceKind {
    /// The user this change is about; `None` for a room's occupied/vacated.
    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Online { user, .. } | Self::Offline { user, .. } => Some(user),
            Self::Occupied | Self::Vacated => None,
        }
    }
}

/// The `type` of a record, as written in its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// `comment`.
    Comment,
    /// `tombstone`.
    Tombstone,
    /// `presence`.
    Presence,
}

impl RecordKind {
    /// The `type` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Comment => "comment",
            Self::Tombstone => "tombstone",
            Self::Presence => "presence",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "comment" => Some(Self::Comment),
            "tombstone" => Some(Self::Tombstone),
            "presence" => Some(Self::Presence),
            _ => None,
        }
    }
}

impl SinkRecord {
    /// The record's room.
    pub fn room(&self) -> &Arc<str> {
        match self {
            Self::Comment { room, .. } | Self::Tombstone { room, .. } => room,
            Self::Presence(p) => &p.room,
        }
    }

    /// The record's `type`.
    pub fn kind(&self) -> RecordKind {
        match self {
            Self::Comment { .. } => RecordKind::Comment,
            Self::Tombstone { .. } => RecordKind::Tombstone,
            Self::Presence(_) => RecordKind::Presence,
        }
    }

    /// When it happened (ms since the Unix epoch).
    pub fn ts_ms(&self) -> u64 {
        match self {
            Self::Comment { ts_ms, .. } | Self::Tombstone { ts_ms, .. } => *ts_ms,
            Self::Presence(p) => p.ts_ms,
        }
    }

    /// Encode once into the JSON Lines shape (without the newline).
    pub fn encode(&self) -> EncodedRecord {
        // Serializing plain strings and integers to a String cannot fail.
        let line = serde_json::to_string(self).unwrap_or_default();
        EncodedRecord { kind: self.kind(), room: Arc::clone(self.room()), ts_ms: self.ts_ms(), line }
    }
}

/// A record as every sink sees it: its JSON line and what routing needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedRecord {
    /// The record's `type`.
    pub kind: RecordKind,
    /// The record's room (routes Redis entries).
    pub room: Arc<str>,
    /// The record's `ts` (sink lag is measured from it).
    pub ts_ms: u64,
    /// One JSON object, no newline.
    pub line: String,
}

/// Why a stored line could not be read back as a record.
#[derive(Debug, thiserror::Error)]
#[error("not a sink record line: {0}")]
pub struct LineError(String);

#[derive(Deserialize)]
struct LineHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    room: Cow<'a, str>,
    ts: u64,
}

impl EncodedRecord {
    /// Read back a line written by [`SinkRecord::encode`] (the spool replays them).
    pub fn from_line(line: &str) -> Result<Self, LineError> {
        let head: LineHead<'_> = serde_json::from_str(line).map_err(|e| LineError(e.to_string()))?;
        let kind = RecordKind::parse(&head.kind).ok_or_else(|| LineError(format!("unknown type {:?}", head.kind)))?;
        Ok(Self { kind, room: Arc::from(head.room.as_ref()), ts_ms: head.ts, line: line.to_owned() })
    }

    /// Decode the full record (tests and tools; the sinks never need it).
    pub fn decode(&self) -> Result<SinkRecord, LineError> {
        serde_json::from_str(&self.line).map_err(|e| LineError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment() -> SinkRecord {
        SinkRecord::Comment {
            room: "live-1".into(),
            seq: 12,
            id: "1f3a-12".into(),
            user: "alice".into(),
            name: "Alice".into(),
            text: "hi \"there\"\n".into(),
            ts_ms: 1_764_576_000_000,
        }
    }

    #[test]
    fn lines_have_the_documented_shape() {
        assert_eq!(
            comment().encode().line,
            r#"{"type":"comment","room":"live-1","seq":12,"id":"1f3a-12","user":"alice","name":"Alice","text":"hi \"there\"\n","ts":1764576000000}"#
        );
        let t = SinkRecord::Tombstone { room: "live-1".into(), id: "1f3a-12".into(), seq: 13, ts_ms: 5 };
        assert_eq!(t.encode().line, r#"{"type":"tombstone","room":"live-1","id":"1f3a-12","seq":13,"ts":5}"#);
        let online = PresenceKind::Online { user: "alice".into(), name: "Alice".into() };
        let p = SinkRecord::Presence(PresenceRecord { room: "live-1".into(), kind: online, ts_ms: 7 });
        assert_eq!(
            p.encode().line,
            r#"{"type":"presence","room":"live-1","kind":"online","user":"alice","name":"Alice","ts":7}"#
        );
        let v = SinkRecord::Presence(PresenceRecord { room: "r".into(), kind: PresenceKind::Vacated, ts_ms: 9 });
        assert_eq!(v.encode().line, r#"{"type":"presence","room":"r","kind":"vacated","ts":9}"#);
    }

    #[test]
    fn lines_read_back() {
        let offline = PresenceKind::Offline { user: "u\u{e9}".into(), name: "n".into() };
        for record in [
            comment(),
            SinkRecord::Tombstone { room: "r\\x".into(), id: "a-1".into(), seq: 2, ts_ms: 3 },
            SinkRecord::Presence(PresenceRecord { room: "r".into(), kind: offline, ts_ms: 4 }),
            SinkRecord::Presence(PresenceRecord { room: "r".into(), kind: PresenceKind::Occupied, ts_ms: 4 }),
        ] {
            let encoded = record.encode();
            let back = EncodedRecord::from_line(&encoded.line).expect("reads back");
            assert_eq!(back, encoded);
            assert_eq!(back.decode().expect("decodes"), record);
        }
        assert!(EncodedRecord::from_line("{\"type\":\"gift\",\"room\":\"r\",\"ts\":1}").is_err());
        assert!(EncodedRecord::from_line("{\"type\":\"comm").is_err());
    }
}
