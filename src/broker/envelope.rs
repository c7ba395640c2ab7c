//! What the room channels carry, and what a snapshot holds, decoded for the homes.
//!
//! A sequenced message is one line of header then the message itself (see
//! `scripts::sequence`): `<kind> <seq> <epoch> <version> <ts> <state length>\n`, the new state
//! (for a `state` message), then the JSON the members get. The broker wraps the JSON in its
//! WebSocket frame once per node, here, so the workers only share it. A presence report is `p`
//! and a JSON object from Redis's `cjson`: `o` online, `j`/`l` flat `[user, name, ...]`
//! lists, `x` when the lists were too long to carry, `r` flat `[kind, count, ...]`.

use crate::ids::RoomName;
use crate::shard::cluster::{Broadcast, ClusterOp, ClusterPresence, Snapshot};
use crate::wire::frame;
use redis::Value;
use std::sync::Arc;

/// A decoded channel message.
#[derive(Debug)]
pub enum Envelope {
    /// A sequenced message.
    Message(Broadcast),
    /// A presence report.
    Presence(ClusterPresence),
}

/// The control channel's message for `op` from node `node`: `x` and a JSON object
/// (`o` the node, `op` `kick` or `close_room`, `user`, `room`).
pub fn control(node: &str, op: &ClusterOp) -> Vec<u8> {
    let v = match op {
        ClusterOp::Kick { user, room } => {
            serde_json::json!({"o": node, "op": "kick", "user": &**user, "room": room.as_deref()})
        }
        ClusterOp::CloseRoom { room } => serde_json::json!({"o": node, "op": "close_room", "room": &**room}),
    };
    let mut out = b"x".to_vec();
    out.extend_from_slice(v.to_string().as_bytes());
    out
}

/// Decode a control channel message: the node it came from and the command.
pub fn parse_control(payload: &[u8]) -> Result<(String, ClusterOp), &'static str> {
    let json = payload.strip_prefix(b"x").ok_or("not a control message")?;
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|_| "control is not JSON")?;
    let node = v.get("o").and_then(serde_json::Value::as_str).ok_or("control without a node")?.to_owned();
    let room = |v: &serde_json::Value| -> Result<Option<RoomName>, &'static str> {
        match v.get("room").and_then(serde_json::Value::as_str) {
            None => Ok(None),
            Some(r) => RoomName::new(r).map(Some).map_err(|_| "control names a bad room"),
        }
    };
    let op = match v.get("op").and_then(serde_json::Value::as_str) {
        Some("kick") => {
            let user = v.get("user").and_then(serde_json::Value::as_str).ok_or("kick without a user")?;
            ClusterOp::Kick { user: Arc::from(user), room: room(&v)? }
        }
        Some("close_room") => ClusterOp::CloseRoom { room: room(&v)?.ok_or("close_room without a room")? },
        _ => return Err("unknown control op"),
    };
    Ok((node, op))
}

/// Decode one channel message; the error says what is wrong with it.
pub fn parse(payload: &[u8]) -> Result<Envelope, &'static str> {
    match payload.first() {
        Some(b'p') => parse_presence(&payload[1..]).map(Envelope::Presence),
        Some(b'e' | b's') => parse_message(payload).map(Envelope::Message),
        _ => Err("unknown message kind"),
    }
}

fn parse_message(payload: &[u8]) -> Result<Broadcast, &'static str> {
    let newline = memchr::memchr(b'\n', payload).ok_or("no header line")?;
    let head = std::str::from_utf8(&payload[..newline]).map_err(|_| "header is not text")?;
    let mut fields = head.split(' ');
    let kind = fields.next().ok_or("no kind")?;
    let mut number = || fields.next().ok_or("short header");
    let seq: u64 = number()?.parse().map_err(|_| "bad seq")?;
    let epoch: Box<str> = number()?.into();
    let version: u64 = number()?.parse().map_err(|_| "bad version")?;
    let ts_ms: u64 = number()?.parse().map_err(|_| "bad ts")?;
    let state_len: usize = number()?.parse().map_err(|_| "bad state length")?;
    let body = &payload[newline + 1..];
    if body.len() < state_len {
        return Err("state longer than the message");
    }
    let (state, json) = body.split_at(state_len);
    let state = match kind {
        "s" => Some((version, std::str::from_utf8(state).map_err(|_| "state is not text")?.into())),
        _ => None,
    };
    Ok(Broadcast {
        seq,
        epoch,
        state,
        ts_ms,
        frame: frame::text_frame_sized(json.len(), |out| out.extend_from_slice(json)),
    })
}

