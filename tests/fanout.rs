//! Fan-out over real sockets: many viewers spread over many rooms (and, with 2 workers, over
//! both workers), plain and TLS, each receive every event published to their room exactly
//! once, in seq order, without gaps; the ingest replies to a pipelined batch come back in
//! command order carrying each room's seq.
//!
//! "Exactly once" without waiting for silence: after the events under test, every room gets
//! one `end` event. A viewer must see seqs 1..=N in order and then `end` at N+1, so a
//! duplicate, a gap or a reordering before the marker fails the check.

mod admin_support;
mod live_support;
mod support;

use serde_json::{json, Value};
use std::sync::mpsc;
use std::time::Instant;
use support::{ndjson, Crowd, Got, Server, WAIT};

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

/// What one member of the mixed room saw: events by seq, and (for a commenter) ref -> ack seq.
struct Seen {
    events: Vec<Value>,
    acks: Vec<(u64, u64)>,
}

#[test]
fn comments_from_both_workers_and_ingest_events_interleave_into_one_sequence_every_member_shares() {
    const COMMENTERS: usize = 4;
    const WATCHERS: usize = 2;
    const PER_SOURCE: u64 = 100;
    const TOTAL: u64 = (COMMENTERS as u64 + 1) * PER_SOURCE;
    // About ordering, not rate limits: each commenter sends its 100 comments at once.
    let server = Server::start(&[
        "--comment-rate",
        "100000",
        "--comment-burst",
        "100000",
        "--message-rate",
        "100000",
        "--message-burst",
        "100000",
    ]);
    let mut members: Vec<_> = (0..COMMENTERS + WATCHERS)
        .map(|i| {
            let mut v = server.viewer(&format!("m{i}"));
            v.join("mix");
            v
        })
        .collect();
    let seen: Vec<Seen> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .drain(..)
            .enumerate()
            .map(|(i, mut v)| {
                scope.spawn(move || {
                    let commenter = i < COMMENTERS;
                    if commenter {
                        for k in 0..PER_SOURCE {
                            v.send_json(json!({"op": "comment", "room": "mix", "text": format!("m{i}-{k}"), "ref": k}));
                        }
                    }
                    let mut seen = Seen { events: Vec::new(), acks: Vec::new() };
                    let acks_wanted = if commenter { PER_SOURCE as usize } else { 0 };
                    while seen.events.len() < TOTAL as usize || seen.acks.len() < acks_wanted {
                        let m = v.next_json();
                        match m["op"].as_str() {
                            Some("event") => seen.events.push(m),
                            Some("ack") => seen.acks.push((
                                m["ref"].as_u64().expect("numeric ref echoed"),
                                m["seq"].as_u64().expect("ack seq"),
                            )),
                            Some("presence" | "reactions") => {}
                            _ => panic!("member m{i}: unexpected {m}"),
                        }
                    }
                    seen
                })
            })
            .collect();
        let commands: Vec<Value> =
            (0..PER_SOURCE).map(|k| json!({"op": "publish", "room": "mix", "type": "up", "data": k})).collect();
        let mut up = server.upstream();
        up.send_raw(ndjson(&commands).as_bytes());
        let mut last = 0;
        for _ in 0..PER_SOURCE {
            let seq = up.reply()["seq"].as_u64().expect("publish seq");
            assert!(seq > last, "one connection's seqs grow");
            last = seq;
        }
        handles.into_iter().map(|h| h.join().expect("member thread")).collect()
    });

    let reference = &seen[0].events;
    for (i, s) in seen.iter().enumerate() {
        let seqs: Vec<u64> = s.events.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
        assert_eq!(seqs, (1..=TOTAL).collect::<Vec<_>>(), "member m{i}: gap-free, in order, once each");
        for (mine, theirs) in s.events.iter().zip(reference) {
            assert_eq!(
                (&mine["type"], &mine["data"]),
                (&theirs["type"], &theirs["data"]),
                "m{i} and m0 agree on seq {}",
                mine["seq"]
            );
        }
    }
    let upstream: Vec<&Value> = reference.iter().filter(|e| e["type"] == "up").map(|e| &e["data"]).collect();
    assert_eq!(
        upstream,
        (0..PER_SOURCE).map(Value::from).collect::<Vec<_>>().iter().collect::<Vec<_>>(),
        "ingest order kept"
    );
    for (i, s) in seen.iter().take(COMMENTERS).enumerate() {
        let texts: Vec<&Value> = reference
            .iter()
            .filter(|e| e["type"] == "comment" && e["data"]["user"] == format!("m{i}"))
            .map(|e| &e["data"]["text"])
            .collect();
        let sent: Vec<Value> = (0..PER_SOURCE).map(|k| json!(format!("m{i}-{k}"))).collect();
        assert_eq!(texts, sent.iter().collect::<Vec<_>>(), "m{i}'s comments in the order sent");
        for &(k, seq) in &s.acks {
            let ev = &reference[(seq - 1) as usize];
            assert_eq!(ev["data"]["text"], format!("m{i}-{k}"), "m{i}: ack for ref {k} names the seq of that comment");
        }
    }
}

