//! The pieces of `loadgen`, as a library so they are unit-tested on their own: the client
//! engine ([`client`]), stream checking ([`accounting`]), the open-loop schedule
//! ([`timetable`]), socket setup ([`net`]) and the outputs ([`report`]).

pub mod accounting;
pub mod client;
pub mod net;
pub mod report;
pub mod timetable;
