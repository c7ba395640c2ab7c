//! The answers of the query API (PROTOCOL.md "Admin and query API"), as plain data.
//!
//! The owners of the data produce these values: a room's home worker answers about its rooms
//! and their presence, every worker answers about its share of a list and the admin thread
//! merges the shares ([`RoomsQuery::merge`]). This module decides what a page holds and in
//! which order, so that the workers and the admin port cannot disagree about paging; it does
//! no IO, reads no clock (times are parameters or fields) and never looks at a socket. Types
//! serialize with serde to the JSON the API returns; raw JSON the rooms already hold (state,
//! event payloads) is carried as [`RawValue`] and written out verbatim, never re-encoded.
//!
//! ## Paging
//!
//! Lists are paged by *keyset*: a page holds the first `limit` items strictly after the
//! request's cursor in the list's order, and `next` is the cursor to ask for the page after
//! it (`null` on the last page). Rooms are ordered by name (bytewise), or with `sort=online`
//! by `online` descending, then name; presence members by user id. A cursor names a position
//! in the order, not an offset, so a room created or freed between two requests does not shift
//! the other rooms between pages: with the name order, a room that exists throughout is listed
//! exactly once. Under `sort=online` a room whose online count changes between two requests
//! can move across the cursor (listed twice or not at all); that order is for a "top rooms"
//! view, not for a complete walk. `page=N` (1-based) is also accepted for simple clients: it
//! is the N-th page of `limit` items in the same order, counted from the first item, and so
//! shifts when rooms before it come and go. `limit` defaults to 100 and is capped at 1,000
//! (the effective limit is in the answer).

use crate::wire::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::cmp::Ordering;

/// Items per page when the request names no `limit`.
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// Most items one page holds; a larger `limit` is lowered to this.
pub const MAX_PAGE_LIMIT: usize = 1_000;

/// Rooms a dashboard [`Snapshot`] lists (the hottest by online).
pub const SNAPSHOT_TOP_ROOMS: usize = 25;

/// A request's paging parameters could not be used; the message says why (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PagingError(String);

impl PagingError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// One room in a list (`GET /api/rooms`, and the dashboard's top rooms).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoomSummary {
    /// The room name.
    pub room: String,
    /// Distinct viewers in the room (a user with three tabs counts once).
    pub online: u64,
    /// The room's latest seq (0 before its first event).
    pub seq: u64,
    /// The room's epoch, as in `joined`.
    pub epoch: String,
    /// Accepted comments per second, as the home measures it over its last rate window
    /// ([`crate::metrics::RateMeter`]).
    pub comment_rate: f64,
    /// The room state's version (0 before the first `state`).
    pub version: u64,
}

/// The order of a room list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomSort {
    /// By name, bytewise ascending (the default; the stable order for walking every room).
    #[default]
    Name,
    /// By online descending, then by name.
    Online,
}

/// `GET /api/rooms` parameters as they arrive in the query string. Unknown parameters are
/// ignored; [`RoomsParams::validate`] turns them into a [`RoomsQuery`].
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RoomsParams {
    /// Only rooms whose name starts with this.
    pub prefix: Option<String>,
    /// The order (`name` or `online`).
    pub sort: Option<RoomSort>,
    /// Continue after this cursor (the `next` of the previous page).
    pub cursor: Option<String>,
    /// The 1-based page number (instead of a cursor).
    pub page: Option<usize>,
    /// Items per page (1.., capped at [`MAX_PAGE_LIMIT`]).
    pub limit: Option<usize>,
}

/// Where a page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Start {
    /// Skip this many items of the order (0 for the first page).
    Skip(usize),
    /// Strictly after this position.
    After(Position),
}

/// A position in a list's order; a cursor is its text form.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Position {
    /// A room name (name order), or a user id (presence).
    Name(String),
    /// An online count and a room name (online order).
    Online(u64, String),
}

impl Position {
    fn encode(&self) -> String {
        match self {
            Self::Name(name) => format!("n.{name}"),
            Self::Online(online, name) => format!("o.{online}.{name}"),
        }
    }

