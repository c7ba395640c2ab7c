//! The pieces of `loadgen`, as a library so they are unit-tested on their own: the client
//! engine ([`client`]), stream checking ([`accounting`]), the open-loop schedule
//! ([`timetable`]), socket setup ([`net`]), the outputs ([`report`]) and runs spread over
//! several processes ([`procs`]).

pub mod accounting;
pub mod client;
pub mod hgrm;
pub mod jwt;
pub mod net;
pub mod procs;
pub mod report;
pub mod server;
pub mod timetable;
