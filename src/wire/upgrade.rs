//! The HTTP/1.1 upgrade of a viewer connection (RFC 6455 section 4), without IO.
//!
//! The request is parsed and the `101 Switching Protocols` response built by tungstenite's
//! IO-free handshake pieces (`Request::try_parse`, `create_response`, `write_response`); this
//! module adds what a push engine needs around them, as one pure decision
//! ([`UpgradePolicy::parse`]): the path (the viewer endpoint, or the testing echo endpoint),
//! limits on the request line (414), on header count and size (431), the `Origin` allow-list
//! (403), the `?user=` check (400 "bad user"), and the identity inputs: the token and where
//! it came from. Every refusal is a [`Rejection`] carrying its status, its reason and the
//! complete response; [`unauthorized`] and [`unavailable`] build the refusals the worker
//! decides on after parsing (a token its verifier refused, a server at capacity). Nothing here
//! touches a socket; percent-decoding of the query is a dozen lines rather than a dependency.
//!
//! Where the token comes from, first found wins (the order docs/protocol.md gives):
//! 1. `?token=<token>` (percent-decoded);
//! 2. `Authorization: Bearer <token>`;
//! 3. a `Sec-WebSocket-Protocol` entry `bearer.<token>`, for browsers, which cannot set
//!    headers: the client offers `new WebSocket(url, ["roomcast.v1", "bearer." + token])` and
//!    the server answers `Sec-WebSocket-Protocol: roomcast.v1` (browsers fail a handshake whose
//!    answer names no offered protocol, and the token is never echoed); a `bearer.` entry
//!    without `roomcast.v1` beside it is refused with 400.
//!
//! A client that offers `roomcast.v1` without a token gets it answered too.
//!
//! [`parse_upgrade`] and [`Upgrade`] are the earlier shape, kept while the worker still calls
//! them; they apply the default policy (no Origin list, no echo endpoint).

use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::http::HeaderValue;

/// Largest upgrade request accepted (request line and headers); a larger one is answered 431.
pub const MAX_REQUEST_BYTES: usize = 8192;

/// Longest request line (`GET /ws?token=... HTTP/1.1`); a longer one is answered 414. Room for
/// a 4 KiB token in the query.
pub const MAX_REQUEST_LINE_BYTES: usize = 4096 + 256;

/// Most header fields in an upgrade request; more is answered 431.
pub const MAX_HEADERS: usize = 64;

/// The subprotocol a browser offers next to its `bearer.<token>` entry, and that the server
/// answers.
pub const SUBPROTOCOL: &str = "roomcast.v1";

/// Prefix of the `Sec-WebSocket-Protocol` entry that carries a token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// What [`UpgradePolicy::parse`] checks besides RFC 6455.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradePolicy {
    /// The viewer endpoint (`ws.path`).
    pub path: String,
    /// The testing echo endpoint (`testing.echo_path`), when on.
    pub echo_path: Option<String>,
    /// Allowed `Origin` values (`ws.allowed_origins`); empty allows any. A request without
    /// `Origin` (not a browser: anything else can forge the header anyway) is allowed.
    pub allowed_origins: Vec<String>,
}

impl UpgradePolicy {
    /// The default policy for `path`: no echo endpoint, any origin.
    pub fn new(path: &str) -> Self {
        Self { path: path.to_owned(), echo_path: None, allowed_origins: Vec::new() }
    }
}