    fn decode(text: &str) -> Result<Self, PagingError> {
        let bad = || PagingError::new(format!("`cursor` {text:?} is not a cursor this API returned"));
        if let Some(name) = text.strip_prefix("n.") {
            return Ok(Self::Name(name.to_owned()));
        }
        let rest = text.strip_prefix("o.").ok_or_else(bad)?;
        let (online, name) = rest.split_once('.').ok_or_else(bad)?;
        Ok(Self::Online(online.parse().map_err(|_| bad())?, name.to_owned()))
    }
}

fn page_start(cursor: Option<String>, page: Option<usize>, limit: usize) -> Result<Start, PagingError> {
    match (cursor, page) {
        (Some(_), Some(_)) => Err(PagingError::new("give `cursor` or `page`, not both")),
        (Some(cursor), None) => Position::decode(&cursor).map(Start::After),
        (None, Some(0)) => Err(PagingError::new("`page` counts from 1")),
        (None, Some(page)) => Ok(Start::Skip((page - 1).saturating_mul(limit))),
        (None, None) => Ok(Start::Skip(0)),
    }
}

fn page_limit(limit: Option<usize>) -> Result<usize, PagingError> {
    match limit {
        Some(0) => Err(PagingError::new("`limit` must be at least 1")),
        Some(n) => Ok(n.min(MAX_PAGE_LIMIT)),
        None => Ok(DEFAULT_PAGE_LIMIT),
    }
}

impl RoomsParams {
    /// Check the parameters: `cursor` and `page` exclude each other, `page` and `limit` are at
    /// least 1, a cursor must come from this API and match the sort order.
    pub fn validate(self) -> Result<RoomsQuery, PagingError> {
        let limit = page_limit(self.limit)?;
        let sort = self.sort.unwrap_or_default();
        let start = page_start(self.cursor, self.page, limit)?;
        match (&start, sort) {
            (Start::After(Position::Name(_)), RoomSort::Online)
            | (Start::After(Position::Online(..)), RoomSort::Name) => {
                return Err(PagingError::new("`cursor` belongs to the other `sort` order"));
            }
            _ => {}
        }
        Ok(RoomsQuery { prefix: self.prefix.unwrap_or_default(), sort, start, limit })
    }
}

/// A validated room-list request. See the module doc for the order and the paging rules.
///
/// A backend that holds every room in one place calls [`RoomsQuery::select`]. Rooms spread
/// over workers are listed in two steps: each worker filters its rooms with
/// [`RoomsQuery::matches`] (counting them for `total`) and [`RoomsQuery::admits`], and reduces
/// its candidates with [`RoomsQuery::part`]; the asker then joins the parts with
/// [`RoomsQuery::merge`]. The result is the same page as `select` over all rooms at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomsQuery {
    prefix: String,
    sort: RoomSort,
    start: Start,
    limit: usize,
}

/// One worker's share of a room list: its best candidates, in order, and how many of its
/// rooms match the prefix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomsPart {
    /// At most [`RoomsQuery::wanted`] rooms after the start, in the list's order.
    pub rooms: Vec<RoomSummary>,
    /// Rooms of this worker that match the prefix (cursor or not).
    pub total: u64,
}

/// A page of rooms (`GET /api/rooms`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoomsPage {
    /// The rooms, in the list's order.
    pub rooms: Vec<RoomSummary>,
    /// Rooms that match the prefix, on every page together.
    pub total: u64,
    /// The order.
    pub sort: RoomSort,
    /// The effective page size.
    pub limit: usize,
    /// The cursor of the next page; `null` on the last page.
    pub next: Option<String>,
}

impl RoomsQuery {
    /// The hottest `limit` rooms (online order, first page): what a dashboard shows.
    pub fn top(limit: usize) -> Self {
        Self {
            prefix: String::new(),
            sort: RoomSort::Online,
            start: Start::Skip(0),
            limit: limit.clamp(1, MAX_PAGE_LIMIT),
        }
    }

    /// The order.
    pub fn sort(&self) -> RoomSort {
        self.sort
    }

    /// The effective page size.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `room` matches the prefix (counts towards `total`).
    pub fn matches(&self, room: &str) -> bool {
        room.starts_with(&self.prefix)
    }

    /// Whether a room matching the prefix lies after the cursor, so it may be on this page.
    pub fn admits(&self, room: &str, online: u64) -> bool {
        match &self.start {
            Start::Skip(_) => true,
            Start::After(Position::Name(after)) => room > after.as_str(),
            Start::After(Position::Online(after_online, after)) => {
                online < *after_online || (online == *after_online && room > after.as_str())
            }
        }
    }

