//! Decoding of client -> server ops (PROTOCOL.md "Client to server").
//!
//! One text message is one JSON object. It is parsed with simd-json in place, into borrowed
//! fields, so a valid op allocates nothing. Every field is first read as a lenient [`Scalar`]
//! (any JSON value is accepted), and the types are checked afterwards: a mistyped field is then
//! a `bad_request` that still carries the client's `ref`, instead of a serde error that lost it.
//! Unknown fields are ignored; an unknown `op` is `unknown_op`.
//!
//! Error messages are for the person writing a client: they say what was wrong and what is
//! allowed (`not valid JSON (at byte 0)`, `duplicate field "op"`), never a parser's internal
//! names; [`json_error`] is the one place that translates simd-json's errors.

use super::{validate_room, ErrorCode};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// The client's `ref`, kept as the raw JSON text of the scalar (a string with its quotes, or a
/// number) so it is echoed exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref(pub Box<str>);

/// A decoded client op.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// Join a room, optionally recovering from `since` in `epoch`.
    Join {
        /// The room.
        room: Cow<'a, str>,
        /// Last seq seen.
        since: Option<u64>,
        /// Epoch of `since`.
        epoch: Option<Cow<'a, str>>,
        /// Echoed in `joined` (or the error).
        reference: Option<Ref>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: Cow<'a, str>,
        /// Echoed in `left` (or the error).
        reference: Option<Ref>,
    },
    /// Comment in a joined room.
    Comment {
        /// The room.
        room: Cow<'a, str>,
        /// The text.
        text: Cow<'a, str>,
        /// Echoed in the ack.
        reference: Option<Ref>,
    },
    /// React in a joined room.
    React {
        /// The room.
        room: Cow<'a, str>,
        /// The reaction kind.
        kind: Cow<'a, str>,
        /// Echoed in an error (a reaction has no reply otherwise).
        reference: Option<Ref>,
    },
    /// Heartbeat; answered with `pong`.
    Ping {
        /// Echoed in `pong`.
        reference: Option<Ref>,
    },
    /// Extend the session with a new token.
    Refresh {
        /// The new token.
        token: Cow<'a, str>,
        /// Echoed in the ack.
        reference: Option<Ref>,
    },
}

/// A refused op: the error reply to send, with the client's `ref` when it could be read.
#[derive(Debug, PartialEq, Eq)]
pub struct OpError {
    /// The wire error code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// The client's `ref`.
    pub reference: Option<Ref>,
}

/// Any JSON value, read without failing on its type.
#[derive(Debug)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    /// null, an array or an object.
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Signed(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Scalar::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Every field any op uses, all optional and lenient.
#[derive(Deserialize)]
struct RawOp<'a> {
    #[serde(borrow)]
    op: Option<Scalar<'a>>,
    #[serde(borrow)]
    room: Option<Scalar<'a>>,
    #[serde(borrow)]
    since: Option<Scalar<'a>>,
    #[serde(borrow)]
    epoch: Option<Scalar<'a>>,
    #[serde(borrow)]
    text: Option<Scalar<'a>>,
    #[serde(borrow)]
    kind: Option<Scalar<'a>>,
    #[serde(borrow)]
    token: Option<Scalar<'a>>,
    #[serde(borrow, rename = "ref")]
    reference: Option<Scalar<'a>>,
}

fn bad(message: impl Into<String>, reference: &Option<Ref>) -> OpError {
    OpError { code: ErrorCode::BadRequest, message: message.into(), reference: reference.clone() }
}

fn string<'a>(field: Option<Scalar<'a>>, name: &str, reference: &Option<Ref>) -> Result<Cow<'a, str>, OpError> {
    match field {
        Some(Scalar::Str(s)) => Ok(s),
        None | Some(Scalar::Other) => Err(bad(format!("missing field \"{name}\" (a string)"), reference)),
        Some(_) => Err(bad(format!("\"{name}\" must be a string"), reference)),
    }
}

fn room<'a>(field: Option<Scalar<'a>>, reference: &Option<Ref>) -> Result<Cow<'a, str>, OpError> {
    let room = string(field, "room", reference)?;
    validate_room(&room).map_err(|why| {
        bad(format!("bad room name ({why}): a room name is 1..=128 bytes without control characters"), reference)
    })?;
    Ok(room)
}

