//! Everything one worker owns, as pure state: its connections, its local room index and the
//! rooms it is home to.
//!
//! The IO shell feeds a [`Shard`] with `open`, `handle_incoming`, `handle_mail` and `end_turn`
//! and then drains it: frames wait in each connection's [`Session::outbound`] (the keys of
//! those with new frames in [`Shard::take_dirty`]), mail for other workers in
//! [`Shard::take_outbox`], ingest replies in [`Shard::take_ingest_replies`]. Mail a worker
//! sends to itself never leaves the shard: it is handled before the entry point returns, in
//! order, exactly as if it had travelled.
//!
//! Order: a room's frames reach a worker only through [`Mail::Deliver`] from the room's home,
//! over one FIFO mailbox. A join is confirmed by the home ([`Mail::Joined`]) on that same
//! mailbox, after the home flushed everything sequenced before it; so a new member gets every
//! frame after its `joined.seq`, none before, none twice. This module never names a socket,
//! a thread or a clock.

pub mod mail;

use crate::config::Config;
use crate::ids::{ConnId, ConnKey, WorkerId};
use crate::room::{HomeRoom, RoomLimits};
use crate::session::{MemberState, Session};
use crate::wheel::TimerWheel;
use crate::wire::frame::{self, close_code, Incoming};
use crate::wire::{self, server_msg, ClientOp, ErrorCode, Ref};
use bytes::Bytes;
use mail::{IngestReply, Mail, Origin};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// Prefix of every connection's private room, `user:<id>`.
pub const PRIVATE_ROOM_PREFIX: &str = "user:";

/// How far past its outbound budget a queue may grow within one loop turn. The budget is
/// judged after the connection's write attempt ([`Shard::enforce_budget`]): a member that
/// reads at full speed may receive a burst larger than the budget in one turn. The hard cap
/// keeps memory bounded even then.
const BUDGET_OVERSHOOT: usize = 4;

/// Resolution of connection deadlines (heartbeat expiry, close timeout).
const DEADLINE_TICK_MS: u64 = 100;

/// The home worker of `room`: a fixed hash, the same in every thread and every run.
pub fn home_of(room: &str, workers: usize) -> WorkerId {
    // DefaultHasher::new() is SipHash with fixed keys: stable across threads of one process.
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    WorkerId((h.finish() % workers.max(1) as u64) as u16)
}

/// The settings a shard needs, copied out of [`Config`].
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Number of workers (homes are spread over all of them).
    pub workers: usize,
    /// Largest client message, for `hello`.
    pub max_message: usize,
    /// Longest comment in characters.
    pub max_comment_chars: usize,
    /// Outbound byte budget per connection.
    pub outbound_budget: usize,
    /// Heartbeat interval announced in `hello`.
    pub heartbeat_ms: u64,
    /// Rooms a connection may join at once.
    pub max_rooms_per_conn: usize,
    /// History limits of new rooms.
    pub room_limits: RoomLimits,
    /// Seed for room epochs; differs between runs of the process.
    pub epoch_seed: u64,
    /// Presence and reactions are announced at most once per room per this interval.
    pub presence_interval_ms: u64,
    /// An empty room with no events for this long is freed.
    pub room_idle_ms: u64,
    /// Silence after which a connection is closed.
    pub heartbeat_timeout_ms: u64,
    /// A room that sent a batch less than this long ago holds the next one until then.
    pub batch_window_ms: u64,
    /// Time a closing connection has to finish the close handshake.
    pub close_timeout_ms: u64,
}

impl ShardConfig {
    /// The shard settings of `config` for a process of `workers` workers.
    pub fn new(config: &Config, workers: usize, epoch_seed: u64) -> Self {
        Self {
            workers,
            max_message: config.limits.max_message,
            max_comment_chars: config.limits.max_comment_chars,
            outbound_budget: config.limits.outbound_budget,
            heartbeat_ms: config.presence.heartbeat_ms,
            max_rooms_per_conn: config.limits.max_rooms_per_conn,
            room_limits: RoomLimits {
                history_len: config.history.size,
                history_max_age_ms: config.history.max_age_ms,
                large_room: config.presence.large_room,
            },
            epoch_seed,
            presence_interval_ms: config.presence.interval_ms,
            room_idle_ms: config.history.room_idle_ms,
            heartbeat_timeout_ms: config.presence.effective_timeout_ms(),
            batch_window_ms: config.fanout.batch_window_ms,
            close_timeout_ms: config.limits.close_timeout_ms,
        }
    }
}

/// A connection as the shard holds it: protocol state plus the shell's IO handle.
#[derive(Debug)]
pub struct Conn<Io> {
    /// Protocol state.
    pub session: Session,
    /// Whatever the shell needs to move bytes (a socket; `()` in tests).
    pub io: Io,
    dirty: bool,
}