    /// How many rooms a worker's part may hold: enough that the merged page is exact and
    /// knows whether another page follows.
    pub fn wanted(&self) -> usize {
        let skip = match self.start {
            Start::Skip(n) => n,
            Start::After(_) => 0,
        };
        skip.saturating_add(self.limit).saturating_add(1)
    }

    fn order(&self, a: &RoomSummary, b: &RoomSummary) -> Ordering {
        match self.sort {
            RoomSort::Name => a.room.cmp(&b.room),
            RoomSort::Online => b.online.cmp(&a.online).then_with(|| a.room.cmp(&b.room)),
        }
    }

    /// Reduce one worker's admitted candidates to its part. `total` is the worker's count of
    /// rooms matching the prefix.
    pub fn part(&self, mut candidates: Vec<RoomSummary>, total: u64) -> RoomsPart {
        candidates.sort_by(|a, b| self.order(a, b));
        candidates.truncate(self.wanted());
        RoomsPart { rooms: candidates, total }
    }

    /// Join the parts of every worker into the page.
    pub fn merge(&self, parts: impl IntoIterator<Item = RoomsPart>) -> RoomsPage {
        let mut rooms = Vec::new();
        let mut total = 0;
        for part in parts {
            total += part.total;
            rooms.extend(part.rooms);
        }
        rooms.sort_by(|a, b| self.order(a, b));
        if let Start::Skip(skip) = self.start {
            rooms.drain(..skip.min(rooms.len()));
        }
        let more = rooms.len() > self.limit;
        rooms.truncate(self.limit);
        let next = more.then(|| rooms.last().map(|r| self.position_of(r).encode())).flatten();
        RoomsPage { rooms, total, sort: self.sort, limit: self.limit, next }
    }

    fn position_of(&self, room: &RoomSummary) -> Position {
        match self.sort {
            RoomSort::Name => Position::Name(room.room.clone()),
            RoomSort::Online => Position::Online(room.online, room.room.clone()),
        }
    }

    /// The page over rooms held in one place.
    pub fn select(&self, rooms: impl IntoIterator<Item = RoomSummary>) -> RoomsPage {
        let mut total = 0;
        let mut candidates = Vec::new();
        for room in rooms.into_iter().filter(|r| self.matches(&r.room)) {
            total += 1;
            if self.admits(&room.room, room.online) {
                candidates.push(room);
            }
        }
        self.merge([self.part(candidates, total)])
    }
}

/// Paging parameters of a list without filters (`GET /api/rooms/{room}/presence`), as they
/// arrive in the query string.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PageParams {
    /// Continue after this cursor (the `next` of the previous page).
    pub cursor: Option<String>,
    /// The 1-based page number (instead of a cursor).
    pub page: Option<usize>,
    /// Items per page (1.., capped at [`MAX_PAGE_LIMIT`]).
    pub limit: Option<usize>,
}

impl PageParams {
    /// Check the parameters as [`RoomsParams::validate`] does.
    pub fn validate(self) -> Result<PageQuery, PagingError> {
        let limit = page_limit(self.limit)?;
        let start = page_start(self.cursor, self.page, limit)?;
        if let Start::After(Position::Online(..)) = start {
            return Err(PagingError::new("`cursor` belongs to a room list, not to this list"));
        }
        Ok(PageQuery { start, limit })
    }
}

/// A validated page request over a room's members, ordered by user id. The home filters with
/// [`PageQuery::admits`] (so it builds members only for users after the cursor) and calls
/// [`PageQuery::select`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageQuery {
    start: Start,
    limit: usize,
}

impl PageQuery {
    /// The first page of `limit` members.
    pub fn first(limit: usize) -> Self {
        Self { start: Start::Skip(0), limit: limit.clamp(1, MAX_PAGE_LIMIT) }
    }

    /// The effective page size.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a member with this user id may be on the page.
    pub fn admits(&self, user: &str) -> bool {
        match &self.start {
            Start::After(Position::Name(after)) => user > after.as_str(),
            Start::After(Position::Online(..)) | Start::Skip(_) => true,
        }
    }

