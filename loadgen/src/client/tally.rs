//! What one client thread measures: latency histograms, close codes, the time its last
//! connection upgraded, and the shared counters the progress line reads.
//!
//! Histograms are per thread (no lock per delivery); about once a second the thread adds its
//! recent latencies to [`Shared::progress`] for the progress line. It must never block on
//! anything but that one short lock.

use super::{latency_histogram, unix_ns, Shared};
use crate::spread::Spread;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a thread hands its recent latencies to the progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A latency in whole microseconds, at least 1 (the histograms' lowest value).
fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// One thread's measurements. See the module doc.
pub(super) struct Tally<'a> {
    /// The counters every thread updates.
    pub(super) shared: &'a Shared,
    /// Delivery latency (us).
    pub(super) latency: Histogram<u64>,
    /// Delivery latency (us) per endpoint; empty with one endpoint (it would be `latency`).
    pub(super) by_endpoint: Vec<Histogram<u64>>,
    /// Comment -> ack latency (us).
    pub(super) ack_latency: Histogram<u64>,
    /// Connect start -> TCP connected (us).
    pub(super) connect_latency: Histogram<u64>,
    /// Connect start -> `101` read (us): the whole wait before a viewer can send.
    pub(super) upgrade_latency: Histogram<u64>,
    /// Latency since the last hand-over to the progress line.
    progress: Histogram<u64>,
    last_progress: Instant,
    /// Close codes received from the server.
    pub(super) close_codes: HashMap<u16, u64>,
    /// Each message's first and last delivery, by its stamp (ns).
    pub(super) spread: HashMap<u64, Spread>,
    started: Instant,
    /// Time from the thread's start to its last connection upgraded.
    pub(super) connect_time: Duration,
}

impl<'a> Tally<'a> {
    /// Nothing measured yet; times count from now. `endpoints`: the servers connected to.
    pub(super) fn new(shared: &'a Shared, endpoints: usize) -> Self {
        let per_endpoint = if endpoints > 1 { endpoints } else { 0 };
        Self {
            shared,
            latency: latency_histogram(),
            by_endpoint: (0..per_endpoint).map(|_| latency_histogram()).collect(),
            ack_latency: latency_histogram(),
            connect_latency: latency_histogram(),
            upgrade_latency: latency_histogram(),
            progress: latency_histogram(),
            last_progress: Instant::now(),
            close_codes: HashMap::new(),
            spread: HashMap::new(),
            started: Instant::now(),
            connect_time: Duration::ZERO,
        }
    }

    /// A connection whose connect started at `opened_at` is connected (TCP).
    pub(super) fn connected(&mut self, opened_at: Instant) {
        let _ = self.connect_latency.record(micros(opened_at.elapsed()));
    }

    /// A connection whose connect started at `opened_at` got its `101` (`resumed`: over a TLS
    /// session resumed from an earlier connection).
    pub(super) fn upgraded(&mut self, opened_at: Instant, resumed: bool) {
        let _ = self.upgrade_latency.record(micros(opened_at.elapsed()));
        if resumed {
            self.shared.tls_resumed.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.connected.fetch_add(1, Ordering::Relaxed);
        self.connect_time = self.started.elapsed();
    }

    /// `storm --tls-resume`: the second round begins; its connects are measured from now, and
    /// the first round's connect and upgrade latencies are forgotten.
    pub(super) fn restart_connects(&mut self) {
        self.connect_latency.reset();
        self.upgrade_latency.reset();
        self.started = Instant::now();
        self.connect_time = Duration::ZERO;
    }

    /// A new seq arrived at a viewer of endpoint `endpoint`; `stamp` is its intended send time
    /// (ns since the Unix epoch) if it carries one.
    pub(super) fn delivered(&mut self, stamp: Option<u64>, endpoint: usize) {
        self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = stamp {
            let us = (unix_ns().saturating_sub(t) / 1000).max(1);
            let _ = self.latency.record(us);
            let _ = self.progress.record(us);
            crate::spread::record(&mut self.spread, t, us);
            if let Some(h) = self.by_endpoint.get_mut(endpoint) {
                let _ = h.record(us);
            }
        }
    }

    /// A comment was acked; its `ref` is its intended send time (ns since the Unix epoch).
    pub(super) fn acked(&mut self, reference: Option<u64>) {
        self.shared.acks.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = reference {
            let _ = self.ack_latency.record((unix_ns().saturating_sub(t) / 1000).max(1));
        }
    }

    /// The server sent a close frame (1005: it carried no code).
    pub(super) fn closed_with(&mut self, code: Option<u16>) {
        *self.close_codes.entry(code.unwrap_or(1005)).or_default() += 1;
    }

    /// About once a second: add the latencies since the last time to the progress line's.
    pub(super) fn hand_over_progress(&mut self) {
        if self.last_progress.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_progress = Instant::now();
        if let Ok(mut p) = self.shared.progress.lock() {
            match p.as_mut() {
                Some(h) => {
                    let _ = h.add(&self.progress);
                }
                None => *p = Some(self.progress.clone()),
            }
        }
        self.progress.reset();
    }
}
