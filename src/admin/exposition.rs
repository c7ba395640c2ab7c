//! `/metrics`: the merged [`Metrics`] in the Prometheus text format (version 0.0.4).
//!
//! The text is written by `prometheus-client` (the Prometheus project's own Rust client), not
//! by hand: it owns escaping, `_total` suffixes, `+Inf` buckets and float formatting. The
//! workers' counters are plain integers copied per scrape, so they are exposed through a
//! [`Collector`] that encodes constant values from one copy; no live metric objects (and no
//! atomics) exist anywhere. Names carry the `roomcast_` prefix and their base unit (seconds,
//! bytes); counters end in `_total`; labels are `listener`, `code`, `source`, `reason`, `op`,
//! `result` and `worker`.

use crate::metrics::{Metrics, Source, LATENCY_BUCKETS_US};
use crate::query::LeaveReason;
use crate::wire::ErrorCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::fmt;

/// The `Content-Type` of the text.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The text of one scrape.
pub(crate) fn encode(metrics: Metrics) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("roomcast");
    registry.register_collector(Box::new(Scrape(metrics)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Scrape(Metrics);

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A labelled family of counters (or gauges); every value is a `u64` except busy seconds.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let t = &self.0.totals;
        let e = &mut e;
        let c = MetricType::Counter;
        family(
            e,
            "connections_open",
            "Viewer connections open now.",
            MetricType::Gauge,
            t.connections_open.labelled().map(|(l, n)| ([("listener", l)], ConstGauge::new(n))),
        )?;
        family(
            e,
            "connects",
            "Viewer connections accepted.",
            c,
            t.connects.labelled().map(|(l, n)| ([("listener", l)], ConstCounter::new(n))),
        )?;
        family(
            e,
            "closes",
            "Viewer connections closed, by close code (other: any code not listed).",
            c,
            t.closes.labelled().map(|(code, n)| ([("code", code)], ConstCounter::new(n))),
        )?;
        gauge(e, "rooms", "Rooms that exist now.", t.rooms)?;
        family(
            e,
            "messages_published",
            "Messages sequenced by their room's home, by source.",
            c,
            Source::ALL.map(|s| ([("source", s.as_str())], ConstCounter::new(t.published.get(s)))),
        )?;
        counter(e, "deliveries", "Messages queued to viewer connections (one per member per message).", t.deliveries)?;
        counter(
            e,
            "socket_writes",
            "Write calls on viewer sockets (deliveries / writes = batching).",
            t.socket_writes,
        )?;
        counter(e, "sent_bytes", "Bytes written to viewer sockets.", t.bytes_out)?;
        counter(
            e,
            "slow_consumer_closes",
            "Connections closed with 4009 (could not keep up).",
            t.slow_consumer_closes,
        )?;
        counter(e, "comments_accepted", "Comments sequenced and sent to their room.", t.comments.accepted)?;
        family(
            e,
            "comments_rejected",
            "Comments refused, by the error code their sender got.",
            c,
            ErrorCode::ALL.map(|r| ([("reason", r.as_str())], ConstCounter::new(t.comments.rejected.get(r)))),
        )?;
        family(
            e,
            "ingest_commands",
            "Upstream commands (ingest socket and admin port), by op and result.",
            c,
            t.ingest.labelled().map(|(op, result, n)| ([("op", op), ("result", result)], ConstCounter::new(n))),
        )?;
        counter(e, "presence_ticks", "Presence intervals run.", t.presence_ticks)?;
        gauge(e, "online", "Distinct viewers summed over rooms.", t.online)?;
        family(
            e,
            "leaves",
            "Viewers that left a room, by reason.",
            c,
            LeaveReason::ALL.map(|r| ([("reason", r.as_str())], ConstCounter::new(t.leaves.get(r)))),
        )?;
        let h = &t.publish_to_write;
        let mut buckets: Vec<(f64, u64)> =
            LATENCY_BUCKETS_US.iter().map(|us| *us as f64 / 1e6).zip(h.buckets().iter().copied()).collect();
        buckets.push((f64::INFINITY, h.buckets()[LATENCY_BUCKETS_US.len()]));
        e.encode_descriptor(
            "publish_to_write_seconds",
            "Time from a message's sequencing to the first socket write carrying it.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            h.sum_us() as f64 / 1e6,
            h.count(),
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )?;
        let workers = &self.0.workers;
        family(
            e,
            "worker_busy_seconds",
            "Time each worker's loop spent handling events rather than waiting.",
            c,
            workers.iter().map(|w| ([("worker", w.worker.to_string())], ConstCounter::new(w.busy_us as f64 / 1e6))),
        )?;
        family(
            e,
            "worker_mailbox_depth",
            "Mail waiting in each worker's mailbox when it answered the scrape.",
            MetricType::Gauge,
            workers.iter().map(|w| ([("worker", w.worker.to_string())], ConstGauge::new(w.mailbox_depth))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WorkerId;
    use crate::metrics::{Counters, WorkerLoad};

    #[test]
    fn names_types_and_labels_follow_prometheus_conventions() {
        let mut t = Counters { deliveries: 7, ..Counters::default() };
        t.closes.record(4009);
        t.publish_to_write.record(75);
        let metrics = Metrics::of_worker(t, WorkerLoad { worker: WorkerId(3), busy_us: 1_500_000, mailbox_depth: 2 });
        let text = encode(metrics).expect("encodes");
        for line in [
            "# TYPE roomcast_deliveries_total counter",
            "roomcast_deliveries_total 7",
            "roomcast_closes_total{code=\"4009\"} 1",
            "roomcast_closes_total{code=\"other\"} 0",
            "# TYPE roomcast_rooms gauge",
            "# TYPE roomcast_publish_to_write_seconds histogram",
            "roomcast_publish_to_write_seconds_bucket{le=\"0.0001\"} 1",
            "roomcast_publish_to_write_seconds_bucket{le=\"+Inf\"} 1",
            "roomcast_publish_to_write_seconds_count 1",
            "roomcast_worker_busy_seconds_total{worker=\"3\"} 1.5",
            "roomcast_worker_mailbox_depth{worker=\"3\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