    /// The page of `room`'s members, from the admitted ones. `online` is the room's count of
    /// distinct viewers (all pages).
    pub fn select(&self, room: &str, online: u64, members: impl IntoIterator<Item = PresenceMember>) -> PresencePage {
        let mut members: Vec<PresenceMember> = members.into_iter().filter(|m| self.admits(&m.user)).collect();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        if let Start::Skip(skip) = self.start {
            members.drain(..skip.min(members.len()));
        }
        let more = members.len() > self.limit;
        members.truncate(self.limit);
        let next = more.then(|| members.last().map(|m| Position::Name(m.user.clone()).encode())).flatten();
        PresencePage { room: room.to_owned(), online, members, limit: self.limit, next }
    }
}

/// One distinct viewer of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PresenceMember {
    /// The user id.
    pub user: String,
    /// The display name.
    pub name: String,
    /// When the viewer's first connection joined, ms since the Unix epoch.
    pub joined_at: u64,
    /// When any of its connections in the room last sent a frame, ms since the Unix epoch.
    pub last_seen: u64,
    /// Milliseconds since the viewer last spoke in the room's connections (its latest comment
    /// or reaction, or its connect): how silent it is, while `last_seen` says it is alive.
    pub silent_ms: u64,
    /// Its connections in the room.
    pub connections: u32,
}

/// A page of a room's members (`GET /api/rooms/{room}/presence`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PresencePage {
    /// The room.
    pub room: String,
    /// Distinct viewers in the room, on every page together.
    pub online: u64,
    /// The members, by user id.
    pub members: Vec<PresenceMember>,
    /// The effective page size.
    pub limit: usize,
    /// The cursor of the next page; `null` on the last page.
    pub next: Option<String>,
}

/// Why a viewer left a room. Counted per room since it was created, and in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Its connection closed (by the client, or a close code other than the ones below).
    Closed,
    /// Its heartbeats stopped and the connection expired.
    Heartbeat,
    /// An upstream service kicked it.
    Kicked,
    /// It could not keep up and was closed with 4009.
    SlowConsumer,
    /// The room was closed.
    RoomClosed,
}

impl LeaveReason {
    /// Every reason, in the order of [`LeaveCounts`]' fields.
    pub const ALL: [Self; 6] =
        [Self::Left, Self::Closed, Self::Heartbeat, Self::Kicked, Self::SlowConsumer, Self::RoomClosed];

    /// The reason as written in JSON and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Closed => "closed",
            Self::Heartbeat => "heartbeat",
            Self::Kicked => "kicked",
            Self::SlowConsumer => "slow_consumer",
            Self::RoomClosed => "room_closed",
        }
    }
}

/// Leaves by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeaveCounts {
    /// [`LeaveReason::Left`].
    pub left: u64,
    /// [`LeaveReason::Closed`].
    pub closed: u64,
    /// [`LeaveReason::Heartbeat`].
    pub heartbeat: u64,
    /// [`LeaveReason::Kicked`].
    pub kicked: u64,
    /// [`LeaveReason::SlowConsumer`].
    pub slow_consumer: u64,
    /// [`LeaveReason::RoomClosed`].
    pub room_closed: u64,
}

impl LeaveCounts {
    fn slot(&mut self, reason: LeaveReason) -> &mut u64 {
        match reason {
            LeaveReason::Left => &mut self.left,
            LeaveReason::Closed => &mut self.closed,
            LeaveReason::Heartbeat => &mut self.heartbeat,
            LeaveReason::Kicked => &mut self.kicked,
            LeaveReason::SlowConsumer => &mut self.slow_consumer,
            LeaveReason::RoomClosed => &mut self.room_closed,
        }
    }

    /// Count one leave.
    pub fn record(&mut self, reason: LeaveReason) {
        *self.slot(reason) += 1;
    }

    /// The count of one reason.
    pub fn get(&self, reason: LeaveReason) -> u64 {
        let mut copy = *self;
        *copy.slot(reason)
    }

    /// Add another set of counts.
    pub fn merge(&mut self, other: &Self) {
        for reason in LeaveReason::ALL {
            *self.slot(reason) += other.get(reason);
        }
    }
}

