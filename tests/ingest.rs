//! The ingest socket: replies in command order, errors that keep the connection, multi-room
//! publishes, state, acks off, and thousands of pipelined commands.

mod support;

use serde_json::{json, Value};
use support::{ndjson, Server};

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
            let m = v.next_msg();
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
        let reply: Value = serde_json::from_str(&line).expect("json");
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

// ---- Added by the integration-test pass. ----

#[test]
fn pipelined_bad_lines_get_errors_in_order_and_consume_no_seq() {
    let server = Server::start(&[]);
    let mut v = server.viewer("watch");
    v.join("r");
    let mut up = server.upstream();
    // Each bad line with its error code and a word its message must name (PROTOCOL.md: messages
    // say what was wrong, never a parser's internal state).
    let bad: [(String, &str, &str); 9] = [
        ("not json".into(), "bad_request", "JSON"),
        ("[]".into(), "bad_request", "one JSON object"),
        (json!({"op": "publish", "type": "t", "data": 0}).to_string(), "bad_request", "`room`"),
        (json!({"op": "publish", "room": "r", "type": 5, "data": 0}).to_string(), "bad_request", "`type`"),
        (json!({"op": "state", "room": "r", "state": "not an object"}).to_string(), "bad_request", "`state`"),
        (json!({"op": "warp", "room": "r"}).to_string(), "unknown_op", "warp"),
        (json!({"op": "publish", "rooms": [], "type": "t"}).to_string(), "bad_request", "rooms"),
        (json!({"op": "publish", "room": "r", "rooms": ["r"], "type": "t"}).to_string(), "bad_request", "not both"),
        (json!({"op": "publish", "room": "", "type": "t"}).to_string(), "bad_request", "room name"),
    ];
    let first = json!({"op": "publish", "room": "r", "type": "t", "data": 1}).to_string();
    let last = json!({"op": "publish", "room": "r", "type": "t", "data": 2}).to_string();
    let lines: Vec<&str> =
        std::iter::once(first.as_str()).chain(bad.iter().map(|(l, ..)| l.as_str())).chain([last.as_str()]).collect();
    up.send_raw(format!("{}\n", lines.join("\n")).as_bytes());
    assert_eq!(up.reply(), json!({"ok": true, "seq": 1}), "reply to {first}");
    for (line, code, names) in &bad {
        let e = up.reply();
        let fields: Vec<&String> = e.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        assert_eq!(fields, ["error", "message", "ok"], "reply to {line} is {{ok, error, message}}: {e}");
        assert_eq!((&e["ok"], e["error"].as_str()), (&json!(false), Some(*code)), "reply to {line}: {e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "reply to {line} names {names:?}: {e}");
        assert!(!message.contains("RawLine") && !message.contains("struct"), "a parser's internals: {e}");
    }
    assert_eq!(up.reply(), json!({"ok": true, "seq": 2}), "failed commands consumed no seq");
    let got: Vec<Value> = (0..2).map(|_| v.until_op("event")["data"].clone()).collect();
    assert_eq!(got, [json!(1), json!(2)]);
}

#[test]
fn ack_false_on_one_command_silences_only_that_reply() {
    let server = Server::start(&[]);
    let mut up = server.upstream();
    up.send_line(&json!({"op": "publish", "room": "r", "type": "t", "ack": false}).to_string());
    up.send_line(&json!({"op": "publish", "room": "r", "type": "t"}).to_string());
    assert_eq!(up.reply(), json!({"ok": true, "seq": 2}), "the first reply belongs to the second command");
}

#[test]
fn a_multi_room_publish_reaches_the_members_of_each_room_with_its_seq() {
    let server = Server::start(&[]);
    let mut a = server.viewer("a");
    let mut b = server.viewer("b");
    let mut both = server.viewer("both");
    a.join("ra");
    b.join("rb");
    both.join("ra");
    both.join("rb");
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "rb", "type": "warm"}))["seq"], 1);
    let reply = up.call(json!({"op": "publish", "rooms": ["ra", "rb"], "type": "news", "data": {"x": 1}}));
    assert_eq!(reply, json!({"ok": true, "seqs": [1, 2]}));
    let ev = a.until_op("event");
    assert_eq!(
        (&ev["room"], &ev["seq"], &ev["type"], &ev["data"]),
        (&json!("ra"), &json!(1), &json!("news"), &json!({"x": 1}))
    );
    assert_eq!(b.until_op("event")["seq"], 1);
    let ev = b.until_op("event");
    assert_eq!((&ev["room"], &ev["seq"], &ev["type"]), (&json!("rb"), &json!(2), &json!("news")));
    let mut seen: Vec<(Value, Value)> =
        (0..3).map(|_| both.until_op("event")).map(|e| (e["room"].clone(), e["seq"].clone())).collect();
    seen.sort_by_key(|(room, seq)| (room.to_string(), seq.as_u64()));
    assert_eq!(seen, [(json!("ra"), json!(1)), (json!("rb"), json!(1)), (json!("rb"), json!(2))]);
}

