//! The ingest socket: replies in command order, errors that keep the connection, multi-room
//! publishes, state, acks off, and thousands of pipelined commands.

mod support;

use serde_json::json;
use support::Server;

#[test]
fn a_bad_line_gets_ok_false_and_the_next_line_works() {
    let server = Server::start(&[]);
    let mut up = server.upstream();
    up.send_line("this is not json");
    let e = up.reply();
    assert_eq!(e["ok"], false);
    assert_eq!(e["error"], "bad_request");
    assert!(e["message"].is_string());
    assert_eq!(up.call(json!({"op": "fly"}))["error"], "unknown_op");
    assert_eq!(up.call(json!({"op": "publish", "room": "r", "type": "t"})), json!({"ok": true, "seq": 1}));
}

#[test]
fn rooms_array_gets_one_seq_per_room() {
    let server = Server::start(&[]);
    let mut up = server.upstream();
    up.call(json!({"op": "publish", "room": "b", "type": "t"}));
    let reply = up.call(json!({"op": "publish", "rooms": ["a", "b", "c"], "type": "t", "data": null}));
    assert_eq!(reply, json!({"ok": true, "seqs": [1, 2, 1]}));
}

#[test]
fn state_is_sequenced_with_events_and_reaches_members_in_order() {
    let server = Server::start(&[]);
    let mut v = server.viewer("m");
    v.join("show");
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "show", "type": "t"}))["seq"], 1);
    assert_eq!(
        up.call(json!({"op": "state", "room": "show", "state": {"phase": "live"}})),
        json!({"ok": true, "seq": 2, "version": 1})
    );
    assert_eq!(up.call(json!({"op": "publish", "room": "show", "type": "t"}))["seq"], 3);
    let got: Vec<(String, u64)> = (0..3)
        .map(|_| {
            let m = v.next_json();
            (m["op"].as_str().unwrap_or("").to_owned(), m["seq"].as_u64().unwrap_or(0))
        })
        .collect();
    assert_eq!(got, [("event".into(), 1), ("state".into(), 2), ("event".into(), 3)]);
    let mut late = server.viewer("late");
    let joined = late.join("show");
    assert_eq!(joined["state"], json!({"phase": "live"}));
    assert_eq!(joined["seq"], 3);
    assert_eq!(up.call(json!({"op": "state", "room": "show", "state": [1]}))["ok"], false);
}

#[test]
fn acks_off_suppresses_replies_but_not_errors() {
    let server = Server::start(&[]);
    let mut v = server.viewer("quiet");
    v.join("q");
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "hello", "acks": false})), json!({"ok": true}));
    up.send_line(&json!({"op": "publish", "room": "q", "type": "t"}).to_string());
    up.send_line("broken");
    assert_eq!(up.reply()["ok"], false, "the first reply is the error: the publish was silent");
    assert_eq!(v.until_op("event")["seq"], 1);
}

#[test]
fn ten_thousand_pipelined_publishes_are_acked_in_order_and_delivered() {
    let server = Server::start(&[]);
    let mut v = server.viewer("fan");
    v.join("firehose");
    let (mut replies, mut writer) = server.upstream().into_split();
    let sender = std::thread::spawn(move || {
        let mut batch = String::new();
        for i in 0..10_000 {
            batch.push_str(&json!({"op": "publish", "room": "firehose", "type": "t", "data": i}).to_string());
            batch.push('\n');
        }
        std::io::Write::write_all(&mut writer, batch.as_bytes()).expect("pipelined write");
        writer
    });
    for i in 1..=10_000u64 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut replies, &mut line).expect("reply");
        let reply: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(reply, json!({"ok": true, "seq": i}));
    }
    let _writer = sender.join().expect("writer");
    for i in 1..=10_000u64 {
        let ev = v.until_op("event");
        assert_eq!((ev["seq"].as_u64(), ev["data"].as_u64()), (Some(i), Some(i - 1)));
    }
}

#[test]
fn a_line_over_the_limit_closes_the_connection_with_an_error() {
    let server = Server::start(&["--ingest-max-line", "1024"]);
    let mut up = server.upstream();
    up.send_line(&format!("{{\"op\":\"publish\",\"room\":\"r\",\"type\":\"t\",\"data\":\"{}\"}}", "x".repeat(2000)));
    assert_eq!(up.reply()["error"], "too_large");
    assert!(up.is_closed());
}
