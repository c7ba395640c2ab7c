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
use crate::sink::{SinkMetrics, SinkStats};
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
            "worker_write_stalls",
            "Chunks of 64 socket writes that took over 5 ms: the worker lost its core mid fan-out.",
            c,
            workers.iter().map(|w| ([("worker", w.worker.to_string())], ConstCounter::new(w.write_stalls))),
        )?;
        family(
            e,
            "worker_write_stall_seconds",
            "How long those chunks of writes took, in all.",
            c,
            workers
                .iter()
                .map(|w| ([("worker", w.worker.to_string())], ConstCounter::new(w.write_stalled_us as f64 / 1e6))),
        )?;
        family(
            e,
            "worker_mailbox_depth",
            "Mail waiting in each worker's mailbox when it answered the scrape.",
            MetricType::Gauge,
            workers.iter().map(|w| ([("worker", w.worker.to_string())], ConstGauge::new(w.mailbox_depth))),
        )?;
        if let Some(cluster) = &self.0.cluster {
            encode_cluster(e, cluster)?;
        }
        match &self.0.sinks {
            Some(sinks) => encode_sinks(e, sinks),
            None => Ok(()),
        }
    }
}

/// The cluster broker of a cluster node (none on a single node).
fn encode_cluster(e: &mut DescriptorEncoder<'_>, c: &crate::broker::ClusterReport) -> fmt::Result {
    family(
        e,
        "cluster_node_info",
        "This node's id in its cluster (value 1).",
        MetricType::Gauge,
        [([("node", c.node.clone())], ConstGauge::new(1))],
    )?;
    gauge(
        e,
        "broker_up",
        "1 while Redis answers the broker, 0 while publishes answer unavailable.",
        u64::from(c.redis == "up"),
    )?;
    gauge(
        e,
        "cluster_nodes",
        "Live nodes in the cluster (heartbeat not expired), this one included.",
        c.nodes.len() as u64,
    )?;
    family(
        e,
        "broker_publishes",
        "Messages this node sent to be sequenced, by outcome (ok, unavailable).",
        MetricType::Counter,
        [("ok", c.publishes_ok), ("unavailable", c.publishes_unavailable)]
            .map(|(outcome, n)| ([("outcome", outcome)], ConstCounter::new(n))),
    )?;
    counter(e, "broker_messages", "Messages received from the room channels this node follows.", c.messages)?;
    ConstGauge::new(c.lag_ms as f64 / 1e3).encode(e.encode_descriptor(
        "broker_lag_seconds",
        "Publish-to-receipt time of the latest message received from the cluster.",
        None,
        MetricType::Gauge,
    )?)?;
    gauge(e, "broker_followed_rooms", "Room channels this node is subscribed to.", c.subscribed_rooms)?;
    counter(e, "broker_reconnects", "Broker connections to Redis that failed and were opened again.", c.reconnects)?;
    counter(e, "broker_commands", "Redis calls the broker made (pipelined script calls included).", c.commands)
}