fn parse_presence(json: &[u8]) -> Result<ClusterPresence, &'static str> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|_| "presence is not JSON")?;
    let online = v.get("o").and_then(serde_json::Value::as_u64).ok_or("presence without online")?;
    // cjson writes an empty list as `{}`: anything but an array is empty.
    let flat =
        |key: &str| -> Vec<serde_json::Value> { v.get(key).and_then(|l| l.as_array()).cloned().unwrap_or_default() };
    let pairs = |key: &str| -> Vec<(Arc<str>, Arc<str>)> {
        flat(key).chunks_exact(2).filter_map(|p| Some((Arc::from(p[0].as_str()?), Arc::from(p[1].as_str()?)))).collect()
    };
    let reactions =
        flat("r").chunks_exact(2).filter_map(|p| Some((Box::from(p[0].as_str()?), p[1].as_u64()?))).collect();
    Ok(ClusterPresence { online, joined: pairs("j"), left: pairs("l"), overflow: v.get("x").is_some(), reactions })
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// Decode the reply of `scripts::snapshot`.
pub fn parse_snapshot(reply: &Value) -> Result<Snapshot, &'static str> {
    let Value::Array(parts) = reply else { return Err("snapshot is not a list") };
    let [epoch, seq, version, state, entries] = parts.as_slice() else { return Err("snapshot has not 5 parts") };
    let epoch: Box<str> = text(epoch).ok_or("snapshot without epoch")?.into();
    let seq = number(seq).ok_or("snapshot without seq")?;
    let version = number(version).ok_or("snapshot without version")?;
    let state = text(state).map(Box::from);
    let Value::Array(entries) = entries else { return Err("snapshot history is not a list") };
    let mut history = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else { return Err("history entry is not a list") };
        let [id, Value::Array(fields)] = entry.as_slice() else { return Err("history entry has no fields") };
        let entry_seq =
            text(id).and_then(|id| id.split('-').next()?.parse().ok()).ok_or("history id is not <seq>-1")?;
        let mut ts_ms = 0;
        let mut json: &[u8] = &[];
        for pair in fields.chunks_exact(2) {
            match (text(&pair[0]), &pair[1]) {
                (Some("t"), v) => ts_ms = number(v).unwrap_or(0),
                (Some("p"), Value::BulkString(b)) => json = b,
                _ => {}
            }
        }
        let frame = frame::text_frame_sized(json.len(), |out| out.extend_from_slice(json));
        history.push(Broadcast { seq: entry_seq, epoch: epoch.clone(), state: None, ts_ms, frame });
    }
    Ok(Snapshot { epoch, seq, version, state, history })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &[u8] {
        frame::server_frames(frame).next().map(|(_, p)| p).expect("one frame")
    }

    #[test]
    fn a_message_carries_its_numbers_and_its_frame() {
        let Ok(Envelope::Message(m)) = parse(b"e 7 abc 0 1000 0\n{\"seq\":7}") else { panic!("a message") };
        assert_eq!((m.seq, &*m.epoch, m.ts_ms, m.state.is_none()), (7, "abc", 1000, true));
        assert_eq!(payload(&m.frame), b"{\"seq\":7}");
        let Ok(Envelope::Message(s)) = parse(b"s 8 abc 3 1001 7\n{\"a\":1}{\"seq\":8}") else { panic!("a state") };
        assert_eq!(s.state.as_ref().map(|(v, s)| (*v, &**s)), Some((3, "{\"a\":1}")));
        assert_eq!(payload(&s.frame), b"{\"seq\":8}");
    }

    #[test]
    fn broken_messages_are_refused_with_a_reason() {
        assert_eq!(parse(b"").err(), Some("unknown message kind"));
        assert_eq!(parse(b"e 7 abc").err(), Some("no header line"));
        assert_eq!(parse(b"e x abc 0 1 0\n{}").err(), Some("bad seq"));
        assert_eq!(parse(b"s 1 abc 0 1 99\n{}").err(), Some("state longer than the message"));
    }

    #[test]
    fn control_messages_round_trip() {
        let kick = ClusterOp::Kick { user: Arc::from("ann \"x\""), room: RoomName::new("live").ok() };
        assert_eq!(parse_control(&control("n-1", &kick)), Ok(("n-1".to_owned(), kick)));
        let all = ClusterOp::Kick { user: Arc::from("bob"), room: None };
        assert_eq!(parse_control(&control("n-2", &all)).map(|(_, op)| op), Ok(all));
        let close = ClusterOp::CloseRoom { room: RoomName::new("r").expect("room") };
        assert_eq!(parse_control(&control("n-3", &close)).map(|(_, op)| op), Ok(close));
        assert_eq!(parse_control(b"x{\"o\":\"n\",\"op\":\"dance\"}").err(), Some("unknown control op"));
    }

    #[test]
    fn presence_reads_cjson_lists_and_empty_tables() {
        let Ok(Envelope::Presence(p)) = parse(br#"p{"o":3,"j":["ann","Ann"],"l":{},"r":["clap",2]}"#) else {
            panic!("presence")
        };
        assert_eq!(p.online, 3);
        assert_eq!(p.joined, vec![(Arc::from("ann"), Arc::from("Ann"))]);
        assert!(p.left.is_empty() && !p.overflow);
        assert_eq!(p.reactions, vec![(Box::from("clap"), 2)]);
        let Ok(Envelope::Presence(big)) = parse(br#"p{"o":500,"x":1,"r":{}}"#) else { panic!("presence") };
        assert!(big.overflow && big.joined.is_empty());
    }

    #[test]
    fn a_snapshot_is_read_with_its_history() {
        let entry = |seq: u64| {
            Value::Array(vec![
                Value::BulkString(format!("{seq}-1").into_bytes()),
                Value::Array(vec![
                    Value::BulkString(b"t".to_vec()),
                    Value::BulkString(b"5".to_vec()),
                    Value::BulkString(b"p".to_vec()),
                    Value::BulkString(format!("{{\"seq\":{seq}}}").into_bytes()),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            Value::BulkString(b"ep".to_vec()),
            Value::BulkString(b"4".to_vec()),
            Value::BulkString(b"1".to_vec()),
            Value::Nil,
            Value::Array(vec![entry(3), entry(4)]),
        ]);
        let s = parse_snapshot(&reply).expect("snapshot");
        assert_eq!((&*s.epoch, s.seq, s.version, s.state.is_none()), ("ep", 4, 1, true));
        assert_eq!(s.history.iter().map(|m| (m.seq, m.ts_ms)).collect::<Vec<_>>(), [(3, 5), (4, 5)]);
        assert_eq!(payload(&s.history[1].frame), b"{\"seq\":4}");
    }
}
