//! roomcast: a thread-per-core WebSocket push engine for live rooms.
//!
//! Viewers hold WebSocket (or TLS WebSocket) connections and join rooms; upstream services push
//! events through the ingest socket; every room has one *home* worker that numbers its messages,
//! encodes each one once into a shared [`bytes::Bytes`] frame and hands that same frame to every
//! worker holding members of the room. Workers flush each connection once per loop turn.
//!
//! The crate splits into a pure core and a thin IO shell:
//!
//! * core (no sockets, no threads, no clock reads; `now` is always a parameter):
//!   [`wire`] (bytes <-> typed messages), [`session`] (one viewer connection's protocol state),
//!   [`room`] (a room's home state: seq, epoch, state, history, audience), [`shard`] (everything
//!   one worker owns, driven by `handle_*` calls and drained through outboxes), [`upstream`]
//!   (an ingest connection's protocol: lines in, mail and ordered replies out), [`wheel`]
//!   (per-connection deadlines), [`ids`] (newtypes shared by all of them), [`auth`] (JWT
//!   verification and the claims a session carries), [`ratelimit`] (per-connection token
//!   buckets), [`admission`] (connection caps and accept pacing).
//! * shell: [`runtime`] (mio listeners, the per-core worker loop, TLS byte layer, the mailbox
//!   mesh, the ingest loop, signals), [`config`] (typed settings with embedded defaults),
//!   [`tls`] (rustls configuration and self-signed certificates), [`demo`] (the demo page's
//!   HTTP response, built once; pure, the worker writes it).

pub mod admission;
pub mod auth;
pub mod config;
pub mod demo;
pub mod ids;
pub mod ratelimit;
pub mod room;
pub mod runtime;
pub mod session;
pub mod shard;
pub mod tls;
pub mod upstream;
pub mod wheel;
pub mod wire;
