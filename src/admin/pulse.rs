//! The dashboard's once-a-second frame: a [`Snapshot`] turned into rates and sparklines.
//!
//! The workers report totals since start; the dashboard wants "per second now" and the last
//! couple of minutes as a line. [`Pulse`] keeps the previous snapshot and a ring of points and
//! computes both. It is a cache for dashboards only (DESIGN.md: never for the query API),
//! pure (times come from the snapshots) and the same frame goes to every open dashboard.

use crate::query::{RoomSummary, Snapshot};
use serde::Serialize;
use std::collections::VecDeque;

/// Points a sparkline holds: two minutes at one snapshot a second.
pub(crate) const SERIES_POINTS: usize = 120;

/// One point of the sparklines.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    at_ms: u64,
    online: u64,
    connections: u64,
    deliveries_per_s: f64,
    comments_per_s: f64,
}

/// The sparklines, one array per line, oldest first.
#[derive(Debug, Default, PartialEq, Serialize)]
pub(crate) struct Series {
    at_ms: Vec<u64>,
    online: Vec<u64>,
    connections: Vec<u64>,
    deliveries_per_s: Vec<f64>,
    comments_per_s: Vec<f64>,
}

/// Counts of the last interval (between this snapshot and the one before).
#[derive(Debug, Default, PartialEq, Serialize)]
pub(crate) struct Interval {
    /// Milliseconds the interval spans (0 for the first frame).
    ms: u64,
    errors: u64,
    slow_consumer_closes: u64,
    write_stalls: u64,
    comments: u64,
    comments_rejected: u64,
    deliveries: u64,
}

/// Totals since start.
#[derive(Debug, Default, PartialEq, Serialize)]
pub(crate) struct Totals {
    deliveries: u64,
    comments: u64,
    comments_rejected: u64,
    slow_consumer_closes: u64,
    write_stalls: u64,
    errors: u64,
}

/// What `/admin/stream` sends once a second (`"type":"snapshot"`).
#[derive(Debug, PartialEq, Serialize)]
pub(crate) struct Frame {
    #[serde(rename = "type")]
    kind: &'static str,
    at_ms: u64,
    connections: u64,
    rooms: u64,
    online: u64,
    deliveries_per_s: f64,
    comments_per_s: f64,
    interval: Interval,
    totals: Totals,
    top_rooms: Vec<RoomSummary>,
    series: Series,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Pulse {
    previous: Option<Snapshot>,
    points: VecDeque<Point>,
    capacity: usize,
}

/// `count` events over `ms` milliseconds, per second; 0 for an empty interval.
fn per_second(count: u64, ms: u64) -> f64 {
    if ms == 0 {
        return 0.0;
    }
    count as f64 * 1000.0 / ms as f64
}

impl Pulse {
    /// A pulse whose sparklines hold `capacity` points.
    pub(crate) fn new(capacity: usize) -> Self {
        Self { previous: None, points: VecDeque::with_capacity(capacity), capacity: capacity.max(1) }
    }

    /// Forget everything (nobody watched for a while: the next frame starts a new line).
    pub(crate) fn reset(&mut self) {
        self.previous = None;
        self.points.clear();
    }

    /// Take the next snapshot; returns the frame to send.
    pub(crate) fn observe(&mut self, mut snapshot: Snapshot) -> Frame {
        let top_rooms = std::mem::take(&mut snapshot.top_rooms);
        let s = &snapshot;
        // A counter that went backwards (whatever counted it restarted) counts as 0.
        let interval = match &self.previous {
            Some(p) if s.at_ms > p.at_ms => Interval {
                ms: s.at_ms - p.at_ms,
                errors: s.errors.saturating_sub(p.errors),
                slow_consumer_closes: s.slow_consumer_closes.saturating_sub(p.slow_consumer_closes),
                write_stalls: s.write_stalls.saturating_sub(p.write_stalls),
                comments: s.comments.saturating_sub(p.comments),
                comments_rejected: s.comments_rejected.saturating_sub(p.comments_rejected),
                deliveries: s.deliveries.saturating_sub(p.deliveries),
            },
            _ => Interval::default(),
        };
        let deliveries_per_s = per_second(interval.deliveries, interval.ms);
        let comments_per_s = per_second(interval.comments, interval.ms);
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(Point {
            at_ms: s.at_ms,
            online: s.online,
            connections: s.connections,
            deliveries_per_s,
            comments_per_s,
        });
        let mut series = Series::default();
        for p in &self.points {
            series.at_ms.push(p.at_ms);
            series.online.push(p.online);
            series.connections.push(p.connections);
            series.deliveries_per_s.push(p.deliveries_per_s);
            series.comments_per_s.push(p.comments_per_s);
        }
        let frame = Frame {
            kind: "snapshot",
            at_ms: s.at_ms,
            connections: s.connections,
            rooms: s.rooms,
            online: s.online,
            deliveries_per_s,
            comments_per_s,
            interval,
            totals: Totals {
                deliveries: s.deliveries,
                comments: s.comments,
                comments_rejected: s.comments_rejected,
                slow_consumer_closes: s.slow_consumer_closes,
                write_stalls: s.write_stalls,
                errors: s.errors,
            },
            top_rooms,
            series,
        };
        self.previous = Some(snapshot);
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(at_ms: u64, online: u64, comments: u64, errors: u64) -> Snapshot {
        Snapshot { at_ms, online, comments, errors, deliveries: comments * 10, ..Snapshot::default() }
    }

    #[test]
    fn rates_and_interval_counts_come_from_consecutive_snapshots() {
        let mut pulse = Pulse::new(3);
        let first = pulse.observe(snap(1_000, 5, 100, 1));
        assert_eq!((first.comments_per_s, first.interval.ms, first.totals.comments), (0.0, 0, 100));
        let second = pulse.observe(snap(3_000, 6, 130, 4));
        assert_eq!((second.comments_per_s, second.deliveries_per_s), (15.0, 150.0));
        assert_eq!((second.interval.errors, second.interval.comments, second.interval.ms), (3, 30, 2_000));
        let back = pulse.observe(snap(4_000, 6, 10, 0));
        assert_eq!((back.comments_per_s, back.interval.errors), (0.0, 0), "a counter that went back is no rate");
        let fourth = pulse.observe(snap(5_000, 9, 20, 0));
        assert_eq!(fourth.series.online, [6, 6, 9], "the ring keeps the last 3 points");
        assert_eq!(fourth.series.comments_per_s, [15.0, 0.0, 10.0]);
        pulse.reset();
        assert_eq!(pulse.observe(snap(9_000, 1, 0, 0)).series.at_ms, [9_000]);
    }

    #[test]
    fn the_frame_is_tagged_and_carries_the_top_rooms() {
        let mut pulse = Pulse::new(SERIES_POINTS);
        let mut s = snap(1, 2, 3, 4);
        s.top_rooms.push(RoomSummary {
            room: "r".into(),
            online: 2,
            seq: 3,
            epoch: "e".into(),
            comment_rate: 0.5,
            version: 1,
        });
        let v = serde_json::to_value(pulse.observe(s)).expect("json");
        assert_eq!(v["type"], "snapshot");
        assert_eq!(
            v["top_rooms"][0],
            json!({"room": "r", "online": 2, "seq": 3, "epoch": "e", "comment_rate": 0.5, "version": 1})
        );
        assert_eq!(v["series"]["online"], json!([2]));
    }
}
