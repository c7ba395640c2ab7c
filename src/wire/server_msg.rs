//! Encoders of server -> client messages (PROTOCOL.md "Server to client").
//!
//! Each function appends one JSON object, the frame payload, to `out`; callers wrap it with
//! [`super::frame::text_frame_with`] so the payload is written once, in place. Raw JSON
//! (event `data`, room `state`) is copied through verbatim: it was validated when it came in.
//! Strings are escaped with a fast path for the common case (nothing to escape) and serde_json
//! otherwise; integers with `itoa` (no formatter machinery). Nothing here allocates beyond `out`.

use super::{ErrorCode, Ref};
use std::io::Write;

/// Append `s` as a JSON string literal.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    // A fold without early exit, so the compiler checks many bytes per instruction.
    let needs_escape = s.bytes().fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn head(out: &mut Vec<u8>, op: &str) {
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.push(b'"');
}

fn field_str(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    push_str(out, value);
}

fn field_u64(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    push_u64(out, value);
}

fn field_raw(out: &mut Vec<u8>, name: &str, raw: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(raw.as_bytes());
}

/// What `hello` tells a new connection.
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    /// The connection's id.
    pub conn: u64,
    /// The user it is.
    pub user: &'a str,
    /// After this much silence the server pings.
    pub heartbeat_ms: u64,
    /// Largest client message.
    pub max_message: usize,
    /// The window to draw a reconnect delay from, `[min, max]` ms.
    pub reconnect_ms: (u64, u64),
}

/// `hello`: the first message on every connection.
pub fn hello(out: &mut Vec<u8>, h: Hello<'_>) {
    head(out, "hello");
    field_u64(out, "conn", h.conn);
    field_str(out, "user", h.user);
    field_u64(out, "heartbeat_ms", h.heartbeat_ms);
    field_u64(out, "max_message", h.max_message as u64);
    let mut window = Vec::with_capacity(24);
    let _ = write!(window, "[{},{}]", h.reconnect_ms.0, h.reconnect_ms.1);
    field_raw(out, "reconnect_ms", std::str::from_utf8(&window).unwrap_or("null"));
    out.push(b'}');
}

/// The `ref` of the op a reply answers, when it had one.
fn field_ref(out: &mut Vec<u8>, reference: Option<&Ref>) {
    if let Some(r) = reference {
        field_raw(out, "ref", &r.0);
    }
}

/// What a `joined` reports about the room.
#[derive(Debug, Clone, Copy)]
pub struct Joined<'a> {
    /// The room.
    pub room: &'a str,
    /// Its latest seq.
    pub seq: u64,
    /// Its epoch.
    pub epoch: &'a str,
    /// Whether the replay before it is exactly what the client missed.
    pub recovered: bool,
    /// Distinct viewers.
    pub online: u64,
    /// The room state (raw JSON), if any.
    pub state: Option<&'a str>,
}

/// `joined`: the answer to `join` (with the op's `ref`), after any replayed events.
pub fn joined(out: &mut Vec<u8>, j: Joined<'_>, reference: Option<&Ref>) {
    let Joined { room, seq, epoch, recovered, online, state } = j;
    head(out, "joined");
    field_ref(out, reference);
    field_str(out, "room", room);
    field_u64(out, "seq", seq);
    field_str(out, "epoch", epoch);
    field_raw(out, "recovered", if recovered { "true" } else { "false" });
    field_u64(out, "online", online);
    field_raw(out, "state", state.unwrap_or("null"));
    out.push(b'}');
}

/// `left`: the answer to `leave` (with its `ref`), or a kick / room close (with a reason).
pub fn left(out: &mut Vec<u8>, room: &str, reason: Option<&str>, reference: Option<&Ref>) {
    head(out, "left");
    field_ref(out, reference);
    field_str(out, "room", room);
    if let Some(reason) = reason {
        field_str(out, "reason", reason);
    }
    out.push(b'}');
}

