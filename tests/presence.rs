//! Presence, recovery and upstream moderation over real sockets: reconnect with `since`
//! recovers exactly the missed events, a wrong epoch or too-old position recovers nothing,
//! `online` drops after a disconnect, silent connections are closed, kick closes with 4010.

mod support;

use serde_json::json;
use support::Server;

#[test]
fn reconnect_with_since_recovers_exactly_the_missed_events() {
    let server = Server::start(&[]);
    let mut up = server.upstream();
    let mut v = server.viewer("rita");
    let joined = v.join("news");
    let epoch = joined["epoch"].clone();
    for i in 1..=3 {
        up.call(json!({"op": "publish", "room": "news", "type": "t", "data": i}));
    }
    let mut seen = 0;
    for _ in 0..3 {
        seen = v.until_op("event")["seq"].as_u64().expect("seq");
    }
    drop(v);
    for i in 4..=7 {
        up.call(json!({"op": "publish", "room": "news", "type": "t", "data": i}));
    }
    let mut back = server.viewer("rita");
    back.send_json(json!({"op": "join", "room": "news", "since": seen, "epoch": epoch}));
    let replayed: Vec<u64> = (0..4).map(|_| back.next_msg()["seq"].as_u64().expect("replayed event")).collect();
    assert_eq!(replayed, [4, 5, 6, 7]);
    let joined = back.next_msg();
    assert_eq!(
        (joined["op"].as_str(), &joined["recovered"], &joined["seq"]),
        (Some("joined"), &json!(true), &json!(7))
    );
}

#[test]
fn wrong_epoch_or_too_old_position_recovers_nothing() {
    let server = Server::start(&["--history-size", "4"]);
    let mut up = server.upstream();
    for i in 1..=10 {
        up.call(json!({"op": "publish", "room": "r", "type": "t", "data": i}));
    }
    let mut v = server.viewer("x");
    v.send_json(json!({"op": "join", "room": "r", "since": 8, "epoch": "not-the-epoch"}));
    let joined = v.next_msg();
    assert_eq!(
        (joined["op"].as_str(), &joined["recovered"]),
        (Some("joined"), &json!(false)),
        "nothing replayed first"
    );
    let epoch = joined["epoch"].clone();
    let mut w = server.viewer("y");
    w.send_json(json!({"op": "join", "room": "r", "since": 2, "epoch": epoch}));
    let joined = w.next_msg();
    assert_eq!((joined["op"].as_str(), &joined["recovered"]), (Some("joined"), &json!(false)));
    w.send_json(json!({"op": "leave", "room": "r"}));
    w.next_msg();
    w.send_json(json!({"op": "join", "room": "r", "since": 7, "epoch": epoch}));
    assert_eq!(w.next_msg()["seq"], 8, "inside the ring: replayed");
}

#[test]
fn online_drops_after_a_viewer_disconnects() {
    let server = Server::start(&["--presence-interval-ms", "200"]);
    let mut watcher = server.viewer("watcher");
    watcher.join("stage");
    let mut guest = server.viewer("guest");
    guest.join("stage");
    // Presence is coalesced per interval: a tick may fall between the two joins and report
    // the watcher alone first.
    let mut p = watcher.until_op("presence");
    while p["online"] == 1 {
        p = watcher.until_op("presence");
    }
    assert_eq!(p["online"], 2);
    drop(guest);
    let p = watcher.until_op("presence");
    assert_eq!(p["online"], 1);
    assert_eq!(p["left"], json!([{"user": "guest", "name": "guest"}]));
}

#[test]
fn a_silent_connection_is_closed_after_the_heartbeat_timeout() {
    let server = Server::start(&["--heartbeat-ms", "200", "--heartbeat-timeout-ms", "500"]);
    // Silent means it answers nothing, not even the server's pings (which every conforming
    // client answers by itself).
    let mut quiet = server.deaf_viewer("quiet");
    let (code, pings) = quiet.close_code();
    assert_eq!(code, Some(1001));
    assert_eq!(pings, 1, "pinged once after heartbeat_ms of silence, then closed");
}

#[test]
fn kick_closes_every_connection_of_the_user_with_4010() {
    let server = Server::start(&[]);
    let mut tabs = [server.viewer("troll"), server.viewer("troll")];
    let mut other = server.viewer("nice");
    for t in &mut tabs {
        t.join("r");
    }
    other.join("r");
    let mut up = server.upstream();
    let reply = up.call(json!({"op": "kick", "user": "troll", "room": "r"}));
    assert_eq!(reply, json!({"ok": true, "closed": 2}));
    for t in &mut tabs {
        let left = t.until_op("left");
        assert_eq!((left["room"].as_str(), left["reason"].as_str()), (Some("r"), Some("kicked")));
    }
    assert_eq!(up.call(json!({"op": "kick", "user": "troll"})), json!({"ok": true, "closed": 2}));
    for t in &mut tabs {
        assert_eq!(t.close_code(), Some(4010));
    }
    other.send_json(json!({"op": "ping"}));
    assert_eq!(other.until_op("pong")["op"], "pong");
}

#[test]
fn close_room_sends_left_closed_to_members() {
    let server = Server::start(&[]);
    let mut v = server.viewer("m");
    v.join("gone");
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "close_room", "room": "gone"})), json!({"ok": true}));
    let left = v.until_op("left");
    assert_eq!(left["reason"], "closed");
}