/// Refused comments by the `error` code their sender got (PROTOCOL.md error codes; the
/// session refuses with [`ErrorCode`], so it is counted by the same type). Serialized as an
/// object with every code: `{"bad_request":0,...}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectionCounts {
    counts: [u64; ErrorCode::ALL.len()],
}

impl RejectionCounts {
    /// Count one refusal.
    pub fn record(&mut self, code: ErrorCode) {
        self.counts[code as usize] += 1;
    }

    /// Refusals with `code`.
    pub fn get(&self, code: ErrorCode) -> u64 {
        self.counts[code as usize]
    }

    /// Refusals of every code together.
    pub fn sum(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add another set of counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }
}

impl Serialize for RejectionCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(ErrorCode::ALL.len()))?;
        for code in ErrorCode::ALL {
            map.serialize_entry(code.as_str(), &self.get(code))?;
        }
        map.end()
    }
}

fn error_code<S: serde::Serializer>(code: &ErrorCode, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(code.as_str())
}

/// Comments taken and refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CommentCounts {
    /// Sequenced and sent to the room.
    pub accepted: u64,
    /// Refused, by reason.
    pub rejected: RejectionCounts,
}

impl CommentCounts {
    /// Add another set of counts.
    pub fn merge(&mut self, other: &Self) {
        self.accepted += other.accepted;
        self.rejected.merge(&other.rejected);
    }
}

/// `?since=SEQ[&epoch=E]` of `GET /api/rooms/{room}`: the position of a client that wants
/// what it missed, with the same rule as `join` recovery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Since {
    /// The last seq the client saw.
    pub since: Option<u64>,
    /// The epoch that seq belongs to; another epoch than the room's recovers nothing.
    pub epoch: Option<String>,
}

/// [`RoomDetail::events`] from the history's frames: each frame's payload, verbatim.
pub fn events_of(frames: &[bytes::Bytes]) -> Vec<Box<RawValue>> {
    frames
        .iter()
        .flat_map(|f| crate::wire::frame::server_frames(f))
        .filter_map(|(_, payload)| std::str::from_utf8(payload).ok())
        .filter_map(|text| RawValue::from_string(text.to_owned()).ok())
        .collect()
}

/// One room in full (`GET /api/rooms/{room}`), answered by its home.
#[derive(Debug, Serialize)]
pub struct RoomDetail {
    /// The room name.
    pub room: String,
    /// The room's epoch.
    pub epoch: String,
    /// The latest seq.
    pub seq: u64,
    /// The state's version (0 before the first `state`).
    pub version: u64,
    /// The state object as last set, verbatim; `null` before the first `state`.
    pub state: Option<Box<RawValue>>,
    /// Distinct viewers.
    pub online: u64,
    /// Accepted comments per second (see [`RoomSummary::comment_rate`]).
    pub comment_rate: f64,
    /// When the room was created (this epoch), ms since the Unix epoch.
    pub created_at: u64,
    /// Recent sequenced messages from the history ring, oldest first, each the JSON payload
    /// exactly as members received it (`event` and `state` messages). Without `since`: the
    /// whole ring. With `since`: all-or-nothing, as `join` recovery: every message after
    /// `since` when the ring still holds them all in the room's epoch (none when `since` is
    /// at or past `seq`), otherwise none.
    pub events: Vec<Box<RawValue>>,
    /// With `since`: whether `events` is exactly what the client missed (`join`'s
    /// `recovered`); `false` means reload through this API. `null` without `since`.
    pub recovered: Option<bool>,
    /// Why viewers left, since the room was created.
    pub leaves: LeaveCounts,
    /// Comments taken and refused, since the room was created.
    pub comments: CommentCounts,
}

/// What a dashboard shows once a second, answered by every worker together.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// When it was taken, ms since the Unix epoch (rates are computed between snapshots).
    pub at_ms: u64,
    /// Open viewer connections (ws and wss).
    pub connections: u64,
    /// Rooms that exist.
    pub rooms: u64,
    /// Distinct viewers summed over rooms.
    pub online: u64,
    /// The hottest rooms by online (at most [`SNAPSHOT_TOP_ROOMS`]).
    pub top_rooms: Vec<RoomSummary>,
    /// Messages delivered to connections, since start.
    pub deliveries: u64,
    /// Comments accepted, since start.
    pub comments: u64,
    /// Comments refused, since start.
    pub comments_rejected: u64,
    /// Connections closed as slow consumers (4009), since start.
    pub slow_consumer_closes: u64,
    /// Chunks of socket writes during which a worker lost its core, summed over workers, since
    /// start ([`crate::runtime::stall`]).
    pub write_stalls: u64,
    /// Errors since start ([`crate::metrics::Counters::errors`]).
    pub errors: u64,
}

