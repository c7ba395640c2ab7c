//! Everything one worker owns, as pure state: its connections, its local room index and the
//! rooms it is home to.
//!
//! A [`Shard`] is split by job: [`conns`] (the connection table and its one deadline per
//! connection), [`life`] (a connection's life from accept to gone), [`viewer`] (checking and
//! carrying out viewer ops), [`members`] (which local connections receive a room's frames),
//! [`homes`] (hosting rooms: sequencing, the batching window of [`batcher`], presence
//! announcements, eviction) and [`mail`] (messages between workers and their routing). This
//! module is the front door that ties them together and dispatches mail.
//!
//! # Call order
//!
//! Like quinn's `Connection`, a shard is fed, then drained, once per loop turn:
//!
//! 1. inputs, in any number and order: [`Shard::accept`], [`Shard::handle_bytes`],
//!    [`Shard::handle_eof`], [`Shard::handle_io_error`], [`Shard::handle_writable`],
//!    [`Shard::handle_mail`];
//! 2. once: [`Shard::handle_timeout`] with the turn's `now` (deadlines, the presence tick,
//!    the batching window), even when nothing timed out;
//! 3. outputs, each until empty: [`Shard::take_outbox`] for every other worker and
//!    [`Shard::take_ingest_replies`] (mail), then [`Shard::take_dirty`] and for each key
//!    [`Shard::transmit`] followed by [`Shard::handle_written`] (repeat while `take_dirty`
//!    gives keys and the turn's write slice lasts: a write can close a slow consumer, whose
//!    close frame is then written too), then [`Shard::poll_shutdown`] and [`Shard::poll_gone`];
//! 4. sleep until [`Shard::next_wake_ms`] or the next input (no sleep while connections wait
//!    for a write).
//!
//! Everything a turn's inputs and deadlines produce leaves in that turn's outputs (a heartbeat
//! expiry's close frame and its `Leave` mail go out together), except that the shell writes
//! sockets in slices: [`Shard::take_dirty`] gives at most the number of keys asked for, oldest
//! first, and keeps the rest listed for the next turn. So one large fan-out (a room's batch to
//! thousands of local members) costs a turn a few milliseconds of writes, not all of them:
//! between slices the worker reads its sockets and its mailbox, sequences what arrived and
//! lists the new writes behind the ones waiting, so nothing is reordered and no connection
//! waits for more than the slices ahead of it. Mail a worker sends to itself
//! never leaves the shard: it is handled before the entry point that posted it returns, in
//! order, exactly as if it had travelled.
//!
//! # Order
//!
//! A room's frames reach a worker only through [`Mail::Deliver`] from the room's home, over
//! one FIFO mailbox. A join is confirmed by the home ([`Mail::Joined`]) on that same mailbox,
//! after the home sent everything sequenced before it; so a new member gets every frame after
//! its `joined.seq`, none before, none twice. This module never names a socket, a thread or a
//! clock.

pub mod ask;
mod batcher;
pub mod cluster;
mod conns;
pub mod durable;
mod homes;
mod life;
pub mod mail;
mod members;
mod viewer;

pub use batcher::MAX_BATCH_BYTES;
pub use conns::Conn;
pub use mail::home_of;

use crate::config::Config;
use crate::ids::{ConnKey, RoomName, WorkerId};
use crate::metrics::Counters;
use crate::room::{HomeRoom, RoomLimits};
use crate::session::outbound::Outbound;
use crate::wire::frame::{self, close_code};
use crate::wire::{server_msg, ErrorCode, Ref};
use bytes::Bytes;
use conns::ConnTable;
use homes::{CommentRequest, Homes, JoinRequest};
use mail::{IngestReply, Mail, Router};
use members::Members;

/// How far past its outbound budget a queue may grow within one loop turn. The budget is
/// judged after the connection's write attempt ([`Shard::handle_written`]): a member that
/// reads at full speed may receive a burst larger than the budget in one turn. The hard cap
/// keeps memory bounded even then.
const BUDGET_OVERSHOOT: usize = 4;

