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
//! ([`scripts::SEQUENCE`]) increments the room's seq, appends the filled-in message to the
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
pub mod scripts;
pub mod status;
pub mod subscriber;

pub use config::ClusterConfig;
pub use status::{BrokerStatus, ClusterReport};

use crate::ids::RoomName;
use crate::runtime::mesh::Mesh;
use crate::shard::cluster::{BrokerPort, PresenceChange, SequenceRequest, Then};
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
    /// `cluster.redis_url` is not a Redis URL.
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

/// The running Redis broker: its channels and status.
#[derive(Debug)]
pub struct RedisBroker {
    commands: Sender<Command>,
    subscriber: Sender<Control>,
    status: Arc<BrokerStatus>,
}

impl Broker {
    /// Start the broker `config` asks for: threads and connections for a cluster, nothing for
    /// a single node. Redis need not be up yet: the threads connect (and reconnect) by
    /// themselves.
    pub fn start(config: &crate::config::Config, workers: usize, mesh: &Arc<Mesh>) -> Result<Self, BrokerError> {
        let cluster = &config.cluster;
        let Some(url) = &cluster.redis_url else { return Ok(Self::InProcess) };
        let client = redis::Client::open(url.as_str()).map_err(BrokerError::Url)?;
        let node = cluster.node_id();
        let status = Arc::new(BrokerStatus::new(node.clone()));
        let timeout = Duration::from_millis(cluster.timeout_ms);
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
        std::thread::Builder::new()
            .name("roomcast-broker".into())
            .spawn(move || thread.run())
            .map_err(BrokerError::Spawn)?;
        let sub = subscriber::Subscriber::new(
            client,
            control_rx,
            (commands_tx.clone(), Arc::clone(mesh), Arc::clone(&status)),
            workers,
            timeout,
        );
        std::thread::Builder::new()
            .name("roomcast-broker-sub".into())
            .spawn(move || sub.run())
            .map_err(BrokerError::Spawn)?;
        tracing::info!(node = %node, redis = %redacted(url), "cluster: this node shares its rooms through Redis");
        Ok(Self::Redis(RedisBroker { commands: commands_tx, subscriber: control_tx, status }))
    }

    /// The port a worker's homes use (`None`: a single node).
    pub fn port(&self) -> Option<Box<dyn BrokerPort>> {
        match self {
            Self::InProcess => None,
            Self::Redis(b) => Some(Box::new(RedisPort {
                commands: b.commands.clone(),
                subscriber: b.subscriber.clone(),
                status: Arc::clone(&b.status),
            })),
        }
    }

    /// The status the admin port shows (`None`: a single node).
    pub fn status(&self) -> Option<Arc<BrokerStatus>> {
        match self {
            Self::InProcess => None,
            Self::Redis(b) => Some(Arc::clone(&b.status)),
        }
    }
}

/// `url` without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}<redacted>{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// A worker's end of the broker. See the module doc.
#[derive(Debug)]
pub struct RedisPort {
    commands: Sender<Command>,
    subscriber: Sender<Control>,
    status: Arc<BrokerStatus>,
}

impl BrokerPort for RedisPort {
    fn sequence(&mut self, request: SequenceRequest) -> Result<(), Then> {
        if !self.status.is_up() || self.status.waiting.load(Relaxed) >= MAX_WAITING {
            self.status.published(false);
            return Err(request.then);
        }
        self.status.waiting.fetch_add(1, Relaxed);
        self.commands.send(Command::Sequence(request)).map_err(|e| {
            self.status.waiting.fetch_sub(1, Relaxed);
            match e.into_inner() {
                Command::Sequence(request) => request.then,
                _ => Then::Nothing,
            }
        })
    }

    fn follow(&mut self, room: &RoomName) {
        let _ = self.subscriber.send(Control::Follow(room.clone()));
    }

    fn unfollow(&mut self, room: &RoomName) {
        let _ = self.subscriber.send(Control::Unfollow(room.clone()));
    }

    fn presence(&mut self, room: &RoomName, changes: Vec<PresenceChange>, reactions: Vec<(Box<str>, u64)>) {
        let _ = self.commands.send(Command::Presence { room: room.clone(), changes, reactions });
    }

    fn private(&mut self, user: &Arc<str>, open: bool) {
        let _ = self.subscriber.send(Control::Private(Arc::clone(user), open));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_the_logs() {
        assert_eq!(super::redacted("redis://:s3cret@db:6379/0"), "redis://<redacted>@db:6379/0");
        assert_eq!(super::redacted("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }
}
