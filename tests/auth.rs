//! Trust over real sockets (PROTOCOL.md "Viewer connection", close codes): JWTs at the upgrade
//! (HS256 here; every algorithm and outcome is unit-tested in `src/auth/`), claims checked per
//! action, refresh, the 4001 close when a token expires, and the connection caps (503, 429) and
//! the Origin allow-list (403) at the handshake.

mod support;

use roomcast::auth::mint::{mint, SigningKey, TokenSpec};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};
use support::{Server, Viewer, WAIT};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn token(sub: &str, rooms: &[&str], comment: bool, ttl_s: u64) -> String {
    token_issued_at(sub, rooms, comment, now_s(), ttl_s)
}

/// A token issued at `iat_s` (so that several can share one `exp`).
fn token_issued_at(sub: &str, rooms: &[&str], comment: bool, iat_s: u64, ttl_s: u64) -> String {
    let spec = TokenSpec {
        sub: sub.into(),
        name: Some(format!("{sub} the viewer")),
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        comment,
        ttl_s,
        ..TokenSpec::default()
    };
    mint(&spec, &SigningKey::hmac(SECRET.as_bytes()), iat_s).expect("mint a token")
}

fn authed(extra: &[&str]) -> Server {
    Server::start(&[&["--auth-hmac-secret", SECRET, "--auth-leeway-s", "0"], extra].concat())
}

/// A viewer upgraded with `token` in `?token=`; its `hello`.
fn connect(server: &Server, token: &str) -> (Viewer, serde_json::Value) {
    let stream = TcpStream::connect(&server.ws).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let url = format!("ws://{}/ws?token={token}", server.ws);
    let (ws, response) = tungstenite::client(url, MaybeTlsStream::Plain(stream)).expect("upgrade");
    assert_eq!(response.status(), 101);
    let mut v = Viewer { ws };
    let hello = v.expect_hello();
    (v, hello)
}

/// The status line and the body of an upgrade with this request target and extra headers.
fn refused(server: &Server, target: &str, headers: &str) -> (String, String) {
    let mut stream = TcpStream::connect(&server.ws).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    if status.contains(" 101 ") {
        return (status.trim_end().to_owned(), head);
    }
    // A refusal: its body, then the end of the stream.
    let mut body = head;
    std::io::Read::read_to_string(&mut reader, &mut body).expect("the refusal's body, then end of stream");
    (status.trim_end().to_owned(), body)
}

#[test]
fn a_valid_token_names_the_user_and_a_missing_bad_or_expired_one_is_refused_with_401() {
    let server = authed(&[]);
    let (_v, hello) = connect(&server, &token("alice", &["*"], true, 600));
    assert_eq!(hello["user"], "alice", "the user is the token's sub, whatever ?user= says");
    let wrong_key = token_with_secret("alice", "another-secret-of-at-least-32-bytes");
    for (why, target) in [
        ("no token", "/ws?user=alice".to_owned()),
        ("another key", format!("/ws?token={wrong_key}")),
        ("garbage", "/ws?token=not.a.jwt".to_owned()),
    ] {
        let (status, body) = refused(&server, &target, "");
        assert!(status.starts_with("HTTP/1.1 401"), "{why}: {status}");
        assert!(!body.contains("eyJ"), "{why}: the reason never quotes the token: {body}");
    }
    let expired = expired_token("alice");
    let (status, body) = refused(&server, &format!("/ws?token={expired}"), "");
    assert!(status.starts_with("HTTP/1.1 401") && body.contains("expired"), "{status} {body}");
    // Browsers cannot set headers: the token also rides in Sec-WebSocket-Protocol.
    let mut request = format!("ws://{}/ws", server.ws).into_client_request().expect("request");
    let offer = format!("roomcast.v1, bearer.{}", token("bob", &["*"], true, 600));
    request.headers_mut().insert("Sec-WebSocket-Protocol", offer.parse().expect("header"));
    let stream = TcpStream::connect(&server.ws).expect("connect");
    let (ws, response) = tungstenite::client(request, MaybeTlsStream::Plain(stream)).expect("upgrade");
    assert_eq!(response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()), Some("roomcast.v1"));
    assert_eq!(Viewer { ws }.expect_hello()["user"], "bob");
}

fn token_with_secret(sub: &str, secret: &str) -> String {
    let spec =
        TokenSpec { sub: sub.into(), rooms: vec!["*".into()], comment: true, ttl_s: 600, ..TokenSpec::default() };
    mint(&spec, &SigningKey::hmac(secret.as_bytes()), now_s()).expect("mint")
}

fn expired_token(sub: &str) -> String {
    let spec = TokenSpec { sub: sub.into(), rooms: vec!["*".into()], comment: true, ttl_s: 10, ..TokenSpec::default() };
    mint(&spec, &SigningKey::hmac(SECRET.as_bytes()), now_s() - 3_600).expect("mint")
}

