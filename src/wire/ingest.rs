//! Decoding of ingest commands and encoding of their replies (PROTOCOL.md "Ingest socket").
//!
//! One line is one JSON object. It is parsed with serde_json into borrowed fields; `data` and
//! `state` stay raw JSON ([`RawValue`]) and are copied verbatim into the frames, never
//! re-serialized. serde_json (not simd-json) because only it can hand out raw values; at about
//! 0.2 us a line it is not the bottleneck (DESIGN.md). Unknown fields are ignored.

use super::ErrorCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::Write;

/// A decoded ingest command.
#[derive(Debug)]
pub enum IngestCmd<'a> {
    /// Authenticate the connection.
    Auth {
        /// The ingest token.
        token: Cow<'a, str>,
    },
    /// Connection options.
    Hello {
        /// Whether successful commands get a reply.
        acks: bool,
    },
    /// Publish an event to one or more rooms.
    Publish {
        /// The rooms (one when given as `room`).
        rooms: Vec<Cow<'a, str>>,
        /// Whether the rooms were given as a `rooms` array (the reply then carries `seqs`).
        many: bool,
        /// The event `type`.
        kind: Cow<'a, str>,
        /// The event `data` (JSON `null` when absent).
        data: &'a RawValue,
    },
    /// Replace a room's state object.
    State {
        /// The room.
        room: Cow<'a, str>,
        /// The new state (a JSON object).
        state: &'a RawValue,
    },
    /// Close a user's connections (4010), or take it out of one room.
    Kick {
        /// The user id.
        user: Cow<'a, str>,
        /// Only this room.
        room: Option<Cow<'a, str>>,
    },
    /// Take a comment back (moderation).
    DeleteComment {
        /// The room.
        room: Cow<'a, str>,
        /// The comment's id (`<epoch>-<seq>`, as in its event's `data.id`).
        id: Cow<'a, str>,
    },
    /// Close a room.
    CloseRoom {
        /// The room.
        room: Cow<'a, str>,
        /// Why (informational).
        reason: Option<Cow<'a, str>>,
    },
}

/// A command and whether it wants a reply.
#[derive(Debug)]
pub struct IngestLine<'a> {
    /// The command.
    pub cmd: IngestCmd<'a>,
    /// False when the line said `"ack":false`.
    pub ack: bool,
}

/// A line that could not be decoded: the error reply to write.
#[derive(Debug, PartialEq, Eq)]
pub struct IngestError {
    /// [`ErrorCode::BadRequest`] or [`ErrorCode::UnknownOp`].
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// The op the line named, when it got that far (for counting refusals by op).
    pub op: Option<&'static str>,
}

/// The ops this module decodes, as static names.
const OPS: [&str; 7] = ["auth", "hello", "publish", "state", "kick", "close_room", "delete_comment"];

#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    rooms: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    state: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    acks: Option<bool>,
    ack: Option<bool>,
}

fn bad(message: impl Into<String>) -> IngestError {
    IngestError { code: ErrorCode::BadRequest, message: message.into(), op: None }
}

fn required<'a>(field: Option<Cow<'a, str>>, name: &str) -> Result<Cow<'a, str>, IngestError> {
    field.ok_or_else(|| bad(format!("missing field `{name}`")))
}

/// Deepest nesting of arrays and objects accepted in `data` and `state`: they are forwarded
/// verbatim to every viewer, whose JSON parsers have limits of their own (serde_json stops at
/// 128, Python's at its recursion limit); 64 leaves room for any real payload.
pub const MAX_DATA_DEPTH: usize = 64;

/// Longest comment id accepted by `delete_comment`.
pub const MAX_COMMENT_ID_BYTES: usize = 64;

/// Refuse a raw value nested deeper than [`MAX_DATA_DEPTH`] (brackets inside strings do not
/// count).
fn check_depth(value: &RawValue, field: &str) -> Result<(), IngestError> {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in value.get().as_bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_DATA_DEPTH {
        return Err(bad(format!(
            "`{field}` nests {deepest} levels deep; at most {MAX_DATA_DEPTH} are forwarded to viewers"
        )));
    }
    Ok(())
}

