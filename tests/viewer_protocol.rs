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
    assert_eq!(v.next_msg(), json!({"op": "pong"}));
    v.send_json(json!({"op": "leave", "room": "lobby"}));
    assert_eq!(v.next_msg(), json!({"op": "left", "room": "lobby"}));
    v.send_json(json!({"op": "leave", "room": "lobby"}));
    assert_eq!(v.next_msg()["code"], "not_joined");
}

#[test]
fn a_comment_reaches_every_member_and_is_acked() {
    let server = Server::start(&[]);
    let mut a = server.viewer("alice");
    let mut b = server.viewer("bob");
    let epoch = a.join("chat")["epoch"].as_str().expect("joined carries the epoch").to_owned();
    b.join("chat");
    for reference in [json!("c-1"), json!(42)] {
        a.send_json(json!({"op": "comment", "room": "chat", "text": "hello \"all\"", "ref": reference}));
        let ev = a.until_op("event");
        assert_eq!(ev["type"], "comment");
        assert_eq!(ev["data"]["user"], "alice");
        assert_eq!(ev["data"]["text"], "hello \"all\"");
        // docs/protocol.md: comment ids are `<epoch>-<seq>`.
        let seq = ev["seq"].as_u64().expect("seq");
        assert_eq!(ev["data"]["id"], format!("{epoch}-{seq}"), "comment id is <epoch>-<seq>: {ev}");
        let ack = a.until_op("ack");
        assert_eq!(ack["ref"], reference, "ref echoed exactly");
        assert_eq!(ack["seq"], ev["seq"]);
        let seen = b.until_op("event");
        assert_eq!(seen["seq"], ev["seq"]);
        assert_eq!(seen["data"], ev["data"]);
    }
    a.send_json(json!({"op": "comment", "room": "chat", "text": "x".repeat(501), "ref": 1}));
    let e = a.next_msg();
    assert_eq!(
        (&e["op"], &e["code"], &e["ref"], &e["room"]),
        (&json!("error"), &json!("too_large"), &json!(1), &json!("chat")),
        "{e}"
    );
}

#[test]
fn bad_input_gets_an_error_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut v = server.viewer("eve");
    v.ws.send(Message::text("{not json")).expect("send");
    assert_eq!(v.next_msg()["code"], "bad_request");
    v.send_json(json!({"op": "teleport", "ref": "t"}));
    let e = v.next_msg();
    assert_eq!((e["op"].as_str(), e["code"].as_str(), &e["ref"]), (Some("error"), Some("unknown_op"), &json!("t")));
    v.send_json(json!({"op": "comment", "room": "nowhere", "text": "hi"}));
    assert_eq!(v.next_msg()["code"], "not_joined");
    v.send_json(json!({"op": "join", "room": "user:mallory"}));
    assert_eq!(v.next_msg()["code"], "forbidden");
    v.send_json(json!({"op": "ping"}));
    assert_eq!(v.next_msg()["op"], "pong", "still open after every error");
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

/// A client that speaks plain HTTP to the wss port gets a TLS alert record (content type 21)
/// that says why, then end of stream; the listener keeps serving TLS viewers.
#[test]
fn plain_http_on_the_wss_port_gets_a_tls_alert_and_the_close() {
    use std::io::{Read, Write};
    let server = Server::start_tls(&[]);
    let mut sock = std::net::TcpStream::connect(server.wss.as_deref().expect("wss")).expect("connect");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("read timeout");
    sock.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut answer = Vec::new();
    sock.read_to_end(&mut answer).expect("the server closes the connection");
    assert_eq!(answer.first(), Some(&21), "a TLS alert record: {answer:?}");
    let mut v = server.tls_viewer("after");
    assert_eq!(v.join("still")["room"], "still");
}

/// A socket that writes at most 7 bytes per call (with `TCP_NODELAY`, about a segment each).
struct Dribble(std::net::TcpStream);

impl std::io::Read for Dribble {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Dribble {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(&buf[..buf.len().min(7)])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The server owns no TLS buffer per connection: a record that arrives in pieces waits in the
/// connection's own few bytes. A client that cuts its records to 64 bytes (so its ClientHello
/// spans several records) and sends them 7 bytes at a time still gets the whole protocol, and
/// a 3 KB join and a 450-character comment (dozens of records) arrive whole.
#[test]
fn a_tls_client_that_sends_small_records_in_pieces_is_understood() {
    let server = Server::start_tls(&[]);
    let mut config = (*support::client_tls_config(server.cert_pem.as_deref().expect("cert"), &[])).clone();
    config.max_fragment_size = Some(64);
    let addr = server.wss.as_deref().expect("wss");
    let sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("read timeout");
    let port = addr.rsplit(':').next().expect("port");
    let url = format!("wss://localhost:{port}/ws?user=drip");
    let connector = tungstenite::Connector::Rustls(std::sync::Arc::new(config));
    let (mut ws, response) =
        tungstenite::client_tls_with_config(url, Dribble(sock), None, Some(connector)).expect("wss upgrade");
    assert_eq!(response.status(), 101);
    let next_op = |ws: &mut tungstenite::WebSocket<_>, op: &str| loop {
        let msg = ws.read().unwrap_or_else(|e| panic!("waiting for {op}: {e}"));
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).expect("json");
            if v["op"] == op {
                return v;
            }
        }
    };
    assert_eq!(next_op(&mut ws, "hello")["user"], "drip");
    ws.send(Message::text(join_padded_to("drops", 3000))).expect("send join");
    assert_eq!(next_op(&mut ws, "joined")["room"], "drops");
    let text: String = (0..450).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    ws.send(Message::text(json!({"op": "comment", "room": "drops", "text": text, "ref": 7}).to_string()))
        .expect("send comment");
    assert_eq!(next_op(&mut ws, "event")["data"]["text"], text.as_str());
}

// ---- Added by the integration-test pass: edges a client author runs into. ----

/// `{"op":"join","room":ROOM,"pad":"xxx"}` padded to exactly `len` bytes.
fn join_padded_to(room: &str, len: usize) -> String {
    let skeleton = json!({"op": "join", "room": room, "pad": ""}).to_string();
    assert!(skeleton.len() <= len, "{len} bytes is too short for a join");
    let text = json!({"op": "join", "room": room, "pad": "x".repeat(len - skeleton.len())}).to_string();
    assert_eq!(text.len(), len);
    text
}

