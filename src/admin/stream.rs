//! `GET /admin/stream`: the dashboard's WebSocket.
//!
//! The server sends text frames, one JSON object each, told apart by `type`:
//!
//! * `snapshot`, every [`AdminSettings::pulse_interval`](super::AdminSettings): totals,
//!   rates, counts of the last interval, the top rooms and the sparklines
//!   ([`super::pulse::Frame`]). One producer asks the owners once per interval for every
//!   open dashboard, and only while one is open; a dashboard that reads slowly skips frames
//!   (each one is complete) instead of queueing them.
//! * with `?room=NAME`: `room` (`{"type":"room","room":..,"detail":RoomDetail,
//!   "presence":PresencePage}`) on open, with the recent events, and every interval after
//!   without them; `feed` (`{"type":"feed","room":..,"item":FeedItem}`) for each item of
//!   the room's live feed as it happens; `room_closed` when the room is gone.
//! * `error` (`{"type":"error","message":..}`) when the owners did not answer.
//!
//! Messages from the client are read only to notice a close. At shutdown the stream is
//! closed with 1001. The feed is opened before the room is read, so nothing falls between
//! the two (an event may come in both: `seq` tells).

use super::backend::Tap;
use super::error::ApiError;
use super::pulse::{Pulse, SERIES_POINTS};
use super::{stopped, AppState};
use crate::query::{FeedItem, PageQuery, PresencePage, RoomDetail, Since};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Members a watched room's `room` frame lists (the first page, by user id).
const ROOM_PRESENCE_LIMIT: usize = 200;

/// The latest snapshot frame, shared by every open stream (one buffer, refcounted: sending it
/// to N dashboards copies nothing).
#[derive(Debug)]
pub(super) struct PulseHub {
    frames: watch::Sender<Option<Utf8Bytes>>,
    /// Wakes the producer when a stream opens while it idles.
    wake: Notify,
}

impl PulseHub {
    pub(super) fn new() -> Self {
        Self { frames: watch::Sender::new(None), wake: Notify::new() }
    }
}

