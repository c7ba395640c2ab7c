//! The run's results: a table for people (its last line is the verdict: `valid true`, or
//! `valid false:` and every reason), JSON for machines, and an SVG chart of latency by
//! percentile on a "nines" axis (the `.hgrm` text is [`crate::hgrm`]). This module formats
//! what the run measured; it decides nothing about it.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize, Default, Clone)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// What the viewers of one server (one `--url`) received, when there are several.
#[derive(Debug, Serialize, Default, Clone)]
pub struct UrlReport {
    /// The URL.
    pub url: String,
    /// Connections planned to it (each room's members go round-robin over the URLs).
    pub conns: u64,
    /// Deliveries its viewers received (new seqs).
    pub delivered: u64,
    /// Sequenced messages its viewers never received.
    pub lost: u64,
    /// Its deliveries per second over the publishing period.
    pub deliveries_per_sec: f64,
    /// Its viewers' delivery latency.
    pub latency: Percentiles,
}

/// Everything a run reports.
#[derive(Debug, Serialize, Default)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Target URL (several: comma-separated, as in `urls`).
    pub url: String,
    /// Every target URL, in `--url` order.
    pub urls: Vec<String>,
    /// Per URL, when there are several (in `urls` order): what its viewers received.
    pub per_url: Vec<UrlReport>,
    /// Connections planned.
    pub conns: u64,
    /// Rooms.
    pub rooms: u64,
    /// Connections upgraded.
    pub connected: u64,
    /// Connections joined.
    pub joined: u64,
    /// Connect/upgrade failures.
    pub failed: u64,
    /// Connections closed by the server during the run.
    pub closed_by_server: u64,
    /// Close codes seen, as "code:count".
    pub close_codes: Vec<String>,
    /// Seconds to open every connection.
    pub connect_seconds: f64,
    /// Connections upgraded per second.
    pub connects_per_sec: f64,
    /// Messages published (or comments sent).
    pub published: u64,
    /// Deliveries expected from what was published and who had joined.
    pub expected: u64,
    /// Deliveries received (new seqs).
    pub delivered: u64,
    /// Sequenced messages never received.
    pub lost: u64,
    /// Duplicates received.
    pub duplicated: u64,
    /// Out-of-order arrivals.
    pub reordered: u64,
    /// Deliveries per second over the publishing period.
    pub deliveries_per_sec: f64,
    /// The measured period (publishing or commenting, then draining): its start and end, ms
    /// since the Unix epoch (to line up other samples of the run, e.g. Redis's counters).
    pub window_unix_ms: Option<(u64, u64)>,
    /// Delivery latency (intended send -> receipt).
    pub latency: Percentiles,
    /// Connect start -> TCP connected.
    pub connect_latency: Percentiles,
    /// Connect start -> `101` read (the whole open of a viewer).
    pub upgrade_latency: Percentiles,
    /// Comment -> ack latency (comments scenario).
    pub ack_latency: Option<Percentiles>,
    /// Error replies received.
    pub errors: u64,
    /// Largest lag of the publisher (or comment sender) behind its timetable, ms.
    pub publisher_max_lag_ms: f64,
    /// Each message's first and last delivery, summarised over messages.
    pub message_spread: Option<crate::spread::SpreadSummary>,
    /// Messages (or comments) sent `lag_tolerance_ms` or more behind their timetable.
    pub late_messages: u64,
    /// The lateness tolerance, ms.
    pub lag_tolerance_ms: f64,
    /// False when the figures do not answer the question asked: see `invalid_reasons`.
    pub valid: bool,
    /// Every reason the run is invalid, joined with "; " (absent when valid).
    pub invalid_reason: Option<String>,
    /// Every reason the run is invalid.
    pub invalid_reasons: Vec<String>,
    /// What a reader should know about the figures that does not invalidate them.
    pub warnings: Vec<String>,
    /// Established connections the server held before this run opened its own (--server-pid).
    pub server_conns_before: Option<u64>,
    /// Server RSS per connection in bytes (idle scenario with --server-pid), measured from the
    /// RSS before this run opened its connections.
    pub server_rss_per_conn: Option<f64>,
    /// Server RSS before and after, KiB.
    pub server_rss_kib: Option<(u64, u64)>,
    /// Server CPU seconds (user + system) used while publishing and draining (--server-pid;
    /// several: their sum).
    pub server_cpu_seconds: Option<f64>,
    /// The server processes measured (--server-pid), in order.
    pub server_pids: Vec<u32>,
    /// Each server process's CPU seconds over the same period, in `server_pids` order.
    pub server_cpu_seconds_each: Vec<Option<f64>>,
    /// Deliveries per server CPU-second: the efficiency figure compared with the write floor.
    pub deliveries_per_server_cpu_sec: Option<f64>,
    /// Storm: server CPU seconds (user + system) while the measured connections opened
    /// (--server-pid; with --tls-resume the second, resumed round).
    pub connect_server_cpu_seconds: Option<f64>,
    /// Storm: connections upgraded per server CPU-second.
    pub connects_per_server_cpu_sec: Option<f64>,
    /// Connections whose TLS handshake resumed an earlier session.
    pub tls_resumed: u64,
    /// CPU seconds the load generator itself used over the same period (its own cost).
    pub loadgen_cpu_seconds: f64,
    /// Client processes whose measurements were merged into this report (`--procs`).
    pub loadgen_processes: u64,
    /// Churn: connections dropped and reopened with `since`.
    pub reconnects: u64,
    /// Churn: rejoins that recovered every missed event.
    pub recovered: u64,
    /// Churn: rejoins answered `recovered: false`.
    pub recovery_failed: u64,
    /// `presence` messages received by all connections.
    pub presence_messages: u64,
    /// Presence messages per connection per second (each connection is in one room, so this is
    /// presence messages per room per second as one member sees them).
    pub presence_per_member_per_sec: f64,
}