#[test]
fn the_claims_decide_every_join_comment_and_reaction_and_a_refresh_narrows_them() {
    let server = authed(&[]);
    let (mut v, _) = connect(&server, &token("carol", &["live-*", "lobby"], false, 600));
    assert_eq!(v.join("live-1")["op"], "joined");
    v.send_json(json!({"op": "join", "room": "vip", "ref": 1}));
    let e = v.next_msg();
    assert_eq!((e["code"].as_str(), e["ref"].as_u64(), e["room"].as_str()), (Some("forbidden"), Some(1), Some("vip")));
    v.send_json(json!({"op": "comment", "room": "live-1", "text": "hi", "ref": 2}));
    assert_eq!(v.next_msg()["code"], "forbidden", "no comment claim");
    v.send_json(json!({"op": "react", "room": "live-1", "kind": "clap", "ref": 3}));
    assert_eq!(v.next_msg()["code"], "forbidden");
    assert_eq!(v.join("lobby")["op"], "joined");
    // A refresh for the same user with narrower rooms: acked, and the rooms it no longer
    // allows are left with reason forbidden.
    v.send_json(json!({"op": "refresh", "token": token("carol", &["lobby"], true, 600), "ref": 4}));
    let (mut ack, mut left) = (None, None);
    while ack.is_none() || left.is_none() {
        let m = v.next_msg();
        match m["op"].as_str() {
            Some("ack") => ack = Some(m),
            Some("left") => left = Some(m),
            _ => {}
        }
    }
    assert_eq!(ack.map(|a| a["ref"].clone()), Some(json!(4)));
    let left = left.expect("left");
    assert_eq!((left["room"].as_str(), left["reason"].as_str()), (Some("live-1"), Some("forbidden")));
    v.send_json(json!({"op": "comment", "room": "lobby", "text": "now I may", "ref": 5}));
    assert_eq!(v.until_op("ack")["ref"], 5, "the refreshed token allows comments");
    v.send_json(json!({"op": "refresh", "token": token("mallory", &["*"], true, 600), "ref": 6}));
    let e = v.until_op("error");
    assert_eq!((e["code"].as_str(), e["ref"].as_u64()), (Some("unauthorized"), Some(6)), "another user's token");
}

#[test]
fn an_expired_token_closes_the_connection_with_4001_unless_refreshed() {
    let server = authed(&[]);
    // Two viewers whose tokens expire in the same second, 5 s from now (room for a slow
    // machine to connect both and refresh one); one refreshes in time.
    let (iat, ttl) = (now_s(), 5);
    let (mut lapses, _) = connect(&server, &token_issued_at("dora", &["*"], true, iat, ttl));
    let (mut renews, _) = connect(&server, &token_issued_at("ed", &["*"], true, iat, ttl));
    renews.send_json(json!({"op": "refresh", "token": token("ed", &["*"], true, 600), "ref": 1}));
    assert_eq!(renews.until_op("ack")["ref"], 1);
    assert_eq!(lapses.close_code(), Some(4001), "closed when its token expired");
    // What is awaited is the clock itself: a second past the first token's expiry, the
    // refreshed viewer must still be served.
    while now_s() <= iat + ttl + 1 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    renews.send_json(json!({"op": "ping", "ref": 2}));
    assert_eq!(renews.until_op("pong")["ref"], 2, "the refreshed one is still served");
}

#[test]
fn a_server_at_its_connection_cap_answers_503_and_an_address_at_its_cap_429() {
    let server = Server::start(&["--max-connections", "2"]);
    let (_a, _b) = (server.viewer("a"), server.viewer("b"));
    let (status, body) = refused(&server, "/ws?user=c", "");
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert!(body.contains("Retry-After") || body.contains("capacity"), "{body}");

    let server = Server::start(&["--max-connections-per-ip", "1"]);
    let _first = server.viewer("a");
    let (status, _) = refused(&server, "/ws?user=b", "");
    assert!(status.starts_with("HTTP/1.1 429"), "{status}");
}

#[test]
fn an_origin_outside_the_allow_list_is_refused_with_403() {
    let server = Server::start(&["--ws-allowed-origin", "https://app.example"]);
    let (status, _) = refused(&server, "/ws?user=a", "Origin: https://evil.example\r\n");
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let (status, _) = refused(&server, "/ws?user=a", "Origin: https://app.example\r\n");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
}

#[test]
fn a_users_newest_connection_past_its_cap_closes_its_oldest_with_1008() {
    let server = Server::start(&["--max-connections-per-user", "1"]);
    let mut old = server.viewer("frank");
    let mut new = server.viewer("frank");
    assert_eq!(old.close_code(), Some(1008), "close_oldest is the default policy");
    new.send_json(json!({"op": "ping"}));
    assert_eq!(new.next_msg()["op"], "pong");
}