/// Decode one line (without its `\n`; a trailing `\r` is tolerated).
pub fn decode_ingest_line(line: &[u8]) -> Result<IngestLine<'_>, IngestError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut raw: RawLine<'_> = serde_json::from_slice(line).map_err(|e| bad(explain(&e, line)))?;
    let ack = raw.ack.unwrap_or(true);
    let op = required(raw.op.take(), "op")?;
    let named = OPS.iter().find(|o| **o == &*op).copied();
    let cmd = decode_cmd(&op, raw).map_err(|e| IngestError { op: named, ..e })?;
    Ok(IngestLine { cmd, ack })
}

/// The refusal of a line serde_json would not decode, naming the field at fault: the line is
/// decoded again with the path tracked, on this error path only, so that a good line's decode
/// pays nothing for it.
fn explain(e: &serde_json::Error, line: &[u8]) -> String {
    let mut de = serde_json::Deserializer::from_slice(line);
    match serde_path_to_error::deserialize::<_, RawLine<'_>>(&mut de) {
        Err(at) => json_error(at.inner(), &at.path().to_string(), line),
        // The value decoded; what followed it did not (trailing characters).
        Ok(_) => json_error(e, "", line),
    }
}

/// What a person should read for a line serde_json refused (PROTOCOL.md: what was wrong, never
/// a parser's internal state such as this module's `RawLine`).
fn json_error(e: &serde_json::Error, path: &str, line: &[u8]) -> String {
    use serde_json::error::Category;
    const ONE_OBJECT: &str = r#"a command must be one JSON object, like {"op":"publish","room":"r","type":"t"}"#;
    let at = e.column();
    match e.classify() {
        Category::Eof if line.iter().all(u8::is_ascii_whitespace) => format!("empty line: {ONE_OBJECT}"),
        Category::Eof => format!("not valid JSON: the line ends early (at column {at})"),
        Category::Syntax | Category::Io => format!("not valid JSON (at column {at})"),
        Category::Data if !line.trim_ascii_start().starts_with(b"{") => ONE_OBJECT.to_owned(),
        Category::Data => {
            // serde_json's text ends with its own " at line L column C"; the field's name says more.
            let text = e.to_string();
            let what = text.rsplit_once(" at line ").map_or(text.as_str(), |(what, _)| what);
            format!("`{path}`: {what}")
        }
    }
}

fn decode_cmd<'a>(op: &str, raw: RawLine<'a>) -> Result<IngestCmd<'a>, IngestError> {
    Ok(match op {
        "auth" => IngestCmd::Auth { token: required(raw.token, "token")? },
        "hello" => IngestCmd::Hello { acks: raw.acks.unwrap_or(true) },
        "publish" => {
            let (rooms, many) = match (raw.room, raw.rooms) {
                (Some(room), None) => (vec![room], false),
                (None, Some(rooms)) => (rooms, true),
                (Some(_), Some(_)) => return Err(bad("give `room` or `rooms`, not both")),
                (None, None) => return Err(bad("missing field `room` (or `rooms`)")),
            };
            let kind = required(raw.kind, "type")?;
            if let Some(twice) = rooms.iter().enumerate().find_map(|(i, r)| rooms[..i].contains(r).then_some(r)) {
                return Err(bad(format!("`rooms` lists {twice:?} twice: each room is published once per command")));
            }
            let data = raw.data.unwrap_or(RawValue::NULL);
            check_depth(data, "data")?;
            IngestCmd::Publish { rooms, many, kind, data }
        }
        "state" => {
            let state = raw.state.ok_or_else(|| bad("missing field `state`"))?;
            if !state.get().starts_with('{') {
                return Err(bad("`state` must be a JSON object"));
            }
            check_depth(state, "state")?;
            IngestCmd::State { room: required(raw.room, "room")?, state }
        }
        "kick" => IngestCmd::Kick { user: required(raw.user, "user")?, room: raw.room },
        "close_room" => IngestCmd::CloseRoom { room: required(raw.room, "room")?, reason: raw.reason },
        "delete_comment" => {
            let id = required(raw.id, "id")?;
            if id.is_empty() || id.len() > MAX_COMMENT_ID_BYTES || id.chars().any(char::is_control) {
                return Err(bad(format!(
                    "`id` must be a comment id such as \"1f3a-12\" (1..={MAX_COMMENT_ID_BYTES} bytes)"
                )));
            }
            IngestCmd::DeleteComment { room: required(raw.room, "room")?, id }
        }
        other => {
            return Err(IngestError {
                code: ErrorCode::UnknownOp,
                message: format!("unknown op `{}`", other.chars().take(32).collect::<String>()),
                op: None,
            })
        }
    })
}

