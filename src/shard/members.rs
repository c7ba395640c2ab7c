//! The worker-local member index: which of this worker's connections receive a room's frames.
//!
//! Two maps, because the two kinds of room differ in size and lifetime. A public room maps to
//! its confirmed local members (a member's index here is kept in its session's
//! [`MemberState::Joined`](crate::session::MemberState), so leaving is a swap-remove, not a
//! search). A private room `user:<id>` maps, by the user id alone, to that user's connections
//! on this worker: it is joined at the upgrade without a round trip to any home, and it is also
//! how a kick finds a user's connections without a scan. This module only indexes keys; it
//! never touches a session or a frame.

use crate::ids::{ConnKey, RoomName};
use std::collections::HashMap;
use std::sync::Arc;

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Members {
    rooms: HashMap<RoomName, Vec<ConnKey>>,
    private: HashMap<Arc<str>, PrivateMembers>,
}

impl Members {
    /// Add a confirmed member of a public room; returns its slot.
    pub(crate) fn join(&mut self, room: &RoomName, key: ConnKey) -> u32 {
        let members = self.rooms.entry(room.clone()).or_default();
        members.push(key);
        (members.len() - 1) as u32
    }

    /// Take the member in `slot` out of `room`. Returns the member that moved into the slot,
    /// whose session must learn its new slot.
    pub(crate) fn leave(&mut self, room: &str, slot: u32) -> Option<ConnKey> {
        let slot = slot as usize;
        let members = self.rooms.get_mut(room)?;
        if slot >= members.len() {
            return None;
        }
        members.swap_remove(slot);
        let moved = members.get(slot).copied();
        if members.is_empty() {
            self.rooms.remove(room);
        }
        moved
    }

    /// Every local member of a closed room, and the room forgotten.
    pub(crate) fn close_room(&mut self, room: &str) -> Vec<ConnKey> {
        self.rooms.remove(room).unwrap_or_default()
    }

    /// The local receivers of `room`'s frames: its members, or the user's connections for a
    /// private room.
    pub(crate) fn receivers(&self, room: &RoomName) -> &[ConnKey] {
        let members = match room.private_owner() {
            Some(user) => self.private.get(user).map(PrivateMembers::keys),
            None => self.rooms.get(&**room).map(Vec::as_slice),
        };
        members.unwrap_or(&[])
    }

    /// `key` is a connection of `user` (it joins the user's private room); true when it is
    /// the user's first here.
    pub(crate) fn add_connection(&mut self, user: &Arc<str>, key: ConnKey) -> bool {
        match self.private.get_mut(&**user) {
            Some(members) => {
                members.push(key);
                false
            }
            None => {
                self.private.insert(Arc::clone(user), PrivateMembers::One(key));
                true
            }
        }
    }

    /// `key`, a connection of `user`, is gone; true when it was the user's last here.
    pub(crate) fn remove_connection(&mut self, user: &str, key: ConnKey) -> bool {
        if let Some(members) = self.private.get_mut(user) {
            if members.remove(key) {
                self.private.remove(user);
                return true;
            }
        }
        false
    }

    /// The user's connections on this worker.
    pub(crate) fn connections_of(&self, user: &str) -> &[ConnKey] {
        self.private.get(user).map_or(&[], PrivateMembers::keys)
    }
}

/// One user's connections on a worker: almost always one, so that case needs no allocation.
#[derive(Debug)]
enum PrivateMembers {
    One(ConnKey),
    Many(Vec<ConnKey>),
}

impl PrivateMembers {
    fn keys(&self) -> &[ConnKey] {
        match self {
            Self::One(key) => std::slice::from_ref(key),
            Self::Many(keys) => keys,
        }
    }

    fn push(&mut self, key: ConnKey) {
        match self {
            Self::One(first) => *self = Self::Many(vec![*first, key]),
            Self::Many(keys) => keys.push(key),
        }
    }

    /// Remove `key`; true when none is left.
    fn remove(&mut self, key: ConnKey) -> bool {
        match self {
            Self::One(k) => *k == key,
            Self::Many(keys) => {
                keys.retain(|k| *k != key);
                keys.is_empty()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_moves_the_last_member_into_the_slot() {
        let mut m = Members::default();
        let room = RoomName::new("r").expect("valid");
        let slots: Vec<u32> = (0..3).map(|k| m.join(&room, ConnKey(k))).collect();
        assert_eq!(slots, [0, 1, 2]);
        assert_eq!(m.leave("r", 0), Some(ConnKey(2)), "the last member now sits in slot 0");
        assert_eq!(m.receivers(&room), [ConnKey(2), ConnKey(1)]);
        assert_eq!(m.leave("r", 1), None);
        assert_eq!(m.leave("r", 0), None);
        assert!(m.receivers(&room).is_empty());
    }

    #[test]
    fn a_private_room_reaches_every_connection_of_its_user() {
        let mut m = Members::default();
        let user: Arc<str> = Arc::from("ann");
        m.add_connection(&user, ConnKey(4));
        m.add_connection(&user, ConnKey(7));
        assert_eq!(m.receivers(&RoomName::private("ann")), [ConnKey(4), ConnKey(7)]);
        m.remove_connection("ann", ConnKey(4));
        m.remove_connection("ann", ConnKey(7));
        assert!(m.connections_of("ann").is_empty());
    }
}
