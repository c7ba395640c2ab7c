//! Fan-out over real sockets: many viewers over many rooms and both workers, plain and TLS,
//! each receive every published event of their room exactly once, in seq order.

mod support;

use serde_json::json;
use support::{Server, Viewer};

/// Join `viewers[i]` to `rooms[i % rooms]`, publish `per_room` events to every room through one
/// pipelined ingest connection, and check what every viewer got.
fn fan_out(server: &Server, mut viewers: Vec<Viewer>, rooms: usize, per_room: u64) {
    for (i, v) in viewers.iter_mut().enumerate() {
        let joined = v.join(&format!("room-{}", i % rooms));
        assert_eq!(joined["seq"], 0);
    }
    let mut up = server.upstream();
    let mut batch = String::new();
    for n in 0..per_room {
        for r in 0..rooms {
            batch.push_str(
                &json!({"op": "publish", "room": format!("room-{r}"), "type": "tick", "data": {"n": n}}).to_string(),
            );
            batch.push('\n');
        }
    }
    up.send_raw(batch.as_bytes());
    for n in 0..per_room {
        for _ in 0..rooms {
            let reply = up.reply();
            assert_eq!(reply["ok"], true);
            assert_eq!(reply["seq"], n + 1, "replies come in command order with the room's seq");
        }
    }
    for (i, v) in viewers.iter_mut().enumerate() {
        let room = format!("room-{}", i % rooms);
        for n in 0..per_room {
            let ev = v.until_op("event");
            assert_eq!(ev["room"], room.as_str());
            assert_eq!(ev["seq"], n + 1, "viewer {i}: gap-free seq order");
            assert_eq!(ev["data"]["n"], n);
            assert_eq!(ev["type"], "tick");
        }
    }
}

#[test]
fn a_thousand_plain_viewers_over_twenty_rooms_get_every_event_once_in_order() {
    let server = Server::start(&[]);
    let viewers: Vec<Viewer> = (0..1000).map(|i| server.viewer(&format!("v{i}"))).collect();
    fan_out(&server, viewers, 20, 50);
}

#[test]
fn two_hundred_tls_viewers_over_five_rooms_get_every_event_once_in_order() {
    let server = Server::start_tls(&[]);
    let viewers: Vec<Viewer> = (0..200).map(|i| server.tls_viewer(&format!("t{i}"))).collect();
    fan_out(&server, viewers, 5, 50);
}