/// `{"ok":true}`
pub fn reply_ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ok\":true}\n");
}

/// `{"ok":true,"seq":N}`
pub fn reply_seq(out: &mut Vec<u8>, seq: u64) {
    let _ = writeln!(out, "{{\"ok\":true,\"seq\":{seq}}}");
}

/// `{"ok":true,"seqs":[..]}`
pub fn reply_seqs(out: &mut Vec<u8>, seqs: &[u64]) {
    out.extend_from_slice(b"{\"ok\":true,\"seqs\":[");
    for (i, seq) in seqs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{seq}");
    }
    out.extend_from_slice(b"]}\n");
}

/// `{"ok":true,"seq":N,"version":V}`
pub fn reply_state(out: &mut Vec<u8>, seq: u64, version: u64) {
    let _ = writeln!(out, "{{\"ok\":true,\"seq\":{seq},\"version\":{version}}}");
}

/// `{"ok":true,"closed":K}`
pub fn reply_closed(out: &mut Vec<u8>, closed: u64) {
    let _ = writeln!(out, "{{\"ok\":true,\"closed\":{closed}}}");
}

/// `{"ok":false,"error":CODE,"message":TEXT}`
pub fn reply_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(b"{\"ok\":false,\"error\":");
    super::server_msg::push_str(out, code.as_str());
    out.extend_from_slice(b",\"message\":");
    super::server_msg::push_str(out, message);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn line(f: impl FnOnce(&mut Vec<u8>)) -> Value {
        let mut out = Vec::new();
        f(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).expect("JSON")
    }

    #[test]
    fn commands_decode() {
        let l = decode_ingest_line(br#"{"op":"publish","room":"r","type":"gift","data":{"a":[1,2]}}"#).expect("ok");
        assert!(l.ack);
        let IngestCmd::Publish { rooms, many, kind, data } = l.cmd else { panic!("publish") };
        assert_eq!((rooms, many, &*kind, data.get()), (vec![Cow::from("r")], false, "gift", r#"{"a":[1,2]}"#));
        let l = decode_ingest_line(br#"{"op":"publish","rooms":["a","b"],"type":"t","ack":false}"#).expect("ok");
        assert!(!l.ack);
        let IngestCmd::Publish { rooms, many, data, .. } = l.cmd else { panic!("publish") };
        assert_eq!((rooms.len(), many, data.get()), (2, true, "null"));
        assert!(matches!(
            decode_ingest_line(b"{\"op\":\"hello\",\"acks\":false}\r").map(|l| l.cmd),
            Ok(IngestCmd::Hello { acks: false })
        ));
        assert!(matches!(
            decode_ingest_line(br#"{"op":"state","room":"r","state":{"x":1}}"#).map(|l| l.cmd),
            Ok(IngestCmd::State { .. })
        ));
        assert!(matches!(
            decode_ingest_line(br#"{"op":"kick","user":"u"}"#).map(|l| l.cmd),
            Ok(IngestCmd::Kick { room: None, .. })
        ));
        assert!(matches!(
            decode_ingest_line(br#"{"op":"close_room","room":"r"}"#).map(|l| l.cmd),
            Ok(IngestCmd::CloseRoom { .. })
        ));
        assert!(matches!(
            decode_ingest_line(br#"{"op":"auth","token":"t"}"#).map(|l| l.cmd),
            Ok(IngestCmd::Auth { .. })
        ));
    }

    #[test]
    fn deep_data_and_a_room_listed_twice_are_refused() {
        let deep = format!(r#"{{"op":"publish","room":"r","type":"t","data":{}{}}}"#, "[".repeat(65), "]".repeat(65));
        assert!(decode_ingest_line(deep.as_bytes()).expect_err("too deep").message.contains("65 levels"));
        let ok =
            format!(r#"{{"op":"publish","room":"r","type":"t","data":{}"[[[[" {}}}"#, "[".repeat(64), "]".repeat(64));
        assert!(decode_ingest_line(ok.as_bytes()).is_ok(), "brackets in strings do not count");
        let twice = r#"{"op":"publish","rooms":["a","b","a"],"type":"t"}"#;
        assert!(decode_ingest_line(twice.as_bytes()).expect_err("twice").message.contains("\"a\" twice"));
        let del = decode_ingest_line(br#"{"op":"delete_comment","room":"r","id":"1f-3"}"#).map(|l| l.cmd);
        assert!(matches!(del, Ok(IngestCmd::DeleteComment { ref id, .. }) if id == "1f-3"));
        assert_eq!(
            decode_ingest_line(br#"{"op":"delete_comment","room":"r"}"#).expect_err("no id").code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn bad_lines_say_why() {
        let err = |s: &str| decode_ingest_line(s.as_bytes()).expect_err("bad");
        assert_eq!(err(r#"{"op":"fly"}"#).code, ErrorCode::UnknownOp);
        assert!(err(r#"{"op":"publish","room":"r"}"#).message.contains("type"));
        // Messages for people: what was wrong, never the decoder's own struct.
        assert_eq!(err("not json").message, "not valid JSON (at column 2)");
        assert_eq!(err(r#"{"op":"publish""#).message, "not valid JSON: the line ends early (at column 15)");
        assert_eq!(err(r#"{"op":"hello"} {}"#).message, "not valid JSON (at column 16)");
        for not_an_object in ["[]", "\"publish\"", "5", "null"] {
            assert_eq!(
                err(not_an_object).message,
                r#"a command must be one JSON object, like {"op":"publish","room":"r","type":"t"}"#
            );
        }
        assert_eq!(
            err(r#"{"op":"publish","room":"r","type":5}"#).message,
            "`type`: invalid type: integer `5`, expected a string"
        );
        assert_eq!(err(r#"{"op":"publish","rooms":[1],"type":"t"}"#).message.split(':').next(), Some("`rooms[0]`"));
        assert!(err(r#"{"op":"state","room":"r","state":[1]}"#).message.contains("object"));
        assert_eq!(err("not json").code, ErrorCode::BadRequest);
        assert_eq!(err(r#"{"op":"publish","room":"r","rooms":["x"],"type":"t"}"#).code, ErrorCode::BadRequest);
    }

    #[test]
    fn replies_are_one_json_line_each() {
        assert_eq!(line(reply_ok), json!({"ok": true}));
        assert_eq!(line(|o| reply_seq(o, 4)), json!({"ok": true, "seq": 4}));
        assert_eq!(line(|o| reply_seqs(o, &[1, 2])), json!({"ok": true, "seqs": [1, 2]}));
        assert_eq!(line(|o| reply_state(o, 3, 1)), json!({"ok": true, "seq": 3, "version": 1}));
        assert_eq!(line(|o| reply_closed(o, 2)), json!({"ok": true, "closed": 2}));
        assert_eq!(
            line(|o| reply_error(o, ErrorCode::BadRequest, "a \"b\"")),
            json!({"ok": false, "error": "bad_request", "message": "a \"b\""})
        );
    }
}