/// Counters a shard keeps for operators.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// Connections opened.
    pub opened: u64,
    /// Connections closed as slow consumers (4009).
    pub slow_consumers: u64,
    /// Messages sequenced by rooms homed here.
    pub sequenced: u64,
    /// Frames (or batches) appended to connections' queues.
    pub deliveries: u64,
    /// Error replies sent to viewers.
    pub errors: u64,
}

/// What one worker owns. See the module doc for the call contract.
#[derive(Debug)]
pub struct Shard<Io> {
    id: WorkerId,
    cfg: ShardConfig,
    conns: Slab<Conn<Io>>,
    /// Room -> local confirmed members; a member's index is kept in its `MemberState::Joined`.
    local: HashMap<Arc<str>, Vec<ConnKey>>,
    /// User id -> its connections here: the members of its private room `user:<id>`.
    private: HashMap<Arc<str>, PrivateMembers>,
    /// Rooms homed here, in a slab so that the per-turn and per-tick lists below name them
    /// by key: a tick walks its changed rooms without hashing a name or chasing a string.
    /// A key can be reused after its room is freed; every list's work is idempotent for
    /// whatever room holds the key then (flush an empty batch, announce nothing new).
    homes: Slab<HomeRoom>,
    /// Room name -> key in `homes`.
    home_keys: HashMap<Arc<str>, usize>,
    /// Homed rooms that sequenced their first frame since their last batch went out, this turn.
    batched: Vec<usize>,
    /// Homed rooms whose batch the window holds back; looked at only once the earliest is due,
    /// so a turn does not walk every busy room.
    held: Vec<usize>,
    /// A spare list, so [`Shard::end_turn`] allocates nothing while it sorts the two above.
    spare: Vec<usize>,
    /// When the earliest batch in `held` is due (`u64::MAX`: none).
    batch_due_ms: u64,
    loopback: VecDeque<Mail>,
    outbox: Vec<Vec<Mail>>,
    ingest: Vec<IngestReply>,
    dirty: Vec<ConnKey>,
    next_conn: u64,
    next_epoch: u64,
    stats: ShardStats,
    /// Homed rooms whose presence or reactions changed since the last tick.
    announce: Vec<usize>,
    /// Homed rooms that lost their last member or never had one: eviction candidates.
    empty_rooms: Vec<usize>,
    next_tick_ms: u64,
    /// One deadline per connection: heartbeat expiry while open, the close timeout while
    /// closing. Re-armed lazily: a frame only updates `last_seen_ms`, the wheel entry is moved
    /// when it fires early.
    deadlines: TimerWheel,
    fired: Vec<usize>,
    /// Closing connections whose close handshake timed out: the shell drops their sockets.
    timed_out: Vec<ConnKey>,
    /// The time of the entry point being served.
    now_ms: u64,
    /// simd-json's parser buffers, reused for every client message of this worker.
    json: JsonScratch,
}

/// simd-json's reusable parser buffers (which do not implement `Debug`).
struct JsonScratch(simd_json::Buffers);

impl std::fmt::Debug for JsonScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonScratch")
    }
}

impl<Io> Shard<Io> {
    /// An empty shard for worker `id`.
    pub fn new(id: WorkerId, cfg: ShardConfig) -> Self {
        let workers = cfg.workers;
        let cfg_max_message = cfg.max_message;
        Self {
            id,
            cfg,
            conns: Slab::new(),
            local: HashMap::new(),
            private: HashMap::new(),
            homes: Slab::new(),
            home_keys: HashMap::new(),
            batched: Vec::new(),
            held: Vec::new(),
            spare: Vec::new(),
            batch_due_ms: u64::MAX,
            loopback: VecDeque::new(),
            outbox: (0..workers).map(|_| Vec::new()).collect(),
            ingest: Vec::new(),
            dirty: Vec::new(),
            next_conn: 1,
            next_epoch: 0,
            stats: ShardStats::default(),
            announce: Vec::new(),
            empty_rooms: Vec::new(),
            next_tick_ms: 0,
            deadlines: TimerWheel::new(DEADLINE_TICK_MS, 0),
            fired: Vec::new(),
            timed_out: Vec::new(),
            now_ms: 0,
            json: JsonScratch(simd_json::Buffers::new(cfg_max_message)),
        }
    }

    /// The earliest time [`Shard::tick`] or [`Shard::expire`] has work.
    pub fn next_wake_ms(&self) -> u64 {
        let soonest = self.next_tick_ms.min(self.batch_due_ms);
        self.deadlines.next_deadline().map_or(soonest, |d| d.min(soonest))
    }

    /// Fire due deadlines: close connections silent for longer than the heartbeat timeout
    /// (1001), and report closing connections whose close handshake timed out through
    /// [`Shard::take_timed_out`].
    pub fn expire(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let mut fired = std::mem::take(&mut self.fired);
        self.deadlines.poll(now_ms, &mut fired);
        for key in fired.drain(..) {
            let Some(conn) = self.conns.get(key) else { continue };
            if !conn.session.is_open() {
                self.timed_out.push(ConnKey(key));
                continue;
            }
            let due = conn.session.last_seen_ms + self.cfg.heartbeat_timeout_ms;
            if due <= now_ms {
                self.close(ConnKey(key), close_code::GOING_AWAY, false);
            } else {
                self.deadlines.arm(key, due);
            }
        }
        self.fired = fired;
        self.settle(now_ms);
    }