/// `event`: a sequenced message of a room.
pub fn event(out: &mut Vec<u8>, room: &str, seq: u64, kind: &str, data: &str, ts_ms: u64) {
    head(out, "event");
    field_str(out, "room", room);
    field_u64(out, "seq", seq);
    field_str(out, "type", kind);
    field_raw(out, "data", data);
    field_u64(out, "ts", ts_ms);
    out.push(b'}');
}

/// `state`: a room's new state object, sequenced like an event.
pub fn state(out: &mut Vec<u8>, room: &str, seq: u64, version: u64, state: &str) {
    head(out, "state");
    field_str(out, "room", room);
    field_u64(out, "seq", seq);
    field_u64(out, "version", version);
    field_raw(out, "state", state);
    out.push(b'}');
}

/// One viewer of a `presence` list: `{"user":..,"name":..}`.
pub fn viewer(out: &mut Vec<u8>, user: &str, name: &str) {
    viewer_prefix(out, user);
    out.extend_from_slice(b"\"name\":");
    push_str(out, name);
    out.push(b'}');
}

/// The start of [`viewer`]'s object up to and including the comma after the user id: equal
/// for two entries exactly when their user ids are equal.
pub fn viewer_prefix(out: &mut Vec<u8>, user: &str) {
    out.extend_from_slice(b"{\"user\":");
    push_str(out, user);
    out.push(b',');
}

/// `presence`: the coalesced online count, with `joined`/`left` lists for small rooms. The
/// lists are given encoded: the inside of each JSON array, viewers written by [`viewer`]
/// separated by commas.
pub fn presence(out: &mut Vec<u8>, room: &str, online: u64, lists: Option<(&[u8], &[u8])>) {
    head(out, "presence");
    field_str(out, "room", room);
    field_u64(out, "online", online);
    if let Some((joined, left)) = lists {
        out.extend_from_slice(b",\"joined\":[");
        out.extend_from_slice(joined);
        out.extend_from_slice(b"],\"left\":[");
        out.extend_from_slice(left);
        out.push(b']');
    }
    out.push(b'}');
}

/// `reactions`: counts by kind in the last interval.
pub fn reactions(out: &mut Vec<u8>, room: &str, counts: &[(&str, u64)]) {
    head(out, "reactions");
    field_str(out, "room", room);
    out.extend_from_slice(b",\"counts\":{");
    for (i, (kind, n)) in counts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, kind);
        out.push(b':');
        push_u64(out, *n);
    }
    out.extend_from_slice(b"}}");
}

/// `ack`: a comment (or refresh) was accepted; `seq` is the comment's.
pub fn ack(out: &mut Vec<u8>, reference: Option<&Ref>, seq: Option<u64>) {
    head(out, "ack");
    field_raw(out, "ref", reference.map_or("null", |r| &r.0));
    match seq {
        Some(seq) => field_u64(out, "seq", seq),
        None => field_raw(out, "seq", "null"),
    }
    out.push(b'}');
}

/// `pong`: the answer to `ping` (with its `ref`).
pub fn pong(out: &mut Vec<u8>, reference: Option<&Ref>) {
    head(out, "pong");
    field_ref(out, reference);
    out.push(b'}');
}

/// `error`: a request was refused (with the op's `ref`, and the room when it is about one);
/// the connection stays open.
pub fn error(out: &mut Vec<u8>, reference: Option<&Ref>, room: Option<&str>, code: ErrorCode, message: &str) {
    head(out, "error");
    field_ref(out, reference);
    if let Some(room) = room {
        field_str(out, "room", room);
    }
    field_str(out, "code", code.as_str());
    field_str(out, "message", message);
    out.push(b'}');
}