/// Adds one to its counter once: when told, or when dropped (also while unwinding).
struct CountOnDrop<'a>(Option<&'a std::sync::atomic::AtomicUsize>);

impl CountOnDrop<'_> {
    fn count(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.count();
    }
}

#[test]
fn viewers_joining_during_a_flood_continue_exactly_after_the_seq_in_joined() {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    const JOINERS: usize = 24;
    /// A bound on the flood, far above what the joins need.
    const MAX_EVENTS: u64 = 200_000;
    // History holds the whole flood, so a `since` the test picked is always recoverable; the
    // publisher is paced by acks, not by the readers, so a reader starved of CPU on a busy
    // machine may fall far behind: a large budget keeps that from being a 4009.
    let server = Server::start(&["--history-size", "1000000", "--outbound-budget", "268435456"]);
    let mut anchor = server.viewer("anchor");
    let epoch = anchor.join("race")["epoch"].clone();
    // The anchor reads throughout, so it never falls behind however long the flood lasts.
    let anchor = std::thread::spawn(move || {
        let mut seq = 0u64;
        loop {
            let ev = anchor.until_op("event");
            seq += 1;
            assert_eq!(ev["seq"], seq, "the anchor sees the whole flood in order");
            if ev["type"] == "end" {
                return seq;
            }
        }
    });
    let latest = AtomicU64::new(0);
    let joined = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            let mut up = server.upstream();
            let mut seq = 0u64;
            while joined.load(Ordering::SeqCst) < JOINERS {
                assert!(seq < MAX_EVENTS, "joins did not finish within {MAX_EVENTS} events");
                let burst: Vec<Value> =
                    (0..20).map(|_| json!({"op": "publish", "room": "race", "type": "tick", "data": null})).collect();
                up.send_raw(ndjson(&burst).as_bytes());
                for _ in 0..20 {
                    seq += 1;
                    assert_eq!(up.reply()["seq"], seq);
                }
                latest.store(seq, Ordering::SeqCst);
            }
            assert_eq!(up.call(json!({"op": "publish", "room": "race", "type": "end"}))["seq"], seq + 1);
            seq + 1
        });
        let joiners: Vec<_> = (0..JOINERS)
            .map(|i| {
                let (server, latest, joined, epoch) = (&server, &latest, &joined, &epoch);
                scope.spawn(move || {
                    // Counted as joined on success or on panic, so the flood always stops.
                    let mut joined = CountOnDrop(Some(joined));
                    let mut v = server.viewer(&format!("j{i}"));
                    // Odd joiners recover from a little behind the newest acked seq.
                    let since = (i % 2 == 1).then(|| latest.load(Ordering::SeqCst).saturating_sub(15));
                    let mut next = since.map_or(0, |s| s + 1);
                    match since {
                        Some(s) => v.send_json(json!({"op": "join", "room": "race", "since": s, "epoch": epoch})),
                        None => v.send_json(json!({"op": "join", "room": "race"})),
                    }
                    loop {
                        let m = v.next_msg();
                        match m["op"].as_str() {
                            Some("event") => {
                                assert!(since.is_some(), "j{i}: an event before joined without since: {m}");
                                assert_eq!(m["seq"], next, "j{i}: replay is contiguous from since+1");
                                next += 1;
                            }
                            Some("joined") => {
                                let s = m["seq"].as_u64().expect("joined seq");
                                if since.is_some() {
                                    assert_eq!(m["recovered"], true, "j{i}: since is inside the history");
                                    assert_eq!(s + 1, next, "j{i}: replay ends at joined.seq");
                                }
                                next = s + 1;
                                break;
                            }
                            _ => panic!("j{i}: unexpected {m}"),
                        }
                    }
                    joined.count();
                    loop {
                        let m = match v.try_next() {
                            Ok(Got::Json(m)) if m["op"] == "presence" => continue,
                            Ok(Got::Json(m)) => m,
                            other => panic!("j{i}: {other:?} while waiting for seq {next} (live)"),
                        };
                        assert_eq!(m["op"], "event", "j{i}: {m}");
                        assert_eq!(m["seq"], next, "j{i}: live events continue right after joined.seq");
                        next += 1;
                        if m["type"] == "end" {
                            return;
                        }
                    }
                })
            })
            .collect();
        for (i, j) in joiners.into_iter().enumerate() {
            j.join().unwrap_or_else(|_| panic!("joiner j{i} failed"));
        }
        let end = publisher.join().expect("publisher");
        assert_eq!(anchor.join().expect("anchor thread"), end);
    });
}

