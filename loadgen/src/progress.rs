//! The progress line, printed on stderr about once a second while a run goes on, showing what
//! the scenario measures: deliveries and their p99 for `fanout`, comments and acks for
//! `comments`, reconnects for `churn`, connects per second for `storm`, the open connections
//! for `idle`. It reads the shared counters only; it must never change them.

use crate::cli::Kind;
use crate::client::Shared;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the line is printed.
const EVERY: Duration = Duration::from_secs(1);
/// How often [`wait_until`] looks at its condition.
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// The progress printer of one run.
pub struct Progress<'a> {
    kind: Kind,
    shared: &'a Shared,
    started: Instant,
    /// When the last line was printed, with the deliveries and connections then.
    last: (Instant, u64, u64),
    next: Instant,
}

impl<'a> Progress<'a> {
    /// A printer for a run of `kind` that started at `started`.
    pub fn new(kind: Kind, shared: &'a Shared, started: Instant) -> Self {
        let now = Instant::now();
        Self { kind, shared, started, last: (now, 0, 0), next: now + EVERY }
    }

    /// Print the line if a second has passed since the last one.
    pub fn tick(&mut self) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next += EVERY;
        eprintln!("{}", self.line(now));
    }

    /// The line now (and remember the rates' new starting point).
    fn line(&mut self, now: Instant) -> String {
        let s = self.shared;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let (delivered, connected) = (load(&s.deliveries), load(&s.connected));
        let seconds = now.duration_since(self.last.0).as_secs_f64().max(1e-3);
        let delivery_rate = delivered.saturating_sub(self.last.1) as f64 / seconds;
        let connect_rate = connected.saturating_sub(self.last.2) as f64 / seconds;
        self.last = (now, delivered, connected);
        let p99 = s
            .progress
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|h| h.value_at_quantile(0.99) as f64 / 1000.0))
            .unwrap_or(0.0);
        let at = format!("[{:6.1}s]", self.started.elapsed().as_secs_f64());
        let conns = format!(
            "conns {connected} joined {} failed {} closed {}",
            load(&s.joined),
            load(&s.failed),
            load(&s.closed)
        );
        let deliveries = format!("deliveries {delivered} ({delivery_rate:.0}/s) p99 {p99:.2} ms");
        let errors = format!("errors {}", load(&s.errors));
        match self.kind {
            Kind::Fanout => format!("{at} {conns} | {deliveries} | {errors}"),
            Kind::Comments => format!(
                "{at} {conns} | comments {} acked {} | {deliveries} | {errors}",
                load(&s.comments),
                load(&s.acks)
            ),
            Kind::Churn => format!(
                "{at} {conns} | reconnects {} recovered {} not {} | {deliveries} | {errors}",
                load(&s.reconnects),
                load(&s.recovered),
                load(&s.recovery_failed)
            ),
            Kind::Idle => format!("{at} {conns} | presence {} | {errors}", load(&s.presence)),
            Kind::Storm => format!(
                "{at} connected {connected} ({connect_rate:.0}/s) failed {} closed {}",
                load(&s.failed),
                load(&s.closed)
            ),
        }
    }
}

/// Wait until `done()` or `timeout`, printing progress. Returns `done()`'s last answer.
pub fn wait_until(progress: &mut Progress<'_>, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        progress.tick();
        std::thread::sleep(LOOK_EVERY);
    }
    done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scenario_shows_what_it_measures() {
        let shared = Shared::default();
        shared.connected.store(40, Ordering::Relaxed);
        let line = |kind| Progress::new(kind, &shared, Instant::now()).line(Instant::now());
        let fanout = line(Kind::Fanout);
        assert!(fanout.contains("deliveries") && !fanout.contains("comments") && !fanout.contains("acked"), "{fanout}");
        assert!(line(Kind::Comments).contains("comments 0 acked 0"));
        assert!(line(Kind::Churn).contains("reconnects 0"));
        let storm = line(Kind::Storm);
        assert!(storm.contains("connected 40") && !storm.contains("deliveries"), "{storm}");
        assert!(!line(Kind::Idle).contains("deliveries"));
    }
}