    /// Closing connections whose close handshake timed out; the shell drops them.
    pub fn take_timed_out(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.timed_out)
    }

    /// When [`Shard::tick`] next has work: the end of the current presence interval.
    pub fn next_tick_ms(&self) -> u64 {
        self.next_tick_ms
    }

    /// The end of a presence interval: announce presence and reactions of the rooms that
    /// changed (at most one message of each per room per interval) and free rooms that have
    /// been empty and quiet for `room_idle_ms`. Cost is proportional to the rooms that changed
    /// or emptied, never to all rooms or connections. Calling it early does nothing.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        if now_ms < self.next_tick_ms {
            return;
        }
        self.next_tick_ms = now_ms + self.cfg.presence_interval_ms;
        let mut announce = std::mem::take(&mut self.announce);
        for key in announce.drain(..) {
            let Some(home) = self.homes.get_mut(key) else { continue };
            let (presence, reactions) = (home.take_presence(), home.take_reactions());
            if presence.is_none() && reactions.is_none() {
                continue;
            }
            // Frames sequenced earlier in this turn go first, in the same buffer: one message
            // per worker per room per interval.
            let frames = concat_frames([home.take_batch(now_ms), presence, reactions]);
            for worker in home.subscribers() {
                let mail = Mail::Deliver { room: Arc::clone(home.name()), frames: frames.clone() };
                post_to(&mut self.outbox, &mut self.loopback, self.id, worker, mail);
            }
        }
        self.announce = announce;
        let idle_ms = self.cfg.room_idle_ms;
        let mut keep = Vec::new();
        for key in std::mem::take(&mut self.empty_rooms) {
            let Some(home) = self.homes.get(key) else { continue };
            if !home.is_empty() {
                continue;
            }
            if home.last_active_ms() + idle_ms <= now_ms && !home.has_batch() {
                self.remove_home(key);
            } else {
                keep.push(key);
            }
        }
        self.empty_rooms = keep;
        self.settle(now_ms);
    }

    /// This shard's worker id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Counters so far.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// Open connections (closing ones included).
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Rooms this shard is home to.
    pub fn home_count(&self) -> usize {
        self.homes.len()
    }

    /// The connection under `key`.
    pub fn conn(&self, key: ConnKey) -> Option<&Conn<Io>> {
        self.conns.get(key.0)
    }

    /// The connection under `key`, mutably (the shell writes from its outbound queue).
    pub fn conn_mut(&mut self, key: ConnKey) -> Option<&mut Conn<Io>> {
        self.conns.get_mut(key.0)
    }

    /// Keys of every connection, for shutdown.
    pub fn keys(&self) -> Vec<ConnKey> {
        self.conns.iter().map(|(k, _)| ConnKey(k)).collect()
    }

    /// A home room, for queries and tests.
    pub fn home(&self, room: &str) -> Option<&HomeRoom> {
        self.home_keys.get(room).and_then(|key| self.homes.get(*key))
    }

    /// Move the keys of connections with new outbound frames into `out` (cleared first).
    pub fn take_dirty(&mut self, out: &mut Vec<ConnKey>) {
        out.clear();
        std::mem::swap(out, &mut self.dirty);
        for key in out.iter() {
            if let Some(conn) = self.conns.get_mut(key.0) {
                conn.dirty = false;
            }
        }
    }

    /// Take the mail for worker `to` (never this shard's own id: that mail is already handled).
    pub fn take_outbox(&mut self, to: WorkerId) -> Vec<Mail> {
        self.outbox.get_mut(usize::from(to.0)).map(std::mem::take).unwrap_or_default()
    }

    /// Take the replies for the ingest loop.
    pub fn take_ingest_replies(&mut self) -> Vec<IngestReply> {
        std::mem::take(&mut self.ingest)
    }

    /// Accept an upgraded connection: queue `hello` and join its private room `user:<id>`.
    /// `user` is the identity from the handshake (an anonymous id is made up when `None`).
    pub fn open(&mut self, io: Io, user: Option<&str>, now_ms: u64) -> ConnKey {
        // Worker in the top bits, below 2^53 (256 workers x 2^40 connections each) so browsers
        // parse `hello.conn` exactly.
        let id = ConnId((u64::from(self.id.0) << 40) | self.next_conn);
        self.next_conn += 1;
        let user: Arc<str> = match user {
            Some(u) => Arc::from(u),
            None => Arc::from(format!("anon-{id}")),
        };
        let session = Session::new(id, Arc::clone(&user), Arc::clone(&user), now_ms);
        let key = ConnKey(self.conns.insert(Conn { session, io, dirty: false }));
        self.now_ms = now_ms;
        self.deadlines.arm(key.0, now_ms + self.cfg.heartbeat_timeout_ms);
        self.stats.opened += 1;
        let hello = frame::text_frame_with(|out| {
            server_msg::hello(out, id.0, &user, self.cfg.heartbeat_ms, self.cfg.max_message)
        });
        self.send_to(key, hello);
        // The private room `user:<id>` is joined locally, indexed by the user id (shared with
        // the session, so it costs no allocation). Private rooms keep no audience at their home
        // (that would cost a home room and a round trip per connection): a message to one is
        // sequenced at its home and sent to every worker, and each delivers it to the user's
        // local connections. No `joined` is sent; the client did not ask.
        match self.private.get_mut(&*user) {
            Some(members) => members.push(key),
            None => {
                self.private.insert(user, PrivateMembers::One(key));
            }
        }
        self.settle(now_ms);
        key
    }

    /// A complete message from the connection's frame reader.
    pub fn handle_incoming(&mut self, key: ConnKey, msg: Incoming<'_>, now_ms: u64) {
        self.now_ms = now_ms;
        let Some(conn) = self.conns.get_mut(key.0) else { return };
        conn.session.last_seen_ms = now_ms;
        if !conn.session.is_open() {
            // After a close only the peer's close reply matters; the shell handles the socket.
            return;
        }
        match msg {
            Incoming::Text(buf) => self.handle_text(key, buf),
            Incoming::Binary(_) => {
                self.reply_error(key, None, ErrorCode::BadRequest, "binary messages are not supported")
            }
            Incoming::Ping(payload) => self.send_to(key, frame::pong_frame(payload)),
            Incoming::Pong(_) => {}
            Incoming::Close(code, _) => {
                // RFC 6455 5.5.1: "the endpoint typically echos the status code it received".
                let echo = code.unwrap_or(close_code::NORMAL);
                self.close(key, echo, true);
            }
        }
        self.settle(now_ms);
    }

    /// The connection broke a framing rule (or the shell decided to close it): close it with
    /// `code` and leave its rooms.
    pub fn close(&mut self, key: ConnKey, code: u16, by_peer: bool) {
        let Some(conn) = self.conns.get_mut(key.0) else { return };
        if !conn.session.close(code, by_peer) {
            return;
        }
        if code == close_code::SLOW_CONSUMER {
            self.stats.slow_consumers += 1;
            tracing::warn!(
                conn = %conn.session.id,
                user = %conn.session.user,
                budget = self.cfg.outbound_budget,
                "slow consumer: outbound queue over budget, closing with 4009"
            );
        }
        self.deadlines.arm(key.0, self.now_ms + self.cfg.close_timeout_ms);
        self.mark_dirty(key);
        self.leave_all(key);
    }

    /// After the shell's write attempt: a connection that still has more than its outbound
    /// budget queued cannot keep up with its rooms and is closed with 4009 (its backlog
    /// dropped, the close frame queued). Returns true when it was closed now.
    pub fn enforce_budget(&mut self, key: ConnKey) -> bool {
        let over = self
            .conns
            .get(key.0)
            .is_some_and(|c| c.session.is_open() && c.session.outbound.queued() > self.cfg.outbound_budget);
        if over {
            self.close(key, close_code::SLOW_CONSUMER, false);
        }
        over
    }

    /// Close every connection with `code` (shutdown: 1001).
    pub fn close_all(&mut self, code: u16, now_ms: u64) {
        self.now_ms = now_ms;
        // Batches held by the window go out before the close frames.
        let mut listed = std::mem::take(&mut self.batched);
        listed.append(&mut self.held);
        for key in listed {
            self.send_listed(key);
        }
        self.batch_due_ms = u64::MAX;
        for key in self.keys() {
            self.close(key, code, false);
        }
        self.settle(now_ms);
    }

    /// The socket is gone: forget the connection and give back its IO handle.
    pub fn remove(&mut self, key: ConnKey, now_ms: u64) -> Option<Io> {
        if self.conns.get(key.0)?.session.is_open() {
            self.leave_all(key);
        }
        let conn = self.conns.try_remove(key.0)?;
        if let Some(members) = self.private.get_mut(&*conn.session.user) {
            if members.remove(key) {
                self.private.remove(&*conn.session.user);
            }
        }
        self.deadlines.cancel(key.0);
        self.settle(now_ms);
        Some(conn.io)
    }

    /// Mail from another worker.
    pub fn handle_mail(&mut self, mail: Mail, now_ms: u64) {
        self.now_ms = now_ms;
        self.dispatch(mail, now_ms);
        self.settle(now_ms);
    }

    /// The end of a loop turn: send the rooms' batches, except those of busy rooms still in
    /// their batching window, which wait until it ends ([`Shard::next_wake_ms`] includes it).
    pub fn end_turn(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let fresh = std::mem::replace(&mut self.batched, std::mem::take(&mut self.spare));
        self.send_or_hold(fresh, now_ms);
        if now_ms >= self.batch_due_ms {
            self.batch_due_ms = u64::MAX;
            let due = std::mem::replace(&mut self.held, std::mem::take(&mut self.spare));
            self.send_or_hold(due, now_ms);
        }
        self.settle(now_ms);
    }

    /// Send each listed room's batch, or hold it in `held` while its window lasts. `rooms` is
    /// emptied and kept as the spare list.
    fn send_or_hold(&mut self, mut rooms: Vec<usize>, now_ms: u64) {
        let window = self.cfg.batch_window_ms;
        for key in rooms.drain(..) {
            let Some(home) = self.homes.get_mut(key) else { continue };
            let at = home.batch_due_ms(window);
            if window > 0 && at > now_ms && home.has_batch() {
                self.batch_due_ms = self.batch_due_ms.min(at);
                self.held.push(key);
                continue;
            }
            self.send_listed(key);
        }
        self.spare = rooms;
    }

    /// Send a listed room's batch now and take it off the lists.
    fn send_listed(&mut self, key: usize) {
        if let Some(home) = self.homes.get_mut(key) {
            home.unlist_batch();
        }
        self.flush_batch(key);
    }

    fn settle(&mut self, now_ms: u64) {
        while let Some(mail) = self.loopback.pop_front() {
            self.dispatch(mail, now_ms);
        }
    }

    fn post(&mut self, to: WorkerId, mail: Mail) {
        post_to(&mut self.outbox, &mut self.loopback, self.id, to, mail);
    }

    fn origin(&self, key: ConnKey) -> Option<Origin> {
        let conn = self.conns.get(key.0)?;
        Some(Origin { worker: self.id, key, conn: conn.session.id })
    }

    fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key.0) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Queue `frame` for `key`; a connection over its budget is closed as a slow consumer.
    fn send_to(&mut self, key: ConnKey, frame: Bytes) {
        let budget = self.cfg.outbound_budget * BUDGET_OVERSHOOT;
        let Some(conn) = self.conns.get_mut(key.0) else { return };
        if conn.session.send(frame, budget) {
            self.stats.deliveries += 1;
            self.mark_dirty(key);
        } else {
            self.close(key, close_code::SLOW_CONSUMER, false);
        }
    }

    fn reply_error(&mut self, key: ConnKey, reference: Option<&Ref>, code: ErrorCode, message: &str) {
        self.stats.errors += 1;
        let frame = frame::text_frame_with(|out| server_msg::error(out, reference, code, message));
        self.send_to(key, frame);
    }

    fn handle_text(&mut self, key: ConnKey, buf: &mut [u8]) {
        let op = match wire::decode_client_op_with(buf, &mut self.json.0) {
            Ok(op) => op,
            Err(e) => return self.reply_error(key, e.reference.as_ref(), e.code, &e.message),
        };
        match op {
            ClientOp::Join { room, since, epoch } => {
                let since = since.map(|s| (s, epoch.as_deref().unwrap_or("").into()));
                self.client_join(key, &room, since)
            }
            ClientOp::Leave { room } => self.client_leave(key, &room),
            ClientOp::Comment { room, text, reference } => {
                self.note_spoke(key);
                self.client_comment(key, &room, &text, reference)
            }
            ClientOp::React { room, kind } => {
                self.note_spoke(key);
                if !self.is_joined(key, &room) {
                    return self.reply_error(key, None, ErrorCode::NotJoined, "react needs a joined room");
                }
                if kind.is_empty() || kind.len() > 32 {
                    return self.reply_error(key, None, ErrorCode::BadRequest, "reaction kind must be 1..=32 bytes");
                }
                let home = home_of(&room, self.cfg.workers);
                self.post(home, Mail::React { room: Arc::from(&*room), kind: (*kind).into() });
            }
            ClientOp::Ping => self.send_to(key, frame::text_frame_with(server_msg::pong)),
            ClientOp::Refresh { reference, .. } => {
                // Without an auth key sessions never expire; a refresh has nothing to extend.
                let frame = frame::text_frame_with(|out| server_msg::ack(out, reference.as_ref(), None));
                self.send_to(key, frame)
            }
        }
    }

    fn note_spoke(&mut self, key: ConnKey) {
        let now = self.now_ms;
        if let Some(conn) = self.conns.get_mut(key.0) {
            conn.session.last_spoke_ms = now;
        }
    }

    /// What this worker knows of `user`'s activity, over all its connections here: the latest
    /// frame seen and the time since its latest comment or reaction. Combined across workers
    /// (max of `last_seen_ms`, min of `silent_ms`) with the home's `joined_at` it gives the
    /// presence listing of PROTOCOL.md. Heartbeats stay local: this is read on query, never
    /// pushed.
    pub fn viewer_activity(&self, user: &str, now_ms: u64) -> Option<ViewerActivity> {
        let keys = self.private.get(user)?.keys();
        let sessions = keys.iter().filter_map(|k| self.conns.get(k.0)).map(|c| &c.session);
        sessions.fold(None, |acc: Option<ViewerActivity>, s| {
            let this =
                ViewerActivity { last_seen_ms: s.last_seen_ms, silent_ms: now_ms.saturating_sub(s.last_spoke_ms) };
            Some(match acc {
                None => this,
                Some(a) => ViewerActivity {
                    last_seen_ms: a.last_seen_ms.max(this.last_seen_ms),
                    silent_ms: a.silent_ms.min(this.silent_ms),
                },
            })
        })
    }

    fn is_joined(&self, key: ConnKey, room: &str) -> bool {
        self.conns
            .get(key.0)
            .and_then(|c| c.session.membership(room))
            .is_some_and(|m| matches!(m.state, MemberState::Joined { .. }))
    }

    fn client_join(&mut self, key: ConnKey, room: &str, since: Option<(u64, Box<str>)>) {
        let Some(conn) = self.conns.get(key.0) else { return };
        let session = &conn.session;
        if let Some(owner) = room.strip_prefix(PRIVATE_ROOM_PREFIX) {
            if owner != &*session.user {
                return self.reply_error(key, None, ErrorCode::Forbidden, "private rooms belong to their user");
            }
            return self.reply_error(key, None, ErrorCode::BadRequest, "already joined: the private room is automatic");
        }
        if session.membership(room).is_some() {
            return self.reply_error(key, None, ErrorCode::BadRequest, "already joined");
        }
        if session.room_count() >= self.cfg.max_rooms_per_conn {
            return self.reply_error(key, None, ErrorCode::Forbidden, "too many rooms on one connection");
        }
        self.request_join(key, Arc::from(room), since);
    }

    fn request_join(&mut self, key: ConnKey, room: Arc<str>, since: Option<(u64, Box<str>)>) {
        let Some(from) = self.origin(key) else { return };
        let Some(conn) = self.conns.get_mut(key.0) else { return };
        let join_id = conn.session.begin_join(Arc::clone(&room));
        let (user, name) = (Arc::clone(&conn.session.user), Arc::clone(&conn.session.name));
        let home = home_of(&room, self.cfg.workers);
        self.post(home, Mail::Join { room, from, join_id, user, name, since });
    }

    fn client_leave(&mut self, key: ConnKey, room: &str) {
        if room.starts_with(PRIVATE_ROOM_PREFIX) || !self.leave(key, room) {
            return self.reply_error(key, None, ErrorCode::NotJoined, "not a member of this room");
        }
        let frame = frame::text_frame_with(|out| server_msg::left(out, room, None));
        self.send_to(key, frame);
    }

    fn client_comment(&mut self, key: ConnKey, room: &str, text: &str, reference: Option<Ref>) {
        if !self.is_joined(key, room) {
            return self.reply_error(key, reference.as_ref(), ErrorCode::NotJoined, "comment needs a joined room");
        }
        let chars = text.chars().count();
        if chars == 0 {
            return self.reply_error(key, reference.as_ref(), ErrorCode::BadRequest, "empty comment");
        }
        if chars > self.cfg.max_comment_chars {
            let message = format!("comment longer than {} characters", self.cfg.max_comment_chars);
            return self.reply_error(key, reference.as_ref(), ErrorCode::TooLarge, &message);
        }
        let (Some(from), Some(conn)) = (self.origin(key), self.conns.get(key.0)) else { return };
        let mail = Mail::Comment {
            room: Arc::from(room),
            from,
            user: Arc::clone(&conn.session.user),
            name: Arc::clone(&conn.session.name),
            text: text.into(),
            reference,
        };
        self.post(home_of(room, self.cfg.workers), mail);
    }

    /// Leave one room: drop the local membership and tell the home. False if not a member.
    fn leave(&mut self, key: ConnKey, room: &str) -> bool {
        let Some(conn) = self.conns.get_mut(key.0) else { return false };
        let Some(membership) = conn.session.remove_membership(room) else { return false };
        let user = Arc::clone(&conn.session.user);
        let name = Arc::clone(&conn.session.name);
        if let MemberState::Joined { slot } = membership.state {
            self.remove_local_member(&membership.room, slot as usize);
        }
        let home = home_of(room, self.cfg.workers);
        self.post(home, Mail::Leave { room: membership.room, worker: self.id, user, name });
        true
    }

    fn leave_all(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key.0) else { return };
        let rooms: Vec<Arc<str>> = conn.session.rooms.iter().map(|m| Arc::clone(&m.room)).collect();
        for room in rooms {
            self.leave(key, &room);
        }
    }

    fn remove_local_member(&mut self, room: &str, slot: usize) {
        let Some(members) = self.local.get_mut(room) else { return };
        if slot >= members.len() {
            return;
        }
        members.swap_remove(slot);
        if let Some(&moved) = members.get(slot) {
            if let Some(m) = self.conns.get_mut(moved.0).and_then(|c| c.session.membership_mut(room)) {
                m.state = MemberState::Joined { slot: slot as u32 };
            }
        } else if members.is_empty() {
            self.local.remove(room);
        }
    }

    fn queue_announce(&mut self, key: usize) {
        if self.homes.get_mut(key).is_some_and(HomeRoom::queue_announce) {
            self.announce.push(key);
        }
    }

    /// Take `user` out of `room` on this worker (`left` with reason `kicked`), or close all of
    /// the user's connections here with 4010. The user's private room lists exactly its
    /// connections on this worker, so no connection scan is needed. Returns how many.
    fn kick(&mut self, user: &str, room: Option<&str>) -> u64 {
        let keys = self.private.get(user).map(|m| m.keys().to_vec()).unwrap_or_default();
        let mut affected = 0;
        for key in keys {
            match room {
                Some(room) => {
                    if self.leave(key, room) {
                        let frame = frame::text_frame_with(|out| server_msg::left(out, room, Some("kicked")));
                        self.send_to(key, frame);
                        affected += 1;
                    }
                }
                None => {
                    if self.conns.get(key.0).is_some_and(|c| c.session.is_open()) {
                        self.close(key, close_code::KICKED, false);
                        affected += 1;
                    }
                }
            }
        }
        affected
    }

    /// The home closed `room`: every local member gets `left` with reason `closed`.
    fn room_closed(&mut self, room: &str) {
        let Some(members) = self.local.remove(room) else { return };
        let frame = frame::text_frame_with(|out| server_msg::left(out, room, Some("closed")));
        for key in members {
            if let Some(conn) = self.conns.get_mut(key.0) {
                conn.session.remove_membership(room);
                self.send_to(key, frame.clone());
            }
        }
    }

    /// The key of a room homed here, created when it is new.
    fn home_key(&mut self, room: &Arc<str>, now_ms: u64) -> usize {
        let Self { homes, home_keys, cfg, next_epoch, id, empty_rooms, .. } = self;
        *home_keys.entry(Arc::clone(room)).or_insert_with(|| {
            *next_epoch += 1;
            let epoch = cfg.epoch_seed ^ ((*next_epoch << 8) | u64::from(id.0));
            let key = homes.insert(HomeRoom::new(Arc::clone(room), epoch, cfg.workers, cfg.room_limits, now_ms));
            // A room starts without members: if none come it is an eviction candidate.
            empty_rooms.push(key);
            key
        })
    }

    /// Free a homed room.
    fn remove_home(&mut self, key: usize) -> Option<HomeRoom> {
        let home = self.homes.try_remove(key)?;
        self.home_keys.remove(home.name());
        Some(home)
    }

    /// Send the room's pending batch to every worker with members.
    fn flush_batch(&mut self, key: usize) {
        let Some(home) = self.homes.get_mut(key) else { return };
        let Some(frames) = home.take_batch(self.now_ms) else { return };
        let name = Arc::clone(home.name());
        let targets: Vec<WorkerId> = home.subscribers().collect();
        for worker in targets {
            self.post(worker, Mail::Deliver { room: Arc::clone(&name), frames: frames.clone() });
        }
    }

    /// Sequence one message in a homed room (one lookup): the room joins this turn's list of
    /// rooms to flush with its first frame, and is flushed at once when its batch is full.
    fn sequence<T>(&mut self, room: &Arc<str>, now_ms: u64, apply: impl FnOnce(&mut HomeRoom) -> T) -> T {
        let key = self.home_key(room, now_ms);
        let home = &mut self.homes[key];
        let out = apply(home);
        let full = home.batch_full();
        self.stats.sequenced += 1;
        if home.list_batch() {
            self.batched.push(key);
        }
        if full {
            self.flush_batch(key);
        }
        out
    }

    fn dispatch(&mut self, mail: Mail, now_ms: u64) {
        match mail {
            Mail::Join { room, from, join_id, user, name, since } => {
                let key = self.home_key(&room, now_ms);
                self.flush_batch(key);
                let since = since.as_ref().map(|(s, e)| (*s, &**e));
                let reply = self.homes[key].join(from.worker, (&user, &name), since, now_ms);
                self.queue_announce(key);
                self.post(from.worker, Mail::Joined { room, to: from, join_id, reply });
            }
            Mail::Leave { room, worker, user, name } => {
                if let Some(&key) = self.home_keys.get(&room) {
                    let home = &mut self.homes[key];
                    home.leave(worker, (&user, &name), now_ms);
                    if home.is_empty() {
                        self.empty_rooms.push(key);
                    }
                    self.queue_announce(key);
                }
            }
            Mail::React { room, kind } => {
                if let Some(&key) = self.home_keys.get(&room) {
                    self.homes[key].react(&kind);
                    self.queue_announce(key);
                }
            }
            Mail::Kick { user, room, reply } => {
                let closed = self.kick(&user, room.as_deref());
                if let Some(to) = reply {
                    self.ingest.push(IngestReply::Kicked { to, closed });
                }
            }
            Mail::CloseRoom { room, reply } => {
                let home = self.home_keys.get(&room).copied().and_then(|key| {
                    self.flush_batch(key);
                    self.remove_home(key)
                });
                if let Some(home) = home {
                    for worker in home.subscribers() {
                        self.post(worker, Mail::RoomClosed { room: Arc::clone(&room) });
                    }
                }
                if let Some(to) = reply {
                    self.ingest.push(IngestReply::Done { to });
                }
            }
            Mail::RoomClosed { room } => self.room_closed(&room),
            Mail::Comment { room, from, user, name, text, reference } => {
                let key = self.home_key(&room, now_ms);
                let seq = self.homes[key].comment(&user, &name, &text, now_ms);
                self.stats.sequenced += 1;
                self.flush_batch(key);
                let frame = frame::text_frame_with(|out| server_msg::ack(out, reference.as_ref(), Some(seq.0)));
                self.post(from.worker, Mail::ToConn { to: from, frame });
            }
            Mail::Publish { room, kind, data, reply } => {
                let seq = self.sequence(&room, now_ms, |home| home.publish(&kind, &data, now_ms));
                if let Some(to) = reply {
                    self.ingest.push(IngestReply::Published { to, seq });
                }
            }
            Mail::SetState { room, state, reply } => {
                let (seq, version) = self.sequence(&room, now_ms, |home| home.set_state(state, now_ms));
                if let Some(to) = reply {
                    self.ingest.push(IngestReply::State { to, seq, version });
                }
            }
            Mail::Deliver { room, frames } => self.deliver(&room, &frames),
            Mail::Joined { room, to, join_id, reply } => self.confirm_join(room, to, join_id, reply),
            Mail::ToConn { to, frame } => {
                if self.conns.get(to.key.0).is_some_and(|c| c.session.id == to.conn) {
                    self.send_to(to.key, frame);
                }
            }
        }
    }

    fn deliver(&mut self, room: &str, frames: &Bytes) {
        let hard_cap = self.cfg.outbound_budget * BUDGET_OVERSHOOT;
        let members = match room.strip_prefix(PRIVATE_ROOM_PREFIX) {
            Some(user) => self.private.get(user).map(PrivateMembers::keys),
            None => self.local.get(room).map(Vec::as_slice),
        };
        let Some(members) = members else { return };
        let mut slow = Vec::new();
        for &key in members {
            let Some(conn) = self.conns.get_mut(key.0) else { continue };
            if conn.session.send(frames.clone(), hard_cap) {
                self.stats.deliveries += 1;
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(key);
                }
            } else {
                slow.push(key);
            }
        }
        for key in slow {
            self.close(key, close_code::SLOW_CONSUMER, false);
        }
    }

    fn confirm_join(&mut self, room: Arc<str>, to: Origin, join_id: u32, reply: crate::room::JoinReply) {
        let Some(conn) = self.conns.get_mut(to.key.0) else { return };
        if conn.session.id != to.conn {
            return;
        }
        let Some(membership) = conn.session.membership_mut(&room) else { return };
        if membership.state != MemberState::Pending(join_id) {
            return;
        }
        let members = self.local.entry(Arc::clone(&room)).or_default();
        membership.state = MemberState::Joined { slot: members.len() as u32 };
        members.push(to.key);
        for frame in reply.replay {
            self.send_to(to.key, frame);
        }
        self.send_to(to.key, reply.joined);
    }
}

