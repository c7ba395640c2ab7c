//! Viewer ops, checked and carried out on the viewer's worker, and the local side of room
//! membership (joins confirmed by the home, leaves, kicks, closed rooms).
//!
//! Every check that can be made without the room's home is made here, before any mail is
//! sent: the op parses, the room is joined (or not yet), the comment fits, the connection is
//! under its room limit. What needs the room (its seq, its members) goes to the home as mail
//! and comes back as mail; this module never sequences anything itself.

use super::mail::{home_of, Mail, Origin};
use super::{Shard, ViewerActivity};
use crate::auth::Refused;
use crate::ids::{ConnKey, RoomName};
use crate::query::LeaveReason;
use crate::room::JoinReply;
use crate::session::MemberState;
use crate::wire::frame::{self, close_code};
use crate::wire::{self, server_msg, ClientOp, ErrorCode, Ref};
use std::sync::Arc;

/// Longest reaction kind, in bytes.
const MAX_REACTION_KIND_BYTES: usize = 32;

impl<Io> Shard<Io> {
    pub(super) fn handle_text(&mut self, key: ConnKey, buf: &mut [u8], now_ms: u64) {
        let op = match wire::decode_client_op_with(buf, &mut self.json.0) {
            Ok(op) => op,
            Err(e) => {
                if self.check(key, now_ms, |g, l, now| g.check_message(l, now)).is_ok() {
                    self.reply_error(key, (e.reference.as_ref(), None), e.code, &e.message);
                }
                return;
            }
        };
        match op {
            ClientOp::Join { room, since, epoch, reference } => {
                if let Err(refused) = self.check(key, now_ms, |g, l, now| g.check_join(l, &room, now)) {
                    return self.refused(key, (reference.as_ref(), Some(&room)), &refused);
                }
                let since = since.map(|s| (s, epoch.as_deref().unwrap_or("").into()));
                self.client_join(key, &room, since, reference)
            }
            ClientOp::Leave { room, reference } => {
                if let Err(refused) = self.check(key, now_ms, |g, l, now| g.check_message(l, now)) {
                    return self.refused(key, (reference.as_ref(), Some(&room)), &refused);
                }
                self.client_leave(key, &room, reference)
            }
            ClientOp::Comment { room, text, reference } => {
                self.note_spoke(key, now_ms);
                if let Err(refused) = self.check(key, now_ms, |g, l, now| g.check_comment(l, &room, now)) {
                    if let Some(code) = refused.error_code() {
                        self.refuse_comment(key, &room, reference, code, &refused.to_string());
                    }
                    return;
                }
                self.client_comment(key, &room, &text, reference)
            }
            ClientOp::React { room, kind, reference } => {
                self.note_spoke(key, now_ms);
                if let Err(refused) = self.check(key, now_ms, |g, l, now| g.check_react(l, &room, now)) {
                    return self.refused(key, (reference.as_ref(), Some(&room)), &refused);
                }
                self.client_react(key, &room, &kind, reference)
            }
            ClientOp::Ping { reference } => {
                if let Err(refused) = self.check(key, now_ms, |g, l, now| g.check_message(l, now)) {
                    return self.refused(key, (reference.as_ref(), None), &refused);
                }
                self.send_to(key, frame::text_frame_with(|out| server_msg::pong(out, reference.as_ref())))
            }
            ClientOp::Refresh { token, reference } => {
                if let Err(refused) = self.check(key, now_ms, |g, l, now| g.check_message(l, now)) {
                    return self.refused(key, (reference.as_ref(), None), &refused);
                }
                self.client_refresh(key, &token, reference, now_ms)
            }
        }
    }

    /// Answer a refused op (a refusal that closed the connection needs no answer).
    fn refused(&mut self, key: ConnKey, about: (Option<&Ref>, Option<&str>), refused: &Refused) {
        if let Some(code) = refused.error_code() {
            self.reply_error(key, about, code, &refused.to_string());
        }
    }