/// Ask for a snapshot every interval while at least one stream is open.
pub(super) async fn produce(state: AppState) {
    let hub = Arc::clone(&state.hub);
    let mut pulse = Pulse::new(SERIES_POINTS);
    loop {
        if hub.frames.receiver_count() == 0 {
            // Nobody watches: forget the line (a gap would be drawn as a straight line) and
            // idle until a stream opens.
            pulse.reset();
            hub.frames.send_replace(None);
            tokio::select! {
                () = hub.wake.notified() => continue,
                () = stopped(state.stop.clone()) => return,
            }
        }
        let next = tokio::time::Instant::now() + state.settings.pulse_interval;
        let text = match state.ask(|b, deadline| b.snapshot(deadline)).await {
            Ok(snapshot) => serde_json::to_string(&pulse.observe(snapshot)),
            Err(e) => serde_json::to_string(&json!({"type": "error", "message": e.to_string()})),
        };
        match text {
            Ok(text) => {
                hub.frames.send_replace(Some(text.into()));
            }
            Err(e) => tracing::error!(error = %e, "a snapshot frame could not be encoded"),
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = stopped(state.stop.clone()) => return,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct StreamParams {
    room: Option<String>,
}

/// The room a stream watches, as the upgrade found it.
struct Watched {
    room: String,
    tap: Tap,
    /// The first `room` frame, with the recent events.
    first: String,
}

#[derive(Serialize)]
struct FeedFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    item: &'a FeedItem,
}

#[derive(Serialize)]
struct RoomFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    detail: &'a RoomDetail,
    presence: &'a PresencePage,
}

async fn room_frame(state: &AppState, room: &str, since: Since) -> Result<String, ApiError> {
    let name = room.to_owned();
    let detail = state.ask(move |b, deadline| b.room(&name, &since, deadline)).await?;
    let name = room.to_owned();
    let page = PageQuery::first(ROOM_PRESENCE_LIMIT);
    let presence = state.ask(move |b, deadline| b.presence(&name, &page, deadline)).await?;
    let frame = RoomFrame { kind: "room", room, detail: &detail, presence: &presence };
    serde_json::to_string(&frame).map_err(|e| ApiError::Internal(e.to_string()))
}

/// The upgrade: check the room (404 before any upgrade), open its feed, then stream.
pub(super) async fn upgrade(
    State(state): State<AppState>,
    params: Result<Query<StreamParams>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws
        .map_err(|e| ApiError::BadRequest(format!("{} is a WebSocket: {}", super::auth::STREAM_PATH, e.body_text())))?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let watched = match params.room {
        None => None,
        Some(room) => {
            crate::wire::validate_room(&room).map_err(|why| ApiError::BadRequest(format!("the room name is {why}")))?;
            let name = room.clone();
            let tap = state.ask(move |b, deadline| b.tap(&name, deadline)).await?;
            let first = room_frame(&state, &room, Since::default()).await?;
            Some(Watched { room, tap, first })
        }
    };
    Ok(ws.on_upgrade(move |socket| run(socket, state, watched)))
}

/// The next feed item, or never when there is no feed.
async fn next_item(tap: Option<&mut Tap>) -> Option<FeedItem> {
    match tap {
        Some(tap) => tap.recv().await,
        None => std::future::pending().await,
    }
}

async fn send(socket: &mut WebSocket, text: impl Into<Utf8Bytes>) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn run(mut socket: WebSocket, state: AppState, watched: Option<Watched>) {
    let _drain = state.drain.clone();
    let mut frames = state.hub.frames.subscribe();
    state.hub.wake.notify_one();
    let current = frames.borrow_and_update().clone();
    if let Some(text) = current {
        if !send(&mut socket, text).await {
            return;
        }
    }
    let (mut room, mut tap) = match watched {
        Some(Watched { room, tap, first }) => {
            if !send(&mut socket, first).await {
                return;
            }
            (Some(room), Some(tap))
        }
        None => (None, None),
    };
    let mut refresh = tokio::time::interval_at(
        tokio::time::Instant::now() + state.settings.pulse_interval,
        state.settings.pulse_interval,
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stopped(state.stop.clone());
    tokio::pin!(stop);
    loop {
        let text: Utf8Bytes = tokio::select! {
            () = &mut stop => {
                let close = CloseFrame { code: 1001, reason: "the server is shutting down".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                return;
            }
            changed = frames.changed() => {
                if changed.is_err() {
                    return;
                }
                let frame = frames.borrow_and_update().clone();
                match frame {
                    Some(text) => text,
                    None => continue,
                }
            }
            item = next_item(tap.as_mut()) => {
                // The home sends `Closed` and drops its end; either ends the feed.
                let item = item.unwrap_or(FeedItem::Closed);
                if matches!(item, FeedItem::Closed) {
                    tap = None;
                }
                let frame = FeedFrame { kind: "feed", room: room.as_deref().unwrap_or_default(), item: &item };
                match serde_json::to_string(&frame) {
                    Ok(text) => text.into(),
                    Err(_) => continue,
                }
            }
            _ = refresh.tick(), if room.is_some() => {
                let name = room.clone().unwrap_or_default();
                // `since` past any seq: the refresh carries no events (the feed has them).
                let since = Since { since: Some(u64::MAX), epoch: None };
                match room_frame(&state, &name, since).await {
                    Ok(text) => text.into(),
                    Err(ApiError::NotFound(_)) => {
                        room = None;
                        tap = None;
                        json!({"type": "room_closed", "room": name}).to_string().into()
                    }
                    Err(e) => json!({"type": "error", "message": e.to_string()}).to_string().into(),
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        };
        if !send(&mut socket, text).await {
            return;
        }
    }
}
