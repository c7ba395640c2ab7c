//! Write stalls: a worker that lost its core in the middle of writing a fan-out.
//!
//! A chunk of [`super::worker`]'s writes (64 sockets) takes ~0.5 ms; when one takes more than
//! [`STALL_AFTER`], the thread did not run for most of it: another process on its core, the
//! hypervisor taking the virtual CPU away, or the kernel's send path held up. Every member
//! still waiting for that fan-out, and every message queued behind it, carries the pause as
//! latency, and nothing in roomcast's own counters would say why a p99 jumped. So each worker
//! counts its stalls and their length (`roomcast_worker_write_stalls_total`,
//! `roomcast_worker_write_stall_seconds_total`) and says so in its log once a minute. The
//! meter reads the clock the write loop already reads once per chunk: it costs nothing more.

use std::time::Duration;

/// A chunk of writes that took longer than this stalled (~10x the time 64 loopback writes take).
pub const STALL_AFTER: Duration = Duration::from_millis(5);

/// One worker's stalls, since start and since its last log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StallMeter {
    /// Chunks that stalled since start.
    pub stalls: u64,
    /// Their summed length, microseconds.
    pub stalled_us: u64,
    /// Stalls since the last log line, and the longest of them (us).
    unlogged: u64,
    longest_unlogged_us: u64,
}

impl StallMeter {
    /// One chunk of writes took `took`.
    pub fn chunk(&mut self, took: Duration) {
        if took <= STALL_AFTER {
            return;
        }
        let us = took.as_micros() as u64;
        self.stalls += 1;
        self.stalled_us += us;
        self.unlogged += 1;
        self.longest_unlogged_us = self.longest_unlogged_us.max(us);
    }

    /// The stalls since the last call, and the longest of them (us), if there were any.
    pub fn take_unlogged(&mut self) -> Option<(u64, u64)> {
        let taken = (self.unlogged > 0).then_some((self.unlogged, self.longest_unlogged_us));
        self.unlogged = 0;
        self.longest_unlogged_us = 0;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chunks_longer_than_the_bound_count_and_the_log_sees_each_once() {
        let mut m = StallMeter::default();
        m.chunk(Duration::from_micros(500));
        m.chunk(STALL_AFTER);
        assert_eq!((m.stalls, m.take_unlogged()), (0, None), "a normal chunk and one at the bound");
        m.chunk(Duration::from_millis(28));
        m.chunk(Duration::from_millis(7));
        assert_eq!((m.stalls, m.stalled_us), (2, 35_000));
        assert_eq!(m.take_unlogged(), Some((2, 28_000)));
        assert_eq!(m.take_unlogged(), None, "logged once");
        m.chunk(Duration::from_millis(6));
        assert_eq!((m.stalls, m.take_unlogged()), (3, Some((1, 6_000))));
    }
}
