//! The admin port's HTTP paths: health, the query API, the upstream commands, `/metrics`
//! and the dashboard page.
//!
//! Each handler checks its input (room name, paging, body), asks the owners through
//! [`AppState::ask`] and writes their answer as JSON; every refusal is an [`ApiError`]. No
//! handler keeps state between requests, and none answers from a cache: the query API is the
//! truth a reloading client or a viewer whose recovery failed relies on.

use super::auth;
use super::backend::UpstreamOp;
use super::error::ApiError;
use super::{exposition, stream, AppState};
use crate::query::{PageParams, RoomsParams, Since};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The dashboard: one page, its CSS and script inline, compiled into the binary.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The page may load nothing from anywhere but its own inline code and this origin.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                             frame-ancestors 'none'";

/// Every path of the admin port.
pub(super) fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/rooms", get(rooms))
        .route("/api/rooms/{room}", get(room))
        .route("/api/rooms/{room}/presence", get(presence))
        .route("/api/sinks", get(sinks))
        .route("/api/cluster", get(cluster))
        .route(auth::STREAM_PATH, get(stream::upgrade))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state.settings), auth::require));
    let mut open = Router::new().route("/healthz", get(healthz)).route("/admin", get(dashboard));
    for op in UpstreamOp::ALL {
        open = open.route(
            op.path(),
            post(move |state: State<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>| {
                upstream(op, state, headers, body)
            }),
        );
    }
    let max_body = state.settings.max_body;
    guarded.merge(open).fallback(not_found).layer(DefaultBodyLimit::max(max_body)).with_state(state)
}

/// A room name from a path: percent-decoded by axum, then checked like any room name.
fn room_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    crate::wire::validate_room(&name).map_err(|why| ApiError::BadRequest(format!("the room name is {why}")))?;
    Ok(name)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::BadRequest(e.body_text()))
}

async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let health = state.ask(|b, deadline| b.health(deadline)).await?;
    if !health.serving() {
        return Err(ApiError::Unavailable(health.describe().to_owned()));
    }
    Ok(Json(json!({"status": "serving"})))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let health = state.ask(|b, deadline| b.health(deadline)).await?;
    if !health.ready() {
        return Err(ApiError::Unavailable(health.describe().to_owned()));
    }
    Ok(Json(json!({"status": "ready"})))
}

async fn rooms(
    State(state): State<AppState>,
    params: Result<Query<RoomsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(params)?.validate().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let page = state.ask(move |b, deadline| b.rooms(&q, deadline)).await?;
    Ok(Json(page).into_response())
}

async fn room(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    since: Result<Query<Since>, QueryRejection>,
) -> Result<Response, ApiError> {
    let name = room_name(path)?;
    let since = query(since)?;
    if since.epoch.is_some() && since.since.is_none() {
        return Err(ApiError::BadRequest("`epoch` goes with `since`: give both, or `since` alone".into()));
    }
    let detail = state.ask(move |b, deadline| b.room(&name, &since, deadline)).await?;
    Ok(Json(detail).into_response())
}

async fn presence(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let name = room_name(path)?;
    let q = query(params)?.validate().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let page = state.ask(move |b, deadline| b.presence(&name, &q, deadline)).await?;
    Ok(Json(page).into_response())
}

/// The head of an ingest reply line: enough to tell success from an error code.
#[derive(Deserialize)]
struct ReplyHead {
    ok: bool,
    error: Option<String>,
    message: Option<String>,
}

/// The body must be one JSON object; an `op` in it must be the path's.
fn check_command(op: UpstreamOp, body: &[u8]) -> Result<(), ApiError> {
    let fields: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(|_| {
        ApiError::BadRequest(format!(
            "the body must be one JSON object with the fields of the ingest `{}` command",
            op.as_str()
        ))
    })?;
    match fields.get("op") {
        None => Ok(()),
        Some(Value::String(given)) if given == op.as_str() => Ok(()),
        Some(given) => Err(ApiError::BadRequest(format!(
            "`op` is {given} but {} takes `{}` (the field may be left out)",
            op.path(),
            op.as_str()
        ))),
    }
}

async fn upstream(
    op: UpstreamOp,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = auth::caller(&state.settings, &headers)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("the body is larger than {} bytes (ingest.max_line)", state.settings.max_body))
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    check_command(op, &body)?;
    let line = state.ask(move |b, deadline| b.upstream(op, &body, &caller, deadline)).await?;
    let head: ReplyHead = serde_json::from_slice(&line)
        .map_err(|_| ApiError::Internal("the upstream logic answered with a reply that is not JSON".into()))?;
    if !head.ok {
        return Err(ApiError::Refused {
            code: head.error.unwrap_or_else(|| "internal".to_owned()),
            message: head.message.unwrap_or_default(),
        });
    }
    let json = HeaderValue::from_static("application/json");
    Ok(([(header::CONTENT_TYPE, json)], line.trim_ascii_end().to_vec()).into_response())
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = state.ask(|b, deadline| b.counters(deadline)).await?;
    let text =
        exposition::encode(metrics).map_err(|_| ApiError::Internal("the metrics could not be encoded".into()))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(exposition::CONTENT_TYPE))], text).into_response())
}

/// The durable sinks' progress: per sink its health, lag, spool, retries and last error, and
/// the spool's totals (the same numbers as `/metrics`' `roomcast_sink_*`).
async fn sinks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = state.ask(|b, deadline| b.counters(deadline)).await?;
    let sinks = metrics.sinks.ok_or_else(|| ApiError::NotFound("this process runs no sinks".into()))?;
    Ok(Json(sinks).into_response())
}

/// The node's place in its cluster: its id, the live nodes, whether Redis answers, the broker
/// lag and counters. A single node says so.
async fn cluster(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let report = state.ask(|b, _| Ok(b.cluster())).await?;
    Ok(Json(match report {
        Some(report) => serde_json::to_value(report).unwrap_or(Value::Null),
        None => json!({"mode": "single", "node": null, "nodes": [], "redis": "off"}),
    }))
}

/// The page holds no data, so it is served to anyone; without the admin token (when one is
/// configured) it comes with 401, and the page asks for the token before it loads anything.
async fn dashboard(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let status = match auth::check(&state.settings, &headers, None) {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::UNAUTHORIZED,
    };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DASHBOARD_CSP)),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    (status, headers, DASHBOARD_HTML).into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no such path: {method} {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_bodies_are_json_objects_of_the_paths_op() {
        assert!(check_command(UpstreamOp::Publish, br#"{"room":"r","type":"t"}"#).is_ok());
        assert!(check_command(UpstreamOp::Publish, br#"{"op":"publish","room":"r"}"#).is_ok());
        let err = |body: &[u8]| check_command(UpstreamOp::Kick, body).expect_err("refused").to_string();
        assert!(err(br#"{"op":"publish"}"#).contains("/api/kick"));
        assert!(err(b"[1]").contains("JSON object"));
        assert!(err(b"{").contains("kick"));
    }
}
