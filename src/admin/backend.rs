//! The seam between the admin port and the owners of the data.
//!
//! The admin thread never reads worker state itself: it asks a [`Backend`], and the real one
//! asks the home worker of a room (or every worker, merging the answers) through its mailbox
//! and waits for the reply until a deadline. Tests plug in a fake. Every call blocks, so the
//! admin port makes them from `tokio::task::spawn_blocking`, never on its event loop; none of
//! them may block past its `deadline` (answer [`BackendError::Timeout`] instead), and none
//! may take a lock the workers take on their per-message path.
//!
//! A room's live feed leaves the workers through a [`TapSender`]: a bounded queue whose
//! [`TapSender::offer`] never blocks and never allocates beyond the item, so a dashboard that
//! reads slowly costs a worker one failed push, counted and reported as
//! [`FeedItem::Lagged`], never a wait.

use crate::metrics::Metrics;
use crate::query::{FeedItem, PageQuery, PresencePage, RoomDetail, RoomsPage, RoomsQuery, Since, Snapshot};
use std::time::Instant;
use tokio::sync::mpsc;

/// Items a room's feed holds for a dashboard before further items are dropped (and counted).
pub const TAP_CAPACITY: usize = 1024;

/// What the process can do right now (`/healthz`, `/readyz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Serving and accepting viewers.
    Ready,
    /// Serving, but refusing new viewers: every connection slot is taken.
    AtCapacity,
    /// Serving the viewers it has while they move elsewhere; refusing new ones.
    Draining,
    /// Shutting down: no longer serving.
    Stopping,
}

impl Health {
    /// Whether the process serves (`/healthz` 200).
    pub fn serving(self) -> bool {
        self != Self::Stopping
    }

    /// Whether it accepts viewers (`/readyz` 200).
    pub fn ready(self) -> bool {
        self == Self::Ready
    }

    /// What an operator reads in the 503's message.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::AtCapacity => "at capacity: new viewers are refused",
            Self::Draining => "draining: new viewers are refused while the current ones move",
            Self::Stopping => "shutting down",
        }
    }
}

/// An upstream command the admin port forwards (`POST /api/<op>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamOp {
    /// `publish`.
    Publish,
    /// `state`.
    State,
    /// `kick`.
    Kick,
    /// `close_room`.
    CloseRoom,
    /// `delete_comment`.
    DeleteComment,
}

impl UpstreamOp {
    /// Every op, each with its own path.
    pub const ALL: [Self; 5] = [Self::Publish, Self::State, Self::Kick, Self::CloseRoom, Self::DeleteComment];

    /// The op's name in an ingest line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::State => "state",
            Self::Kick => "kick",
            Self::CloseRoom => "close_room",
            Self::DeleteComment => "delete_comment",
        }
    }

    /// The HTTP path it is posted to.
    pub fn path(self) -> &'static str {
        match self {
            Self::Publish => "/api/publish",
            Self::State => "/api/state",
            Self::Kick => "/api/kick",
            Self::CloseRoom => "/api/close_room",
            Self::DeleteComment => "/api/delete_comment",
        }
    }
}

/// Who posts an upstream command, as far as the admin port could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The request carried the admin token: an operator, trusted as an authenticated ingest
    /// connection is (the ingest tokens are not asked).
    Operator,
    /// Anyone else: the bearer token of the request, if any, to be checked exactly as the
    /// ingest socket checks `auth` (accepted as is when no ingest tokens are configured).
    Upstream {
        /// The `Authorization: Bearer` token.
        bearer: Option<String>,
    },
}

/// A question the owners could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No room of that name exists (HTTP 404).
    #[error("no room named {0:?}")]
    UnknownRoom(String),
    /// The owners did not answer before the deadline (HTTP 503).
    #[error("the workers did not answer in time")]
    Timeout,
    /// The owners cannot answer at all, e.g. while shutting down (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