/// The settings a shard needs, copied out of [`Config`].
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Number of workers (homes are spread over all of them).
    pub workers: usize,
    /// How upgrade requests are judged: the endpoints (`ws.path`, the testing echo path), the
    /// allowed origins, the request limits.
    pub upgrade: crate::wire::upgrade::UpgradePolicy,
    /// The token verifier (`None`: no auth key, the development default: `?user=` identities).
    pub verifier: Option<std::sync::Arc<crate::auth::Verifier>>,
    /// Verified tokens remembered per worker.
    pub auth_cache_size: usize,
    /// Per-connection rate limits.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Connection caps shared by the workers (per user, and the load that widens the reconnect
    /// window); `None` in simulations.
    pub admission: Option<std::sync::Arc<dyn Admission>>,
    /// `hello.reconnect_ms`: the window a client draws its reconnect delay from, normally.
    pub reconnect_ms: (u64, u64),
    /// The demo page served at `GET /` on the viewer ports (`ws.demo_page`), if on.
    pub demo_page: Option<crate::demo::DemoPage>,
    /// Time a new connection has to complete its upgrade.
    pub handshake_timeout_ms: u64,
    /// Largest client message, for `hello` and the frame reader.
    pub max_message: usize,
    /// Longest comment in characters.
    pub max_comment_chars: usize,
    /// Outbound byte budget of a connection's own queue (`limits.outbound_budget` less the
    /// kernel's share, [`crate::config::LimitsConfig::queue_budget`]).
    pub outbound_budget: usize,
    /// Silence after which a connection is pinged, announced in `hello`.
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
            upgrade: config.upgrade_policy(),
            verifier: None,
            auth_cache_size: config.auth.cache_size,
            rate_limits: config.limits.rate_limits(),
            admission: None,
            reconnect_ms: (config.limits.reconnect_min_ms, config.limits.reconnect_max_ms),
            demo_page: config.ws.demo_page.then(|| crate::demo::DemoPage::new(&config.ws.path)),
            handshake_timeout_ms: config.limits.handshake_timeout_ms,
            max_message: config.limits.max_message,
            max_comment_chars: config.limits.max_comment_chars,
            outbound_budget: config.limits.queue_budget(),
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

