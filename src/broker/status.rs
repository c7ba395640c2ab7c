//! What the broker's threads report to the rest of the node: whether Redis answers, the
//! cluster's members, and the counters the admin port shows. Atomics written by the broker's
//! threads and read by the workers (one relaxed load per publish, to refuse at once while
//! Redis is down) and by the admin port; the member list, read only by the admin port, sits
//! behind a mutex no worker touches.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// See the module doc.
#[derive(Debug)]
pub struct BrokerStatus {
    node: String,
    up: AtomicBool,
    /// Sequence requests handed to the broker and not answered yet.
    pub(super) waiting: AtomicUsize,
    publishes_ok: AtomicU64,
    publishes_unavailable: AtomicU64,
    messages: AtomicU64,
    reconnects: AtomicU64,
    lag_ms: AtomicU64,
    commands: AtomicU64,
    followed: AtomicU64,
    nodes: Mutex<Vec<String>>,
}

/// A copy of the status, for `/api/cluster` and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterReport {
    /// This node's id.
    pub node: String,
    /// `redis` in a cluster.
    pub mode: &'static str,
    /// `up` while Redis answers, else `down`.
    pub redis: &'static str,
    /// Live nodes (heartbeat not expired), this one included, sorted.
    pub nodes: Vec<String>,
    /// Publish-to-receipt time of the latest message received from the cluster (ms).
    pub lag_ms: u64,
    /// Rooms (and private rooms) this node follows.
    pub subscribed_rooms: u64,
    /// Messages sequenced for this node.
    pub publishes_ok: u64,
    /// Messages refused with `unavailable`.
    pub publishes_unavailable: u64,
    /// Messages received from the room channels.
    pub messages: u64,
    /// Connections to Redis opened again after a failure.
    pub reconnects: u64,
    /// Redis commands (script calls included) sent.
    pub commands: u64,
}

impl BrokerStatus {
    /// A status for node `node`, down until the first connection.
    pub fn new(node: String) -> Self {
        Self {
            nodes: Mutex::new(vec![node.clone()]),
            node,
            up: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            publishes_ok: AtomicU64::new(0),
            publishes_unavailable: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            followed: AtomicU64::new(0),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether Redis answered the last call.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Relaxed);
    }

    pub(super) fn published(&self, ok: bool) {
        let counter = if ok { &self.publishes_ok } else { &self.publishes_unavailable };
        counter.fetch_add(1, Relaxed);
    }

    pub(super) fn received(&self, lag_ms: u64) {
        self.messages.fetch_add(1, Relaxed);
        self.lag_ms.store(lag_ms, Relaxed);
    }

    pub(super) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub(super) fn sent_commands(&self, n: usize) {
        self.commands.fetch_add(n as u64, Relaxed);
    }

    pub(super) fn set_followed(&self, n: usize) {
        self.followed.store(n as u64, Relaxed);
    }

    pub(super) fn set_nodes(&self, mut nodes: Vec<String>) {
        nodes.sort();
        if let Ok(mut held) = self.nodes.lock() {
            *held = nodes;
        }
    }

    /// A copy for the admin port.
    pub fn report(&self) -> ClusterReport {
        ClusterReport {
            node: self.node.clone(),
            mode: "redis",
            redis: if self.is_up() { "up" } else { "down" },
            nodes: self.nodes.lock().map(|n| n.clone()).unwrap_or_default(),
            lag_ms: self.lag_ms.load(Relaxed),
            subscribed_rooms: self.followed.load(Relaxed),
            publishes_ok: self.publishes_ok.load(Relaxed),
            publishes_unavailable: self.publishes_unavailable.load(Relaxed),
            messages: self.messages.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            commands: self.commands.load(Relaxed),
        }
    }
}