/// The owners of the data, as the admin port sees them. See the module doc for the rules
/// every implementation follows (blocking, bounded by `deadline`, answered by the owners).
pub trait Backend: Send + Sync + 'static {
    /// Whether the process serves and accepts viewers.
    fn health(&self, deadline: Instant) -> Result<Health, BackendError>;

    /// A page of rooms. Rooms spread over workers are listed with
    /// [`RoomsQuery::part`] on each and [`RoomsQuery::merge`] here.
    fn rooms(&self, query: &RoomsQuery, deadline: Instant) -> Result<RoomsPage, BackendError>;

    /// One room in full, from its home; `since` selects the recent events (see
    /// [`RoomDetail::events`]).
    fn room(&self, room: &str, since: &Since, deadline: Instant) -> Result<RoomDetail, BackendError>;

    /// A page of a room's members, from its home.
    fn presence(&self, room: &str, page: &PageQuery, deadline: Instant) -> Result<PresencePage, BackendError>;

    /// Apply an upstream command through the same transport-free logic as the ingest socket.
    /// `body` is the request body: a JSON object with the ingest command's fields (an `op`
    /// field, if present, is `op`; the admin port checked that). Returns the reply line the
    /// ingest socket would write (`{"ok":true,...}` or `{"ok":false,"error":CODE,
    /// "message":TEXT}`; a trailing newline is allowed). An `unauthorized` reply is how a
    /// caller with a wrong ingest token is refused.
    fn upstream(
        &self,
        op: UpstreamOp,
        body: &[u8],
        caller: &Caller,
        deadline: Instant,
    ) -> Result<Vec<u8>, BackendError>;

    /// Every worker's counters, merged.
    fn counters(&self, deadline: Instant) -> Result<Metrics, BackendError>;

    /// What the dashboard shows once a second. The default asks [`Backend::counters`] and the
    /// top rooms of [`Backend::rooms`]; an implementation that can answer both in one round
    /// of mail should.
    fn snapshot(&self, deadline: Instant) -> Result<Snapshot, BackendError> {
        let metrics = self.counters(deadline)?;
        let top = self.rooms(&RoomsQuery::top(crate::query::SNAPSHOT_TOP_ROOMS), deadline)?;
        let t = &metrics.totals;
        Ok(Snapshot {
            at_ms: crate::runtime::clock_ms(),
            connections: t.connections_open.sum(),
            rooms: t.rooms,
            online: t.online,
            top_rooms: top.rooms,
            deliveries: t.deliveries,
            comments: t.comments.accepted,
            comments_rejected: t.comments.rejected.sum(),
            slow_consumer_closes: t.slow_consumer_closes,
            write_stalls: metrics.workers.iter().map(|w| w.write_stalls).sum(),
            errors: t.errors(),
        })
    }

    /// Start a live feed of `room`: its home keeps the [`TapSender`] of a [`tap_channel`] and
    /// offers it every item until the offer says [`Offer::Closed`] (the dashboard went away)
    /// or the room closes (send [`FeedItem::Closed`], then drop the sender).
    fn tap(&self, room: &str, deadline: Instant) -> Result<Tap, BackendError>;

    /// The cluster broker's status (`None`: a single node). Read from the broker's own
    /// counters, never asked of the workers.
    fn cluster(&self) -> Option<crate::broker::ClusterReport> {
        None
    }
}

/// A bounded feed queue: the sender goes to the room's home, the [`Tap`] to the dashboard.
pub fn tap_channel(capacity: usize) -> (TapSender, Tap) {
    let (tx, rx) = mpsc::channel(capacity.max(2));
    (TapSender { tx, missed: 0 }, Tap { rx })
}

/// What became of an offered feed item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Sent,
    /// The queue was full: dropped and counted; the reader learns how many it missed.
    Dropped,
    /// The reader is gone: drop the sender.
    Closed,
}

/// The worker's end of a room feed. Callable from any thread, no async runtime needed.
#[derive(Debug)]
pub struct TapSender {
    tx: mpsc::Sender<FeedItem>,
    missed: u64,
}

impl TapSender {
    /// Queue `item` without blocking. After drops, a [`FeedItem::Lagged`] with their count
    /// goes first, so the reader sees the gap.
    pub fn offer(&mut self, item: FeedItem) -> Offer {
        if self.missed > 0 {
            match self.tx.try_reserve() {
                Ok(permit) => {
                    permit.send(FeedItem::Lagged { missed: self.missed });
                    self.missed = 0;
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.missed += 1;
                    return Offer::Dropped;
                }
                Err(mpsc::error::TrySendError::Closed(())) => return Offer::Closed,
            }
        }
        match self.tx.try_send(item) {
            Ok(()) => Offer::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.missed += 1;
                Offer::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Whether the reader is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The dashboard's end of a room feed; dropping it tells the worker ([`Offer::Closed`]).
#[derive(Debug)]
pub struct Tap {
    rx: mpsc::Receiver<FeedItem>,
}

impl Tap {
    /// The next item; `None` once the sender is dropped and the queue is empty.
    pub async fn recv(&mut self) -> Option<FeedItem> {
        self.rx.recv().await
    }

    /// The next item if one is queued (for callers outside an async runtime).
    pub fn try_recv(&mut self) -> Option<FeedItem> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_tap_drops_counts_and_reports_the_gap() {
        let (mut tx, mut rx) = tap_channel(2);
        assert_eq!(tx.offer(FeedItem::Closed), Offer::Sent);
        assert_eq!(tx.offer(FeedItem::Closed), Offer::Sent);
        assert_eq!(tx.offer(FeedItem::Closed), Offer::Dropped);
        assert_eq!(tx.offer(FeedItem::Closed), Offer::Dropped);
        assert!(matches!(rx.try_recv(), Some(FeedItem::Closed)));
        assert!(matches!(rx.try_recv(), Some(FeedItem::Closed)));
        assert_eq!(tx.offer(FeedItem::Left { user: "u".into(), reason: crate::query::LeaveReason::Left }), Offer::Sent);
        assert!(matches!(rx.try_recv(), Some(FeedItem::Lagged { missed: 2 })));
        assert!(matches!(rx.try_recv(), Some(FeedItem::Left { .. })));
        assert!(rx.try_recv().is_none());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.offer(FeedItem::Closed), Offer::Closed);
    }

    #[test]
    fn health_says_what_each_path_answers() {
        assert!(Health::Ready.serving() && Health::Ready.ready());
        assert!(Health::Draining.serving() && !Health::Draining.ready());
        assert!(Health::AtCapacity.serving() && !Health::AtCapacity.ready());
        assert!(!Health::Stopping.serving() && !Health::Stopping.ready());
        for op in UpstreamOp::ALL {
            assert_eq!(op.path(), format!("/api/{}", op.as_str()));
        }
    }
}
