//! Identifier newtypes shared by the core and the shell.
//!
//! They exist so a worker index can never be passed where a slab key is expected, so the
//! units of a number (a room's sequence, a connection's process-wide id) are in its type, and
//! so a room name that reached the core has been checked once, at the edge, by the one rule in
//! [`validate_name`]. This module is the lowest layer: it imports nothing from the crate.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Index of a worker thread (0..workers). Also the index of its mailbox in the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u16);

/// A connection's key in its worker's slab. Only meaningful together with its [`WorkerId`] and
/// only while the connection lives: slab keys are reused, so messages that travel between
/// workers carry a [`ConnId`] as well and are dropped when it no longer matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey(pub usize);

/// A process-wide unique connection id, shown to the client in `hello.conn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A room's sequence number: 1 for its first sequenced message, +1 for each after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seq(pub u64);

/// Longest room name (and user id) in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Prefix of every connection's private room, `user:<id>`.
pub const PRIVATE_ROOM_PREFIX: &str = "user:";

/// The one rule for room names and user ids, on every path (viewer ops, ingest, the upgrade's
/// `?user=`, the admin API): 1..=128 bytes, no control characters. The error says what is
/// wrong for a person to read.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("longer than 128 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    Ok(())
}

/// A checked room name, shared by refcount: every copy (the home's room, each worker's member
/// list, each mail) points at the same bytes. Private rooms (`user:<id>`) are rooms too; they
/// are recognised by [`RoomName::private_owner`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Check `name` with [`validate_name`].
    pub fn new(name: &str) -> Result<Self, &'static str> {
        validate_name(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The private room of `user` (`user:<id>`). User ids are checked like room names, and the
    /// prefix makes the name at most 5 bytes longer than the limit: the private room is never
    /// refused for its length.
    pub fn private(user: &str) -> Self {
        Self(Arc::from(format!("{PRIVATE_ROOM_PREFIX}{user}")))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For a private room `user:<id>`, the user id.
    pub fn private_owner(&self) -> Option<&str> {
        self.0.strip_prefix(PRIVATE_ROOM_PREFIX)
    }

    /// Whether this is a user's private room.
    pub fn is_private(&self) -> bool {
        self.0.starts_with(PRIVATE_ROOM_PREFIX)
    }
}

impl Deref for RoomName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_once_by_one_rule() {
        assert!(RoomName::new("live-1").is_ok());
        assert_eq!(RoomName::new(""), Err("empty"));
        assert_eq!(RoomName::new(&"x".repeat(129)), Err("longer than 128 bytes"));
        assert_eq!(RoomName::new("a\nb"), Err("contains control characters"));
        let private = RoomName::private("alice");
        assert_eq!(
            (private.as_str(), private.private_owner(), private.is_private()),
            ("user:alice", Some("alice"), true)
        );
        assert_eq!(RoomName::new("live").map(|r| r.private_owner().is_none()), Ok(true));
    }
}