#[test]
fn hello_announces_the_configured_limits_and_the_user() {
    let server = Server::start(&["--max-message", "1024", "--heartbeat-ms", "7000"]);
    let mut v = server.viewer_raw("alice");
    let hello = v.next_msg();
    assert_eq!(hello["op"], "hello");
    assert_eq!(hello["user"], "alice");
    assert_eq!(hello["max_message"], 1024, "hello: {hello}");
    assert_eq!(hello["heartbeat_ms"], 7000, "hello: {hello}");
    assert!(!hello["conn"].is_null(), "hello carries a connection id: {hello}");
    let mut w = server.viewer_raw("alice");
    assert_ne!(w.next_msg()["conn"], hello["conn"], "each connection has its own id");
}

#[test]
fn a_viewer_without_user_gets_a_made_up_id() {
    let server = Server::start(&[]);
    let stream = std::net::TcpStream::connect(&server.ws).expect("connect");
    stream.set_read_timeout(Some(support::WAIT)).expect("timeout");
    let (mut ws, _) = tungstenite::client(format!("ws://{}/ws", server.ws), stream).expect("upgrade");
    let Message::Text(hello) = ws.read().expect("hello") else { panic!("hello is a text message") };
    let hello: serde_json::Value = serde_json::from_str(&hello).expect("json");
    assert_eq!(hello["op"], "hello");
    // docs/protocol.md "Identity and auth": without `?user=` the id is `anon-<conn>`.
    let conn = hello["conn"].as_u64().unwrap_or_else(|| panic!("hello.conn is an integer: {hello}"));
    assert_eq!(hello["user"], format!("anon-{conn}"), "anonymous user id is anon-<conn>: {hello}");
    // It is this connection's own: another anonymous connection gets another id.
    let stream = std::net::TcpStream::connect(&server.ws).expect("connect");
    stream.set_read_timeout(Some(support::WAIT)).expect("timeout");
    let (mut other, _) = tungstenite::client(format!("ws://{}/ws", server.ws), stream).expect("upgrade");
    let Message::Text(second) = other.read().expect("hello") else { panic!("hello is a text message") };
    let second: serde_json::Value = serde_json::from_str(&second).expect("json");
    let other_conn = second["conn"].as_u64().unwrap_or_else(|| panic!("hello.conn is an integer: {second}"));
    assert_ne!(other_conn, conn, "each connection has its own id");
    assert_eq!(second["user"], format!("anon-{other_conn}"), "{second}");
}

#[test]
fn an_upgrade_on_another_path_is_refused() {
    let server = Server::start(&[]);
    let stream = std::net::TcpStream::connect(&server.ws).expect("connect");
    stream.set_read_timeout(Some(support::WAIT)).expect("timeout");
    match tungstenite::client(format!("ws://{}/elsewhere?user=a", server.ws), stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert!(response.status().is_client_error(), "status {}", response.status())
        }
        Err(e) => panic!("expected an HTTP error response, got {e}"),
        Ok(_) => panic!("upgrade on /elsewhere succeeded; only /ws is a viewer endpoint"),
    }
}

#[test]
fn joined_carries_the_latest_seq_and_leave_stops_delivery() {
    let server = Server::start(&[]);
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "r", "type": "t", "data": 1}))["seq"], 1);
    let mut a = server.viewer("a");
    let mut b = server.viewer("b");
    let joined = a.join("r");
    assert_eq!((&joined["room"], &joined["seq"]), (&json!("r"), &json!(1)), "joined: {joined}");
    b.join("r");
    assert_eq!(up.call(json!({"op": "publish", "room": "r", "type": "t", "data": 2}))["seq"], 2);
    assert_eq!(a.next_msg()["seq"], 2);
    a.send_json(json!({"op": "leave", "room": "r"}));
    assert_eq!(a.next_msg(), json!({"op": "left", "room": "r"}));
    assert_eq!(up.call(json!({"op": "publish", "room": "r", "type": "t", "data": 3}))["seq"], 3);
    assert_eq!(a.join("r")["seq"], 3, "rejoin reports the latest seq; nothing was replayed before it");
    assert_eq!(up.call(json!({"op": "publish", "room": "r", "type": "t", "data": 4}))["seq"], 4);
    let next = a.next_msg();
    assert_eq!((&next["op"], &next["seq"]), (&json!("event"), &json!(4)), "seq 3 was published while a was out");
    let seqs: Vec<_> = (0..3).map(|_| b.until_op("event")["seq"].clone()).collect();
    assert_eq!(seqs, [json!(2), json!(3), json!(4)], "b stayed and saw everything after its join");
}

#[test]
fn events_of_a_room_reach_its_members_only() {
    let server = Server::start(&[]);
    let mut inside = server.viewer("in");
    let mut outside = server.viewer("out");
    inside.join("a");
    outside.join("b");
    let mut up = server.upstream();
    up.call(json!({"op": "publish", "room": "a", "type": "secret", "data": null}));
    up.call(json!({"op": "publish", "room": "b", "type": "public", "data": null}));
    assert_eq!(inside.next_msg()["type"], "secret");
    let first = outside.next_msg();
    assert_eq!((&first["room"], &first["type"]), (&json!("b"), &json!("public")), "nothing from room a first");
}

