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
//!   one worker owns, split by job and driven by `handle_*` calls then drained by `poll_*`/
//!   `take_*` calls), [`upstream`] (an ingest connection's protocol: lines in, mail and ordered
//!   replies out), [`wheel`] (per-connection deadlines), [`ids`] (newtypes shared by all of
//!   them), [`query`] (the answers of the query API and how lists are paged), [`metrics`]
//!   (per-worker counters, merged on a scrape), [`auth`] (JWT
//!   verification and the claims a session carries), [`ratelimit`] (per-connection token
//!   buckets), [`admission`] (connection caps and accept pacing).
//! * shell: [`runtime`] (mio listeners, the per-core worker loop, TLS byte layer, the mailbox
//!   mesh, the ingest loop, signals, the admin backend), [`admin`] (the admin HTTP port on its
//!   own thread: query API, `/metrics`, dashboard), [`sink`] (durable sinks on their own
//!   threads: file, Redis Streams, webhook, with a spool), [`config`] (typed settings with
//!   embedded defaults), [`tls`] (rustls configuration and self-signed certificates),
//!   [`demo`] (the demo page's HTTP response, built once; the worker writes it).

pub mod admin;
pub mod admission;
pub mod auth;
pub mod broker;
pub mod config;
pub mod demo;
pub mod ids;
pub mod metrics;
pub mod query;
pub mod ratelimit;
pub mod room;
pub mod runtime;
pub mod session;
pub mod shard;
pub mod sink;
pub mod tls;
pub mod upstream;
pub mod wheel;
pub mod wire;
