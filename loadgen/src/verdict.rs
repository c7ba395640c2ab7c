//! Whether a run's figures answer the question it asked, and if not, why: every reason is one
//! sentence for the report's last line, and any reason makes the run invalid (non-zero exit).
//!
//! A run is invalid when connections failed or never came up, the server closed viewers, any
//! event was lost, duplicated or reordered, deliveries or acks are missing, the server answered
//! with errors, a churn rejoin was not recovered, or the sender itself fell behind its
//! timetable ([`Lateness`]). These are rules over the counts only; this module never measures
//! anything and must never round a failure away.

use crate::cli::Kind;
use crate::report::Report;
use crate::timetable::Lateness;

/// What the rules look at besides the report.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The scenario.
    pub kind: Kind,
    /// How late the publisher or the comment sender was, if the scenario sends.
    pub lateness: Option<Lateness>,
    /// Who sent: "publisher" or "comment sender".
    pub sender: &'static str,
    /// Comments acked (comments).
    pub acked: u64,
    /// `--connect-timeout`, seconds.
    pub connect_timeout: f64,
    /// `storm --tls-resume`: every measured connect must have resumed.
    pub tls_resume: bool,
}

/// Every reason the run is invalid, in the order a reader should fix them.
pub fn reasons(r: &Report, cx: &Context) -> Vec<String> {
    let mut out = Vec::new();
    let up = if cx.kind.joins() { r.joined } else { r.connected };
    if r.failed > 0 {
        out.push(format!("{} of {} connections failed", r.failed, r.conns));
    }
    if up == 0 && r.conns > 0 && r.failed == 0 {
        out.push(format!("no connection came up within --connect-timeout {} s", cx.connect_timeout));
    } else if up + r.failed + r.closed_by_server < r.conns {
        out.push(format!(
            "only {} of {} connections were up within --connect-timeout {} s",
            up, r.conns, cx.connect_timeout
        ));
    }
    if cx.tls_resume && r.tls_resumed < r.connected {
        out.push(format!(
            "only {} of {} reconnects resumed their TLS session (does the server send session tickets? \
             roomcast: wss.session_tickets)",
            r.tls_resumed, r.connected
        ));
    }
    if r.closed_by_server > 0 {
        // Viewers send nothing unasked but pongs, so a server that does not ping silent
        // connections closes them with 1001 after its heartbeat timeout.
        let hint = if r.close_codes.iter().any(|c| c.starts_with("1001:")) {
            ": 1001 is also how a server that does not ping closes silent viewers (try --app-ping-every 10)"
        } else {
            ""
        };
        out.push(format!(
            "the server closed {} connections (close codes {}){hint}",
            r.closed_by_server,
            if r.close_codes.is_empty() { "none".into() } else { r.close_codes.join(", ") }
        ));
    }
    for (n, what) in [(r.lost, "lost"), (r.duplicated, "duplicated"), (r.reordered, "reordered")] {
        if n > 0 {
            out.push(format!("{n} events {what}"));
        }
    }
    if r.delivered < r.expected {
        out.push(format!("{} of {} expected deliveries did not arrive", r.expected - r.delivered, r.expected));
    }
    if cx.kind == Kind::Comments && cx.acked < r.published {
        out.push(format!("{} of {} comments were not acked", r.published - cx.acked, r.published));
    }
    if r.recovery_failed > 0 {
        out.push(format!("{} of {} rejoins were not recovered", r.recovery_failed, r.reconnects));
    }
    if r.errors > 0 {
        out.push(format!("the server answered {} requests with an error", r.errors));
    }
    if let Some(failure) = cx.lateness.and_then(|l| l.failure(cx.sender)) {
        out.push(failure);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn context(kind: Kind) -> Context {
        Context { kind, lateness: None, sender: "publisher", acked: 0, connect_timeout: 120.0, tls_resume: false }
    }

    #[test]
    fn a_clean_run_has_no_reason() {
        let r = Report { conns: 10, joined: 10, connected: 10, expected: 50, delivered: 50, ..Report::default() };
        assert!(reasons(&r, &context(Kind::Fanout)).is_empty());
    }

    #[test]
    fn a_1001_close_points_at_application_pings() {
        let r = Report {
            conns: 2,
            joined: 2,
            closed_by_server: 2,
            close_codes: vec!["1001:2".into()],
            ..Report::default()
        };
        let why = reasons(&r, &context(Kind::Idle));
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("--app-ping-every"), "{why:?}");
    }

    #[test]
    fn a_storm_against_nothing_is_invalid() {
        let r = Report { conns: 100, failed: 100, ..Report::default() };
        assert_eq!(reasons(&r, &context(Kind::Storm)), ["100 of 100 connections failed"]);
    }

    #[test]
    fn a_resumed_storm_whose_handshakes_were_full_is_invalid() {
        let r = Report { conns: 10, connected: 10, tls_resumed: 7, ..Report::default() };
        let cx = Context { tls_resume: true, ..context(Kind::Storm) };
        let why = reasons(&r, &cx);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].starts_with("only 7 of 10 reconnects resumed their TLS session"), "{why:?}");
        let r = Report { tls_resumed: 10, ..r };
        assert!(reasons(&r, &cx).is_empty());
    }

    #[test]
    fn every_kind_of_failure_is_named() {
        let r = Report {
            conns: 10,
            joined: 7,
            failed: 1,
            closed_by_server: 1,
            close_codes: vec!["4009:1".into()],
            expected: 100,
            delivered: 90,
            lost: 10,
            duplicated: 2,
            published: 20,
            errors: 3,
            reconnects: 5,
            recovery_failed: 1,
            ..Report::default()
        };
        let mut late = Lateness::new(Duration::from_millis(10));
        late.record(Duration::from_millis(30));
        let cx = Context { lateness: Some(late), acked: 18, ..context(Kind::Comments) };
        let all = reasons(&r, &cx).join("\n");
        for needle in [
            "1 of 10 connections failed",
            "only 7 of 10",
            "closed 1 connections (close codes 4009:1)",
            "10 events lost",
            "2 events duplicated",
            "10 of 100 expected deliveries",
            "2 of 20 comments were not acked",
            "1 of 5 rejoins",
            "3 requests with an error",
            "worst 30.0 ms",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
    }
}