#[test]
fn comment_events_carry_id_user_name_text_and_every_scalar_ref_is_echoed() {
    let server = Server::start(&[]);
    let mut a = server.viewer("alice");
    let mut b = server.viewer("bob");
    let epoch = a.join("chat")["epoch"].as_str().expect("joined carries the epoch").to_owned();
    b.join("chat");
    let mut ids = Vec::new();
    for reference in [json!("s"), json!(7), json!(-1.5), json!("\"quoted\" ✓")] {
        a.send_json(json!({"op": "comment", "room": "chat", "text": "héllo 👋", "ref": reference}));
        let ev = a.until_op("event");
        assert_eq!((&ev["room"], &ev["type"]), (&json!("chat"), &json!("comment")));
        let data = &ev["data"];
        assert_eq!((&data["user"], &data["text"]), (&json!("alice"), &json!("héllo 👋")), "data: {data}");
        assert!(data["name"].is_string(), "comment data carries a display name: {data}");
        let seq = ev["seq"].as_u64().unwrap_or_else(|| panic!("event seq: {ev}"));
        assert_eq!(data["id"], format!("{epoch}-{seq}"), "comment id is <epoch>-<seq>: {data}");
        ids.push(data["id"].clone());
        let ack = a.until_op("ack");
        assert_eq!(ack["ref"], reference, "ref echoed exactly");
        assert_eq!(ack["seq"], ev["seq"], "ack seq is the event's seq");
        assert_eq!(b.until_op("event"), ev, "the other member sees the same event");
    }
    ids.dedup();
    assert_eq!(ids.len(), 4, "comment ids are distinct: {ids:?}");
}

#[test]
fn comment_length_is_counted_in_characters_and_errors_echo_the_ref() {
    let server = Server::start(&[]);
    let mut v = server.viewer("carl");
    v.send_json(json!({"op": "comment", "room": "c", "text": "hi", "ref": "r-nj"}));
    let e = v.next_msg();
    assert_eq!((&e["op"], &e["code"], &e["ref"]), (&json!("error"), &json!("not_joined"), &json!("r-nj")), "{e}");
    v.join("c");
    // 500 two-byte characters: 1000 bytes, but within the 500-character limit.
    v.send_json(json!({"op": "comment", "room": "c", "text": "é".repeat(500), "ref": "max"}));
    assert_eq!(v.until_op("event")["data"]["text"], "é".repeat(500));
    assert_eq!(v.until_op("ack")["ref"], "max");
    // docs/protocol.md "comment": empty -> `bad_request`; over max_comment_chars -> `too_large`.
    v.send_json(json!({"op": "comment", "room": "c", "text": "é".repeat(501), "ref": "over"}));
    let e = v.next_msg();
    assert_eq!(
        (&e["op"], &e["code"], &e["ref"], &e["room"]),
        (&json!("error"), &json!("too_large"), &json!("over"), &json!("c")),
        "501 characters is refused: {e}"
    );
    v.send_json(json!({"op": "comment", "room": "c", "text": "", "ref": "empty"}));
    let e = v.next_msg();
    assert_eq!(
        (&e["op"], &e["code"], &e["ref"], &e["room"]),
        (&json!("error"), &json!("bad_request"), &json!("empty"), &json!("c")),
        "an empty comment is refused: {e}"
    );
    v.send_json(json!({"op": "ping"}));
    assert_eq!(v.next_msg()["op"], "pong");
}

#[test]
fn malformed_requests_get_bad_request_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut v = server.viewer("m");
    for text in ["[1,2]", "\"join\"", "42", "{}", "{\"room\":\"r\"}", "{\"op\":\"join\"}", "{\"op\":7}", ""] {
        v.ws.send(Message::text(text)).expect("send");
        let e = v.next_msg();
        assert_eq!(e["op"], "error", "reply to {text:?}: {e}");
        assert!(
            e["code"] == "bad_request" || e["code"] == "unknown_op",
            "{text:?} is a bad request (or an unknown op), got {e}"
        );
    }
    v.send_json(json!({"op": "ping"}));
    assert_eq!(v.next_msg()["op"], "pong", "still open after every malformed request");
}

#[test]
fn unknown_fields_are_ignored() {
    let server = Server::start(&[]);
    let mut v = server.viewer("fwd");
    v.send_json(json!({"op": "join", "room": "r", "future": {"x": 1}, "v": 2}));
    assert_eq!(v.until_op("joined")["room"], "r");
    v.send_json(json!({"op": "ping", "extra": true}));
    assert_eq!(v.next_msg()["op"], "pong");
}

#[test]
fn a_message_of_exactly_max_message_bytes_is_accepted_and_one_byte_more_closes_with_1009() {
    let server = Server::start(&["--max-message", "1024"]);
    let mut v = server.viewer("edge");
    v.ws.send(Message::text(join_padded_to("fits", 1024))).expect("send");
    assert_eq!(v.until_op("joined")["room"], "fits", "a 1024-byte message is within --max-message 1024");
    v.ws.send(Message::text(join_padded_to("over", 1025))).expect("send");
    assert_eq!(v.close_code(), Some(1009));
}

#[test]
fn a_fragmented_message_is_reassembled_even_when_a_character_spans_fragments() {
    let server = Server::start(&[]);
    let mut v = server.viewer("frag");
    v.join("f");
    let text = json!({"op": "comment", "room": "f", "text": "naïve café", "ref": 1}).to_string();
    let bytes = text.as_bytes();
    // Split inside the two bytes of 'ï': each fragment alone is not valid UTF-8.
    let cut = text.find('ï').expect("ï") + 1;
    v.ws.send(Message::Frame(Frame::message(bytes[..cut].to_vec(), OpCode::Data(Data::Text), false))).expect("send");
    v.ws.send(Message::Frame(Frame::message(bytes[cut..].to_vec(), OpCode::Data(Data::Continue), true))).expect("send");
    assert_eq!(v.until_op("event")["data"]["text"], "naïve café");
    assert_eq!(v.until_op("ack")["ref"], 1);
}

#[test]
fn fragments_adding_up_past_max_message_close_with_1009() {
    let server = Server::start(&["--max-message", "1024"]);
    let mut v = server.viewer("frags");
    let text = join_padded_to("r", 1800);
    let (first, rest) = text.as_bytes().split_at(600);
    let (second, third) = rest.split_at(600);
    v.ws.send(Message::Frame(Frame::message(first.to_vec(), OpCode::Data(Data::Text), false))).expect("send");
    v.ws.send(Message::Frame(Frame::message(second.to_vec(), OpCode::Data(Data::Continue), false))).expect("send");
    // The server may close before the last fragment arrives; a failed send is fine then.
    let _ = v.ws.send(Message::Frame(Frame::message(third.to_vec(), OpCode::Data(Data::Continue), true)));
    assert_eq!(v.close_code(), Some(1009), "each fragment is small, the message is not");
}