/// What a person should read for a simd-json error on a message of `len` bytes.
fn json_error(e: &simd_json::Error, len: usize) -> String {
    use simd_json::ErrorType as E;
    const ONE_OBJECT: &str = "a message must be one JSON object";
    let at = e.index();
    match e.error() {
        E::Eof if at == 0 => format!("empty message: {ONE_OBJECT}"),
        E::Eof => format!("not valid JSON: the message ends early (at byte {at})"),
        E::ExpectedMap => format!("{ONE_OBJECT}, like {{\"op\":\"ping\"}}"),
        E::Serde(text) => match text.strip_prefix("duplicate field `").and_then(|rest| rest.strip_suffix('`')) {
            Some(field) => format!("duplicate field \"{field}\""),
            None if text.starts_with("invalid type") || text.starts_with("invalid length") => {
                format!("{ONE_OBJECT}, like {{\"op\":\"ping\"}}")
            }
            None => "not valid JSON".to_owned(),
        },
        E::DepthLimitExceeded => "not valid JSON: nested too deeply".to_owned(),
        // simd-json stops at the end of the first value when more follows it.
        E::InternalError if e.character() == Some('}') && at + 1 < len => {
            format!("{ONE_OBJECT}; more follows it (at byte {})", at + 1)
        }
        _ => format!("not valid JSON (at byte {at})"),
    }
}

fn as_ref(field: Option<Scalar<'_>>) -> Option<Ref> {
    let text = match field? {
        Scalar::Str(s) => serde_json::to_string(&*s).ok()?,
        Scalar::Unsigned(n) => n.to_string(),
        Scalar::Signed(n) => n.to_string(),
        Scalar::Float(f) => serde_json::to_string(&f).ok()?,
        Scalar::Bool(b) => b.to_string(),
        Scalar::Other => return None,
    };
    Some(Ref(text.into()))
}

/// Decode one client message with fresh parser buffers (tests, tools). The server uses
/// [`decode_client_op_with`] and one set of buffers per worker: allocating them per message
/// costs more than the parse itself.
pub fn decode_client_op(buf: &mut [u8]) -> Result<ClientOp<'_>, OpError> {
    let mut buffers = simd_json::Buffers::new(buf.len());
    decode_client_op_with(buf, &mut buffers)
}

