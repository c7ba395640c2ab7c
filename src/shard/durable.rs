//! Comments leave through the home: the seam to the durable sinks, and what waits for them.
//!
//! DESIGN.md ("Comments leave through the home"): the home sequences a comment (or a
//! moderation tombstone) and hands it, with a per-worker ticket, to the sinks through a
//! [`SinkPort`]; the sinks report back, by mail, the highest ticket that is durable. In
//! `durable` mode the room's outgoing stream waits behind its oldest comment not yet durable
//! (the home holds the room, see `homes.rs`), and the commenter's `ack` waits too; in `fast`
//! mode nothing waits and the records are written behind. A refused submission (a full queue
//! or spool) is backpressure: the comment is not sequenced and the commenter hears
//! `unavailable`; nothing is ever acked that the sinks did not take.
//!
//! [`Durability`] keeps the tickets, the durable watermark and what waits for it (acks and
//! ingest replies, in ticket order), and retries presence records the sinks could not take yet.
//! Pure: the port is a trait the shell implements over its channel; nothing here blocks.

use super::mail::{IngestReply, Origin};
use crate::sink::{AckMode, Backpressure, PresenceRecord, SinkRecord};
use bytes::Bytes;
use std::collections::VecDeque;

/// Presence records kept for a retry while the sinks' queue is full; past this the oldest are
/// dropped (and counted): presence is not business data, and memory must stay bounded.
const PRESENCE_BACKLOG: usize = 65_536;

/// Where a home hands its records to the durable sinks: the shell's end of the sinks' bounded
/// queue. Submitting never blocks; a refusal is [`Backpressure`].
pub trait SinkPort: Send + std::fmt::Debug {
    /// Whether acks wait for durability.
    fn ack_mode(&self) -> AckMode;
    /// Whether any sink wants presence records.
    fn wants_presence(&self) -> bool;
    /// Hand over a comment or tombstone with this worker's next ticket (tickets only grow).
    fn submit(&mut self, ticket: u64, record: SinkRecord) -> Result<(), Backpressure>;
    /// Hand over a raw presence transition (the sinks debounce them).
    fn submit_presence(&mut self, record: PresenceRecord) -> Result<(), Backpressure>;
}

/// Something that waits for its ticket to be durable.
#[derive(Debug)]
pub(crate) enum Release {
    /// A commenter's `ack`.
    Ack {
        /// The commenter.
        to: Origin,
        /// The encoded `ack`.
        frame: Bytes,
    },
    /// An upstream's reply (a `delete_comment`).
    Ingest(IngestReply),
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    port: Option<Box<dyn SinkPort>>,
    /// The last ticket handed out.
    last_ticket: u64,
    /// Every ticket up to this is durable.
    durable_to: u64,
    /// Waiting for their ticket, in ticket order.
    waiting: VecDeque<(u64, Release)>,
    /// Presence records the sinks' queue could not take yet, oldest first.
    presence_backlog: VecDeque<PresenceRecord>,
    /// Presence records dropped because the backlog was full.
    pub(crate) presence_dropped: u64,
}

impl Durability {
    /// With `port`, records go to the sinks; without (tests, or no sink configured), nothing
    /// is written and nothing waits.
    pub(crate) fn new(port: Option<Box<dyn SinkPort>>) -> Self {
        Self { port, ..Self::default() }
    }

    /// Hand `record` to the sinks. `Ok(Some(ticket))`: the caller holds what depends on it
    /// until [`Durability::durable`] reaches the ticket; `Ok(None)`: nothing waits (fast mode,
    /// or no sinks); `Err`: refused, the record was not taken.
    pub(crate) fn submit(&mut self, record: SinkRecord) -> Result<Option<u64>, Backpressure> {
        let Some(port) = self.port.as_mut() else { return Ok(None) };
        let ticket = self.last_ticket + 1;
        port.submit(ticket, record)?;
        self.last_ticket = ticket;
        Ok((port.ack_mode() == AckMode::Durable).then_some(ticket))
    }

    /// `release` goes out once `ticket` is durable.
    pub(crate) fn wait(&mut self, ticket: u64, release: Release) {
        self.waiting.push_back((ticket, release));
    }

    /// Whether `ticket` is durable.
    pub(crate) fn is_durable(&self, ticket: u64) -> bool {
        ticket <= self.durable_to
    }

    /// The sinks report every ticket up to `ticket` durable; what waited for them, in order.
    pub(crate) fn durable(&mut self, ticket: u64, out: &mut Vec<Release>) {
        self.durable_to = self.durable_to.max(ticket);
        while self.waiting.front().is_some_and(|(t, _)| *t <= self.durable_to) {
            if let Some((_, release)) = self.waiting.pop_front() {
                out.push(release);
            }
        }
    }

    /// Whether presence records are wanted at all.
    pub(crate) fn wants_presence(&self) -> bool {
        self.port.as_ref().is_some_and(|p| p.wants_presence())
    }

    /// Hand a presence transition over, after any that wait for a retry (order per room).
    pub(crate) fn presence(&mut self, record: PresenceRecord) {
        if !self.wants_presence() {
            return;
        }
        self.retry_presence();
        if !self.presence_backlog.is_empty()
            || self.port.as_mut().is_some_and(|p| p.submit_presence(record.clone()).is_err())
        {
            if self.presence_backlog.len() >= PRESENCE_BACKLOG {
                self.presence_backlog.pop_front();
                self.presence_dropped += 1;
            }
            self.presence_backlog.push_back(record);
        }
    }

    /// Try again the presence records the sinks could not take.
    pub(crate) fn retry_presence(&mut self) {
        let Some(port) = self.port.as_mut() else { return };
        while let Some(record) = self.presence_backlog.front() {
            if port.submit_presence(record.clone()).is_err() {
                return;
            }
            self.presence_backlog.pop_front();
        }
    }
}
