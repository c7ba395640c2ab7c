//! The pieces of `loadgen`, as a library so they are unit-tested on their own.
//!
//! - the command line: [`cli`] (one subcommand per scenario);
//! - a run: [`scenario`] (phases from connect to verdict), [`clients`] (threads here or in
//!   child processes, [`procs`]), [`publisher`] (the ingest socket), [`progress`] (the line
//!   every second);
//! - the client engine: [`client`] (mio loops of viewers), [`net`] (sockets), [`jwt`] (viewer
//!   tokens);
//! - measuring and judging: [`timetable`] (the open-loop schedule and lateness),
//!   [`accounting`] (stream checks), [`spread`] (each message's first and last delivery),
//!   [`server`] (the server process in /proc), [`verdict`]
//!   (why a run is invalid);
//! - outputs: [`report`] (table, JSON, SVG), [`hgrm`] (HdrHistogram's percentile text).

pub mod accounting;
pub mod cli;
pub mod client;
pub mod clients;
pub mod hgrm;
pub mod jwt;
pub mod net;
pub mod procs;
pub mod progress;
pub mod publisher;
pub mod report;
pub mod scenario;
pub mod server;
pub mod spread;
pub mod timetable;
pub mod verdict;
