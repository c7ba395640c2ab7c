//! The connection table: every connection of one worker, from accept to gone, with its one
//! deadline, and the lists the IO shell drains after a turn.
//!
//! Connections live in a slab (their key is the shell's poll token). Each has exactly one
//! entry in the timer wheel, re-armed to whatever its phase needs next (the handshake timeout
//! while upgrading, the heartbeat while open, the close timeout while closing): quinn's
//! "one timer per connection" shape, so a worker with a million idle connections walks none of
//! them. The shell learns what to do with sockets from three lists: connections with new
//! frames (`dirty`), sockets whose write side is to be shut, and sockets to drop (`gone`, the
//! IO handles themselves, already out of the slab so their keys can be reused at once).

use crate::ids::{ConnId, ConnKey, WorkerId};
use crate::session::outbound::{Listed, OverBudget};
use crate::session::Session;
use crate::wheel::TimerWheel;
use bytes::Bytes;
use slab::Slab;
use std::collections::VecDeque;

/// Resolution of connection deadlines (handshake, heartbeat, close timeout).
const DEADLINE_TICK_MS: u64 = 100;

/// A connection as the shard holds it: its protocol state and the shell's IO handle.
#[derive(Debug)]
pub struct Conn<Io> {
    /// Protocol state (read-only outside the shard).
    pub session: Session,
    /// Whatever the shell needs to move bytes (a socket; `()` in tests).
    pub io: Io,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct ConnTable<Io> {
    worker: WorkerId,
    slab: Slab<Conn<Io>>,
    next_conn: u64,
    deadlines: TimerWheel,
    fired: Vec<usize>,
    /// Connections with urgent frames to write (events, replies, closes), in the order they
    /// got them (each once).
    dirty: VecDeque<ConnKey>,
    /// Connections with only background frames (presence and reactions alone), written when
    /// no urgent write waits; a key may be here twice or already written (skipped then).
    background: VecDeque<ConnKey>,
    shutdowns: Vec<ConnKey>,
    gone: Vec<(ConnKey, Io)>,
}

impl<Io> ConnTable<Io> {
    /// An empty table for worker `worker`.
    pub(crate) fn new(worker: WorkerId) -> Self {
        Self {
            worker,
            slab: Slab::new(),
            next_conn: 1,
            deadlines: TimerWheel::new(DEADLINE_TICK_MS, 0),
            fired: Vec::new(),
            dirty: VecDeque::new(),
            background: VecDeque::new(),
            shutdowns: Vec::new(),
            gone: Vec::new(),
        }
    }

    /// Insert a connection whose session `build` makes from its new id.
    pub(crate) fn insert(&mut self, io: Io, build: impl FnOnce(ConnId) -> Session) -> ConnKey {
        // Worker in the top bits, below 2^53 (256 workers x 2^40 connections each) so browsers
        // parse `hello.conn` exactly.
        let id = ConnId((u64::from(self.worker.0) << 40) | self.next_conn);
        self.next_conn += 1;
        ConnKey(self.slab.insert(Conn { session: build(id), io }))
    }

    pub(crate) fn get(&self, key: ConnKey) -> Option<&Conn<Io>> {
        self.slab.get(key.0)
    }

    pub(crate) fn get_mut(&mut self, key: ConnKey) -> Option<&mut Conn<Io>> {
        self.slab.get_mut(key.0)
    }

    /// The session under `key` if it is still connection `id` (keys are reused).
    pub(crate) fn session_of(&mut self, key: ConnKey, id: ConnId) -> Option<&mut Session> {
        self.slab.get_mut(key.0).map(|c| &mut c.session).filter(|s| s.id() == id)
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn keys(&self) -> Vec<ConnKey> {
        self.slab.iter().map(|(k, _)| ConnKey(k)).collect()
    }

    /// Take the connection out of the table (its deadline too).
    pub(crate) fn remove(&mut self, key: ConnKey) -> Option<Conn<Io>> {
        let conn = self.slab.try_remove(key.0)?;
        self.deadlines.cancel(key.0);
        Some(conn)
    }

    /// Hand a removed connection's IO handle to the shell to drop, with the key it had.
    pub(crate) fn drop_socket(&mut self, key: ConnKey, conn: Conn<Io>) {
        self.gone.push((key, conn.io));
    }

    // --- deadlines ---

    /// Arm the connection's one deadline.
    pub(crate) fn arm(&mut self, key: ConnKey, at_ms: u64) {
        self.deadlines.arm(key.0, at_ms);
    }

    /// The earliest armed deadline.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.next_deadline()
    }

