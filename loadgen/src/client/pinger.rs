//! Application heartbeats (`{"op":"ping"}`), spread evenly: one slice of the connections per
//! tick, each connection once per [`PING_EVERY`]. Pinging all at once would make the server
//! answer thousands of pongs in one burst, a stall this tool itself caused, seen in the latency
//! tail. It only queues frames; it never waits for an answer.

use super::conn::Conn;
use super::viewer::Phase;
use slab::Slab;
use std::time::{Duration, Instant};

/// How often each ready connection sends an application ping.
const PING_EVERY: Duration = Duration::from_secs(10);
/// Connections are pinged in this many slices, one slice per `PING_EVERY / PING_SLICES`.
const PING_SLICES: usize = 100;

/// One thread's ping schedule.
pub(super) struct Pinger {
    last: Instant,
    slice: usize,
}

impl Pinger {
    /// The first slice is due one slice-interval from now.
    pub(super) fn new() -> Self {
        Self { last: Instant::now(), slice: 0 }
    }

    /// Ping the slices that are due.
    pub(super) fn tick(&mut self, conns: &mut Slab<Conn>) {
        let every = PING_EVERY / PING_SLICES as u32;
        while self.last.elapsed() >= every {
            self.last += every;
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