#[test]
fn websocket_ping_frames_are_answered_with_the_same_payload() {
    let server = Server::start(&[]);
    let mut v = server.viewer("pinger");
    v.ws.send(Message::Ping(b"are you there".to_vec().into())).expect("send ping");
    loop {
        match v.ws.read().expect("read") {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            Message::Text(t) => assert!(t.contains("presence"), "only noise before the pong: {t}"),
            other => panic!("expected a pong frame, got {other:?}"),
        }
    }
}

#[test]
fn a_client_close_is_answered_with_a_close_frame() {
    let server = Server::start(&[]);
    let mut v = server.viewer("leaver");
    v.join("r");
    v.ws.close(None).expect("send close");
    assert_eq!(v.close_code(), Some(1000), "the server echoes a normal close");
}

#[test]
fn a_publish_to_the_private_room_reaches_a_connection_as_soon_as_it_has_hello() {
    let server = Server::start(&[]);
    let mut up = server.upstream();
    // No join and no round trip first: hello means the connection exists, and with it the
    // automatic membership of `user:<id>`. Several fresh connections, to catch a race.
    for i in 0..20 {
        let user = format!("solo{i}");
        let mut v = server.viewer(&user);
        let reply = up.call(json!({"op": "publish", "room": format!("user:{user}"), "type": "dm", "data": i}));
        assert_eq!(reply["ok"], true);
        let ev = v.next_msg();
        assert_eq!(
            (&ev["op"], &ev["room"], &ev["data"]),
            (&json!("event"), &json!(format!("user:{user}")), &json!(i)),
            "connection {i}: first message after hello is the private event"
        );
    }
}

#[test]
fn joining_another_users_private_room_is_forbidden() {
    let server = Server::start(&[]);
    let mut alice = server.viewer("alice");
    alice.send_json(json!({"op": "join", "room": "user:bob"}));
    let e = alice.next_msg();
    assert_eq!((&e["op"], &e["code"]), (&json!("error"), &json!("forbidden")), "{e}");
    let mut up = server.upstream();
    up.call(json!({"op": "publish", "room": "user:bob", "type": "dm", "data": "for bob"}));
    up.call(json!({"op": "publish", "room": "user:alice", "type": "dm", "data": "for alice"}));
    assert_eq!(alice.next_msg()["data"], "for alice", "bob's private event did not reach alice");
}

#[test]
fn tls_1_2_and_tls_1_3_clients_both_get_the_protocol() {
    let server = Server::start_tls(&[]);
    let mut up = server.upstream();
    for (name, version) in [("t12", &rustls::version::TLS12), ("t13", &rustls::version::TLS13)] {
        let mut v = server.tls_viewer_with(name, &[version]);
        assert_eq!(v.join("secure")["room"], "secure");
        let seq = up.call(json!({"op": "publish", "room": "secure", "type": "t", "data": name}))["seq"].clone();
        let ev = v.until_op("event");
        assert_eq!((&ev["seq"], &ev["data"]), (&seq, &json!(name)));
        v.ws.send(Message::text("y".repeat(5000))).expect("send");
        assert_eq!(v.close_code(), Some(1009), "{name}: oversized over TLS closes with 1009");
    }
}

/// One client frame as raw bytes: `first` is FIN/RSV/opcode, the payload masked or not.
fn raw_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first, if masked { 0x80 } else { 0 } | payload.len() as u8];
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

#[test]
fn frames_that_break_rfc_6455_fail_the_connection_with_1002() {
    let server = Server::start(&[]);
    let ping = br#"{"op":"ping"}"#;
    let cases: [(&str, Vec<u8>); 10] = [
        ("an unmasked client frame", raw_frame(0x81, ping, false)),
        ("a ping with 126 bytes of payload", {
            let mut f = vec![0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0];
            f.extend([0u8; 126]);
            f
        }),
        ("a fragmented ping", raw_frame(0x09, b"ab", true)),
        ("RSV1 without an extension", raw_frame(0xC1, ping, true)),
        ("a continuation with nothing to continue", raw_frame(0x80, ping, true)),
        ("reserved opcode 3", raw_frame(0x83, ping, true)),
        ("a new text frame inside a fragmented message", {
            let mut f = raw_frame(0x01, b"{\"op\":", true);
            f.extend(raw_frame(0x81, ping, true));
            f
        }),
        ("close code 999", raw_frame(0x88, &999u16.to_be_bytes(), true)),
        ("close code 1005 on the wire", raw_frame(0x88, &1005u16.to_be_bytes(), true)),
        ("a one-byte close payload", raw_frame(0x88, &[0x03], true)),
    ];
    for (what, bytes) in cases {
        let mut v = server.viewer("rfc");
        let mut tcp = v.tcp().try_clone().expect("clone socket");
        std::io::Write::write_all(&mut tcp, &bytes).expect("write raw frame");
        assert_eq!(v.close_code(), Some(1002), "{what}");
    }
}

#[test]
fn a_close_with_an_application_code_is_echoed() {
    let server = Server::start(&[]);
    let mut v = server.viewer("closer");
    let mut tcp = v.tcp().try_clone().expect("clone socket");
    std::io::Write::write_all(&mut tcp, &raw_frame(0x88, &4000u16.to_be_bytes(), true)).expect("write close");
    assert_eq!(v.close_code(), Some(4000));
}