impl Report {
    /// Set the verdict: valid when there is no reason against it.
    pub fn judge(&mut self, reasons: Vec<String>) {
        self.valid = reasons.is_empty();
        self.invalid_reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        self.invalid_reasons = reasons;
    }

    /// The human table; its last line is the verdict.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "scenario        {}  ({})", self.scenario, self.url);
        let _ = writeln!(
            t,
            "connections     {} planned, {} connected, {} joined, {} failed, {} closed by server {:?}",
            self.conns, self.connected, self.joined, self.failed, self.closed_by_server, self.close_codes
        );
        let _ = writeln!(t, "connect rate    {:.0}/s ({:.2} s)", self.connects_per_sec, self.connect_seconds);
        if self.scenario == "storm" || self.scenario == "idle" {
            let _ = writeln!(t, "connect ms      {}", percentiles(&self.connect_latency));
            let _ = writeln!(t, "upgrade ms      {}", percentiles(&self.upgrade_latency));
        }
        if let (Some(cpu), Some(eff)) = (self.connect_server_cpu_seconds, self.connects_per_server_cpu_sec) {
            let _ = writeln!(t, "server CPU      {cpu:.2} s while connecting: {eff:.0} connects per server CPU-second");
        }
        if self.url.starts_with("wss://") {
            let _ = writeln!(t, "TLS resumed     {} of {} connects", self.tls_resumed, self.connected);
        }
        if let Some((before, after)) = self.server_rss_kib {
            let _ = writeln!(
                t,
                "server RSS      {before} KiB -> {after} KiB: {:.0} bytes per connection",
                self.server_rss_per_conn.unwrap_or(0.0)
            );
        }
        if self.published > 0 {
            self.sending(&mut t);
        }
        if self.reconnects > 0 {
            let _ = writeln!(
                t,
                "churn           {} reconnects: {} recovered, {} not recovered",
                self.reconnects, self.recovered, self.recovery_failed
            );
        }
        if self.presence_messages > 0 {
            let _ = writeln!(
                t,
                "presence        {} messages, {:.2} per member per second",
                self.presence_messages, self.presence_per_member_per_sec
            );
        }
        let _ = writeln!(t, "errors          {}", self.errors);
        for w in &self.warnings {
            let _ = writeln!(t, "warning         {w}");
        }
        match &self.invalid_reason {
            None => {
                let _ = writeln!(t, "valid           true");
            }
            Some(why) => {
                let _ = writeln!(t, "valid           false: {why}");
            }
        }
        t
    }

    /// The lines about what was published (or commented) and delivered.
    fn sending(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "published       {} (max lag {:.2} ms, {} sent {} ms or more late)",
            self.published, self.publisher_max_lag_ms, self.late_messages, self.lag_tolerance_ms
        );
        let _ = writeln!(
            t,
            "deliveries      {} of {} expected, {:.0}/s",
            self.delivered, self.expected, self.deliveries_per_sec
        );
        let _ = writeln!(t, "lost/dup/reord  {} / {} / {}", self.lost, self.duplicated, self.reordered);
        if let Some(s) = &self.message_spread {
            let _ = writeln!(
                t,
                "per message     {}: first delivery median {:.2} ms, last median {:.2} ms, latest {:.2} ms (due at {:.2} s); {} started {} ms or more late",
                s.messages, s.first_p50_ms, s.last_p50_ms, s.last_max_ms, s.last_max_at_s, s.late_starts, crate::spread::LATE_START_MS
            );
        }
        if let (Some(cpu), Some(eff)) = (self.server_cpu_seconds, self.deliveries_per_server_cpu_sec) {
            let _ = writeln!(t, "server CPU      {cpu:.2} s: {eff:.0} deliveries per server CPU-second");
            if self.server_cpu_seconds_each.len() > 1 {
                let each: Vec<String> = self
                    .server_cpu_seconds_each
                    .iter()
                    .zip(&self.server_pids)
                    .map(|(c, pid)| format!("{pid}: {}", c.map_or("?".into(), |c| format!("{c:.2} s"))))
                    .collect();
                let _ = writeln!(t, "  per process   {}", each.join(", "));
            }
        }
        let _ = writeln!(
            t,
            "loadgen CPU     {:.2} s over the same period, {} process(es)",
            self.loadgen_cpu_seconds, self.loadgen_processes
        );
        let _ = writeln!(t, "latency ms      {}", percentiles(&self.latency));
        for u in &self.per_url {
            let _ = writeln!(
                t,
                "  {}  {} conns, {} delivered ({:.0}/s), {} lost, ms {}",
                u.url,
                u.conns,
                u.delivered,
                u.deliveries_per_sec,
                u.lost,
                percentiles(&u.latency)
            );
        }
        if let Some(a) = &self.ack_latency {
            let _ = writeln!(t, "ack latency ms  {}", percentiles(a));
        }
    }
}

