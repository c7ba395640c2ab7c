//! The admin port's errors, each with its HTTP status and its JSON body
//! `{"error":CODE,"message":TEXT}`.
//!
//! Every refusal of the admin port is one of these, so the status a client gets is decided in
//! one place ([`ApiError::status`]), not in each handler. Messages are written for the person
//! reading them (what was wrong, what is allowed), never a parser's internal state.

use super::backend::BackendError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    /// A malformed request: bad parameter, bad body, bad room name (400 `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// No admin token, or a wrong one (401 `unauthorized`).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// No such room or path (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// A body over the limit (413 `too_large`).
    #[error("{0}")]
    TooLarge(String),
    /// The owners could not answer (503 `unavailable`).
    #[error("{0}")]
    Unavailable(String),
    /// A bug on this side (500 `internal`).
    #[error("{0}")]
    Internal(String),
    /// An upstream command's error reply, with the ingest error code it carried.
    #[error("{message}")]
    Refused {
        /// The ingest error code (`bad_request`, `unauthorized`, `forbidden`, ...).
        code: String,
        /// The reply's message.
        message: String,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
}

/// The HTTP status of an ingest error code (PROTOCOL.md error codes).
fn status_of_code(code: &str) -> StatusCode {
    match code {
        "bad_request" | "unknown_op" | "not_joined" => StatusCode::BAD_REQUEST,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The error code in the body.
    pub(crate) fn code(&self) -> &str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::TooLarge(_) => "too_large",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
            Self::Refused { code, .. } => code,
        }
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Refused { code, .. } => status_of_code(code),
            other => status_of_code(other.code()),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::UnknownRoom(_) => Self::NotFound(e.to_string()),
            BackendError::Timeout | BackendError::Unavailable(_) => Self::Unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Body { error: self.code(), message: self.to_string() };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 section 3: a 401 names the scheme the client should use.
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_codes_map_to_their_statuses() {
        let refused = |code: &str| ApiError::Refused { code: code.into(), message: String::new() }.status().as_u16();
        assert_eq!(
            [
                "bad_request",
                "unauthorized",
                "forbidden",
                "too_large",
                "unavailable",
                "unknown_op",
                "rate_limited",
                "odd"
            ]
            .map(refused),
            [400, 401, 403, 413, 503, 400, 429, 500]
        );
        assert_eq!(ApiError::from(BackendError::UnknownRoom("r".into())).status(), StatusCode::NOT_FOUND);
        assert_eq!(ApiError::from(BackendError::Timeout).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ApiError::TooLarge(String::new()).code(), "too_large");
    }
}