#[test]
fn a_binary_message_gets_bad_request_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut v = server.viewer("bin");
    v.ws.send(Message::binary(br#"{"op":"ping"}"#.to_vec())).expect("send binary");
    let e = v.next_msg();
    assert_eq!((&e["op"], &e["code"]), (&json!("error"), &json!("bad_request")), "{e}");
    v.send_json(json!({"op": "ping"}));
    assert_eq!(v.next_msg()["op"], "pong");
}

#[test]
fn a_ping_frame_between_fragments_is_answered_and_the_message_still_assembles() {
    let server = Server::start(&[]);
    let mut v = server.viewer("interleave");
    let mut tcp = v.tcp().try_clone().expect("clone socket");
    let mut bytes = raw_frame(0x01, b"{\"op\":", true);
    bytes.extend(raw_frame(0x89, b"mid", true));
    bytes.extend(raw_frame(0x80, b"\"ping\"}", true));
    std::io::Write::write_all(&mut tcp, &bytes).expect("write frames");
    let mut pong_frame = false;
    let mut pong_op = false;
    while !(pong_frame && pong_op) {
        match v.ws.read().expect("read") {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"mid");
                pong_frame = true;
            }
            Message::Text(t) => {
                let m: serde_json::Value = serde_json::from_str(&t).expect("json");
                if m["op"] == "pong" {
                    pong_op = true;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Send a raw HTTP request to the ws listener and return the response head.
fn raw_upgrade(server: &Server, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(&server.ws).expect("connect");
    stream.set_read_timeout(Some(support::WAIT)).expect("timeout");
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("write request");
    response_head(stream)
}

/// Read an HTTP response head (up to the blank line) from `stream`.
fn response_head(stream: std::net::TcpStream) -> String {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read response") == 0 || line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

const UPGRADE_HEADERS: &str = "Host: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[test]
fn the_handshake_answers_with_the_rfc_accept_key_and_refuses_plain_http_with_426() {
    let server = Server::start(&[]);
    let head =
        raw_upgrade(&server, &format!("GET /ws?user=h HTTP/1.1\r\n{UPGRADE_HEADERS}Sec-WebSocket-Version: 13\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The worked example of RFC 6455 section 1.3.
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    let head = raw_upgrade(&server, "GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    let head = raw_upgrade(&server, "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 400"), "no Sec-WebSocket-Key: {head}");
}

#[test]
fn an_unsupported_websocket_version_is_told_which_version_the_server_speaks() {
    // RFC 6455 section 4.4: the server MUST abort the handshake with an HTTP error (such as
    // 426) "and a |Sec-WebSocket-Version| header field indicating the version(s) the server is
    // capable of understanding".
    let server = Server::start(&[]);
    let head = raw_upgrade(&server, &format!("GET /ws HTTP/1.1\r\n{UPGRADE_HEADERS}Sec-WebSocket-Version: 12\r\n\r\n"));
    assert!(!head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
}

/// One keepalive round trip: an op `ping` answered by `pong`, or a WebSocket ping frame
/// answered by a pong frame.
fn keepalive(v: &mut support::Viewer, frame: bool) {
    if !frame {
        v.send_json(json!({"op": "ping"}));
        assert_eq!(v.next_msg()["op"], "pong");
        return;
    }
    v.ws.send(Message::Ping(b"k".to_vec().into())).expect("send ping frame");
    loop {
        match v.ws.read().expect("read") {
            Message::Pong(_) => return,
            Message::Close(c) => panic!("closed while pinging: {c:?}"),
            _ => {}
        }
    }
}

/// The heartbeat flags of the tests where a silent connection is closed while a live one
/// must stay: pinged after 100 ms of silence, closed after 5 s. What binds the live client is
/// the window between the two: it has about 5 s to answer the server's ping (or to send its
/// next one), which a loaded machine does not miss, while the silent one needs no answer to be
/// closed. The tests wait for the silent one's close frame, not for a time.
const HEARTBEAT_FLAGS: [&str; 4] = ["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "5000"];

/// How often the pinger pings while it waits for the silent connection's close: far inside
/// the 5 s timeout, and without spinning the shared machine's cores.
const PING_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

fn pinging_outlives_a_silent_connection(frame: bool) {
    // The pinger pings steadily until the silent one is closed: no message rate limit.
    let mut flags = HEARTBEAT_FLAGS.to_vec();
    flags.extend(["--message-rate", "1000000", "--message-burst", "1000000"]);
    let server = Server::start(&flags);
    // The pinger connects first, so it has been connected longer than the silent one when
    // that one is closed: its pings kept it open. The silent one answers not even the
    // server's pings.
    let mut pinger = server.viewer("pinger");
    let mut silent = server.deaf_viewer("silent");
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let closed = silent.close_code();
        let _ = closed_tx.send(());
        closed
    });
    loop {
        keepalive(&mut pinger, frame);
        match closed_rx.recv_timeout(PING_EVERY) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let (code, pings) = watcher.join().expect("watcher thread");
    // docs/protocol.md "Heartbeats": closed with 1001 (reconnect), after one unanswered ping.
    assert_eq!((code, pings), (Some(1001), 1), "the silent connection is pinged once, then closed with 1001");
    keepalive(&mut pinger, frame);
}

#[test]
fn a_viewer_that_only_listens_stays_connected_because_it_answers_the_servers_pings() {
    // PROTOCOL.md "Heartbeats": the server pings a connection silent for heartbeat_ms; the
    // client's automatic pong keeps it alive without application code. The listener connects
    // first and sends nothing; once a deaf viewer that connected after it is closed, the
    // listener has been silent for longer than the timeout too, and must still be served.
    let server = Server::start(&HEARTBEAT_FLAGS);
    let mut listener = server.viewer("listener");
    let reader = std::thread::spawn(move || listener.next());
    let mut deaf = server.deaf_viewer("deaf");
    let (code, pings) = deaf.close_code();
    assert_eq!((code, pings), (Some(1001), 1), "a client that does not answer is pinged once, then closed");
    let mut up = server.upstream();
    let reply = up.call(json!({"op": "publish", "room": "user:listener", "type": "still-there", "data": 1}));
    assert_eq!(reply["ok"], true);
    match reader.join().expect("reader thread") {
        support::Got::Json(v) => {
            assert_eq!((v["op"].as_str(), v["type"].as_str()), (Some("event"), Some("still-there")))
        }
        support::Got::Closed(code) => panic!("the listening viewer was closed ({code:?}) although it answered pings"),
    }
}

#[test]
fn op_pings_keep_a_connection_alive_past_the_heartbeat_timeout_that_closes_a_silent_one() {
    pinging_outlives_a_silent_connection(false);
}

#[test]
fn ping_frames_keep_a_connection_alive_past_the_heartbeat_timeout_that_closes_a_silent_one() {
    pinging_outlives_a_silent_connection(true);
}

#[test]
fn reactions_are_counted_and_sent_to_the_room() {
    let server = Server::start(&["--presence-interval-ms", "100"]);
    let mut fans: Vec<_> = (0..3).map(|i| server.viewer(&format!("fan{i}"))).collect();
    for f in &mut fans {
        f.join("show");
    }
    let mut watcher = server.viewer("watcher");
    watcher.join("show");
    for f in &mut fans {
        for _ in 0..5 {
            f.send_json(json!({"op": "react", "room": "show", "kind": "👍"}));
        }
        f.send_json(json!({"op": "react", "room": "show", "kind": "🔥"}));
    }
    // Coalesced per interval: add up `reactions` messages until the totals are reached.
    let (mut thumbs, mut fire) = (0u64, 0u64);
    while thumbs < 15 || fire < 3 {
        let m = watcher.until_op("reactions");
        assert_eq!(m["room"], "show");
        let counts = m["counts"].as_object().unwrap_or_else(|| panic!("counts is an object: {m}"));
        for (kind, n) in counts {
            let n = n.as_u64().unwrap_or_else(|| panic!("count is a number: {m}"));
            match kind.as_str() {
                "👍" => thumbs += n,
                "🔥" => fire += n,
                other => panic!("no one reacted with {other:?}: {m}"),
            }
        }
    }
    assert_eq!((thumbs, fire), (15, 3), "no reaction counted twice");
}

#[test]
fn max_message_limits_what_clients_send_not_what_they_receive() {
    let server = Server::start_tls(&["--max-message", "1024"]);
    let mut plain = server.viewer("p");
    let mut tls = server.tls_viewer("t");
    plain.join("big");
    tls.join("big");
    // 50 KiB of data: beyond max_message, and beyond one TLS record (16 KiB).
    let blob: String = (0..50 * 1024).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "big", "type": "blob", "data": blob}))["seq"], 1);
    for v in [&mut plain, &mut tls] {
        let ev = v.until_op("event");
        assert_eq!(ev["data"].as_str().map(str::len), Some(blob.len()));
        assert_eq!(ev["data"], blob.as_str());
    }
}

#[test]
fn one_connection_in_fifty_rooms_gets_each_rooms_own_sequence() {
    let server = Server::start(&[]);
    let mut v = server.viewer("many");
    let rooms: Vec<String> = (0..50).map(|i| format!("room-{i}")).collect();
    for r in &rooms {
        assert_eq!(v.join(r)["room"], r.as_str());
    }
    let mut up = server.upstream();
    let before_ms = now_ms();
    for round in 1..=2u64 {
        let reply = up.call(json!({"op": "publish", "rooms": rooms, "type": "t", "data": round}));
        assert_eq!(reply["seqs"], json!(vec![round; rooms.len()]));
    }
    let mut next = std::collections::BTreeMap::new();
    for _ in 0..2 * rooms.len() {
        let ev = v.until_op("event");
        let room = ev["room"].as_str().expect("room").to_owned();
        let seq = next.entry(room.clone()).or_insert(1u64);
        assert_eq!((ev["seq"].as_u64(), ev["data"].as_u64()), (Some(*seq), Some(*seq)), "room {room}");
        *seq += 1;
        // A unit check, not a timing one: ts is in milliseconds since the Unix epoch.
        let ts = ev["ts"].as_u64().expect("ts");
        assert!(ts + 60_000 > before_ms && ts < now_ms() + 60_000, "ts {ts} is ms since the epoch");
    }
    assert_eq!(next.len(), rooms.len());
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("fits u64")
}

/// Half an HTTP upgrade request on ws (no blank line yet), and a TCP connection that never
/// starts TLS on wss.
fn stalled_handshakes(server: &Server) -> (std::net::TcpStream, std::net::TcpStream) {
    let mut half = std::net::TcpStream::connect(&server.ws).expect("connect ws");
    std::io::Write::write_all(&mut half, b"GET /ws?user=slowloris HTTP/1.1\r\nHost: localhost\r\n").expect("write");
    let mute = std::net::TcpStream::connect(server.wss.as_deref().expect("wss")).expect("connect wss");
    for s in [&half, &mute] {
        s.set_read_timeout(Some(support::WAIT)).expect("timeout");
    }
    (half, mute)
}

#[test]
fn a_stalled_handshake_is_dropped_after_the_handshake_timeout() {
    use std::io::Read;
    // Only the stalled connections meet this short timeout; no client here has to finish a
    // handshake within it.
    let server = Server::start_tls(&["--handshake-timeout-ms", "200"]);
    let (mut half, mut mute) = stalled_handshakes(&server);
    for (what, s) in [("half request", &mut half), ("no ClientHello", &mut mute)] {
        let mut rest = Vec::new();
        // Whatever the server says (perhaps an HTTP error), it then closes: end of stream.
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what}: not closed by the server: {e}"),
        }
        assert!(!String::from_utf8_lossy(&rest).contains(" 101 "), "{what}: never upgraded");
    }
}

#[test]
fn a_stalled_handshake_blocks_no_one_and_may_still_finish_within_the_timeout() {
    // A timeout no step of this test comes near (each wait is bounded by support::WAIT):
    // while both handshakes stall, plain and TLS viewers connect and get the whole protocol;
    // then the stalled ones finish theirs and are upgraded.
    let server = Server::start_tls(&["--handshake-timeout-ms", "600000"]);
    let (mut half, mute) = stalled_handshakes(&server);
    let mut plain = server.viewer("fine");
    let mut tls = server.tls_viewer("fine-tls");
    plain.join("r");
    tls.join("r");
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "r", "type": "t", "data": "while stalled"}))["seq"], 1);
    for v in [&mut plain, &mut tls] {
        assert_eq!(v.until_op("event")["data"], "while stalled");
        v.send_json(json!({"op": "ping"}));
        assert_eq!(v.until_op("pong")["op"], "pong");
    }
    // The rest of the half request: it was waiting, not dropped.
    let rest = format!("{UPGRADE_HEADERS}Sec-WebSocket-Version: 13\r\n\r\n");
    let rest = rest.strip_prefix("Host: localhost\r\n").expect("UPGRADE_HEADERS starts with Host");
    std::io::Write::write_all(&mut half, rest.as_bytes()).expect("finish the request");
    let head = response_head(half);
    assert!(head.starts_with("HTTP/1.1 101"), "the late half request is upgraded: {head}");
    // The mute one starts TLS at last.
    let config = support::client_tls_config(server.cert_pem.as_deref().expect("cert"), &[]);
    let port = server.wss.as_deref().and_then(|a| a.rsplit(':').next()).expect("wss port");
    let (mut late, response) = tungstenite::client_tls_with_config(
        format!("wss://localhost:{port}/ws?user=late"),
        mute,
        None,
        Some(tungstenite::Connector::Rustls(config)),
    )
    .expect("the late TLS handshake and upgrade");
    assert_eq!(response.status(), 101);
    let Message::Text(hello) = late.read().expect("hello") else { panic!("hello is a text message") };
    let hello: serde_json::Value = serde_json::from_str(&hello).expect("json");
    assert_eq!((hello["op"].as_str(), hello["user"].as_str()), (Some("hello"), Some("late")), "{hello}");
}