/// Which endpoint a request upgraded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The viewer protocol (`ws.path`).
    Viewer,
    /// The testing echo endpoint: every message is sent back (Autobahn TestSuite).
    Echo,
}

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer`.
    Header,
    /// `Sec-WebSocket-Protocol: ..., bearer.<token>`.
    Subprotocol,
    /// `?token=`.
    Query,
}

/// A token and where it came from. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The token.
    pub token: String,
    /// Where it was found.
    pub source: TokenSource,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("bytes", &self.token.len()).field("source", &self.source).finish()
    }
}

/// A request that may be upgraded, and the identity inputs it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Bytes of the request; anything after is already WebSocket frames.
    pub consumed: usize,
    /// The `101` response to write once the worker admits the connection.
    pub response: Vec<u8>,
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// `?user=`, percent-decoded and valid (1..=128 bytes, no control characters).
    pub user: Option<String>,
    /// The token, if any.
    pub credential: Option<Credential>,
    /// The `Origin` header, if any (already checked against the allow-list).
    pub origin: Option<String>,
}

/// A refused request: write `response` and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status.
    pub status: u16,
    /// Why, for the log (also the response body).
    pub reason: &'static str,
    /// The complete response.
    pub response: Vec<u8>,
}

impl Rejection {
    /// A refusal with `status` and `reason`.
    pub fn new(status: u16, reason: &'static str) -> Self {
        Self { status, reason, response: http_error(status, reason) }
    }
}

/// What to do with the bytes received so far on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The request is not complete yet (and within the limits).
    Incomplete,
    /// A valid upgrade; the worker now decides on the credential (and capacity).
    Accepted(Box<Accepted>),
    /// Refuse.
    Rejected(Rejection),
}

fn refuse(status: u16, reason: &'static str) -> Handshake {
    Handshake::Rejected(Rejection::new(status, reason))
}

fn header_str<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A `?user=` value's problem, as the 400 reason.
fn check_user(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        Err("bad user: empty")
    } else if user.len() > super::MAX_NAME_BYTES {
        Err("bad user: longer than 128 bytes")
    } else if user.chars().any(char::is_control) {
        Err("bad user: contains control characters")
    } else {
        Ok(())
    }
}

/// Check the request line and header limits on what arrived so far.
fn check_limits(buf: &[u8]) -> Result<(), Rejection> {
    match memchr::memchr(b'\n', buf) {
        Some(end) if end > MAX_REQUEST_LINE_BYTES => return Err(Rejection::new(414, "request line too long")),
        None if buf.len() > MAX_REQUEST_LINE_BYTES => return Err(Rejection::new(414, "request line too long")),
        _ => {}
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(buf) {
        Err(httparse::Error::TooManyHeaders) => Err(Rejection::new(431, "too many header fields")),
        Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST_BYTES => {
            Err(Rejection::new(431, "request header too large"))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST_BYTES => {
            Err(Rejection::new(431, "request header too large"))
        }
        _ => Ok(()),
    }
}

/// The token and where it came from; `Err` for a `bearer.` offer without `roomcast.v1`.
/// Also says whether `roomcast.v1` was offered.
fn credential(request: &Request, query: &str) -> Result<(Option<Credential>, bool), &'static str> {
    let mut offered_v1 = false;
    let mut from_protocol = None;
    for value in request.headers().get_all("Sec-WebSocket-Protocol") {
        let Ok(value) = value.to_str() else { return Err("Sec-WebSocket-Protocol is not ASCII") };
        for entry in value.split(',').map(str::trim) {
            if entry == SUBPROTOCOL {
                offered_v1 = true;
            } else if let Some(token) = entry.strip_prefix(BEARER_PROTOCOL_PREFIX) {
                from_protocol = Some(token.to_owned());
            }
        }
    }
    if from_protocol.is_some() && !offered_v1 {
        return Err("offer roomcast.v1 next to bearer.<token> in Sec-WebSocket-Protocol");
    }
    let from_header = header_str(request, "Authorization").and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
    });
    let from_query = match query_param(query, "token") {
        Some(Ok(token)) => Some(token),
        Some(Err(())) => return Err("token is not valid percent-encoded UTF-8"),
        None => None,
    };
    let found = if let Some(token) = from_query {
        Some(Credential { token, source: TokenSource::Query })
    } else if let Some(token) = from_header {
        Some(Credential { token, source: TokenSource::Header })
    } else {
        from_protocol.map(|token| Credential { token, source: TokenSource::Subprotocol })
    };
    match found {
        Some(c) if c.token.is_empty() => Err("empty token"),
        found => Ok((found, offered_v1)),
    }
}

impl UpgradePolicy {
    /// Decide on the request in `buf` (everything received so far).
    pub fn parse(&self, buf: &[u8]) -> Handshake {
        if let Err(rejection) = check_limits(buf) {
            return Handshake::Rejected(rejection);
        }
        let (consumed, request) = match Request::try_parse(buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Handshake::Incomplete,
            Err(_) => return refuse(400, "malformed HTTP request"),
        };
        let path = request.uri().path();
        let endpoint = if path == self.path {
            Endpoint::Viewer
        } else if self.echo_path.as_deref() == Some(path) {
            Endpoint::Echo
        } else {
            return refuse(404, "no WebSocket endpoint at this path");
        };
        let has_upgrade = request.headers().get("Upgrade").is_some();
        // RFC 6455 4.4: "If this version does not match a version understood by the server, the
        // server MUST abort the WebSocket handshake [...] and send an appropriate HTTP error code
        // (such as 426 Upgrade Required) and a |Sec-WebSocket-Version| header field indicating the
        // version(s) the server is capable of understanding." (`http_error(426)` carries it.)
        if has_upgrade && request.headers().get("Sec-WebSocket-Version").is_some_and(|v| v != "13") {
            return refuse(426, "unsupported WebSocket version; this server speaks 13");
        }
        let mut response = match create_response(&request) {
            Ok(response) => response,
            Err(_) if !has_upgrade => return refuse(426, "this endpoint only speaks WebSocket"),
            Err(_) => return refuse(400, "invalid WebSocket upgrade request"),
        };
        let origin = match request.headers().get("Origin") {
            None => None,
            Some(v) => match v.to_str() {
                Ok(o) => Some(o.to_owned()),
                Err(_) => return refuse(403, "origin not allowed"),
            },
        };
        // RFC 6455 10.2: "servers that are not intended to process input from any web page but
        // only for certain sites SHOULD verify the |Origin| field is an origin they expect."
        if let Some(o) = &origin {
            if !self.allowed_origins.is_empty() && !self.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)) {
                return refuse(403, "origin not allowed");
            }
        }
        let query = request.uri().query().unwrap_or("");
        let user = match query_param(query, "user") {
            None => None,
            Some(Err(())) => return refuse(400, "bad user: not valid percent-encoded UTF-8"),
            Some(Ok(user)) => match check_user(&user) {
                Ok(()) => Some(user),
                Err(why) => return refuse(400, why),
            },
        };
        let (credential, offered_v1) = match credential(&request, query) {
            Ok(found) => found,
            Err(why) => return refuse(400, why),
        };
        if offered_v1 {
            // RFC 6455 4.2.2: the server's |Sec-WebSocket-Protocol| names one the client offered.
            response.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
        }
        let mut out = Vec::with_capacity(192);
        if write_response(&mut out, &response).is_err() {
            return refuse(500, "could not build the upgrade response");
        }
        Handshake::Accepted(Box::new(Accepted { consumed, response: out, endpoint, user, credential, origin }))
    }
}

/// What to do with the bytes received so far on a new connection (the earlier shape of
/// [`Handshake`], for [`parse_upgrade`]).
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
        /// `?user=` (percent-decoded, valid).
        user: Option<String>,
        /// The token (from any of the three places).
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

/// [`UpgradePolicy::parse`] with the default policy for `path`, in the earlier shape.
pub fn parse_upgrade(buf: &[u8], path: &str) -> Upgrade {
    match UpgradePolicy::new(path).parse(buf) {
        Handshake::Incomplete => Upgrade::Incomplete,
        Handshake::Accepted(a) => {
            let Accepted { consumed, response, user, credential, .. } = *a;
            Upgrade::Accepted { consumed, response, user, token: credential.map(|c| c.token) }
        }
        Handshake::Rejected(Rejection { status, reason, response }) => Upgrade::Rejected { status, response, reason },
    }
}

/// The percent-decoded value of `name` in a query string: `None` when absent, `Err` when it
/// is not valid percent-encoded UTF-8.
fn query_param(query: &str, name: &str) -> Option<Result<String, ()>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value).ok_or(()))
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
        414 => "URI Too Long",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn response_with(status: u16, extra_headers: &str, reason: &str) -> Vec<u8> {
    // The reason is one line of text; a stray CR or LF must not start a header of its own.
    let body: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let body = format!("{body}\n");
    format!(
        "HTTP/1.1 {status} {}\r\n{extra_headers}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    )
    .into_bytes()
}

/// A complete, minimal HTTP error response that closes the connection.
pub fn http_error(status: u16, reason: &str) -> Vec<u8> {
    let extra = if status == 426 { "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" } else { "" };
    response_with(status, extra, reason)
}

/// The 401 for a credential the verifier refused (or a missing one), with `reason` (an
/// `AuthError`'s text, which never holds the token) in the body and RFC 6750's challenge.
pub fn unauthorized(reason: &str) -> Vec<u8> {
    response_with(401, "WWW-Authenticate: Bearer realm=\"roomcast\", error=\"invalid_token\"\r\n", reason)
}

/// A 503 (at capacity, draining) or 429 (per-address or per-user limit) refusal asking the
/// client to come back after `retry_after_s` seconds (RFC 9110 10.2.3).
pub fn unavailable(status: u16, reason: &str, retry_after_s: u32) -> Vec<u8> {
    response_with(status, &format!("Retry-After: {retry_after_s}\r\n"), reason)
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

    fn policy() -> UpgradePolicy {
        UpgradePolicy {
            path: "/ws".into(),
            echo_path: Some("/echo".into()),
            allowed_origins: vec!["https://good.example".into()],
        }
    }

    fn accepted(h: Handshake) -> Accepted {
        match h {
            Handshake::Accepted(a) => *a,
            other => panic!("expected an upgrade, got {other:?}"),
        }
    }

    fn rejected(h: Handshake) -> (u16, &'static str) {
        match h {
            Handshake::Rejected(r) => {
                let text = String::from_utf8(r.response).expect("ascii");
                assert!(text.starts_with(&format!("HTTP/1.1 {} ", r.status)), "{text}");
                assert!(text.ends_with(&format!("{}\n", r.reason)), "{text}");
                (r.status, r.reason)
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn the_token_comes_from_query_header_or_subprotocol_in_that_order() {
        let p = policy();
        let a = accepted(p.parse(&request("/ws?token=q", "Authorization: bearer h\r\n")));
        assert_eq!(a.credential, Some(Credential { token: "q".into(), source: TokenSource::Query }));
        let both = "Authorization: bearer h\r\nSec-WebSocket-Protocol: roomcast.v1, bearer.p\r\n";
        let a = accepted(p.parse(&request("/ws", both)));
        assert_eq!(a.credential, Some(Credential { token: "h".into(), source: TokenSource::Header }));
        let a = accepted(p.parse(&request("/ws", "Sec-WebSocket-Protocol: roomcast.v1, bearer.p.q-r_s\r\n")));
        assert_eq!(a.credential, Some(Credential { token: "p.q-r_s".into(), source: TokenSource::Subprotocol }));
        let text = String::from_utf8(a.response).expect("ascii");
        assert!(text.contains("sec-websocket-protocol: roomcast.v1\r\n"), "{text}");
        assert!(!text.contains("bearer"), "the token is never echoed: {text}");
        let a = accepted(p.parse(&request("/ws?x=1&token=a%2Eb", "")));
        assert_eq!(a.credential, Some(Credential { token: "a.b".into(), source: TokenSource::Query }));
        assert!(!format!("{:?}", a.credential).contains("a.b"), "Debug hides the token");
        let a = accepted(p.parse(&request("/ws", "Sec-WebSocket-Protocol: roomcast.v1\r\n")));
        assert!(a.credential.is_none());
        assert!(String::from_utf8(a.response).expect("ascii").contains("roomcast.v1"));
        let a = accepted(p.parse(&request("/ws", "Sec-WebSocket-Protocol: chat\r\n")));
        assert!(!String::from_utf8(a.response).expect("ascii").contains("sec-websocket-protocol"));
    }

    #[test]
    fn a_bearer_subprotocol_needs_roomcast_v1_and_tokens_must_not_be_empty() {
        let p = policy();
        assert_eq!(rejected(p.parse(&request("/ws", "Sec-WebSocket-Protocol: bearer.abc\r\n"))).0, 400);
        assert_eq!(rejected(p.parse(&request("/ws?token=", ""))).1, "empty token");
        assert_eq!(rejected(p.parse(&request("/ws", "Authorization: Bearer \r\n"))).0, 400);
        assert_eq!(rejected(p.parse(&request("/ws?token=%ff", ""))).0, 400);
    }

    #[test]
    fn users_are_checked_in_the_parser() {
        let p = policy();
        assert_eq!(accepted(p.parse(&request("/ws?user=al%20ice", ""))).user.as_deref(), Some("al ice"));
        assert_eq!(rejected(p.parse(&request("/ws?user=", ""))), (400, "bad user: empty"));
        assert_eq!(
            rejected(p.parse(&request(&format!("/ws?user={}", "u".repeat(129)), ""))).1,
            "bad user: longer than 128 bytes"
        );
        assert_eq!(rejected(p.parse(&request("/ws?user=a%0Ab", ""))).1, "bad user: contains control characters");
        assert_eq!(rejected(p.parse(&request("/ws?user=%C3", ""))).0, 400);
        assert!(accepted(p.parse(&request(&format!("/ws?user={}", "u".repeat(128)), ""))).user.is_some());
    }

    #[test]
    fn origins_outside_the_allow_list_are_forbidden() {
        let p = policy();
        let a = accepted(p.parse(&request("/ws", "Origin: https://GOOD.example\r\n")));
        assert_eq!(a.origin.as_deref(), Some("https://GOOD.example"));
        assert_eq!(rejected(p.parse(&request("/ws", "Origin: https://evil.example\r\n"))), (403, "origin not allowed"));
        assert!(accepted(p.parse(&request("/ws", ""))).origin.is_none(), "no Origin: not a browser");
        let open = UpgradePolicy::new("/ws");
        assert!(accepted(open.parse(&request("/ws", "Origin: https://evil.example\r\n"))).origin.is_some());
    }

    #[test]
    fn the_echo_endpoint_is_only_there_when_configured() {
        assert_eq!(accepted(policy().parse(&request("/echo", ""))).endpoint, Endpoint::Echo);
        assert_eq!(accepted(policy().parse(&request("/ws", ""))).endpoint, Endpoint::Viewer);
        assert_eq!(rejected(UpgradePolicy::new("/ws").parse(&request("/echo", ""))).0, 404);
    }

    #[test]
    fn request_line_and_header_limits() {
        let p = policy();
        let long_line = format!("GET /ws?token={} HTTP/1.1\r\n", "t".repeat(MAX_REQUEST_LINE_BYTES));
        assert_eq!(rejected(p.parse(long_line.as_bytes())).0, 414);
        assert_eq!(
            rejected(p.parse(&long_line.as_bytes()[..MAX_REQUEST_LINE_BYTES + 1])).0,
            414,
            "before the line ends"
        );
        let ok_line = format!("/ws?token={}", "t".repeat(4096));
        assert!(accepted(p.parse(&request(&ok_line, ""))).credential.is_some(), "a 4 KiB token fits");
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(rejected(p.parse(&request("/ws", &many))), (431, "too many header fields"));
        // Too many headers is refused while the request is still arriving.
        let partial = format!("GET /ws HTTP/1.1\r\n{many}X-last: v\r\n");
        assert_eq!(rejected(p.parse(partial.as_bytes())).0, 431);
        let few: String = (0..MAX_HEADERS - 8).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(p.parse(&request("/ws", &few)), Handshake::Accepted(_)));
        let big = format!("X: {}\r\n", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(rejected(p.parse(&request("/ws", &big))).0, 431);
        assert_eq!(p.parse(b"GET /ws HTTP/1.1\r\nHost: x\r\n"), Handshake::Incomplete);
    }

    #[test]
    fn refusal_responses_built_after_parsing() {
        let text = String::from_utf8(unauthorized("token expired at 5 (now 9)\r\nX-Evil: 1")).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("WWW-Authenticate: Bearer realm=\"roomcast\", error=\"invalid_token\"\r\n"));
        assert!(!text.contains("\r\nX-Evil"), "a reason cannot inject a header: {text}");
        let text = String::from_utf8(unavailable(503, "server at capacity", 2)).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n"), "{text}");
        assert!(String::from_utf8(unavailable(429, "x", 1)).expect("ascii").contains("429 Too Many Requests"));
    }
}