/// The durable sinks: one series per sink (label `sink`: `file`, `redis`, `webhook`) and the
/// spool they share. The last error is an info-style series (value 1, the text in `error`,
/// cut to [`ERROR_LABEL_CHARS`]): one per sink at most, so it costs no cardinality.
fn encode_sinks(e: &mut DescriptorEncoder<'_>, m: &SinkMetrics) -> fmt::Result {
    let (c, g) = (MetricType::Counter, MetricType::Gauge);
    let per_sink = |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, kind, value: fn(&SinkStats) -> u64| {
        let mut metric = e.encode_descriptor(name, help, None, kind)?;
        for s in &m.sinks {
            let labels = [("sink", s.name)];
            match kind {
                MetricType::Counter => ConstCounter::new(value(s)).encode(metric.encode_family(&labels)?)?,
                _ => ConstGauge::new(value(s)).encode(metric.encode_family(&labels)?)?,
            }
        }
        Ok::<(), fmt::Error>(())
    };
    per_sink(e, "sink_healthy", "1 while the sink's writes succeed, 0 from a failure until one succeeds.", g, |s| {
        u64::from(s.healthy)
    })?;
    per_sink(e, "sink_durable", "1 if acks wait for the sink (sink.ack = durable counts it).", g, |s| {
        u64::from(s.durable)
    })?;
    per_sink(e, "sink_records_written", "Records the sink acknowledged, replays included.", c, |s| s.records_written)?;
    per_sink(e, "sink_batches", "Successful writes (fsyncs, pipelines, requests).", c, |s| s.batches)?;
    per_sink(e, "sink_retries", "Failed writes that will be retried.", c, |s| s.retries)?;
    per_sink(e, "sink_spooled_records", "Records ever put in the sink's spool.", c, |s| s.spooled_records)?;
    per_sink(e, "sink_rejected_records", "Records the sink refused for good (kept in rejected.jsonl).", c, |s| {
        s.rejected_records
    })?;
    per_sink(e, "sink_lag_records", "Records handed to the sink that it does not hold yet.", g, |s| s.lag_records)?;
    family(
        e,
        "sink_lag_seconds",
        "Age of the oldest record handed to the sink that it does not hold yet (0: none).",
        g,
        m.sinks.iter().map(|s| ([("sink", s.name)], ConstGauge::new(s.lag_ms as f64 / 1e3))),
    )?;
    per_sink(e, "sink_spool_records", "Undelivered records in the sink's spool.", g, |s| s.spool_records)?;
    per_sink(e, "sink_spool_bytes", "Undelivered bytes in the sink's spool.", g, |s| s.spool_bytes)?;
    family(
        e,
        "sink_last_error_info",
        "The sink's latest error (value 1; none before the first).",
        g,
        m.sinks.iter().filter_map(|s| {
            let error: String = s.last_error.as_deref()?.chars().take(ERROR_LABEL_CHARS).collect();
            Some(([("sink", s.name.to_owned()), ("error", error)], ConstGauge::new(1)))
        }),
    )?;
    gauge(e, "spool_bytes", "Undelivered bytes in all spools.", m.spool_bytes)?;
    gauge(
        e,
        "spool_max_bytes",
        "The spools' limit (sink.spool.max_bytes); past it comments are refused.",
        m.spool_max_bytes,
    )?;
    gauge(e, "sink_queue_records", "Records waiting between the rooms and the sinks.", m.queued_records as u64)?;
    gauge(
        e,
        "sinks_accepting",
        "1 while new comments are taken, 0 while they are refused (spool full).",
        u64::from(m.accepting),
    )
}

/// The longest last-error text a label carries.
const ERROR_LABEL_CHARS: usize = 200;

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
        let metrics = Metrics::of_worker(
            t,
            WorkerLoad {
                worker: WorkerId(3),
                busy_us: 1_500_000,
                mailbox_depth: 2,
                write_stalls: 2,
                write_stalled_us: 35_000,
            },
        );
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
            "# TYPE roomcast_worker_write_stalls_total counter",
            "roomcast_worker_write_stalls_total{worker=\"3\"} 2",
            "roomcast_worker_write_stall_seconds_total{worker=\"3\"} 0.035",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn sinks_are_one_series_each_with_the_last_error_as_info() {
        let file = SinkStats { name: "file", durable: true, healthy: true, records_written: 9, ..SinkStats::default() };
        let hook = SinkStats {
            name: "webhook",
            durable: true,
            retries: 3,
            lag_records: 4,
            lag_ms: 1_500,
            spool_bytes: 512,
            last_error: Some("HTTP 500 \"oops\"".into()),
            ..SinkStats::default()
        };
        let metrics = Metrics {
            sinks: Some(SinkMetrics {
                sinks: vec![file, hook],
                spool_bytes: 512,
                spool_max_bytes: 1 << 30,
                accepting: true,
                ..SinkMetrics::default()
            }),
            ..Metrics::default()
        };
        let text = encode(metrics).expect("encodes");
        for line in [
            "# TYPE roomcast_sink_retries_total counter",
            "roomcast_sink_records_written_total{sink=\"file\"} 9",
            "roomcast_sink_retries_total{sink=\"webhook\"} 3",
            "roomcast_sink_healthy{sink=\"file\"} 1",
            "roomcast_sink_healthy{sink=\"webhook\"} 0",
            "roomcast_sink_lag_records{sink=\"webhook\"} 4",
            "roomcast_sink_lag_seconds{sink=\"webhook\"} 1.5",
            "roomcast_sink_spool_bytes{sink=\"webhook\"} 512",
            "roomcast_sink_last_error_info{sink=\"webhook\",error=\"HTTP 500 \\\"oops\\\"\"} 1",
            "roomcast_spool_max_bytes 1073741824",
            "roomcast_sinks_accepting 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("roomcast_sink_last_error_info{sink=\"file\""), "no error, no series:\n{text}");
    }
}