/// What one worker owns. See the module doc for the call contract.
#[derive(Debug)]
pub struct Shard<Io> {
    id: WorkerId,
    cfg: ShardConfig,
    conns: ConnTable<Io>,
    members: Members,
    homes: Homes,
    router: Router,
    /// The connection side of the worker's counters (the homes keep theirs).
    counters: Counters,
    /// The connection handed to the shell by [`Shard::transmit`] and its queued bytes then,
    /// so [`Shard::handle_written`] can count what the write moved.
    transmitting: Option<(ConnKey, usize)>,
    /// The time of the entry point being served (deadlines armed inside it count from it).
    now_ms: u64,
    /// simd-json's parser buffers, reused for every client message of this worker.
    json: JsonScratch,
    /// This worker's token verification (with its cache of recently verified tokens).
    auth: crate::auth::Authenticator,
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
        Self {
            id,
            conns: ConnTable::new(id),
            members: Members::default(),
            homes: Homes::new(id, &cfg),
            router: Router::new(id, cfg.workers),
            counters: Counters::default(),
            transmitting: None,
            now_ms: 0,
            json: JsonScratch(simd_json::Buffers::new(cfg.max_message)),
            auth: crate::auth::Authenticator::new(cfg.verifier.clone(), cfg.auth_cache_size),
            cfg,
        }
    }

    // --- queries ---

    /// This shard's worker id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Connections held, in any phase.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Rooms this shard is home to.
    pub fn home_count(&self) -> usize {
        self.homes.len()
    }

    /// The connection under `key`, read-only.
    pub fn conn(&self, key: ConnKey) -> Option<&Conn<Io>> {
        self.conns.get(key)
    }

    /// A home room, for queries and tests.
    pub fn home(&self, room: &str) -> Option<&HomeRoom> {
        self.homes.get(room)
    }

    /// When [`Shard::handle_timeout`] next has work: a deadline, the presence tick, or a
    /// batch held by its window.
    pub fn next_wake_ms(&self) -> u64 {
        if self.conns.has_dirty() {
            // A write slice left connections for the next turn: no sleeping.
            return 0;
        }
        let soonest = self.homes.next_wake_ms();
        self.conns.next_deadline().map_or(soonest, |d| d.min(soonest))
    }

    /// When the presence tick is next due.
    pub fn next_tick_ms(&self) -> u64 {
        self.homes.next_tick_ms()
    }

    // --- inputs ---

    /// Mail from another worker or the ingest loop.
    pub fn handle_mail(&mut self, mail: Mail, now_ms: u64) {
        self.now_ms = now_ms;
        self.dispatch(mail, now_ms);
        self.drain_loopback(now_ms);
    }

    /// The durable sinks report every record of this worker up to `ticket` durable: what
    /// waited for it (held room streams, acks, ingest replies) goes out.
    pub fn handle_durable(&mut self, ticket: u64, now_ms: u64) {
        self.now_ms = now_ms;
        self.homes.durable(ticket, now_ms, &mut self.router);
        self.drain_loopback(now_ms);
    }

    /// Share this worker's rooms with other nodes through the cluster broker `port` (without
    /// one, a single node: the homes sequence). Call before any input.
    pub fn set_broker(&mut self, port: Box<dyn cluster::BrokerPort>) {
        self.homes.set_broker(port);
    }

    /// Hand this worker's comments, tombstones and presence records to durable sinks through
    /// `port` (without one, nothing is written and nothing waits). Call before any input.
    pub fn set_sink(&mut self, port: Box<dyn durable::SinkPort>) {
        self.homes.set_sink(port);
    }

    /// The turn's deadlines and timers, in this order: connection deadlines (handshake,
    /// heartbeat ping or expiry, close timeout), the presence tick, then the batching window.
    /// Call once per turn, after the inputs and before draining the outputs.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.expire(now_ms);
        self.tick(now_ms);
        self.end_turn(now_ms);
    }

    /// The presence tick of [`Shard::handle_timeout`] alone (simulations call the parts).
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        // What was due before this tick leaves first (a late wake), so a room's riders from
        // the last tick never share a write with this tick's.
        self.homes.end_turn(now_ms, &mut self.router);
        self.homes.tick(now_ms, &mut self.router);
        self.drain_loopback(now_ms);
    }

    /// The batching window of [`Shard::handle_timeout`] alone: send the rooms' batches, except
    /// those of busy rooms still in their window, which wait until it ends.
    pub fn end_turn(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.homes.retry_presence();
        self.homes.end_turn(now_ms, &mut self.router);
        self.drain_loopback(now_ms);
    }

    // --- outputs ---

    /// Take the mail for worker `to` (never this shard's own id: that mail is already handled).
    pub fn take_outbox(&mut self, to: WorkerId) -> Vec<Mail> {
        self.router.take_outbox(to)
    }

    /// Take the replies for the ingest loop.
    pub fn take_ingest_replies(&mut self) -> Vec<IngestReply> {
        self.router.take_replies()
    }

    /// Move the keys of connections with something to write into `out` (cleared first).
    pub fn take_dirty(&mut self, out: &mut Vec<ConnKey>, max: usize) {
        self.conns.take_dirty(out, max);
    }

    /// The connection's IO handle and the queue to write from it; the shell writes what the
    /// socket takes and then calls [`Shard::handle_written`].
    pub fn transmit(&mut self, key: ConnKey) -> Option<(&mut Io, &mut Outbound)> {
        let conn = self.conns.get_mut(key)?;
        self.transmitting = Some((key, conn.session.outbound().queued()));
        Some((&mut conn.io, conn.session.outbound_mut()))
    }

    /// The connection's IO handle (for the shell's reads and TLS flushes).
    pub fn io_mut(&mut self, key: ConnKey) -> Option<&mut Io> {
        self.conns.get_mut(key).map(|c| &mut c.io)
    }

    /// The next connection whose close frame is written: the shell shuts its write side.
    pub fn poll_shutdown(&mut self) -> Option<ConnKey> {
        self.conns.next_shutdown()
    }

    /// The next socket that is done (closed, refused, timed out or broken), with the key it
    /// had: the shell deregisters and drops it. The key may already serve a new connection.
    pub fn poll_gone(&mut self) -> Option<(ConnKey, Io)> {
        self.conns.next_gone()
    }

    // --- mail ---

    fn drain_loopback(&mut self, now_ms: u64) {
        while let Some(mail) = self.router.next_loopback() {
            self.dispatch(mail, now_ms);
        }
    }

    fn dispatch(&mut self, mail: Mail, now_ms: u64) {
        match mail {
            Mail::Join { room, from, join_id, user, name, since, reference } => {
                let join = JoinRequest { from, join_id, user, name, since, reference };
                self.homes.join(room, join, now_ms, &mut self.router);
            }
            Mail::Leave { room, worker, user, name, reason } => {
                self.homes.leave(&room, worker, (&user, &name), reason, now_ms)
            }
            Mail::Rejected { room, user, code } => self.homes.rejected(&room, &user, code),
            Mail::React { room, kind } => self.homes.react(&room, &kind),
            Mail::Kick { user, room, reply } => {
                let closed = self.kick(&user, room.as_ref(), now_ms);
                if let Some(to) = reply {
                    self.router.reply(IngestReply::Kicked { to, closed });
                }
                // Every worker got the kick; one tells the other nodes.
                if self.id == WorkerId(0) {
                    self.homes.tell_cluster(cluster::ClusterOp::Kick { user, room });
                }
            }
            Mail::CloseRoom { room, reply } => {
                self.homes.close(&room, now_ms, &mut self.router);
                if let Some(to) = reply {
                    self.router.reply(IngestReply::Done { to });
                }
                self.homes.tell_cluster(cluster::ClusterOp::CloseRoom { room });
            }
            Mail::ClusterOp { op } => match op {
                cluster::ClusterOp::Kick { user, room } => {
                    self.kick(&user, room.as_ref(), now_ms);
                }
                cluster::ClusterOp::CloseRoom { room } => {
                    self.homes.close(&room, now_ms, &mut self.router);
                }
            },
            Mail::RoomClosed { room } => self.room_closed(&room),
            Mail::Comment { room, from, user, name, text, reference } => {
                let comment =
                    CommentRequest { from, user: &user, name: &name, text: &text, reference: reference.as_ref() };
                self.homes.comment(&room, comment, now_ms, &mut self.router);
            }
            Mail::DeleteComment { room, id, reply } => {
                self.homes.delete_comment(&room, &id, reply, now_ms, &mut self.router)
            }
            Mail::Publish { room, kind, data, source, reply } => {
                self.homes.publish(&room, (&kind, &data), source, reply, now_ms, &mut self.router)
            }
            Mail::SetState { room, state, source, reply } => {
                self.homes.set_state(&room, state, source, reply, now_ms, &mut self.router)
            }
            Mail::Broadcast { room, message } => self.homes.broadcast(&room, message, now_ms, &mut self.router),
            Mail::Synced { room, snapshot } => self.homes.synced(&room, &snapshot, now_ms, &mut self.router),
            Mail::Sequenced { room, outcome, then } => {
                self.homes.sequenced(&room, outcome, then, now_ms, &mut self.router)
            }
            Mail::ClusterPresence { room, report } => self.homes.cluster_presence(&room, &report),
            Mail::PresenceResync => self.homes.presence_resync(),
            Mail::Resync { room } => self.homes.resync(&room),
            Mail::Reset { room } => self.reset_room(&room),
            Mail::Deliver { room, frames, sequenced_ms, messages } => {
                self.deliver(&room, &frames, (sequenced_ms, messages), now_ms)
            }
            Mail::Joined { room, to, join_id, reply } => self.confirm_join(room, to, join_id, reply),
            Mail::CloseConn { to, code } => {
                if self.conns.session_of(to.key, to.conn).is_some() {
                    tracing::debug!(conn = %to.conn, code, "closing the user's oldest connection: a newer one came");
                    self.close(to.key, code, false);
                }
            }
            Mail::ToConn { to, frame } => {
                if self.conns.session_of(to.key, to.conn).is_some() {
                    self.send_to(to.key, frame);
                }
            }
        }
    }

    /// The cluster lost the history of `room`: its members here are closed with 1012 (service
    /// restart) and rejoin; their `since` then recovers nothing and they reload, as PROTOCOL.md
    /// asks of a member that cannot be given a gap-free order.
    fn reset_room(&mut self, room: &RoomName) {
        let members = self.members.receivers(room).to_vec();
        tracing::info!(room = %room, members = members.len(), "the cluster lost the room's history: closing its members here with 1012");
        for key in members {
            self.close(key, close_code::SERVICE_RESTART, false);
        }
    }

    // --- frames to connections ---

    /// A room's frames for every local receiver; those over the hard cap are slow consumers.
    /// The time since the frames were sequenced goes into the publish-to-write histogram
    /// (they are written at the end of this turn; the loop clock's resolution is 1 ms).
    fn deliver(&mut self, room: &RoomName, frames: &Bytes, (sequenced_ms, messages): (Option<u64>, u32), now_ms: u64) {
        let hard_cap = self.hard_cap();
        let mut slow = Vec::new();
        let receivers = self.members.receivers(room);
        if let (Some(at), false) = (sequenced_ms, receivers.is_empty()) {
            self.counters.publish_to_write.record(now_ms.saturating_sub(at) * 1_000);
        }
        // Frames with nothing sequenced in them (presence or reactions alone) are background
        // writes: they never hold up another room's events.
        let urgent = sequenced_ms.is_some();
        for &key in receivers {
            match self.conns.send(key, frames, hard_cap, urgent) {
                Ok(()) => self.counters.deliveries += u64::from(messages),
                Err(_) => slow.push(key),
            }
        }
        for key in slow {
            self.close(key, close_code::SLOW_CONSUMER, false);
        }
    }

    /// Queue `frame` for `key`; a connection over its hard cap is closed as a slow consumer.
    fn send_to(&mut self, key: ConnKey, frame: Bytes) {
        match self.conns.send(key, &frame, self.hard_cap(), true) {
            Ok(()) => self.counters.deliveries += 1,
            Err(_) => self.close(key, close_code::SLOW_CONSUMER, false),
        }
    }

    /// The most a connection's queue may hold within one turn.
    fn hard_cap(&self) -> usize {
        self.cfg.outbound_budget * BUDGET_OVERSHOOT
    }

    /// An `error` reply (with the op's `ref`, and the room it is about, if any).
    fn reply_error(
        &mut self,
        key: ConnKey,
        (reference, room): (Option<&Ref>, Option<&str>),
        code: ErrorCode,
        message: &str,
    ) {
        let frame = frame::text_frame_with(|out| server_msg::error(out, reference, room, code, message));
        self.send_to(key, frame);
    }
}

/// Connection caps that span workers, as the core asks them (the shell implements them over
/// shared counters; asked at an upgrade and when a connection goes, never per message).
pub trait Admission: Send + Sync + std::fmt::Debug {
    /// A new connection `conn` of `user`: admitted, admitted with an older one to close, or
    /// refused (`limits.max_connections_per_user`, `limits.per_user_policy`).
    fn admit_user(&self, user: &std::sync::Arc<str>, conn: mail::Origin) -> crate::admission::UserAdmit<mail::Origin>;
    /// `conn` of `user` is gone.
    fn release_user(&self, user: &str, conn: mail::Origin);
    /// Whether the server is under load (close to its connection cap, or pacing accepts): new
    /// connections are then told a wider reconnect window.
    fn under_load(&self) -> bool;
}

/// A viewer's activity as one worker sees it. See [`Shard::viewer_activity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewerActivity {
    /// Latest frame from any of the user's connections (ms).
    pub last_seen_ms: u64,
    /// Time since the user's latest comment or reaction (or its connect).
    pub silent_ms: u64,
}

#[cfg(test)]
mod tests;