#[test]
fn every_reply_to_an_op_with_a_ref_echoes_it_and_an_error_about_a_room_names_it() {
    // PROTOCOL.md "Replies and errors", op by op, with a different ref type each time.
    let server = Server::start(&[]);
    let mut v = server.viewer("walker");
    let call = |v: &mut support::Viewer, op: serde_json::Value| {
        v.send_json(op);
        v.next_msg()
    };
    let joined = call(&mut v, json!({"op": "join", "room": "walk", "ref": "j1"}));
    assert_eq!((joined["op"].as_str(), joined["ref"].as_str()), (Some("joined"), Some("j1")), "{joined}");
    let again = call(&mut v, json!({"op": "join", "room": "walk", "ref": 2}));
    assert_eq!(
        (again["op"].as_str(), again["ref"].as_u64(), again["room"].as_str()),
        (Some("error"), Some(2), Some("walk"))
    );
    assert_eq!(again["code"], "bad_request");
    let ack = call(&mut v, json!({"op": "comment", "room": "walk", "text": "hi", "ref": true}));
    let ack = if ack["op"] == "event" { v.next_msg() } else { ack };
    assert_eq!((ack["op"].as_str(), ack["ref"].as_bool()), (Some("ack"), Some(true)), "{ack}");
    let pong = call(&mut v, json!({"op": "ping", "ref": 4.5}));
    assert_eq!((pong["op"].as_str(), pong["ref"].as_f64()), (Some("pong"), Some(4.5)));
    let refreshed = call(&mut v, json!({"op": "refresh", "token": "t", "ref": "r5"}));
    assert_eq!((refreshed["op"].as_str(), refreshed["ref"].as_str()), (Some("ack"), Some("r5")));
    let left = call(&mut v, json!({"op": "leave", "room": "walk", "ref": "l6"}));
    assert_eq!(
        (left["op"].as_str(), left["ref"].as_str(), left["room"].as_str()),
        (Some("left"), Some("l6"), Some("walk"))
    );
    for (op, code) in [
        (json!({"op": "leave", "room": "walk", "ref": 7}), "not_joined"),
        (json!({"op": "comment", "room": "walk", "text": "x", "ref": 8}), "not_joined"),
        (json!({"op": "react", "room": "walk", "kind": "clap", "ref": 9}), "not_joined"),
        (json!({"op": "join", "room": "user:someone-else", "ref": 10}), "forbidden"),
    ] {
        let want = op["ref"].clone();
        let room = op["room"].clone();
        let e = call(&mut v, op);
        assert_eq!(
            (e["op"].as_str(), &e["ref"], &e["room"], e["code"].as_str()),
            (Some("error"), &want, &room, Some(code)),
            "{e}"
        );
        assert!(e["message"].as_str().is_some_and(|m| m.len() > 10), "a message for a person: {e}");
    }
    let unknown = call(&mut v, json!({"op": "dance", "ref": "u11"}));
    assert_eq!((unknown["code"].as_str(), unknown["ref"].as_str()), (Some("unknown_op"), Some("u11")));
}

