//! Comments on an open-loop timetable: comment k is due at `start + k / rate`, sent from the
//! thread's ready connections in turn, carrying its intended send time (as text and as `ref`)
//! so its ack and delivery latency include any time it waited to be sent. How far sending fell
//! behind the timetable is recorded in [`Shared::send_lag_ns`] (the worst) and
//! [`Shared::late_comments`]; this never waits for the server.

use super::conn::Conn;
use super::viewer::Phase;
use super::{unix_ns, CommentPlan, ConnPlan, Shared};
use slab::Slab;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One thread's comment sender.
pub(super) struct Commenter {
    plan: CommentPlan,
    /// Once started: when (ns since the Unix epoch) and how many sent.
    clock: Option<(u64, u64)>,
    cursor: usize,
    /// Comments sent.
    pub(super) sent: u64,
}

impl Commenter {
    /// A sender for `plan`; it starts when `plan.start` is set.
    pub(super) fn new(plan: CommentPlan) -> Self {
        Self { plan, clock: None, cursor: 0, sent: 0 }
    }

    /// How long until the next comment is due (once started).
    pub(super) fn next_due_in(&self) -> Option<Duration> {
        let (start, sent) = self.clock?;
        let next = start + (sent as f64 * 1e9 / self.plan.rate) as u64;
        Some(Duration::from_nanos(next.saturating_sub(unix_ns())))
    }

    /// Send every comment due now, spread over the ready connections.
    pub(super) fn send_due(&mut self, conns: &mut Slab<Conn>, plans: &[ConnPlan], shared: &Shared) {
        let plan = &self.plan;
        if !plan.start.load(Ordering::Relaxed) || conns.is_empty() {
            return;
        }
        let (start, sent) = self.clock.get_or_insert((unix_ns(), 0));
        let now = unix_ns();
        let elapsed = now.saturating_sub(*start);
        if elapsed > plan.duration.as_nanos() as u64 {
            return;
        }
        // Comment k is due at k / rate: the first one at once.
        let total = (plan.duration.as_secs_f64() * plan.rate) as u64;
        let due = ((elapsed as f64 / 1e9 * plan.rate) as u64 + 1).min(total);
        let keys: Vec<usize> = conns.iter().filter(|(_, c)| c.viewer.phase == Phase::Ready).map(|(k, _)| k).collect();
        while *sent < due && !keys.is_empty() {
            let intended = *start + (*sent as f64 * 1e9 / plan.rate) as u64;
            let lag = now.saturating_sub(intended);
            shared.send_lag_ns.fetch_max(lag, Ordering::Relaxed);
            if Duration::from_nanos(lag) >= plan.late_after {
                shared.late_comments.fetch_add(1, Ordering::Relaxed);
            }
            self.cursor = (self.cursor + 1) % keys.len();
            if let Some(conn) = conns.get_mut(keys[self.cursor]) {
                if let Some(room) = &plans[conn.viewer.plan].room {
                    let op = serde_json::json!({"op": "comment", "room": room, "text": intended.to_string(), "ref": intended});
                    conn.viewer.send_text(op.to_string().as_bytes());
                    let _ = conn.flush();
                }
            }
            *sent += 1;
            self.sent += 1;
            shared.comments.fetch_add(1, Ordering::Relaxed);
        }
    }
}
