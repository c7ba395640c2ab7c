//! `[cluster]`: whether this node shares its rooms with other nodes through Redis, and how.
//!
//! Without `redis_url` (the default) the node is a single node: its workers sequence their
//! rooms themselves and no external service is needed.

use serde::{Deserialize, Serialize};

/// `[cluster]`. See the module doc.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The Redis that sequences and carries the rooms of every node (`redis://host:port/db`);
    /// unset: a single node.
    pub redis_url: Option<String>,
    /// This node's id in the cluster (presence, `/api/cluster`, logs); unset: `n-` and 8
    /// random hex digits, new at every start (a restarted node is a new node: what the old
    /// one held is removed by the others when its heartbeat expires).
    pub node_id: Option<String>,
    /// A node whose heartbeat is older than this is dead: the others remove its viewers from
    /// presence. Heartbeats go out every third of it.
    pub node_ttl_ms: u64,
    /// Longest wait for one Redis call (connect, command, reply); a call that takes longer is a
    /// failure (publishes answer `unavailable`, the connection is opened again).
    pub timeout_ms: u64,
    /// How long a room's sequence, epoch and history live in Redis after its last publish or
    /// join; past that the room starts over with a new epoch.
    pub room_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { redis_url: None, node_id: None, node_ttl_ms: 3_000, timeout_ms: 1_000, room_ttl_ms: 86_400_000 }
    }
}

impl ClusterConfig {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }

    /// The node id: the configured one, or a fresh random one.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| format!("n-{:08x}", fastrand::u32(..)))
    }

    /// Check the settings; the error is `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.redis_url {
            if let Err(e) = ::redis::Client::open(url.as_str()) {
                return Err((
                    "cluster.redis_url",
                    format!("is not a usable Redis URL ({e}): e.g. redis://127.0.0.1:6379/"),
                ));
            }
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(("cluster.node_id", format!("must be 1..=64 of A-Z a-z 0-9 - _ . (got {id:?})")));
            }
        }
        if self.node_ttl_ms < 300 {
            return Err(("cluster.node_ttl_ms", format!("must be at least 300 (got {})", self.node_ttl_ms)));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err(("cluster.timeout_ms", format!("must be 1..=60000 (got {})", self.timeout_ms)));
        }
        if self.room_ttl_ms < 1_000 {
            return Err(("cluster.room_ttl_ms", format!("must be at least 1000 (got {})", self.room_ttl_ms)));
        }
        Ok(())
    }
}
