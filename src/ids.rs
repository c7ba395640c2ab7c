//! Identifier newtypes shared by the core and the shell.
//!
//! They exist so a worker index can never be passed where a slab key is expected, and so the
//! units of a number (a room's sequence, a connection's process-wide id) are in its type.

use std::fmt;

/// Index of a worker thread (0..workers). Also the index of its mailbox in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
