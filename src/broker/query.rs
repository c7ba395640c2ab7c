//! The query API in a cluster: a room this node does not follow (no member of it here) is
//! still the cluster's, so `GET /api/rooms/{room}` reads it from Redis instead of answering
//! "unknown room". A client whose recovery failed reloads through any node.
//!
//! Read-only and off the workers' path: the admin port's blocking question opens a connection
//! (socket timeouts of `cluster.timeout_ms`), reads the room's record, history stream and user
//! count, and answers by the same recovery rule as the home (`HomeRoom::history_since`, on a
//! room rebuilt from the read). Nothing is created: a room Redis does not know stays unknown.

use super::envelope;
use super::scripts;
use crate::ids::{RoomName, Seq};
use crate::query::{RoomDetail, Since};
use crate::room::{HomeRoom, RoomLimits};
use redis::Value;
use serde_json::value::RawValue;
use std::time::Duration;

/// Room `name` as the cluster holds it, `None` if Redis has no such room.
pub fn room_detail(
    client: &redis::Client,
    timeout: Duration,
    (name, since): (&str, &Since),
    limits: RoomLimits,
    now_ms: u64,
) -> Result<Option<RoomDetail>, String> {
    let room = RoomName::new(name).map_err(str::to_owned)?;
    let mut con = super::commands::connect(client, timeout).map_err(|e| e.to_string())?;
    let (meta, entries, online): (Vec<Value>, Value, u64) = redis::pipe()
        .cmd("HMGET")
        .arg(scripts::meta(name))
        .arg("epoch")
        .arg("seq")
        .arg("version")
        .arg("state")
        .cmd("XRANGE")
        .arg(scripts::stream(name))
        .arg("-")
        .arg("+")
        .cmd("HLEN")
        .arg(scripts::room_users(name))
        .query(&mut con)
        .map_err(|e| e.to_string())?;
    if meta.first().is_none_or(|epoch| *epoch == Value::Nil) {
        return Ok(None);
    }
    let mut parts = meta;
    parts.push(entries);
    let snapshot = envelope::parse_snapshot(&Value::Array(parts))?;
    let mut home = HomeRoom::new(room, 0, 1, limits, now_ms);
    home.set_clustered();
    home.adopt(&snapshot, now_ms);
    let since = since.since.map(|s| (s, since.epoch.as_deref()));
    let (frames, recovered) = home.history_since(since, Seq(snapshot.seq), now_ms);
    let events = crate::query::events_of(&frames);
    Ok(Some(RoomDetail {
        room: name.to_owned(),
        epoch: snapshot.epoch.to_string(),
        seq: snapshot.seq,
        version: snapshot.version,
        state: snapshot.state.as_deref().and_then(|s| RawValue::from_string(s.to_owned()).ok()),
        online,
        comment_rate: 0.0,
        created_at: 0,
        events,
        recovered,
        leaves: Default::default(),
        comments: Default::default(),
    }))
}