#[test]
fn a_connections_open_and_close_are_logged_at_debug_with_code_and_reason() {
    // The harness runs the server with RUST_LOG=debug and keeps its log.
    let server = Server::start(&[]);
    let mut v = server.viewer("logged");
    v.join("r");
    v.ws.close(None).expect("send close");
    assert_eq!(v.close_code(), Some(1000), "the close is echoed");
    let logged = server.wait_for_log(|log| log.contains("connection closing"));
    let open = logged.lines().find(|l| l.contains("connection open")).expect("the open is logged");
    assert!(open.contains("user=logged") && open.contains("listener=\"ws\""), "{open}");
    let closing = logged.lines().find(|l| l.contains("connection closing")).expect("the close is logged");
    assert!(
        closing.contains("code=1000") && closing.contains("by_peer=true") && closing.contains("reason=\"closed\"")
            || closing.contains("reason=closed"),
        "{closing}"
    );
}

// ---- Promises of PROTOCOL.md and docs/protocol.md that had no socket-level test. ----

/// `(op, code, ref, room)` of a reply, for one comparison per error.
fn error_parts(
    e: &serde_json::Value,
) -> (&serde_json::Value, &serde_json::Value, &serde_json::Value, &serde_json::Value) {
    (&e["op"], &e["code"], &e["ref"], &e["room"])
}

#[test]
fn joining_ones_own_private_room_is_bad_request_and_another_users_is_forbidden() {
    // PROTOCOL.md: every connection is in `user:<sub>` from the start; docs/protocol.md
    // "join": another user's private room is `forbidden`, one's own `bad_request` (it is
    // joined automatically).
    let server = Server::start(&[]);
    let mut ada = server.viewer("ada");
    ada.send_json(json!({"op": "join", "room": "user:ada", "ref": "own"}));
    let e = ada.next_msg();
    assert_eq!(error_parts(&e), (&json!("error"), &json!("bad_request"), &json!("own"), &json!("user:ada")), "{e}");
    ada.send_json(json!({"op": "join", "room": "user:bob", "ref": "other"}));
    let e = ada.next_msg();
    assert_eq!(error_parts(&e), (&json!("error"), &json!("forbidden"), &json!("other"), &json!("user:bob")), "{e}");
    // Neither error took her out of her own private room.
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "user:ada", "type": "dm", "data": "still yours"}))["ok"], true);
    let ev = ada.next_msg();
    assert_eq!((&ev["op"], &ev["room"], &ev["data"]), (&json!("event"), &json!("user:ada"), &json!("still yours")));
}