/// With a batching window, a busy room's messages are held and then sent together (one write
/// per member per window, README `fanout.batch_window_ms`), while a quiet room's first message
/// goes out at once; the worker must wake by itself when the window ends (no other traffic
/// here pushes them out), and the viewers still see every seq once, in order. The holding is
/// read from the server's own counters: `roomcast_deliveries_total` (one per member per
/// message) against `roomcast_socket_writes_total` (write calls on viewer sockets).
#[test]
fn a_batching_window_holds_a_busy_rooms_messages_into_shared_writes_and_never_loses_or_reorders() {
    // No presence tick during the test: its writes would be counted with the events'.
    let server = Server::start(&["--batch-window-ms", "1000", "--presence-interval-ms", "3600000"]);
    let mut viewers: Vec<_> = (0..4).map(|i| server.viewer(&format!("w{i}"))).collect();
    for v in &mut viewers {
        assert_eq!(v.join("busy")["seq"], 0);
    }
    let counts = |scrape: &live_support::Scrape| {
        (scrape.value("roomcast_deliveries_total", &[]), scrape.value("roomcast_socket_writes_total", &[]))
    };
    let mut up = server.upstream();
    let publish = |i: u64| json!({"op": "publish", "room": "busy", "type": "tick", "data": {"i": i}});
    // The first message of a quiet room goes out at once, alone, and starts a window...
    let quiet = counts(&live_support::scrape(&server, None));
    assert_eq!(up.call(publish(1))["seq"], 1);
    for v in &mut viewers {
        assert_eq!(v.next_msg()["seq"], 1);
    }
    let busy = counts(&live_support::scrape(&server, None));
    assert_eq!((busy.0 - quiet.0, busy.1 - quiet.1), (4.0, 4.0), "one delivery in one write per member");
    // ...in which the next ones are held. Each is published only after the last one's reply,
    // so each is sequenced in a loop turn of its own: without the window each would be a write
    // of its own to every member; held, they share writes (as long as two of its ten loopback
    // round trips fall in one 1 s window, which no slow machine misses).
    for i in 2..=10u64 {
        assert_eq!(up.call(publish(i))["seq"], i, "ingest replies with each seq");
    }
    let read = |viewers: &mut Vec<support::Viewer>, seqs: std::ops::RangeInclusive<u64>| {
        for (n, v) in viewers.iter_mut().enumerate() {
            for seq in seqs.clone() {
                let m = v.next_msg();
                assert_eq!((m["op"].as_str(), m["seq"].as_u64()), (Some("event"), Some(seq)), "viewer w{n}: {m}");
                assert_eq!(m["data"]["i"], seq);
            }
        }
    };
    read(&mut viewers, 2..=10);
    let held = counts(&live_support::scrape(&server, None));
    let (deliveries, writes) = (held.0 - busy.0, held.1 - busy.1);
    assert_eq!(deliveries, 4.0 * 9.0, "every held message was delivered to every member");
    assert!(
        (4.0..deliveries).contains(&writes),
        "held messages share writes: {writes} writes for {deliveries} deliveries (one each without the window)"
    );
    // A pipelined burst into the busy room: every message once, in order, after the window.
    let commands: Vec<Value> = (11..=30).map(publish).collect();
    up.send_line(ndjson(&commands).trim_end());
    for i in 11..=30u64 {
        assert_eq!(up.reply()["seq"], i, "ingest replies in order with each seq");
    }
    read(&mut viewers, 11..=30);
    let after = counts(&live_support::scrape(&server, None));
    assert_eq!(after.0 - held.0, 4.0 * 20.0, "one delivery per member per message");
}