    /// Connections whose deadline passed by `now_ms`, each once.
    pub(crate) fn take_fired(&mut self, now_ms: u64) -> Vec<usize> {
        let mut fired = std::mem::take(&mut self.fired);
        self.deadlines.poll(now_ms, &mut fired);
        fired
    }

    /// Give back the list from [`ConnTable::take_fired`], emptied, for reuse.
    pub(crate) fn restore_fired(&mut self, mut fired: Vec<usize>) {
        fired.clear();
        self.fired = fired;
    }

    // --- output lists ---

    /// Queue `frame` (shared: cloned only into a queue that takes it) for `key` within
    /// `budget`; the connection is listed for the shell, `urgent`ly or in the background.
    pub(crate) fn send(&mut self, key: ConnKey, frame: &Bytes, budget: usize, urgent: bool) -> Result<(), OverBudget> {
        let Some(conn) = self.slab.get_mut(key.0) else { return Ok(()) };
        conn.session.send(frame, budget)?;
        if conn.session.outbound_mut().list(urgent) {
            self.list(key, urgent);
        }
        Ok(())
    }

    /// List `key` for the shell's next write (urgent).
    pub(crate) fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(conn) = self.slab.get_mut(key.0) {
            if conn.session.outbound_mut().list(true) {
                self.list(key, true);
            }
        }
    }

    fn list(&mut self, key: ConnKey, urgent: bool) {
        if urgent {
            self.dirty.push_back(key);
        } else {
            self.background.push_back(key);
        }
    }

    /// Move up to `max` of the listed connections into `out` (cleared first): the urgent ones
    /// oldest first, then, only when none is left, the background ones. The rest stay listed,
    /// ahead of any listed later. So a quiet room's presence to thousands of members never
    /// delays another room's events: those members are written after, or (if an event reaches
    /// them meanwhile) with it, in one write.
    pub(crate) fn take_dirty(&mut self, out: &mut Vec<ConnKey>, max: usize) {
        out.clear();
        let n = self.dirty.len().min(max);
        // Copied as slices (a memcpy), not key by key through the drain's iterator.
        let (front, back) = self.dirty.as_slices();
        let from_front = n.min(front.len());
        out.extend_from_slice(&front[..from_front]);
        out.extend_from_slice(&back[..n - from_front]);
        self.dirty.drain(..n);
        for key in out.iter() {
            if let Some(conn) = self.slab.get_mut(key.0) {
                conn.session.outbound_mut().unlist();
            }
        }
        while out.len() < max {
            let Some(key) = self.background.pop_front() else { break };
            let Some(conn) = self.slab.get_mut(key.0) else { continue };
            let queue = conn.session.outbound_mut();
            // Urgent: it is on the urgent list too and goes from there; no: written already.
            if queue.listed() == Listed::Background {
                queue.unlist();
                out.push(key);
            }
        }
    }

    /// Whether connections wait for a write.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.background.is_empty()
    }

    /// The shell is to shut `key`'s write side.
    pub(crate) fn list_shutdown(&mut self, key: ConnKey) {
        self.shutdowns.push(key);
    }

    /// The next connection whose write side the shell is to shut.
    pub(crate) fn next_shutdown(&mut self) -> Option<ConnKey> {
        self.shutdowns.pop()
    }

    /// The next socket the shell is to drop, and the key it had.
    pub(crate) fn next_gone(&mut self) -> Option<(ConnKey, Io)> {
        self.gone.pop()
    }
}
