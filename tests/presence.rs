//! Presence, recovery and upstream moderation over real sockets: reconnect with `since`
//! recovers exactly the missed events (of several rooms at once, too), a wrong epoch or
//! too-old position recovers nothing, a position beyond the latest seq has nothing to miss,
//! epochs are lowercase hex and new after a restart,
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
    let server = Server::start(&["--heartbeat-ms", "200", "--heartbeat-timeout-ms", "3000"]);
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

#[test]
fn a_since_beyond_the_latest_seq_recovers_nothing_missed_and_live_events_follow() {
    // docs/protocol.md "Order, seq and recovery": a `since` at or beyond the room's latest
    // seq in the current epoch replays nothing and answers `recovered: true`.
    let server = Server::start(&[]);
    let mut up = server.upstream();
    for i in 1..=3 {
        assert_eq!(up.call(json!({"op": "publish", "room": "ahead", "type": "t", "data": i}))["seq"], i);
    }
    let mut first = server.viewer("first");
    let epoch = first.join("ahead")["epoch"].clone();
    let mut v = server.viewer("ahead-of-time");
    v.send_json(json!({"op": "join", "room": "ahead", "since": 10, "epoch": epoch, "ref": "far"}));
    let joined = v.next_msg();
    assert_eq!(
        (&joined["op"], &joined["recovered"], &joined["seq"], &joined["epoch"], &joined["ref"]),
        (&json!("joined"), &json!(true), &json!(3), &epoch, &json!("far")),
        "nothing replayed, nothing to miss: {joined}"
    );
    // The next event is delivered, although its seq is below the `since` sent.
    assert_eq!(up.call(json!({"op": "publish", "room": "ahead", "type": "t", "data": 4}))["seq"], 4);
    let ev = v.next_msg();
    assert_eq!((&ev["op"], &ev["seq"], &ev["data"]), (&json!("event"), &json!(4), &json!(4)), "{ev}");
}

#[test]
fn one_connection_recovers_several_rooms_at_once() {
    let server = Server::start(&[]);
    let mut up = server.upstream();
    let rooms = ["news", "sport", "weather"];
    let mut v = server.viewer("multi");
    let mut position = std::collections::BTreeMap::new();
    for room in rooms {
        let epoch = v.join(room)["epoch"].clone();
        position.insert(room, (0u64, epoch));
    }
    assert_eq!(
        up.call(json!({"op": "publish", "rooms": rooms, "type": "t", "data": "seen"}))["seqs"],
        json!([1, 1, 1])
    );
    for _ in rooms {
        let ev = v.until_op("event");
        let room = ev["room"].as_str().expect("room");
        position.get_mut(room).expect("a joined room").0 = ev["seq"].as_u64().expect("seq");
    }
    assert!(position.values().all(|(seq, _)| *seq == 1), "{position:?}");
    drop(v);
    // While it is away: three events in news, none in sport, one in weather.
    let missed = [("news", 3u64), ("sport", 0), ("weather", 1)];
    for (room, n) in missed {
        for i in 0..n {
            assert_eq!(up.call(json!({"op": "publish", "room": room, "type": "t", "data": i}))["seq"], i + 2);
        }
    }
    let mut back = server.viewer("multi");
    // Every join goes out before any answer is read.
    for room in rooms {
        let (since, epoch) = &position[room];
        back.send_json(json!({"op": "join", "room": room, "since": since, "epoch": epoch}));
    }
    let mut replayed: std::collections::BTreeMap<&str, Vec<u64>> = rooms.iter().map(|r| (*r, Vec::new())).collect();
    let mut joined = std::collections::BTreeMap::new();
    while joined.len() < rooms.len() {
        let m = back.next_msg();
        let room =
            rooms.into_iter().find(|r| m["room"] == *r).unwrap_or_else(|| panic!("a message of another room: {m}"));
        match m["op"].as_str() {
            Some("event") => {
                assert!(!joined.contains_key(room), "{room}: an event after its joined: {m}");
                replayed.get_mut(room).expect("room").push(m["seq"].as_u64().expect("seq"));
            }
            Some("joined") => assert!(joined.insert(room, m.clone()).is_none(), "{room} joined twice: {m}"),
            _ => panic!("unexpected message while recovering: {m}"),
        }
    }
    for (room, n) in missed {
        let want: Vec<u64> = (2..2 + n).collect();
        assert_eq!(replayed[room], want, "{room}: exactly the missed events, in order");
        let j = &joined[room];
        assert_eq!(
            (&j["recovered"], &j["seq"], &j["epoch"]),
            (&json!(true), &json!(1 + n), &position[room].1),
            "{room}: {j}"
        );
    }
}

/// Whether `epoch` is a non-empty lowercase hex string.
fn is_lowercase_hex(epoch: &serde_json::Value) -> bool {
    epoch.as_str().is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[test]
fn epochs_are_lowercase_hex_and_new_after_a_restart() {
    // docs/protocol.md: an epoch is a lowercase hex string, new whenever the room's history
    // was lost, as at a restart. The restart keeps the data directory.
    let data = support::temp_dir("restart");
    let dir = data.display().to_string();
    let first_epochs: Vec<serde_json::Value> = {
        let mut server = Server::start(&["--sink-dir", &dir]);
        let mut v = server.viewer("e");
        let epochs: Vec<_> = ["e1", "e2", "e3"].iter().map(|room| v.join(room)["epoch"].clone()).collect();
        let mut up = server.upstream();
        assert_eq!(up.call(json!({"op": "publish", "room": "e1", "type": "t", "data": 1}))["seq"], 1);
        assert_eq!(v.until_op("event")["seq"], 1);
        assert!(server.terminate().success(), "a clean shutdown");
        epochs
    };
    for epoch in &first_epochs {
        assert!(is_lowercase_hex(epoch), "{epoch} is lowercase hex");
    }
    let server = Server::start(&["--sink-dir", &dir]);
    let mut v = server.viewer("e");
    v.send_json(json!({"op": "join", "room": "e1", "since": 1, "epoch": first_epochs[0]}));
    let joined = v.until_op("joined");
    assert!(is_lowercase_hex(&joined["epoch"]), "{joined}");
    assert_ne!(joined["epoch"], first_epochs[0], "a new epoch after the restart");
    assert_eq!((&joined["recovered"], &joined["seq"]), (&json!(false), &json!(0)), "the old position recovers nothing");
    for (room, old) in ["e2", "e3"].iter().zip(&first_epochs[1..]) {
        let epoch = v.join(room)["epoch"].clone();
        assert!(is_lowercase_hex(&epoch), "{epoch}");
        assert_ne!(&epoch, old, "{room}: a new epoch after the restart");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}