#[test]
fn state_messages_carry_seq_version_and_state_and_versions_grow() {
    let server = Server::start(&[]);
    let mut v = server.viewer("m");
    v.join("s");
    let mut up = server.upstream();
    let commands = [
        json!({"op": "state", "room": "s", "state": {"round": 1}}),
        json!({"op": "publish", "room": "s", "type": "t", "data": "between"}),
        json!({"op": "state", "room": "s", "state": {"round": 2, "extra": [true]}}),
    ];
    up.send_raw(ndjson(&commands).as_bytes());
    assert_eq!(up.reply(), json!({"ok": true, "seq": 1, "version": 1}));
    assert_eq!(up.reply(), json!({"ok": true, "seq": 2}));
    assert_eq!(up.reply(), json!({"ok": true, "seq": 3, "version": 2}));
    let m = v.next_msg();
    assert_eq!(m, json!({"op": "state", "room": "s", "seq": 1, "version": 1, "state": {"round": 1}}));
    let m = v.next_msg();
    assert_eq!((&m["op"], &m["seq"]), (&json!("event"), &json!(2)));
    let m = v.next_msg();
    assert_eq!(m, json!({"op": "state", "room": "s", "seq": 3, "version": 2, "state": {"round": 2, "extra": [true]}}));
    let mut late = server.viewer("late");
    let joined = late.join("s");
    assert_eq!((&joined["seq"], &joined["state"]), (&json!(3), &json!({"round": 2, "extra": [true]})));
}

#[test]
fn a_command_split_across_writes_is_one_command() {
    let server = Server::start(&[]);
    let mut v = server.viewer("check");
    v.join("r");
    let mut up = server.upstream();
    let line = format!("{}\n", json!({"op": "publish", "room": "r", "type": "t", "data": "ünïcode"}));
    let bytes = line.as_bytes();
    let cut = line.find('ü').expect("ü") + 1; // inside a two-byte character
    up.send_raw(&bytes[..cut]);
    up.send_raw(&bytes[cut..]);
    assert_eq!(up.reply(), json!({"ok": true, "seq": 1}));
    assert_eq!(v.until_op("event")["data"], "ünïcode", "the event carries the reassembled text");
}

#[test]
fn two_upstreams_publishing_into_one_room_get_distinct_seqs_matching_what_members_see() {
    const PER_UPSTREAM: usize = 2000;
    let server = Server::start(&[]);
    let mut v = server.viewer("judge");
    v.join("shared");
    let results: Vec<Vec<(u64, Value)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["left", "right"]
            .into_iter()
            .map(|who| {
                let server = &server;
                scope.spawn(move || {
                    let (mut replies, mut writer) = server.upstream().into_split();
                    let commands: Vec<Value> = (0..PER_UPSTREAM)
                        .map(|i| json!({"op": "publish", "room": "shared", "type": "t", "data": {"from": who, "i": i}}))
                        .collect();
                    let batch = ndjson(&commands);
                    let writer_thread = std::thread::spawn(move || {
                        std::io::Write::write_all(&mut writer, batch.as_bytes()).expect("pipelined write");
                        writer
                    });
                    let acked: Vec<(u64, Value)> = commands
                        .iter()
                        .map(|c| {
                            let mut line = String::new();
                            std::io::BufRead::read_line(&mut replies, &mut line).expect("reply");
                            let reply: Value = serde_json::from_str(&line).expect("json reply");
                            assert_eq!(reply["ok"], true, "{reply}");
                            (reply["seq"].as_u64().expect("seq"), c["data"].clone())
                        })
                        .collect();
                    let _writer = writer_thread.join().expect("writer thread");
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("upstream thread")).collect()
    });
    for acked in &results {
        assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "one connection's seqs grow in command order");
    }
    let mut by_seq: Vec<(u64, Value)> = results.into_iter().flatten().collect();
    by_seq.sort_by_key(|(seq, _)| *seq);
    let seqs: Vec<u64> = by_seq.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=2 * PER_UPSTREAM as u64).collect::<Vec<_>>(), "together the seqs are 1..=N, no repeats");
    for (seq, data) in &by_seq {
        let ev = v.until_op("event");
        assert_eq!(
            (&ev["seq"].as_u64(), &ev["data"]),
            (&Some(*seq), data),
            "the member sees seq {seq} with its command's data"
        );
    }
}