#[test]
fn joining_past_max_rooms_per_conn_is_forbidden_until_a_room_is_left() {
    // docs/protocol.md "join": more than limits.max_rooms_per_conn rooms on one connection is
    // `forbidden`. The private room does not count: three rooms fit a limit of three.
    let server = Server::start(&["--max-rooms-per-conn", "3"]);
    let mut v = server.viewer("collector");
    for room in ["r0", "r1", "r2"] {
        assert_eq!(v.join(room)["room"], room);
    }
    v.send_json(json!({"op": "join", "room": "r3", "ref": "fourth"}));
    let e = v.next_msg();
    assert_eq!(error_parts(&e), (&json!("error"), &json!("forbidden"), &json!("fourth"), &json!("r3")), "{e}");
    assert!(e["message"].as_str().is_some_and(|m| m.contains('3')), "the message names the limit: {e}");
    // The refused join left no trace: r3 is not joined, the three others still are.
    v.send_json(json!({"op": "leave", "room": "r3", "ref": "not-in"}));
    assert_eq!(v.next_msg()["code"], "not_joined");
    v.send_json(json!({"op": "leave", "room": "r0"}));
    assert_eq!(v.next_msg(), json!({"op": "left", "room": "r0"}));
    assert_eq!(v.join("r3")["room"], "r3", "a room left makes room for another");
    let mut up = server.upstream();
    assert_eq!(
        up.call(json!({"op": "publish", "rooms": ["r0", "r1", "r2", "r3"], "type": "t", "data": 1}))["ok"],
        true
    );
    let rooms: std::collections::BTreeSet<String> =
        (0..3).map(|_| v.until_op("event")["room"].as_str().expect("room").to_owned()).collect();
    assert_eq!(rooms, ["r1", "r2", "r3"].map(String::from).into(), "delivered to the joined rooms only");
}

#[test]
fn an_object_or_array_ref_comes_back_as_null() {
    // docs/protocol.md: a `ref` is a string, number or boolean; an object or array `ref` is
    // dropped, and an `ack` then says "ref":null.
    let server = Server::start(&[]);
    let mut v = server.viewer("struct");
    v.join("r");
    for reference in [json!({"id": 1, "tag": "x"}), json!([1, "two"]), json!([]), json!({})] {
        v.send_json(json!({"op": "comment", "room": "r", "text": "hi", "ref": reference}));
        let ev = v.until_op("event");
        let ack = v.until_op("ack");
        let fields = ack.as_object().unwrap_or_else(|| panic!("ack is an object: {ack}"));
        assert_eq!(fields.get("ref"), Some(&serde_json::Value::Null), "ref {reference}: {ack}");
        assert_eq!(ack["seq"], ev["seq"], "ref {reference}: the comment was still taken: {ack}");
        v.send_json(json!({"op": "ping", "ref": reference}));
        let pong = v.next_msg();
        assert_eq!(pong["op"], "pong");
        assert!(pong.get("ref").is_none_or(serde_json::Value::is_null), "ref {reference} is not echoed: {pong}");
    }
}

#[test]
fn a_custom_ws_path_serves_the_upgrade_there_and_refuses_slash_ws_with_404() {
    // README: `ws.path` is the upgrade path of ws and wss; docs/protocol.md: another path is 404.
    let server = Server::start_tls(&["--ws-path", "/live/socket"]);
    let stream = std::net::TcpStream::connect(&server.ws).expect("connect");
    stream.set_read_timeout(Some(support::WAIT)).expect("timeout");
    let (ws, response) = tungstenite::client(
        format!("ws://{}/live/socket?user=pathy", server.ws),
        tungstenite::stream::MaybeTlsStream::Plain(stream),
    )
    .expect("upgrade");
    assert_eq!(response.status(), 101);
    let mut plain = support::Viewer { ws };
    assert_eq!(plain.expect_hello()["user"], "pathy");
    assert_eq!(plain.join("p")["room"], "p");

    let tls_url = |path: &str| {
        let port = server.wss.as_deref().and_then(|a| a.rsplit(':').next()).expect("wss port");
        format!("wss://localhost:{port}{path}?user=tls-pathy")
    };
    // The upgraded viewer, or the HTTP status the upgrade was refused with.
    let tls_connect = |path: &str| -> Result<support::Viewer, u16> {
        let stream = std::net::TcpStream::connect(server.wss.as_deref().expect("wss")).expect("connect wss");
        stream.set_read_timeout(Some(support::WAIT)).expect("timeout");
        let config = support::client_tls_config(server.cert_pem.as_deref().expect("cert"), &[]);
        let connector = Some(tungstenite::Connector::Rustls(config));
        match tungstenite::client_tls_with_config(tls_url(path), stream, None, connector) {
            Ok((ws, response)) => {
                assert_eq!(response.status(), 101, "wss {path}");
                Ok(support::Viewer { ws })
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("wss {path}: neither upgraded nor refused with an HTTP status: {e}"),
        }
    };
    let mut tls = tls_connect("/live/socket").expect("wss upgrade on the custom path");
    assert_eq!(tls.expect_hello()["user"], "tls-pathy");
    assert_eq!(tls.join("p")["room"], "p");

    let head =
        raw_upgrade(&server, &format!("GET /ws?user=h HTTP/1.1\r\n{UPGRADE_HEADERS}Sec-WebSocket-Version: 13\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 404"), "/ws is not the upgrade path here: {head}");
    assert_eq!(tls_connect("/ws").err(), Some(404), "wss /ws is refused with 404 too");
    // Both viewers on the custom path are served as usual.
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "p", "type": "t", "data": "here"}))["seq"], 1);
    for v in [&mut plain, &mut tls] {
        assert_eq!(v.until_op("event")["data"], "here");
    }
}
