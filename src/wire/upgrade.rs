//! The HTTP/1.1 upgrade of a viewer connection (RFC 6455 section 4), without IO.
//!
//! The request is parsed and the `101 Switching Protocols` response built by tungstenite's
//! IO-free handshake pieces (`Request::try_parse`, `create_response`, `write_response`); this
//! module adds what a push engine needs around them: the path check, the identity from the
//! query string or an `Authorization: Bearer` header, clear HTTP errors, and a size limit so a
//! client cannot make the server buffer an endless request. Percent-decoding of the two query
//! parameters is a dozen lines here rather than another dependency.

use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};

/// Largest upgrade request accepted; a larger one is answered 431.
pub const MAX_REQUEST_BYTES: usize = 8192;

/// What to do with the bytes received so far on a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The request is not complete yet.
    Incomplete,
    /// A valid upgrade: write `response`, then speak WebSocket. Bytes after `consumed` are
    /// already WebSocket frames.
    Accepted {
        /// Bytes of the request.
        consumed: usize,
        /// The `101` response.
        response: Vec<u8>,
        /// `?user=` (percent-decoded).
        user: Option<String>,
        /// `?token=` or `Authorization: Bearer`.
        token: Option<String>,
    },
    /// Refuse: write `response` and close.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The complete response.
        response: Vec<u8>,
        /// Why, for the log.
        reason: &'static str,
    },
}

fn reject(status: u16, reason: &'static str) -> Upgrade {
    Upgrade::Rejected { status, response: http_error(status, reason), reason }
}

/// Decide on the request in `buf` for the upgrade path `path`.
pub fn parse_upgrade(buf: &[u8], path: &str) -> Upgrade {
    let (consumed, request) = match Request::try_parse(buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() > MAX_REQUEST_BYTES => return reject(431, "request header too large"),
        Ok(None) => return Upgrade::Incomplete,
        Err(_) => return reject(400, "malformed HTTP request"),
    };
    if request.uri().path() != path {
        return reject(404, "no WebSocket endpoint at this path");
    }
    let has_upgrade = request.headers().get("Upgrade").is_some();
    // RFC 6455 4.4: "If this version does not match a version understood by the server, the
    // server MUST abort the WebSocket handshake [...] and send an appropriate HTTP error code
    // (such as 426 Upgrade Required) and a |Sec-WebSocket-Version| header field indicating the
    // version(s) the server is capable of understanding." (`http_error(426)` carries it.)
    if has_upgrade && request.headers().get("Sec-WebSocket-Version").is_some_and(|v| v != "13") {
        return reject(426, "unsupported WebSocket version; this server speaks 13");
    }
    let response = match create_response(&request) {
        Ok(response) => response,
        Err(_) if !has_upgrade => return reject(426, "this endpoint only speaks WebSocket"),
        Err(_) => return reject(400, "invalid WebSocket upgrade request"),
    };
    let mut out = Vec::with_capacity(160);
    if write_response(&mut out, &response).is_err() {
        return reject(500, "could not build the upgrade response");
    }
    let query = request.uri().query().unwrap_or("");
    let bearer = request
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    Upgrade::Accepted {
        consumed,
        response: out,
        user: query_param(query, "user"),
        token: query_param(query, "token").or(bearer),
    }
}

/// The percent-decoded value of `name` in a query string; `None` when absent or not UTF-8.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value)).flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete, minimal HTTP error response that closes the connection.
pub fn http_error(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    let upgrade = if status == 426 { "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {}\r\n{upgrade}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    )
    .into_bytes()
}

/// The upgrade request a client sends for `path_and_query` on `host` with the base64 `key`.
pub fn client_request(host: &str, path_and_query: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Check a server's upgrade response: `Ok(Some(bytes used))` for a `101`, `Ok(None)` while
/// incomplete, `Err` for anything else.
pub fn parse_client_response(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) if response.code == Some(101) => Ok(Some(n)),
        Ok(httparse::Status::Complete(_)) => Err("upgrade refused"),
        Err(_) => Err("malformed HTTP response"),
    }
}

/// The `Sec-WebSocket-Accept` value a server must answer `key` with (for client checks).
pub fn expected_accept(key: &str) -> String {
    derive_accept_key(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(target: &str, extra: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").into_bytes()
    }

    #[test]
    fn a_valid_upgrade_is_accepted_with_the_rfc_accept_key() {
        let mut req = request("/ws?user=al%20ice&token=t%2B1&x=y", "");
        let len = req.len();
        req.extend_from_slice(&[0x81, 0x80]);
        let Upgrade::Accepted { consumed, response, user, token } = parse_upgrade(&req, "/ws") else {
            panic!("accepted")
        };
        assert_eq!(consumed, len, "leftover frame bytes are not consumed");
        let text = String::from_utf8(response).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455 example key: {text}");
        assert_eq!(user.as_deref(), Some("al ice"));
        assert_eq!(token.as_deref(), Some("t+1"));
        assert_eq!(expected_accept(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(parse_client_response(text.as_bytes()), Ok(Some(text.len())));
    }

    #[test]
    fn bearer_header_gives_the_token() {
        let req = request("/ws", "Authorization: Bearer abc\r\n");
        assert!(
            matches!(parse_upgrade(&req, "/ws"), Upgrade::Accepted { token: Some(t), user: None, .. } if t == "abc")
        );
    }

    #[test]
    fn refusals_have_the_right_status() {
        let status = |u: Upgrade| match u {
            Upgrade::Rejected { status, .. } => status,
            other => panic!("expected a rejection, got {other:?}"),
        };
        assert_eq!(status(parse_upgrade(&request("/other", ""), "/ws")), 404);
        assert_eq!(status(parse_upgrade(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "/ws")), 426);
        assert_eq!(status(parse_upgrade(b"garbage\r\n\r\n", "/ws")), 400);
        let huge = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(status(parse_upgrade(huge.as_bytes(), "/ws")), 431);
        assert_eq!(parse_upgrade(b"GET /ws HTTP/1.1\r\nHost", "/ws"), Upgrade::Incomplete);
        let bad_version = String::from_utf8(request("/ws", "")).expect("ascii").replace("Version: 13", "Version: 8");
        let Upgrade::Rejected { status, response, .. } = parse_upgrade(bad_version.as_bytes(), "/ws") else {
            panic!("rejected")
        };
        assert_eq!(status, 426, "RFC 6455 4.4");
        assert!(String::from_utf8_lossy(&response).contains("Sec-WebSocket-Version: 13"));
    }

    #[test]
    fn client_request_round_trips_through_the_server_parser() {
        let req = client_request("h:1", "/ws?user=u", KEY);
        assert!(matches!(parse_upgrade(&req, "/ws"), Upgrade::Accepted { user: Some(u), .. } if u == "u"));
        assert_eq!(parse_client_response(b"HTTP/1.1 404 Not Found\r\n\r\n"), Err("upgrade refused"));
        assert_eq!(parse_client_response(b"HTTP/1.1 101 Swi"), Ok(None));
    }
}
