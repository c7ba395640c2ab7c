//! The cluster broker: how several roomcast nodes share their rooms through Redis.
//!
//! # The seam
//!
//! [`Broker`] is what a node runs: [`Broker::InProcess`], the embedded default, is a single
//! node: each room's home worker numbers the room's messages itself (`crate::room`), nothing
//! leaves the process, and nothing on the per-message path changes. [`Broker::Redis`] (with
//! `cluster.redis_url`) hands the numbering to Redis: every worker gets a [`RedisPort`] (the
//! core's [`BrokerPort`]) and the homes send each message to be sequenced instead of numbering
//! it, then fan out what the cluster broadcasts back (`crate::shard::cluster`). The port is a
//! pair of lock-free channels and one relaxed atomic load: the workers take no shared lock.
//!
//! # The sequencer: one Redis script per message
//!
//! The well-trodden design (Centrifugo's Redis engine): one atomic script per message
//! ([`scripts::sequence`]) increments the room's seq, appends the filled-in message to the
//! room's history stream (bounded by `history.size`) and publishes it on the room's channel.
//! Every node subscribes to the channels of the rooms it has members in and its home worker
//! fans the messages out locally. Redis runs one script at a time and delivers a channel's
//! messages to each subscriber in publish order, so every node sees one order per room.
//!
//! The alternative, a home node per room with a lease in Redis and fencing tokens, was weighed
//! against the failure cases of issue 12 and rejected:
//!
//! - *A node killed with `-9`*: with the script, no node owns a room; the others keep
//!   publishing and receiving without noticing, and nothing the dead node acked is lost (it
//!   is in Redis). With home nodes, the dead node's rooms stop until its lease expires and
//!   another node takes them over, and messages it accepted but had not forwarded are lost.
//! - *Redis unreachable*: both designs need Redis (the lease lives there), so neither can
//!   sequence safely; here publishes answer `unavailable` at once and viewers stay connected.
//! - *Redis restarted*: with persistence the seq and history continue (same epoch), and each
//!   node fills what its members missed from the stream; without, the script starts the room
//!   over with a new epoch, which is the truth (the history is gone), and nodes close their
//!   members with 1012 so they reload. A home node would have to detect the same thing.
//! - *A partitioned node*: it cannot reach Redis, so it cannot publish (no split brain, no
//!   fencing needed), and it is removed from presence by the others when its heartbeat expires.
//!
//! The cost is one Redis round trip per publish (pipelined per burst by [`commands`]) and
//! Redis's CPU per message: a few script commands. One Redis (with replicas and Sentinel
//! for failover) sequences hundreds of thousands of messages per second, more than the fan-out
//! of a node can deliver; scaling past one Redis means sharding rooms over several, which the
//! key layout (a hash tag per room) allows, but this module speaks to one.
//!
//! # Threads
//!
//! [`commands`] runs every script call and the node heartbeat on its own thread;
//! [`subscriber`] holds the node's one pub/sub connection on another. Both use the `redis`
//! crate's synchronous API with socket timeouts, like the Redis sink.

pub mod commands;
mod config;
pub mod envelope;
pub mod query;
pub mod scripts;
pub mod status;
pub mod subscriber;

pub use config::ClusterConfig;
pub use status::{BrokerStatus, ClusterReport};

use crate::ids::RoomName;
use crate::runtime::mesh::Mesh;
use crate::shard::cluster::{BrokerPort, ClusterOp, PresenceChange, SequenceRequest, Then};
use commands::Command;
use crossbeam_channel::Sender;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use subscriber::Control;