    /// `refresh`: a new token for the same user extends the session past the old `exp`; rooms
    /// the new claims no longer allow are left (`left` with reason `forbidden`). Without an
    /// auth key there is nothing to extend, and the refresh is acknowledged.
    fn client_refresh(&mut self, key: ConnKey, token: &str, reference: Option<Ref>, now_ms: u64) {
        let Some(guard) = self.conns.get_mut(key).and_then(|c| c.session.guard_mut()) else { return };
        match guard.refresh(&mut self.auth, token, now_ms) {
            Err(refused) => self.refused(key, (reference.as_ref(), None), &refused),
            Ok(deadline) => {
                if let Some(at) = deadline {
                    // The one deadline: the new expiry, or the heartbeat when it comes first.
                    let heartbeat = now_ms + self.cfg.heartbeat_ms;
                    self.conns.arm(key, at.min(heartbeat));
                }
                let frame = frame::text_frame_with(|out| server_msg::ack(out, reference.as_ref(), None));
                self.send_to(key, frame);
                let Some(conn) = self.conns.get(key) else { return };
                let Some(guard) = conn.session.guard() else { return };
                let gone: Vec<RoomName> =
                    conn.session.rooms().map(|m| m.room.clone()).filter(|r| !guard.still_allowed(r)).collect();
                for room in gone {
                    if self.leave(key, &room, LeaveReason::Left) {
                        let frame = frame::text_frame_with(|out| server_msg::left(out, &room, Some("forbidden"), None));
                        self.send_to(key, frame);
                    }
                }
            }
        }
    }

