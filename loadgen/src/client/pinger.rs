//! Opt-in application heartbeats (`{"op":"ping"}`, `--app-ping-every`) for a server that does
//! not ping silent connections itself (roomcast before server heartbeats, PROTOCOL.md
//! "Heartbeats"): without them such a server closes a viewer that only listens. Spread evenly:
//! one slice of the connections per tick, each connection once per period. Pinging all at once would make the server
//! answer thousands of pongs in one burst, a stall this tool itself caused, seen in the latency
//! tail. It only queues frames; it never waits for an answer.

use super::conn::Conn;
use super::viewer::Phase;
use slab::Slab;
use std::time::{Duration, Instant};

/// Connections are pinged in this many slices, one slice per `period / PING_SLICES`.
const PING_SLICES: usize = 100;

/// One thread's ping schedule.
pub(super) struct Pinger {
    every: Duration,
    last: Instant,
    slice: usize,
}

impl Pinger {
    /// Each ready connection pings once per `period`; the first slice is due one
    /// slice-interval from now.
    pub(super) fn new(period: Duration) -> Self {
        Self { every: (period / PING_SLICES as u32).max(Duration::from_millis(1)), last: Instant::now(), slice: 0 }
    }

    /// Ping the slices that are due.
    pub(super) fn tick(&mut self, conns: &mut Slab<Conn>) {
        while self.last.elapsed() >= self.every {
            self.last += self.every;
            for key in (self.slice..conns.capacity()).step_by(PING_SLICES) {
                if let Some(conn) = conns.get_mut(key).filter(|c| c.viewer.phase == Phase::Ready) {
                    conn.viewer.send_text(br#"{"op":"ping"}"#);
                    let _ = conn.flush();
                }
            }
            self.slice = (self.slice + 1) % PING_SLICES;
        }
    }
}