#[test]
fn with_a_token_configured_commands_need_auth_first_and_a_failed_auth_closes() {
    let server = Server::start(&["--ingest-token", "s3cret"]);
    // PROTOCOL.md: auth is "required first" and a failed auth closes; docs/protocol.md: "any
    // first command other than a valid auth is answered unauthorized and the connection is
    // closed". The line after it must not be applied (nothing is published below).
    let mut early = server.upstream();
    // Both lines in one write: the server may close as soon as it has read the first.
    let publish = json!({"op": "publish", "room": "r", "type": "t"});
    let auth = json!({"op": "auth", "token": "s3cret"});
    early.send_raw(format!("{publish}\n{auth}\n").as_bytes());
    let e = early.reply();
    assert_eq!((&e["ok"], &e["error"]), (&json!(false), &json!("unauthorized")), "{e}");
    assert!(early.is_closed(), "a command before auth closes the connection after its refusal");

    let mut intruder = server.upstream();
    let e = intruder.call(json!({"op": "auth", "token": "guess"}));
    assert_eq!((&e["ok"], &e["error"]), (&json!(false), &json!("unauthorized")), "{e}");
    assert!(intruder.is_closed(), "a failed auth closes the connection");

    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "auth", "token": "s3cret"})), json!({"ok": true}));
    assert_eq!(
        up.call(json!({"op": "publish", "room": "r", "type": "t"})),
        json!({"ok": true, "seq": 1}),
        "nothing was published before"
    );
}

#[test]
fn after_close_room_a_seq_never_repeats_within_an_epoch() {
    let server = Server::start(&[]);
    let mut v = server.viewer("m");
    let first = v.join("c");
    let mut up = server.upstream();
    for seq in 1..=3 {
        assert_eq!(up.call(json!({"op": "publish", "room": "c", "type": "t"}))["seq"], seq);
    }
    assert_eq!(up.call(json!({"op": "close_room", "room": "c", "reason": "over"})), json!({"ok": true}));
    let left = v.until_op("left");
    assert_eq!((&left["room"], &left["reason"]), (&json!("c"), &json!("closed")));
    let again = v.join("c");
    let reply = up.call(json!({"op": "publish", "room": "c", "type": "t"}));
    // docs/protocol.md: after close_room "the room's history and state are gone (a new epoch
    // next time)", so the seqs start over in a new epoch and never repeat within one.
    assert_ne!(again["epoch"], first["epoch"], "a closed room comes back in a new epoch");
    assert_eq!((&again["seq"], &again["state"]), (&json!(0), &Value::Null), "nothing survives the close: {again}");
    assert_eq!(reply, json!({"ok": true, "seq": 1}), "the new epoch counts from 1");
    let mut back = server.viewer("back");
    back.send_json(json!({"op": "join", "room": "c", "since": 3, "epoch": first["epoch"]}));
    let joined = back.until_op("joined");
    assert_eq!(
        (&joined["recovered"], &joined["epoch"], &joined["seq"]),
        (&json!(false), &again["epoch"], &json!(1)),
        "the old epoch is gone: a client that saw it reloads: {joined}"
    );
}