    fn note_spoke(&mut self, key: ConnKey, now_ms: u64) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.session.note_spoke(now_ms);
        }
    }

    fn origin(&self, key: ConnKey) -> Option<Origin> {
        let conn = self.conns.get(key)?;
        Some(Origin { worker: self.id, key, conn: conn.session.id() })
    }

    fn client_join(&mut self, key: ConnKey, room: &str, since: Option<(u64, Box<str>)>, reference: Option<Ref>) {
        let about = (reference.as_ref(), Some(room));
        let Some(conn) = self.conns.get(key) else { return };
        let session = &conn.session;
        let name = match RoomName::new(room) {
            Ok(name) => name,
            Err(why) => return self.reply_error(key, about, ErrorCode::BadRequest, &format!("bad room name: {why}")),
        };
        if let Some(owner) = name.private_owner() {
            if owner != session.user() {
                let message = "this is another user's private room; a connection is in its own user's only";
                return self.reply_error(key, about, ErrorCode::Forbidden, message);
            }
            let message = "already joined: every connection is in its user's private room from the start";
            return self.reply_error(key, about, ErrorCode::BadRequest, message);
        }
        if session.membership(&name).is_some() {
            return self.reply_error(key, about, ErrorCode::BadRequest, "already joined (or joining) this room");
        }
        if session.room_count() >= self.cfg.max_rooms_per_conn {
            let message =
                format!("a connection may be in at most {} rooms; leave one first", self.cfg.max_rooms_per_conn);
            return self.reply_error(key, about, ErrorCode::Forbidden, &message);
        }
        let (Some(from), Some(conn)) = (self.origin(key), self.conns.get_mut(key)) else { return };
        let join_id = conn.session.begin_join(name.clone());
        let Some(identity) = conn.session.identity() else { return };
        let (user, display) = (Arc::clone(identity.user()), Arc::clone(identity.name()));
        let home = home_of(&name, self.cfg.workers);
        self.router.post(home, Mail::Join { room: name, from, join_id, user, name: display, since, reference });
    }

    fn client_leave(&mut self, key: ConnKey, room: &str, reference: Option<Ref>) {
        if room.starts_with(crate::ids::PRIVATE_ROOM_PREFIX) || !self.leave(key, room, LeaveReason::Left) {
            let message = "not a member of this room (a private room cannot be left)";
            return self.reply_error(key, (reference.as_ref(), Some(room)), ErrorCode::NotJoined, message);
        }
        let frame = frame::text_frame_with(|out| server_msg::left(out, room, None, reference.as_ref()));
        self.send_to(key, frame);
    }

    fn client_comment(&mut self, key: ConnKey, room: &str, text: &str, reference: Option<Ref>) {
        if !self.conns.get(key).is_some_and(|c| c.session.is_joined(room)) {
            let message = "join the room before commenting in it";
            return self.refuse_comment(key, room, reference, ErrorCode::NotJoined, message);
        }
        let chars = text.chars().count();
        if chars == 0 {
            return self.refuse_comment(key, room, reference, ErrorCode::BadRequest, "a comment needs some text");
        }
        if chars > self.cfg.max_comment_chars {
            let message =
                format!("a comment is at most {} characters (this one has {chars})", self.cfg.max_comment_chars);
            return self.refuse_comment(key, room, reference, ErrorCode::TooLarge, &message);
        }
        let Some(from) = self.origin(key) else { return };
        let Some(identity) = self.conns.get(key).and_then(|c| c.session.identity()) else { return };
        let Some(room) = self.joined_name(key, room) else { return };
        let home = home_of(&room, self.cfg.workers);
        let (user, name) = (Arc::clone(identity.user()), Arc::clone(identity.name()));
        self.router.post(home, Mail::Comment { room, from, user, name, text: text.into(), reference });
    }

    /// Refuse a comment: the error to the viewer, and (for a room it belongs to or tried to
    /// reach) a count at the room's home, where operators see it per room.
    fn refuse_comment(&mut self, key: ConnKey, room: &str, reference: Option<Ref>, code: ErrorCode, message: &str) {
        self.reply_error(key, (reference.as_ref(), Some(room)), code, message);
        let Some(identity) = self.conns.get(key).and_then(|c| c.session.identity()) else { return };
        let user = Arc::clone(identity.user());
        let Ok(room) = RoomName::new(room) else { return };
        let home = home_of(&room, self.cfg.workers);
        self.router.post(home, Mail::Rejected { room, user, code });
    }

    fn client_react(&mut self, key: ConnKey, room: &str, kind: &str, reference: Option<Ref>) {
        let about = (reference.as_ref(), Some(room));
        if !self.conns.get(key).is_some_and(|c| c.session.is_joined(room)) {
            return self.reply_error(key, about, ErrorCode::NotJoined, "join the room before reacting in it");
        }
        if kind.is_empty() || kind.len() > MAX_REACTION_KIND_BYTES {
            let message = format!("a reaction kind is 1..={MAX_REACTION_KIND_BYTES} bytes (got {})", kind.len());
            return self.reply_error(key, about, ErrorCode::BadRequest, &message);
        }
        let Some(room) = self.joined_name(key, room) else { return };
        let home = home_of(&room, self.cfg.workers);
        self.router.post(home, Mail::React { room, kind: kind.into() });
    }

    /// The shared name of a room the connection belongs to (no allocation).
    fn joined_name(&self, key: ConnKey, room: &str) -> Option<RoomName> {
        self.conns.get(key)?.session.membership(room).map(|m| m.room.clone())
    }

    /// The home confirmed a join: the connection becomes a member and gets the replay and
    /// `joined`, unless it left or closed meanwhile.
    pub(super) fn confirm_join(&mut self, room: RoomName, to: Origin, join_id: u32, reply: JoinReply) {
        let Some(session) = self.conns.session_of(to.key, to.conn) else { return };
        let Some(membership) = session.membership_mut(&room) else { return };
        if membership.state != MemberState::Pending(join_id) {
            return;
        }
        let slot = self.members.join(&room, to.key);
        membership.state = MemberState::Joined { slot };
        for frame in reply.replay {
            self.send_to(to.key, frame);
        }
        self.send_to(to.key, reply.joined);
    }

    /// Leave one room for `reason`: drop the local membership and tell the home. False if not
    /// a member.
    fn leave(&mut self, key: ConnKey, room: &str, reason: LeaveReason) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let Some(membership) = conn.session.remove_membership(room) else { return false };
        self.forget_membership(key, membership, reason);
        true
    }

    /// Leave every room for `reason` (the connection is closing or gone).
    pub(super) fn leave_all(&mut self, key: ConnKey, reason: LeaveReason) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        for membership in conn.session.take_memberships() {
            self.forget_membership(key, membership, reason);
        }
    }

    fn forget_membership(&mut self, key: ConnKey, membership: crate::session::Membership, reason: LeaveReason) {
        if let MemberState::Joined { slot } = membership.state {
            if let Some(moved) = self.members.leave(&membership.room, slot) {
                if let Some(m) = self.conns.get_mut(moved).and_then(|c| c.session.membership_mut(&membership.room)) {
                    m.state = MemberState::Joined { slot };
                }
            }
        }
        let Some(identity) = self.conns.get(key).and_then(|c| c.session.identity()) else { return };
        let (user, name) = (Arc::clone(identity.user()), Arc::clone(identity.name()));
        let home = home_of(&membership.room, self.cfg.workers);
        self.router.post(home, Mail::Leave { room: membership.room, worker: self.id, user, name, reason });
    }

    /// Take `user` out of `room` on this worker (`left` with reason `kicked`), or close all of
    /// the user's connections here with 4010. The user's private room lists exactly its
    /// connections on this worker, so no connection scan is needed. Returns how many.
    pub(super) fn kick(&mut self, user: &str, room: Option<&RoomName>, now_ms: u64) -> u64 {
        self.now_ms = now_ms;
        let keys = self.members.connections_of(user).to_vec();
        let mut affected = 0;
        for key in keys {
            match room {
                Some(room) => {
                    if self.leave(key, room, LeaveReason::Kicked) {
                        let frame = frame::text_frame_with(|out| server_msg::left(out, room, Some("kicked"), None));
                        self.send_to(key, frame);
                        affected += 1;
                    }
                }
                None => {
                    if self.conns.get(key).is_some_and(|c| c.session.is_open()) {
                        self.close(key, close_code::KICKED, false);
                        affected += 1;
                    }
                }
            }
        }
        affected
    }

    /// The home closed `room`: every local member gets `left` with reason `closed`.
    pub(super) fn room_closed(&mut self, room: &RoomName) {
        let frame = frame::text_frame_with(|out| server_msg::left(out, room, Some("closed"), None));
        for key in self.members.close_room(room) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.session.remove_membership(room);
                self.send_to(key, frame.clone());
            }
        }
    }

    /// What this worker knows of `user`'s activity, over all its connections here: the latest
    /// frame seen and the time since its latest comment or reaction. Combined across workers
    /// (max of `last_seen_ms`, min of `silent_ms`) with the home's `joined_at` it gives the
    /// presence listing of PROTOCOL.md. Heartbeats stay local: this is read on query, never
    /// pushed.
    pub fn viewer_activity(&self, user: &str, now_ms: u64) -> Option<ViewerActivity> {
        self.activity(user, None, now_ms)
    }

    /// [`Shard::viewer_activity`] over the user's connections here that are in `room`: what
    /// the presence listing of that room shows.
    pub fn viewer_activity_in(&self, room: &str, user: &str, now_ms: u64) -> Option<ViewerActivity> {
        self.activity(user, Some(room), now_ms)
    }

    fn activity(&self, user: &str, room: Option<&str>, now_ms: u64) -> Option<ViewerActivity> {
        let keys = self.members.connections_of(user);
        let sessions = keys
            .iter()
            .filter_map(|k| self.conns.get(*k))
            .map(|c| &c.session)
            .filter(|s| room.is_none_or(|r| s.is_joined(r)));
        sessions.fold(None, |acc: Option<ViewerActivity>, s| {
            let this =
                ViewerActivity { last_seen_ms: s.last_seen_ms(), silent_ms: now_ms.saturating_sub(s.last_spoke_ms()) };
            Some(match acc {
                None => this,
                Some(a) => ViewerActivity {
                    last_seen_ms: a.last_seen_ms.max(this.last_seen_ms),
                    silent_ms: a.silent_ms.min(this.silent_ms),
                },
            })
        })
    }
}
