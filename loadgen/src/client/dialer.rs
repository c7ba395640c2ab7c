//! Which connection a thread opens next: the queue of connections still to open (first every
//! planned one, later churned ones to reopen) and the bound on handshakes in flight, so a
//! thread never starts more upgrades at once than the server's accept queue can hold.
//!
//! It only counts; it never opens a socket itself.

use crate::accounting::SeqCheck;
use std::collections::VecDeque;

/// A connection to (re)open: its plan, and for a churn reconnect, where it left off.
pub(super) struct Pending {
    /// Index of its plan.
    pub(super) plan: usize,
    /// Churn: the `since`, `epoch` and stream check to continue.
    pub(super) resume: Option<(u64, String, SeqCheck)>,
}

/// The open queue. See the module doc.
pub(super) struct Dialer {
    pending: VecDeque<Pending>,
    inflight: usize,
    max_inflight: usize,
    /// Connects started so far (each picks the next source address).
    pub(super) started: usize,
}

impl Dialer {
    /// Open plans `0..plans`, at most `max_inflight` handshakes at once.
    pub(super) fn new(plans: usize, max_inflight: usize) -> Self {
        let pending = (0..plans).map(|plan| Pending { plan, resume: None }).collect();
        Self { pending, inflight: 0, max_inflight, started: 0 }
    }

    /// The next connection to open now, if a handshake slot is free.
    pub(super) fn next(&mut self) -> Option<Pending> {
        if self.inflight >= self.max_inflight {
            return None;
        }
        self.pending.pop_front()
    }

    /// A connect was started (`in_flight`: it is now a handshake in flight).
    pub(super) fn started(&mut self, in_flight: bool) {
        self.started += 1;
        if in_flight {
            self.inflight += 1;
        }
    }

    /// A handshake ended: the connection is ready, or it failed.
    pub(super) fn settled(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// Reopen a churned connection later.
    pub(super) fn requeue(&mut self, pending: Pending) {
        self.pending.push_back(pending);
    }

    /// The connections never (re)opened.
    pub(super) fn into_pending(self) -> VecDeque<Pending> {
        self.pending
    }
}