/// Decode one client message; `buf` is used as scratch by the parser and `buffers` are reused
/// between calls.
pub fn decode_client_op_with<'a>(buf: &'a mut [u8], buffers: &mut simd_json::Buffers) -> Result<ClientOp<'a>, OpError> {
    let len = buf.len();
    let raw: RawOp<'_> = simd_json::serde::from_slice_with_buffers(buf, buffers).map_err(|e| OpError {
        code: ErrorCode::BadRequest,
        message: json_error(&e, len),
        reference: None,
    })?;
    let reference = as_ref(raw.reference);
    let op = string(raw.op, "op", &reference)?;
    Ok(match &*op {
        "join" => {
            let since = match raw.since {
                None | Some(Scalar::Other) => None,
                Some(Scalar::Unsigned(n)) => Some(n),
                Some(_) => return Err(bad("\"since\" must be a non-negative integer (the last seq seen)", &reference)),
            };
            let epoch = match raw.epoch {
                None | Some(Scalar::Other) => None,
                Some(Scalar::Str(s)) => Some(s),
                Some(_) => return Err(bad("\"epoch\" must be a string (as in \"joined\")", &reference)),
            };
            ClientOp::Join { room: room(raw.room, &reference)?, since, epoch, reference }
        }
        "leave" => ClientOp::Leave { room: room(raw.room, &reference)?, reference },
        "comment" => ClientOp::Comment {
            room: room(raw.room, &reference)?,
            text: string(raw.text, "text", &reference)?,
            reference,
        },
        "react" => ClientOp::React {
            room: room(raw.room, &reference)?,
            kind: string(raw.kind, "kind", &reference)?,
            reference,
        },
        "ping" => ClientOp::Ping { reference },
        "refresh" => ClientOp::Refresh { token: string(raw.token, "token", &reference)?, reference },
        other => {
            return Err(OpError {
                code: ErrorCode::UnknownOp,
                message: format!(
                    "unknown op {:?}; the ops are join, leave, comment, react, ping and refresh",
                    other.chars().take(32).collect::<String>()
                ),
                reference,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<ClientOp<'static>, OpError> {
        let buf: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
        decode_client_op(buf)
    }

    #[test]
    fn every_op_decodes() {
        assert_eq!(
            decode(r#"{"op":"join","room":"r1","since":5,"epoch":"ab","extra":[1,{"x":2}]}"#),
            Ok(ClientOp::Join { room: "r1".into(), since: Some(5), epoch: Some("ab".into()), reference: None })
        );
        assert_eq!(
            decode(r#"{"op":"join","room":"r"}"#),
            Ok(ClientOp::Join { room: "r".into(), since: None, epoch: None, reference: None })
        );
        assert_eq!(
            decode(r#"{"op":"leave","room":"r","ref":[1]}"#),
            Ok(ClientOp::Leave { room: "r".into(), reference: None })
        );
        assert_eq!(
            decode(r#"{"op":"comment","room":"r","text":"hé \"q\"","ref":"c1"}"#),
            Ok(ClientOp::Comment { room: "r".into(), text: "hé \"q\"".into(), reference: Some(Ref("\"c1\"".into())) })
        );
        assert_eq!(
            decode(r#"{"op":"react","room":"r","kind":"❤"}"#),
            Ok(ClientOp::React { room: "r".into(), kind: "❤".into(), reference: None })
        );
        assert_eq!(decode(r#"{"op":"ping","ref":"p"}"#), Ok(ClientOp::Ping { reference: Some(Ref("\"p\"".into())) }));
        assert_eq!(
            decode(r#"{"op":"refresh","token":"t","ref":12}"#),
            Ok(ClientOp::Refresh { token: "t".into(), reference: Some(Ref("12".into())) })
        );
    }

    #[test]
    fn errors_carry_code_and_ref() {
        let e = decode(r#"{"op":"dance","ref":3}"#).expect_err("unknown");
        assert_eq!((e.code, e.reference), (ErrorCode::UnknownOp, Some(Ref("3".into()))));
        let e = decode(r#"{"op":"comment","room":7,"text":"x","ref":"a"}"#).expect_err("mistyped");
        assert_eq!((e.code, e.reference), (ErrorCode::BadRequest, Some(Ref("\"a\"".into()))));
        let e = decode(r#"{"op":"join"}"#).expect_err("missing room");
        assert!(e.message.contains("room"), "{}", e.message);
        assert_eq!(decode("{not json").expect_err("bad").code, ErrorCode::BadRequest);
        assert_eq!(decode(r#"{"room":"r"}"#).expect_err("no op").code, ErrorCode::BadRequest);
        assert_eq!(decode(r#"{"op":"join","room":""}"#).expect_err("empty room").code, ErrorCode::BadRequest);
        assert_eq!(decode(r#"{"op":"join","room":"r","since":-1}"#).expect_err("negative").code, ErrorCode::BadRequest);
    }

    fn message(s: &str) -> String {
        decode(s).expect_err("refused").message
    }

    #[test]
    fn messages_are_for_people_not_parser_internals() {
        assert_eq!(message("nope"), "not valid JSON (at byte 0)");
        assert_eq!(message("{not json"), "not valid JSON (at byte 1)");
        assert_eq!(message(r#"{"op":"ping","op":"ping"}"#), "duplicate field \"op\"");
        for not_an_object in ["null", "5", r#""ping""#, r#"[{"op":"ping"}]"#] {
            assert_eq!(message(not_an_object), r#"a message must be one JSON object, like {"op":"ping"}"#);
        }
        assert_eq!(message(r#"{"op":"ping"} {}"#), "a message must be one JSON object; more follows it (at byte 13)");
        assert_eq!(message(""), "empty message: a message must be one JSON object");
        assert_eq!(message(r#"{"op":"join"}"#), "missing field \"room\" (a string)");
        assert_eq!(message(r#"{"op":"join","room":7}"#), "\"room\" must be a string");
        assert!(message(r#"{"op":"join","room":""}"#).starts_with("bad room name (empty): a room name is 1..=128"));
        assert_eq!(
            message(r#"{"op":"dance"}"#),
            "unknown op \"dance\"; the ops are join, leave, comment, react, ping and refresh"
        );
        for s in ["nope", "{\"a\":1,}", "{\"op\" \"x\"}", "{\"op\":\"p\\x\"}", "[[[[]]]]", "{\"op\":"] {
            let m = message(s);
            for internal in ["Expected", "Serde", "Internal", "Syntax", "character", "RawOp", "`"] {
                assert!(!m.contains(internal), "{s:?} -> {m:?} shows {internal:?}");
            }
        }
    }
}