/// One item of a room's live feed (`GET /admin/stream?room=NAME`), as it happens.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedItem {
    /// A message as the room's members received it (`event`, `state`, `presence`,
    /// `reactions`): the frame's JSON payload, verbatim.
    Message {
        /// The payload.
        message: Box<RawValue>,
    },
    /// A viewer left the room.
    Left {
        /// The user id.
        user: String,
        /// Why.
        reason: LeaveReason,
    },
    /// A comment was refused.
    Rejected {
        /// The user id of the sender.
        user: String,
        /// The error code the sender got.
        #[serde(serialize_with = "error_code")]
        reason: ErrorCode,
    },
    /// The reader fell behind and this many items were dropped before the next one.
    Lagged {
        /// Dropped items.
        missed: u64,
    },
    /// The room was closed or freed: nothing follows.
    Closed,
}

impl FeedItem {
    /// A [`FeedItem::Message`] from a frame's JSON payload; `None` when it is not JSON.
    pub fn message(payload: &str) -> Option<Self> {
        RawValue::from_string(payload.to_owned()).ok().map(|message| Self::Message { message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn room(name: &str, online: u64) -> RoomSummary {
        RoomSummary { room: name.to_owned(), online, seq: 1, epoch: "e".to_owned(), comment_rate: 0.0, version: 0 }
    }

    fn params(sort: Option<RoomSort>, cursor: Option<String>, page: Option<usize>, limit: usize) -> RoomsQuery {
        RoomsParams { prefix: None, sort, cursor, page, limit: Some(limit) }.validate().expect("valid")
    }

    fn names(page: &RoomsPage) -> Vec<&str> {
        page.rooms.iter().map(|r| r.room.as_str()).collect()
    }

    #[test]
    fn a_cursor_walk_lists_every_room_once_even_when_rooms_come_and_go() {
        let mut rooms: Vec<_> = (0..25).map(|i| room(&format!("r{i:02}"), i)).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = params(None, cursor.clone(), None, 10).select(rooms.clone());
            seen.extend(names(&page).iter().map(|s| s.to_string()));
            // Between pages a room before the cursor goes away and one is added at the front:
            // neither shifts the rest.
            rooms.retain(|r| r.room != "r00");
            rooms.push(room("a-new", 0));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25).map(|i| format!("r{i:02}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn online_order_pages_and_cursors() {
        let rooms = vec![room("b", 5), room("a", 5), room("c", 9), room("d", 1)];
        let q = params(Some(RoomSort::Online), None, None, 2);
        let first = q.select(rooms.clone());
        assert_eq!(names(&first), ["c", "a"]);
        assert_eq!(first.total, 4);
        let next = first.next.expect("more");
        let second = params(Some(RoomSort::Online), Some(next), None, 2).select(rooms.clone());
        assert_eq!(names(&second), ["b", "d"]);
        assert_eq!(second.next, None);
        let page2 = params(Some(RoomSort::Online), None, Some(2), 2).select(rooms);
        assert_eq!(names(&page2), ["b", "d"]);
    }

    #[test]
    fn prefix_filters_and_total_counts_all_pages() {
        let rooms = vec![room("live-1", 1), room("live-2", 2), room("quiz", 3)];
        let q = RoomsParams { prefix: Some("live-".into()), limit: Some(1), ..RoomsParams::default() }
            .validate()
            .expect("valid");
        let page = q.select(rooms);
        assert_eq!((names(&page), page.total, page.limit), (vec!["live-1"], 2, 1));
        assert_eq!(page.next.as_deref(), Some("n.live-1"));
    }

    #[test]
    fn bad_paging_parameters_say_why() {
        let err = |p: RoomsParams| p.validate().expect_err("invalid").to_string();
        assert!(err(RoomsParams { limit: Some(0), ..RoomsParams::default() }).contains("limit"));
        assert!(err(RoomsParams { page: Some(0), ..RoomsParams::default() }).contains("page"));
        assert!(err(RoomsParams { page: Some(1), cursor: Some("n.a".into()), ..RoomsParams::default() })
            .contains("not both"));
        assert!(err(RoomsParams { cursor: Some("zz".into()), ..RoomsParams::default() }).contains("cursor"));
        assert!(err(RoomsParams { cursor: Some("o.x.a".into()), ..RoomsParams::default() }).contains("cursor"));
        assert!(err(RoomsParams { cursor: Some("o.3.a".into()), ..RoomsParams::default() }).contains("sort"));
        let capped = RoomsParams { limit: Some(5000), ..RoomsParams::default() }.validate().expect("valid");
        assert_eq!(capped.limit(), MAX_PAGE_LIMIT);
        assert!(PageParams { cursor: Some("o.1.a".into()), ..PageParams::default() }.validate().is_err());
    }

    #[test]
    fn a_name_cursor_may_contain_dots() {
        let rooms = vec![room("a.b.c", 1), room("a.b.d", 1)];
        let first = params(None, None, None, 1).select(rooms.clone());
        let second = params(None, first.next, None, 1).select(rooms);
        assert_eq!(names(&second), ["a.b.d"]);
    }

    fn member(user: &str) -> PresenceMember {
        PresenceMember {
            user: user.to_owned(),
            name: user.to_uppercase(),
            joined_at: 1,
            last_seen: 2,
            silent_ms: 3,
            connections: 1,
        }
    }

    #[test]
    fn presence_pages_by_user() {
        let members = || ["carol", "alice", "bob"].map(member);
        let q = PageParams { limit: Some(2), ..PageParams::default() }.validate().expect("valid");
        let first = q.select("r", 3, members());
        assert_eq!(first.members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        let q = PageParams { cursor: first.next, limit: Some(2), ..PageParams::default() }.validate().expect("valid");
        let second = q.select("r", 3, members());
        assert_eq!((second.members.len(), second.next.as_deref(), second.online), (1, None, 3));
        let json = serde_json::to_value(&second).expect("json");
        assert_eq!(
            json["members"][0],
            json!({"user": "carol", "name": "CAROL", "joined_at": 1, "last_seen": 2, "silent_ms": 3, "connections": 1})
        );
    }

    #[test]
    fn counts_merge_and_serialize_with_protocol_names() {
        let mut a = LeaveCounts::default();
        a.record(LeaveReason::Heartbeat);
        let mut b = LeaveCounts::default();
        b.record(LeaveReason::Heartbeat);
        b.record(LeaveReason::SlowConsumer);
        a.merge(&b);
        assert_eq!((a.get(LeaveReason::Heartbeat), a.slow_consumer), (2, 1));
        assert_eq!(
            serde_json::to_value(a).expect("json"),
            json!({"left": 0, "closed": 0, "heartbeat": 2, "kicked": 0, "slow_consumer": 1, "room_closed": 0})
        );
        for reason in LeaveReason::ALL {
            assert_eq!(serde_json::to_value(reason).expect("json"), json!(reason.as_str()));
        }
        let mut c = CommentCounts { accepted: 3, ..CommentCounts::default() };
        c.rejected.record(ErrorCode::TooLarge);
        c.merge(&c.clone());
        assert_eq!((c.accepted, c.rejected.get(ErrorCode::TooLarge), c.rejected.sum()), (6, 2, 2));
        let json = serde_json::to_value(c.rejected).expect("json");
        assert_eq!(json["too_large"], 2);
        assert_eq!(json.as_object().map(|o| o.len()), Some(ErrorCode::ALL.len()), "every code is listed");
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::ALL[code as usize], code);
        }
        let rejected = FeedItem::Rejected { user: "u".into(), reason: ErrorCode::RateLimited };
        assert_eq!(
            serde_json::to_value(&rejected).expect("json"),
            json!({"kind": "rejected", "user": "u", "reason": "rate_limited"})
        );
    }

    #[test]
    fn raw_json_is_written_verbatim() {
        let detail = RoomDetail {
            room: "r".into(),
            epoch: "ab".into(),
            seq: 2,
            version: 1,
            state: Some(RawValue::from_string(r#"{"b":1,"a":2}"#.into()).expect("raw")),
            online: 0,
            comment_rate: 0.5,
            created_at: 7,
            events: vec![RawValue::from_string(r#"{"op":"event","seq":2}"#.into()).expect("raw")],
            recovered: None,
            leaves: LeaveCounts::default(),
            comments: CommentCounts::default(),
        };
        let text = serde_json::to_string(&detail).expect("json");
        assert!(text.contains(r#""state":{"b":1,"a":2}"#), "{text}");
        assert!(text.contains(r#""events":[{"op":"event","seq":2}]"#), "{text}");
        assert!(text.contains(r#""recovered":null"#), "{text}");
        let item = FeedItem::message(r#"{"op":"presence","online":3}"#).expect("json");
        assert_eq!(
            serde_json::to_value(&item).expect("json"),
            json!({"kind": "message", "message": {"op": "presence", "online": 3}})
        );
        assert!(FeedItem::message("not json").is_none());
        let left = FeedItem::Left { user: "u".into(), reason: LeaveReason::Kicked };
        assert_eq!(
            serde_json::to_value(&left).expect("json"),
            json!({"kind": "left", "user": "u", "reason": "kicked"})
        );
        assert_eq!(serde_json::to_value(FeedItem::Closed).expect("json"), json!({"kind": "closed"}));
    }

    fn arb_rooms() -> impl Strategy<Value = Vec<(String, u64, usize)>> {
        proptest::collection::vec(("[a-c]{1,3}", 0u64..4, 0usize..3), 0..30).prop_map(|mut v| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.dedup_by(|a, b| a.0 == b.0);
            v
        })
    }

    proptest! {
        /// Parts from any split over workers merge to the page of all rooms at once, and that
        /// page is the naive model's: sort everything, skip, take.
        #[test]
        fn merged_parts_equal_the_naive_page(
            rooms in arb_rooms(),
            online_sort in any::<bool>(),
            limit in 1usize..6,
            page in proptest::option::of(1usize..4),
            prefix in proptest::option::of("[a-c]{0,1}"),
        ) {
            let sort = if online_sort { RoomSort::Online } else { RoomSort::Name };
            let q = RoomsParams { prefix: prefix.clone(), sort: Some(sort), cursor: None, page, limit: Some(limit) }
                .validate().expect("valid");
            let all: Vec<RoomSummary> = rooms.iter().map(|(n, o, _)| room(n, *o)).collect();
            let mut parts = Vec::new();
            for worker in 0..3 {
                let mine: Vec<&(String, u64, usize)> = rooms.iter().filter(|r| r.2 == worker).collect();
                let total = mine.iter().filter(|r| q.matches(&r.0)).count() as u64;
                let candidates = mine.iter().filter(|r| q.matches(&r.0) && q.admits(&r.0, r.1)).map(|r| room(&r.0, r.1)).collect();
                parts.push(q.part(candidates, total));
            }
            let merged = q.merge(parts);
            prop_assert_eq!(&merged, &q.select(all.clone()));

            let mut model: Vec<RoomSummary> = all.into_iter().filter(|r| r.room.starts_with(prefix.as_deref().unwrap_or(""))).collect();
            model.sort_by(|a, b| match sort {
                RoomSort::Name => a.room.cmp(&b.room),
                RoomSort::Online => b.online.cmp(&a.online).then(a.room.cmp(&b.room)),
            });
            let total = model.len() as u64;
            let skip = (page.unwrap_or(1) - 1) * limit;
            let expected: Vec<RoomSummary> = model.iter().skip(skip).take(limit).cloned().collect();
            prop_assert_eq!(&merged.rooms, &expected);
            prop_assert_eq!(merged.total, total);
            prop_assert_eq!(merged.next.is_some(), model.len() > skip + limit);

            // Following the cursors from here walks the rest of the model in order.
            let mut walked = merged.rooms.clone();
            let mut next = merged.next;
            while let Some(cursor) = next {
                let q = RoomsParams { prefix: prefix.clone(), sort: Some(sort), cursor: Some(cursor), page: None, limit: Some(limit) }
                    .validate().expect("valid");
                let p = q.select(model.clone());
                walked.extend(p.rooms.clone());
                next = p.next;
            }
            prop_assert_eq!(walked, model.into_iter().skip(skip).collect::<Vec<_>>());
        }
    }
}