/// Send `mail` to worker `to`: into its outbox, or, for this worker itself, into the loopback
/// queue handled before the entry point returns.
fn post_to(outbox: &mut [Vec<Mail>], loopback: &mut VecDeque<Mail>, me: WorkerId, to: WorkerId, mail: Mail) {
    if to == me {
        loopback.push_back(mail);
    } else if let Some(out) = outbox.get_mut(usize::from(to.0)) {
        out.push(mail);
    }
}

/// The present frames as one buffer (no copy when there is only one).
fn concat_frames<const N: usize>(frames: [Option<Bytes>; N]) -> Bytes {
    let mut present = frames.into_iter().flatten();
    let Some(first) = present.next() else { return Bytes::new() };
    let Some(second) = present.next() else { return first };
    let mut buf = bytes::BytesMut::with_capacity(first.len() + second.len() + 256);
    buf.extend_from_slice(&first);
    buf.extend_from_slice(&second);
    for more in present {
        buf.extend_from_slice(&more);
    }
    buf.freeze()
}

/// A viewer's activity as one worker sees it. See [`Shard::viewer_activity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerActivity {
    /// Latest frame from any of the user's connections (ms).
    pub last_seen_ms: u64,
    /// Time since the user's latest comment or reaction (or its connect).
    pub silent_ms: u64,
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
mod tests;
