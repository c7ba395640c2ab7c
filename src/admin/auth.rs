//! Who may use the admin port: the admin token, and the bearer of upstream commands.
//!
//! With `admin.token` set, every path but `/healthz` needs `Authorization: Bearer <token>`.
//! Browsers cannot set headers on a WebSocket, so `/admin/stream` also takes it as
//! `?token=` (and only that path: a token in a URL can end up in logs). Upstream commands
//! (`POST /api/publish`, ...) carry the *ingest* token in the same header (PROTOCOL.md), so
//! they are let through with either token: the admin token makes the caller an operator, any
//! other bearer is handed to the ingest auth ([`Caller::Upstream`]); with an admin token but
//! no ingest tokens configured, only the admin token passes. Tokens are compared in constant
//! time (`subtle`, the dalek project's well-kept crate) so a wrong guess learns nothing from
//! the reply's timing. This module never logs a token.

use super::backend::Caller;
use super::error::ApiError;
use super::AdminSettings;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The path whose token may come in the query string.
pub(crate) const STREAM_PATH: &str = "/admin/stream";

#[derive(Deserialize)]
struct TokenParam {
    token: Option<String>,
}

/// The token of an `Authorization: Bearer` header, if the header is there and says Bearer.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Check a request that needs the admin token (nothing to check when none is configured).
pub(crate) fn check(settings: &AdminSettings, headers: &HeaderMap, query_token: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = settings.token.as_deref() else { return Ok(()) };
    match bearer(headers).or(query_token) {
        None => {
            Err(ApiError::Unauthorized("this path needs the admin token: send `Authorization: Bearer <admin.token>`"))
        }
        Some(given) if same(given, expected) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("wrong admin token")),
    }
}

/// Middleware for the paths that need the admin token.
pub(crate) async fn require(State(settings): State<Arc<AdminSettings>>, request: Request, next: Next) -> Response {
    let query_token = if request.uri().path() == STREAM_PATH {
        Query::<TokenParam>::try_from_uri(request.uri()).ok().and_then(|q| q.0.token)
    } else {
        None
    };
    match check(&settings, request.headers(), query_token.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Who posts an upstream command (see the module doc).
pub(crate) fn caller(settings: &AdminSettings, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let given = bearer(headers);
    match (settings.token.as_deref(), given) {
        (Some(admin), Some(token)) if same(token, admin) => Ok(Caller::Operator),
        (Some(_), Some(token)) if settings.ingest_tokens => Ok(Caller::Upstream { bearer: Some(token.to_owned()) }),
        (Some(_), Some(_)) => Err(ApiError::Unauthorized("wrong token: send the admin token (or an ingest token)")),
        (Some(_), None) => {
            Err(ApiError::Unauthorized("this path needs a token: send `Authorization: Bearer <admin or ingest token>`"))
        }
        (None, given) => Ok(Caller::Upstream { bearer: given.map(str::to_owned) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
        }
        h
    }

    fn settings(token: Option<&str>, ingest_tokens: bool) -> AdminSettings {
        AdminSettings { token: token.map(str::to_owned), ingest_tokens, ..AdminSettings::default() }
    }

    #[test]
    fn the_admin_token_is_needed_only_when_set() {
        assert_eq!(check(&settings(None, false), &headers(None), None), Ok(()));
        let s = settings(Some("sesame"), false);
        assert!(check(&s, &headers(None), None).is_err());
        assert!(check(&s, &headers(Some("Bearer nope")), None).is_err());
        assert!(check(&s, &headers(Some("Basic sesame")), None).is_err());
        assert_eq!(check(&s, &headers(Some("Bearer sesame")), None), Ok(()));
        assert_eq!(check(&s, &headers(Some("bearer sesame")), None), Ok(()));
        assert_eq!(check(&s, &headers(None), Some("sesame")), Ok(()));
        assert!(check(&s, &headers(None), Some("sesam")).is_err());
    }

    #[test]
    fn upstream_callers() {
        let open = settings(None, true);
        assert_eq!(caller(&open, &headers(None)), Ok(Caller::Upstream { bearer: None }));
        assert_eq!(caller(&open, &headers(Some("Bearer t"))), Ok(Caller::Upstream { bearer: Some("t".into()) }));
        let both = settings(Some("admin"), true);
        assert_eq!(caller(&both, &headers(Some("Bearer admin"))), Ok(Caller::Operator));
        assert_eq!(caller(&both, &headers(Some("Bearer t"))), Ok(Caller::Upstream { bearer: Some("t".into()) }));
        assert!(caller(&both, &headers(None)).is_err());
        let admin_only = settings(Some("admin"), false);
        assert!(caller(&admin_only, &headers(Some("Bearer t"))).is_err());
        assert_eq!(caller(&admin_only, &headers(Some("Bearer admin"))), Ok(Caller::Operator));
    }
}
