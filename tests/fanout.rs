//! Fan-out over real sockets: many viewers spread over many rooms (and, with 2 workers, over
//! both workers), plain and TLS, each receive every event published to their room exactly
//! once, in seq order, without gaps; the ingest replies to a pipelined batch come back in
//! command order carrying each room's seq.
//!
//! "Exactly once" without waiting for silence: after the events under test, every room gets
//! one `end` event. A viewer must see seqs 1..=N in order and then `end` at N+1, so a
//! duplicate, a gap or a reordering before the marker fails the check.

mod support;

use serde_json::{json, Value};
use std::sync::mpsc;
use std::time::Instant;
use support::{ndjson, Crowd, Server, WAIT};

/// What one fan-out run looks like.
struct Plan {
    viewers: usize,
    rooms: usize,
    events_per_room: u64,
    client_threads: usize,
    tls: bool,
}

fn room_of(viewer: usize, rooms: usize) -> String {
    format!("room-{}", viewer % rooms)
}

/// One client thread: connect `ids`, join each to its room, report "joined" on `joined_tx`,
/// then read until every member saw its room's `end` marker, checking the sequence.
fn client_thread(server: &Server, plan: &Plan, ids: Vec<usize>, joined_tx: mpsc::Sender<usize>) {
    let deadline = Instant::now() + WAIT;
    let mut crowd = Crowd::new();
    for &id in &ids {
        let user = format!("u{id}");
        let mut v = if plan.tls { server.tls_viewer(&user) } else { server.viewer(&user) };
        v.send_json(json!({"op": "join", "room": room_of(id, plan.rooms)}));
        crowd.add(v);
    }
    crowd.pump(deadline, "joined", |i, msg| {
        if msg["op"] != "joined" {
            return false;
        }
        let id = ids[i];
        assert_eq!(msg["room"], room_of(id, plan.rooms), "viewer u{id}: joined names the room");
        assert_eq!(msg["seq"], 0, "viewer u{id}: a room nobody published to has latest seq 0");
        true
    });
    joined_tx.send(ids.len()).expect("main thread waits for joins");

    let end_seq = plan.events_per_room + 1;
    let mut next_seq = vec![1u64; ids.len()];
    crowd.pump(deadline, "every event and the end marker", |i, msg| {
        let id = ids[i];
        match msg["op"].as_str() {
            Some("event") => {}
            Some("presence" | "reactions" | "pong") => return false,
            other => panic!("viewer u{id}: unexpected message {other:?}: {msg}"),
        }
        assert_eq!(msg["room"], room_of(id, plan.rooms), "viewer u{id}: event from its own room only");
        let seq = msg["seq"].as_u64().unwrap_or_else(|| panic!("viewer u{id}: event without seq: {msg}"));
        assert_eq!(seq, next_seq[i], "viewer u{id}: events arrive once each, in seq order, without gaps");
        assert!(seq <= end_seq, "viewer u{id}: event after the end marker: {msg}");
        next_seq[i] += 1;
        assert!(msg["ts"].is_u64(), "viewer u{id}: event carries ts in ms: {msg}");
        if seq == end_seq {
            assert_eq!(msg["type"], "end", "viewer u{id}: the last seq is the end marker");
            true
        } else {
            assert_eq!(msg["type"], "tick", "viewer u{id}: {msg}");
            assert_eq!(msg["data"], json!({"n": seq - 1, "room": room_of(id, plan.rooms)}), "viewer u{id}");
            false
        }
    });
}

fn fan_out(server: &Server, plan: &Plan) {
    assert!(plan.viewers >= plan.rooms, "every room has a member");
    let (joined_tx, joined_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..plan.client_threads)
            .map(|t| {
                let ids: Vec<usize> = (t..plan.viewers).step_by(plan.client_threads).collect();
                let tx = joined_tx.clone();
                scope.spawn(move || client_thread(server, plan, ids, tx))
            })
            .collect();
        drop(joined_tx);

        let deadline = Instant::now() + WAIT;
        let mut joined = 0;
        while joined < plan.viewers {
            let left = deadline.saturating_duration_since(Instant::now());
            match joined_rx.recv_timeout(left) {
                Ok(n) => joined += n,
                Err(e) => panic!("only {joined} of {} viewers joined ({e})", plan.viewers),
            }
        }

        // Round-robin over rooms so consecutive commands hit different rooms and workers.
        let mut commands: Vec<Value> = Vec::new();
        for n in 0..plan.events_per_room {
            for r in 0..plan.rooms {
                let room = format!("room-{r}");
                commands.push(json!({"op": "publish", "room": room, "type": "tick", "data": {"n": n, "room": room}}));
            }
        }
        for r in 0..plan.rooms {
            commands.push(json!({"op": "publish", "room": format!("room-{r}"), "type": "end", "data": null}));
        }
        let mut up = server.upstream();
        up.send_raw(ndjson(&commands).as_bytes());
        for (k, command) in commands.iter().enumerate() {
            let expected_seq = (k / plan.rooms) as u64 + 1;
            assert_eq!(
                up.reply(),
                json!({"ok": true, "seq": expected_seq}),
                "reply {k} (to {command}) is in command order with the room's next seq"
            );
        }

        for (t, h) in handles.into_iter().enumerate() {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(Box::new(format!("client thread {t} failed: {:?}", panic_text(&panic))));
            }
        }
    });
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

#[test]
fn a_thousand_plain_viewers_over_twenty_rooms_get_every_event_once_in_order() {
    let server = Server::start(&[]);
    fan_out(&server, &Plan { viewers: 1000, rooms: 20, events_per_room: 50, client_threads: 4, tls: false });
}

#[test]
fn two_hundred_tls_viewers_over_five_rooms_get_every_event_once_in_order() {
    let server = Server::start_tls(&[]);
    fan_out(&server, &Plan { viewers: 200, rooms: 5, events_per_room: 50, client_threads: 2, tls: true });
}

#[test]
fn plain_and_tls_viewers_in_the_same_room_see_the_same_sequence() {
    let server = Server::start_tls(&[]);
    let mut plain = server.viewer("plain");
    let mut tls = server.tls_viewer("tls");
    assert_eq!(plain.join("mixed")["seq"], 0);
    assert_eq!(tls.join("mixed")["seq"], 0);
    let commands: Vec<Value> =
        (0..100).map(|i| json!({"op": "publish", "room": "mixed", "type": "t", "data": {"i": i}})).collect();
    let mut up = server.upstream();
    up.send_raw(ndjson(&commands).as_bytes());
    for i in 1..=100u64 {
        assert_eq!(up.reply()["seq"], i);
    }
    for v in [&mut plain, &mut tls] {
        for i in 1..=100u64 {
            let ev = v.until_op("event");
            assert_eq!((ev["seq"].as_u64(), &ev["data"]), (Some(i), &json!({"i": i - 1})));
        }
    }
}