/// `p50 .. max` of one histogram, in ms.
fn percentiles(l: &Percentiles) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    )
}

/// Colours of the chart's series, in order.
const SERIES_COLOURS: [&str; 3] = ["#1f6feb", "#d1242f", "#1a7f37"];

/// An SVG line chart of latency (ms, linear) by percentile on a log "nines" axis, one line per
/// `(label, histogram of microseconds)`.
pub fn svg(series: &[(&str, &Histogram<u64>)], title: &str) -> String {
    let (w, hgt, pad) = (800.0, 450.0, 60.0);
    let max_nines = 5.0_f64;
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, h)| {
            h.iter_quantiles(10)
                .map(|v| {
                    let q = v.quantile_iterated_to().min(0.99999);
                    ((1.0 / (1.0 - q)).log10().min(max_nines), v.value_iterated_to() as f64 / 1000.0)
                })
                .collect()
        })
        .collect();
    let top = lines.iter().flatten().map(|p| p.1).fold(0.001, f64::max) * 1.1;
    let x = |n: f64| pad + n / max_nines * (w - 2.0 * pad);
    let y = |ms: f64| hgt - pad - ms / top * (hgt - 2.0 * pad);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        w / 2.0,
        title.replace('<', "&lt;")
    );
    for (n, label) in [(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%"), (5.0, "99.999%")] {
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle">{label}</text>"##,
            x(n),
            pad,
            hgt - pad,
            hgt - pad + 18.0
        );
    }
    for i in 0..=5 {
        let ms = top * i as f64 / 5.0;
        let _ = write!(
            s,
            r##"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{ms:.2}</text>"##,
            y(ms),
            w - pad,
            pad - 6.0,
            y(ms) + 4.0
        );
    }
    for (i, (points, (label, _))) in lines.iter().zip(series).enumerate() {
        let colour = SERIES_COLOURS[i % SERIES_COLOURS.len()];
        let path: Vec<String> = points.iter().map(|(n, ms)| format!("{:.1},{:.1}", x(*n), y(*ms))).collect();
        let _ =
            write!(s, r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##, path.join(" "));
        let ly = pad + 16.0 * i as f64;
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{colour}" stroke-width="2"/><text x="{3}" y="{4}">{5}</text>"##,
            pad + 10.0,
            ly,
            pad + 30.0,
            pad + 36.0,
            ly + 4.0,
            label.replace('<', "&lt;")
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">latency (ms)</text></svg>"#,
        w / 2.0,
        hgt - 12.0,
        hgt / 2.0,
        hgt / 2.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_report_the_union() {
        let mut a = crate::client::latency_histogram();
        let mut b = crate::client::latency_histogram();
        for us in 1..=900u64 {
            a.record(us * 1000).expect("record");
        }
        for us in 901..=1000u64 {
            b.record(us * 1000).expect("record");
        }
        a.add(&b).expect("merge");
        let p = Percentiles::of(&a);
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0);
        let chart = svg(&[("a", &a), ("b", &b)], "t");
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>"));
        assert_eq!(chart.matches("<polyline").count(), 2, "one line per series");
    }

    #[test]
    fn the_last_line_is_the_verdict_with_every_reason() {
        let mut r = Report { scenario: "storm".into(), ..Report::default() };
        r.judge(vec!["100 of 100 connections failed".into(), "b".into()]);
        let table = r.table();
        assert_eq!(table.lines().last(), Some("valid           false: 100 of 100 connections failed; b"));
        r.judge(Vec::new());
        assert_eq!(r.table().lines().last(), Some("valid           true"));
    }
}
