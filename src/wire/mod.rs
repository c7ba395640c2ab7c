//! The wire: bytes <-> typed messages, with no IO.
//!
//! [`frame`] is RFC 6455 framing, [`upgrade`] the HTTP/1.1 upgrade, [`client_op`] and
//! [`server_msg`] the viewer protocol, [`ingest`] the upstream NDJSON commands. Everything here
//! is a pure function of its input, so it is unit-tested, fuzzed and benchmarked without
//! sockets; the loadgen reuses the client-side halves.

pub mod client_op;
pub mod frame;
pub mod ingest;
pub mod server_msg;
pub mod upgrade;

pub use client_op::{decode_client_op, decode_client_op_with, ClientOp, OpError, Ref};
pub use frame::{FrameError, FrameReader, Incoming, Role};

/// The error codes of PROTOCOL.md, sent in `error` replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or mistyped request.
    BadRequest,
    /// Missing or invalid credentials.
    Unauthorized,
    /// Not allowed for this user.
    Forbidden,
    /// The op needs a joined room.
    NotJoined,
    /// Too many requests.
    RateLimited,
    /// Over a size limit.
    TooLarge,
    /// An op this server does not know.
    UnknownOp,
    /// Temporarily not possible.
    Unavailable,
}

impl ErrorCode {
    /// Every code, in declaration order (so `code as usize` indexes it).
    pub const ALL: [Self; 8] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotJoined,
        Self::RateLimited,
        Self::TooLarge,
        Self::UnknownOp,
        Self::Unavailable,
    ];

    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotJoined => "not_joined",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::UnknownOp => "unknown_op",
            Self::Unavailable => "unavailable",
        }
    }
}

pub use crate::ids::{validate_name as validate_room, MAX_NAME_BYTES};