/// The `data` object of a comment event.
pub fn comment_data(out: &mut Vec<u8>, id: &str, user: &str, name: &str, text: &str) {
    out.extend_from_slice(b"{\"id\":");
    push_str(out, id);
    field_str(out, "user", user);
    field_str(out, "name", name);
    field_str(out, "text", text);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(f: impl FnOnce(&mut Vec<u8>)) -> Value {
        let mut out = Vec::new();
        f(&mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn strings_round_trip_whatever_they_hold() {
        for s in ["plain", "quote \" back \\ slash", "line\nbreak\ttab\u{1}", "ünïcödé 🎉", ""] {
            let v = parse(|o| comment_data(o, "1-2", s, s, s));
            assert_eq!(v, json!({"id": "1-2", "user": s, "name": s, "text": s}));
        }
    }

    #[test]
    fn every_message_has_the_protocol_shape() {
        let h = Hello { conn: 7, user: "al", heartbeat_ms: 25_000, max_message: 4096, reconnect_ms: (1000, 5000) };
        assert_eq!(
            parse(|o| hello(o, h)),
            json!({"op":"hello","conn":7,"user":"al","heartbeat_ms":25000,"max_message":4096,"reconnect_ms":[1000,5000]})
        );
        let j = Joined { room: "r", seq: 3, epoch: "ab", recovered: true, online: 2, state: Some(r#"{"a":1}"#) };
        assert_eq!(
            parse(|o| joined(o, j, None)),
            json!({"op":"joined","room":"r","seq":3,"epoch":"ab","recovered":true,"online":2,"state":{"a":1}})
        );
        let j = Joined { room: "r", seq: 0, epoch: "e", recovered: false, online: 0, state: None };
        let r = Ref("\"j\"".into());
        assert_eq!(parse(|o| joined(o, j, Some(&r)))["state"], Value::Null);
        assert_eq!(parse(|o| joined(o, j, Some(&r)))["ref"], "j");
        assert_eq!(parse(|o| left(o, "r", Some("kicked"), None)), json!({"op":"left","room":"r","reason":"kicked"}));
        assert_eq!(parse(|o| left(o, "r", None, Some(&r))), json!({"op":"left","ref":"j","room":"r"}));
        assert_eq!(
            parse(|o| event(o, "r", 9, "gift", r#"[1,"x"]"#, 123)),
            json!({"op":"event","room":"r","seq":9,"type":"gift","data":[1,"x"],"ts":123})
        );
        assert_eq!(
            parse(|o| state(o, "r", 2, 1, r#"{"live":true}"#)),
            json!({"op":"state","room":"r","seq":2,"version":1,"state":{"live":true}})
        );
        let mut joined = Vec::new();
        viewer(&mut joined, "u", "U");
        joined.push(b',');
        viewer(&mut joined, "v\"", "V");
        assert_eq!(
            parse(|o| presence(o, "r", 2, Some((&joined, b"")))),
            json!({"op":"presence","room":"r","online":2,"joined":[{"user":"u","name":"U"},{"user":"v\"","name":"V"}],"left":[]})
        );
        assert_eq!(parse(|o| presence(o, "r", 500, None)), json!({"op":"presence","room":"r","online":500}));
        assert_eq!(
            parse(|o| reactions(o, "r", &[("❤", 3), ("fire", 1)])),
            json!({"op":"reactions","room":"r","counts":{"❤":3,"fire":1}})
        );
        let r = Ref("\"c-1\"".into());
        assert_eq!(parse(|o| ack(o, Some(&r), Some(4))), json!({"op":"ack","ref":"c-1","seq":4}));
        assert_eq!(parse(|o| pong(o, None)), json!({"op":"pong"}));
        assert_eq!(parse(|o| pong(o, Some(&r))), json!({"op":"pong","ref":"c-1"}));
        assert_eq!(
            parse(|o| error(o, Some(&Ref("12".into())), Some("r"), ErrorCode::NotJoined, "no")),
            json!({"op":"error","ref":12,"room":"r","code":"not_joined","message":"no"})
        );
    }
}