/// Sequence requests waiting for Redis per node before new ones are refused (`unavailable`):
/// a slow Redis is backpressure, not a queue that grows.
const MAX_WAITING: usize = 65_536;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A `cluster.redis_url` (or shard) is not a Redis URL.
    #[error("cluster.redis_url is not usable")]
    Url(#[source] redis::RedisError),
    /// A broker thread could not be started.
    #[error("starting the cluster broker's threads")]
    Spawn(#[source] std::io::Error),
}

/// What sequences this node's rooms. See the module doc.
#[derive(Debug)]
pub enum Broker {
    /// A single node: the homes sequence.
    InProcess,
    /// A cluster node sequencing through Redis.
    Redis(RedisBroker),
}

/// The running Redis broker: one command thread and one subscriber per Redis server.
#[derive(Debug)]
pub struct RedisBroker {
    shards: Vec<ShardLink>,
    status: Arc<ClusterStatus>,
}

/// The channels to one Redis server's threads.
#[derive(Debug, Clone)]
struct ShardLink {
    commands: Sender<Command>,
    subscriber: Sender<Control>,
    status: Arc<BrokerStatus>,
}

/// Every shard's status, as the admin port reads it, and what the query API needs to read a
/// room this node does not follow.
#[derive(Debug)]
pub struct ClusterStatus {
    shards: Vec<Arc<BrokerStatus>>,
    clients: Vec<redis::Client>,
    timeout: Duration,
    limits: crate::room::RoomLimits,
}

impl ClusterStatus {
    /// Room `room` as the cluster holds it (see [`query`]); `Ok(None)`: no such room.
    pub fn room_detail(
        &self,
        room: &str,
        since: &crate::query::Since,
    ) -> Result<Option<crate::query::RoomDetail>, String> {
        let client = &self.clients[shard_of(room, self.clients.len())];
        query::room_detail(client, self.timeout, (room, since), self.limits, crate::runtime::clock_ms())
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        self.shards.first().map_or("", |s| s.node())
    }

    /// The report of `/api/cluster`: Redis is up when every server answers; the nodes are
    /// those of the first server (every node heartbeats to all); counters are summed.
    pub fn report(&self) -> ClusterReport {
        let mut reports = self.shards.iter().map(|s| s.report());
        let Some(mut report) = reports.next() else {
            return BrokerStatus::new(String::new()).report();
        };
        for other in reports {
            if other.redis != "up" {
                report.redis = other.redis;
            }
            report.lag_ms = report.lag_ms.max(other.lag_ms);
            report.subscribed_rooms += other.subscribed_rooms;
            report.publishes_ok += other.publishes_ok;
            report.publishes_unavailable += other.publishes_unavailable;
            report.messages += other.messages;
            report.reconnects += other.reconnects;
            report.commands += other.commands;
        }
        report.shards = self.shards.len();
        report
    }
}

/// The Redis server of `room` among `shards`: FNV-1a of the name, the same on every node and
/// every build (the standard library's hasher promises neither).
pub fn shard_of(room: &str, shards: usize) -> usize {
    let hash = room.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash % shards.max(1) as u64) as usize
}

impl Broker {
    /// Start the broker `config` asks for: threads and connections for a cluster, nothing for
    /// a single node. Redis need not be up yet: the threads connect (and reconnect) by
    /// themselves.
    pub fn start(config: &crate::config::Config, workers: usize, mesh: &Arc<Mesh>) -> Result<Self, BrokerError> {
        let cluster = &config.cluster;
        let urls = cluster.redis_urls();
        if urls.is_empty() {
            return Ok(Self::InProcess);
        }
        let node = cluster.node_id();
        let timeout = Duration::from_millis(cluster.timeout_ms);
        let mut shards = Vec::with_capacity(urls.len());
        let mut clients = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let client = redis::Client::open(*url).map_err(BrokerError::Url)?;
            clients.push(client.clone());
            let status = Arc::new(BrokerStatus::new(node.clone()));
            let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
            let (control_tx, control_rx) = crossbeam_channel::unbounded();
            let settings = commands::Settings {
                node: node.clone(),
                workers,
                history_size: config.history.size,
                large_room: config.presence.large_room,
                node_ttl_ms: cluster.node_ttl_ms,
                room_ttl_ms: cluster.room_ttl_ms,
                timeout,
            };
            let thread =
                commands::Commands::new(client.clone(), commands_rx, Arc::clone(mesh), Arc::clone(&status), settings);
            let name =
                |what: &str| if urls.len() == 1 { format!("roomcast-{what}") } else { format!("roomcast-{what}{i}") };
            std::thread::Builder::new().name(name("broker")).spawn(move || thread.run()).map_err(BrokerError::Spawn)?;
            let sub = subscriber::Subscriber::new(
                client,
                control_rx,
                (commands_tx.clone(), Arc::clone(mesh), Arc::clone(&status)),
                workers,
                timeout,
            );
            std::thread::Builder::new()
                .name(name("broker-sub"))
                .spawn(move || sub.run())
                .map_err(BrokerError::Spawn)?;
            tracing::info!(node = %node, redis = %redacted(url), shard = i, "cluster: this node shares its rooms through Redis");
            shards.push(ShardLink { commands: commands_tx, subscriber: control_tx, status });
        }
        let limits = crate::room::RoomLimits {
            history_len: config.history.size,
            history_max_age_ms: config.history.max_age_ms,
            large_room: config.presence.large_room,
        };
        let shard_status = shards.iter().map(|s| Arc::clone(&s.status)).collect();
        let status = Arc::new(ClusterStatus { shards: shard_status, clients, timeout, limits });
        Ok(Self::Redis(RedisBroker { shards, status }))
    }

    /// The port a worker's homes use (`None`: a single node).
    pub fn port(&self) -> Option<Box<dyn BrokerPort>> {
        match self {
            Self::InProcess => None,
            Self::Redis(b) => Some(Box::new(RedisPort { shards: b.shards.clone() })),
        }
    }

    /// The node stops: its viewers leave the cluster's presence now, not when its heartbeat
    /// expires. Waits at most `timeout` per Redis server.
    pub fn leave(&self, timeout: Duration) {
        let Self::Redis(b) = self else { return };
        let waits: Vec<_> = b
            .shards
            .iter()
            .map(|shard| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let _ = shard.commands.send(Command::Leave(tx));
                rx
            })
            .collect();
        for rx in waits {
            let _ = rx.recv_timeout(timeout);
        }
    }

    /// The status the admin port shows (`None`: a single node).
    pub fn status(&self) -> Option<Arc<ClusterStatus>> {
        match self {
            Self::InProcess => None,
            Self::Redis(b) => Some(Arc::clone(&b.status)),
        }
    }
}

