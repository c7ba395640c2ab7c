//! Churn: each ready connection stays a random time in `[min, max]`, then is dropped and
//! reopened with the `since` and `epoch` it last saw. This decides who leaves when; it never
//! touches a socket (the thread drops and requeues the connections it names).

use super::conn::Conn;
use super::viewer::Phase;
use super::ChurnPlan;
use slab::Slab;
use std::time::{Duration, Instant};

/// How often stays are checked.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// A small xorshift generator: reproducible random stays without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, plan: ChurnPlan) -> Duration {
        let span = plan.max.saturating_sub(plan.min).as_millis() as u64;
        plan.min + Duration::from_millis(if span == 0 { 0 } else { self.next() % span })
    }
}

/// One thread's churn schedule.
pub(super) struct Churn {
    plan: ChurnPlan,
    rng: Rng,
    last_check: Instant,
}

impl Churn {
    /// A schedule for thread `thread_index` (each thread draws its own stays).
    pub(super) fn new(plan: ChurnPlan, thread_index: usize) -> Self {
        Self { plan, rng: Rng(0x9E37_79B9_7F4A_7C15 ^ (thread_index as u64 + 1)), last_check: Instant::now() }
    }

    /// About every 10 ms: the keys of the connections whose stay is over, after giving every
    /// ready connection without one its stay.
    pub(super) fn due(&mut self, conns: &mut Slab<Conn>) -> Vec<usize> {
        if self.last_check.elapsed() < CHECK_EVERY {
            return Vec::new();
        }
        self.last_check = Instant::now();
        let now = Instant::now();
        let ready = |c: &Conn| c.viewer.phase == Phase::Ready;
        let due = conns
            .iter()
            .filter(|(_, c)| ready(c) && c.viewer.leave_at.is_some_and(|t| t <= now))
            .map(|(k, _)| k)
            .collect();
        for (_, conn) in conns.iter_mut() {
            if ready(conn) && conn.viewer.leave_at.is_none() {
                conn.viewer.leave_at = Some(now + self.rng.between(self.plan));
            }
        }
        due
    }
}
