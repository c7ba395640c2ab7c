//! Questions to a worker from the admin port, answered by the owner of the data.
//!
//! DESIGN.md ("Questions to the owners"): the query API is never served from a cache. The
//! admin side sends a [`Question`] to a room's home (or to every worker) through its mailbox
//! and waits, with a deadline, for the [`Answer`]; lists are answered in parts by every worker
//! and merged by the asker ([`crate::query`] decides the paging, so parts and merge agree).
//! Answering is pure: [`Shard::answer`] reads (and for a tap, registers) state and returns a
//! value; carrying it back is the shell's job.

use super::{Shard, ViewerActivity};
use crate::metrics::Counters;
use crate::query::{FeedItem, PageQuery, PresencePage, RoomDetail, RoomsPart, RoomsQuery};

/// A room's live feed as its home holds it: the admin port's end of a bounded queue to a
/// dashboard. Offering must never block; a reader that is gone makes it return false, and the
/// home drops the sink.
pub trait FeedSink: Send + std::fmt::Debug {
    /// Offer `item`; false when the reader is gone.
    fn offer(&mut self, item: FeedItem) -> bool;
}

/// What the admin port asks a worker.
#[derive(Debug)]
pub enum Question {
    /// This worker's share of a room list (every worker).
    Rooms(RoomsQuery),
    /// One room in full, with its recent events after `since` (`seq`, optional epoch) or
    /// the whole history ring (the room's home).
    Room {
        /// The room.
        room: String,
        /// The position after which events are wanted.
        since: Option<(u64, Option<String>)>,
    },
    /// A page of a room's distinct viewers (the room's home).
    Members {
        /// The room.
        room: String,
        /// Which page.
        page: PageQuery,
    },
    /// What this worker knows of these users' activity in a room (every worker).
    Activity {
        /// The room: only the users' connections in it count.
        room: String,
        /// The user ids.
        users: Vec<String>,
    },
    /// This worker's counters (every worker).
    Counters,
    /// Watch a room live (the room's home).
    Tap {
        /// The room.
        room: String,
        /// Where its feed goes.
        sink: Box<dyn FeedSink>,
    },
}

/// A worker's answer to a [`Question`], variant for variant.
#[derive(Debug)]
pub enum Answer {
    /// This worker's part of the list.
    Rooms(RoomsPart),
    /// The room, or `None` when it is not homed here.
    Room(Option<Box<RoomDetail>>),
    /// The page, or `None` when the room is not homed here. `last_seen` and `silent_ms` are
    /// still zero: they come from [`Question::Activity`].
    Members(Option<PresencePage>),
    /// Per user, in the order asked: its activity on this worker, if it has connections here.
    Activity(Vec<Option<ViewerActivity>>),
    /// The worker's counters.
    Counters(Box<Counters>),
    /// Whether the room exists here (the tap is registered).
    Tapped(bool),
}

impl<Io> Shard<Io> {
    /// Answer `question` at `now_ms`.
    pub fn answer(&mut self, question: Question, now_ms: u64) -> Answer {
        match question {
            Question::Rooms(query) => Answer::Rooms(self.homes.list(&query, now_ms)),
            Question::Room { room, since } => {
                let since = since.as_ref().map(|(seq, epoch)| (*seq, epoch.as_deref()));
                Answer::Room(self.homes.detail(&room, since, now_ms).map(Box::new))
            }
            Question::Members { room, page } => Answer::Members(self.homes.members(&room, &page)),
            Question::Activity { room, users } => {
                Answer::Activity(users.iter().map(|user| self.viewer_activity_in(&room, user, now_ms)).collect())
            }
            Question::Counters => Answer::Counters(Box::new(self.counters())),
            Question::Tap { room, sink } => Answer::Tapped(self.homes.tap(&room, sink)),
        }
    }

    /// This worker's counters: its connections' and its homes' together, gauges read now.
    pub fn counters(&self) -> Counters {
        let mut counters = self.counters;
        counters.merge(&self.homes.counters());
        counters
    }
}