/// `url` without its password, for logs and `check-config`.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}<redacted>{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// A worker's end of the broker. See the module doc.
#[derive(Debug)]
pub struct RedisPort {
    shards: Vec<ShardLink>,
}

impl RedisPort {
    fn shard(&self, room: &str) -> &ShardLink {
        &self.shards[shard_of(room, self.shards.len())]
    }
}

impl BrokerPort for RedisPort {
    fn sequence(&mut self, request: SequenceRequest) -> Result<(), Then> {
        let shard = self.shard(&request.room);
        let status = &shard.status;
        if status.is_down() || status.waiting.load(Relaxed) >= MAX_WAITING {
            status.published(false);
            return Err(request.then);
        }
        status.waiting.fetch_add(1, Relaxed);
        shard.commands.send(Command::Sequence(request)).map_err(|e| {
            status.waiting.fetch_sub(1, Relaxed);
            match e.into_inner() {
                Command::Sequence(request) => request.then,
                _ => Then::Nothing,
            }
        })
    }

    fn follow(&mut self, room: &RoomName) {
        let _ = self.shard(room).subscriber.send(Control::Follow(room.clone()));
    }

    fn unfollow(&mut self, room: &RoomName) {
        let _ = self.shard(room).subscriber.send(Control::Unfollow(room.clone()));
    }

    fn presence(&mut self, room: &RoomName, changes: Vec<PresenceChange>, reactions: Vec<(Box<str>, u64)>) {
        let _ = self.shard(room).commands.send(Command::Presence { room: room.clone(), changes, reactions });
    }

    fn private(&mut self, user: &Arc<str>, open: bool) {
        let room = RoomName::private(user);
        let _ = self.shard(&room).subscriber.send(Control::Private(Arc::clone(user), open));
    }

    fn control(&mut self, op: ClusterOp) {
        // A kick on the first server (every node follows its control channel), a room's close
        // on the room's own (it drops the room's record there).
        let shard = match &op {
            ClusterOp::Kick { .. } => &self.shards[0],
            ClusterOp::CloseRoom { room } => self.shard(room),
        };
        let _ = shard.commands.send(Command::Control(op));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_the_logs() {
        assert_eq!(super::redacted("redis://:s3cret@db:6379/0"), "redis://<redacted>@db:6379/0");
        assert_eq!(super::redacted("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }

    #[test]
    fn rooms_spread_over_the_shards_the_same_way_everywhere() {
        // Fixed values: every node and every build must agree.
        assert_eq!(super::shard_of("live", 1), 0);
        let spread: Vec<usize> = (0..1000).map(|i| super::shard_of(&format!("room-{i}"), 3)).collect();
        for shard in 0..3 {
            let n = spread.iter().filter(|s| **s == shard).count();
            assert!((250..420).contains(&n), "shard {shard} has {n} of 1000 rooms");
        }
        assert_eq!(super::shard_of("room-1", 3), super::shard_of("room-1", 3));
    }
}
