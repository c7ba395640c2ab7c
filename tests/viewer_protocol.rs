//! The viewer protocol of PROTOCOL.md over real sockets: hello, join/leave, ping, comments
//! with acks, error replies that keep the connection open, and the close codes for oversized
//! and non-UTF-8 messages.

mod support;

use serde_json::json;
use support::Server;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

#[test]
fn hello_join_leave_and_ping() {
    let server = Server::start(&[]);
    let stream = std::net::TcpStream::connect(&server.ws).expect("connect");
    let (mut ws, _) = tungstenite::client(format!("ws://{}/ws?user=ann", server.ws), stream).expect("upgrade");
    let Message::Text(hello) = ws.read().expect("hello") else { panic!("text") };
    let hello: serde_json::Value = serde_json::from_str(&hello).expect("json");
    assert_eq!(hello["op"], "hello");
    assert_eq!(hello["user"], "ann");
    assert!(hello["conn"].is_u64() && hello["heartbeat_ms"].is_u64() && hello["max_message"] == 4096);

    let mut v = server.viewer("bea");
    let joined = v.join("lobby");
    assert_eq!(joined["room"], "lobby");
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["online"], 1);
    assert!(joined["epoch"].is_string());
    assert!(joined["state"].is_null());
    v.send_json(json!({"op": "ping"}));
    assert_eq!(v.next_json(), json!({"op": "pong"}));
    v.send_json(json!({"op": "leave", "room": "lobby"}));
    assert_eq!(v.next_json(), json!({"op": "left", "room": "lobby"}));
    v.send_json(json!({"op": "leave", "room": "lobby"}));
    assert_eq!(v.next_json()["code"], "not_joined");
}

#[test]
fn a_comment_reaches_every_member_and_is_acked() {
    let server = Server::start(&[]);
    let mut a = server.viewer("alice");
    let mut b = server.viewer("bob");
    a.join("chat");
    b.join("chat");
    for reference in [json!("c-1"), json!(42)] {
        a.send_json(json!({"op": "comment", "room": "chat", "text": "hello \"all\"", "ref": reference}));
        let ev = a.until_op("event");
        assert_eq!(ev["type"], "comment");
        assert_eq!(ev["data"]["user"], "alice");
        assert_eq!(ev["data"]["text"], "hello \"all\"");
        assert!(ev["data"]["id"].is_string());
        let ack = a.until_op("ack");
        assert_eq!(ack["ref"], reference, "ref echoed exactly");
        assert_eq!(ack["seq"], ev["seq"]);
        let seen = b.until_op("event");
        assert_eq!(seen["seq"], ev["seq"]);
        assert_eq!(seen["data"], ev["data"]);
    }
    a.send_json(json!({"op": "comment", "room": "chat", "text": "x".repeat(501), "ref": 1}));
    assert_eq!(a.next_json()["code"], "too_large");
}

#[test]
fn bad_input_gets_an_error_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut v = server.viewer("eve");
    v.ws.send(Message::text("{not json")).expect("send");
    assert_eq!(v.next_json()["code"], "bad_request");
    v.send_json(json!({"op": "teleport", "ref": "t"}));
    let e = v.next_json();
    assert_eq!((e["op"].as_str(), e["code"].as_str(), &e["ref"]), (Some("error"), Some("unknown_op"), &json!("t")));
    v.send_json(json!({"op": "comment", "room": "nowhere", "text": "hi"}));
    assert_eq!(v.next_json()["code"], "not_joined");
    v.send_json(json!({"op": "join", "room": "user:mallory"}));
    assert_eq!(v.next_json()["code"], "forbidden");
    v.send_json(json!({"op": "ping"}));
    assert_eq!(v.next_json()["op"], "pong", "still open after every error");
}

#[test]
fn oversized_message_closes_with_1009() {
    let server = Server::start(&[]);
    let mut v = server.viewer("big");
    v.ws.send(Message::text("x".repeat(5000))).expect("send");
    assert_eq!(v.close_code(), Some(1009));
}

#[test]
fn invalid_utf8_text_closes_with_1007() {
    let server = Server::start(&[]);
    let mut v = server.viewer("bin");
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    v.ws.send(Message::Frame(frame)).expect("send raw frame");
    assert_eq!(v.close_code(), Some(1007));
}

#[test]
fn publishing_to_a_private_room_reaches_the_user_on_every_connection() {
    let server = Server::start(&[]);
    let mut tabs = [server.viewer("zoe"), server.viewer("zoe")];
    let mut up = server.upstream();
    // The private room join is confirmed asynchronously; a ping round trip on each tab
    // orders it before the publish (both go through the same worker mailboxes).
    for t in &mut tabs {
        t.send_json(json!({"op": "ping"}));
        t.until_op("pong");
    }
    let reply = up.call(json!({"op": "publish", "room": "user:zoe", "type": "dm", "data": {"hi": 1}}));
    assert_eq!(reply["ok"], true);
    for t in &mut tabs {
        let ev = t.until_op("event");
        assert_eq!((ev["room"].as_str(), ev["type"].as_str()), (Some("user:zoe"), Some("dm")));
    }
}

#[test]
fn tls_viewers_speak_the_same_protocol() {
    let server = Server::start_tls(&[]);
    let mut a = server.tls_viewer("tina");
    let mut b = server.viewer("paul");
    a.join("mixed");
    b.join("mixed");
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "mixed", "type": "t", "data": [1, 2]}))["seq"], 1);
    assert_eq!(a.until_op("event")["data"], json!([1, 2]));
    assert_eq!(b.until_op("event")["data"], json!([1, 2]));
    a.send_json(json!({"op": "comment", "room": "mixed", "text": "over tls", "ref": 1}));
    assert_eq!(b.until_op("event")["data"]["text"], "over tls");
}
