//! A member that does not read is closed with 4009 once its queue passes the outbound budget
//! (and the server logs a warning naming it and the budget);
//! what it did receive is gap-free and in seq order, and every other member of the room
//! receives everything, plain or TLS, and presence drops the closed one. A viewer that reads
//! in small steps but keeps up is never cut. The kernel's share of a slow consumer's backlog is
//! bounded and counted in the budget (`limits.socket_unsent_bytes`).

mod support;

use serde_json::{json, Value};
use support::{ndjson, Got, Server, Viewer};

/// Bytes of `data` per event.
const PAYLOAD_BYTES: usize = 1024;

/// The most a socket send buffer may grow to (tcp_wmem's third field), so the flood is sized
/// to pass the kernel's buffers on this machine rather than on the author's.
fn max_send_buffer_bytes() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20)
}

/// A 64 KiB budget for the server's own queue alone (the kernel's share uncapped and not
/// counted: `--socket-unsent-bytes 0`), a close handshake that may wait for the slow reader,
/// and presence reported often.
const SLOW_FLAGS: [&str; 8] = [
    "--outbound-budget",
    "65536",
    "--socket-unsent-bytes",
    "0",
    "--close-timeout-ms",
    "60000",
    "--presence-interval-ms",
    "100",
];

/// Events per burst in a paced flood: 16 KiB, a quarter of the smallest budget used here.
const BURST_EVENTS: u64 = 16;

/// Publish `total` events of [`PAYLOAD_BYTES`] to `room` in bursts of [`BURST_EVENTS`]: each
/// burst is pipelined, its replies checked, and every reader must have read it before the
/// next is sent. So the readers keep up by construction; a member that does not read falls
/// behind by one burst per round. Returns the `online` of the last `presence` reader 0 saw.
fn paced_flood(server: &Server, room: &str, total: u64, readers: &mut [Viewer]) -> Option<u64> {
    let mut online = None;
    let mut up = server.upstream();
    let payload = "p".repeat(PAYLOAD_BYTES);
    let mut seq = 0u64;
    while seq < total {
        let burst: Vec<Value> = (seq..total.min(seq + BURST_EVENTS))
            .map(|i| json!({"op": "publish", "room": room, "type": "blob", "data": {"i": i, "p": payload}}))
            .collect();
        up.send_raw(ndjson(&burst).as_bytes());
        for k in 1..=burst.len() as u64 {
            assert_eq!(up.reply(), json!({"ok": true, "seq": seq + k}));
        }
        for (r, v) in readers.iter_mut().enumerate() {
            let mut k = 1;
            while k <= burst.len() as u64 {
                let m = v.next_json();
                if m["op"] == "presence" && r == 0 {
                    online = m["online"].as_u64();
                }
                if m["op"] != "event" {
                    continue;
                }
                assert_eq!((m["room"].as_str(), m["seq"].as_u64()), (Some(room), Some(seq + k)), "reader {r}");
                k += 1;
            }
        }
        seq += burst.len() as u64;
    }
    online
}

/// Read the slow viewer to the end: a gap-free prefix of 1..=total, then a close; returns
/// (last seq, close code).
fn drain_slow(slow: &mut Viewer, total: u64) -> (u64, Option<u16>) {
    let mut last = 0u64;
    loop {
        match slow.next() {
            Got::Json(m) if m["op"] == "event" => {
                let seq = m["seq"].as_u64().expect("seq");
                assert_eq!(seq, last + 1, "no gap in what the slow consumer got");
                assert_eq!(m["data"]["i"], seq - 1, "event {seq} carries its own data");
                last = seq;
                assert!(last <= total);
            }
            Got::Json(_) => {}
            Got::Closed(code) => return (last, code),
        }
    }
}

/// The server's warning for a slow-consumer close of `user`, once it is in the log.
fn slow_consumer_warning(server: &Server, user: &str) -> String {
    const WARNING: &str = "slow consumer: outbound queue over budget";
    let is_it = |line: &str| line.contains(WARNING) && line.contains(&format!(" user={user} "));
    let log = server.wait_for_log(|log| log.lines().any(is_it));
    log.lines().find(|l| is_it(l)).expect("the line wait_for_log found").to_owned()
}

/// `user`'s connection `slow` never reads while the room is flooded.
fn slow_consumer_case(server: &Server, user: &str, mut slow: Viewer) {
    const ROOM: &str = "busy";
    let budget: usize = 65536;
    // Twice the kernel's send buffer on the server side (the slow client's receive buffer is
    // 4 KiB): far more than the kernel, the budget and the client together can hold.
    let total = (2 * max_send_buffer_bytes() / PAYLOAD_BYTES + 2 * budget / PAYLOAD_BYTES) as u64;
    assert_eq!(slow.join(ROOM)["seq"], 0);
    let mut readers: Vec<Viewer> = (0..3)
        .map(|i| {
            let mut v = server.viewer(&format!("reader{i}"));
            v.join(ROOM);
            v
        })
        .collect();
    let mut online = paced_flood(server, ROOM, total, &mut readers);
    let (last, code) = drain_slow(&mut slow, total);
    assert_eq!(code, Some(4009), "the slow consumer is closed as one (it got {last} of {total} events)");
    assert!(last < total, "it was cut off before the end ({last} of {total})");
    // docs/protocol.md "Close codes": the server logs each such close (warn), with the budget.
    let warning = slow_consumer_warning(server, user);
    assert!(warning.contains(" WARN ") && warning.contains("budget=65536"), "{warning}");
    // It is gone from the room: presence (which only reports changes) comes down to the readers.
    while online != Some(readers.len() as u64) {
        online = readers[0].until_op("presence")["online"].as_u64();
    }
}

#[test]
fn a_plain_viewer_that_never_reads_is_closed_with_4009_and_the_rest_get_everything() {
    let server = Server::start(&SLOW_FLAGS);
    let slow = server.viewer_small_window("sloth");
    slow_consumer_case(&server, "sloth", slow);
}

#[test]
fn a_tls_viewer_that_never_reads_is_closed_with_4009_and_the_rest_get_everything() {
    let server = Server::start_tls(&SLOW_FLAGS);
    let slow = server.tls_viewer_small_window("tls-sloth");
    slow_consumer_case(&server, "tls-sloth", slow);
}

#[test]
fn a_viewer_with_default_socket_buffers_that_never_reads_is_closed_with_4009() {
    // No small window: the kernel's own buffering (with autotuning) sits in front of the budget.
    let server = Server::start(&SLOW_FLAGS);
    let slow = server.viewer("default-sloth");
    slow_consumer_case(&server, "default-sloth", slow);
}

#[test]
fn a_reader_that_keeps_up_in_small_steps_is_never_cut() {
    // Same small budget, but the reader drains each burst before the next: never 4009.
    let server = Server::start(&["--outbound-budget", "65536", "--socket-unsent-bytes", "0"]);
    let mut v = server.viewer_small_window("steady");
    v.join("steady");
    let mut up = server.upstream();
    let payload = "q".repeat(PAYLOAD_BYTES);
    let mut seq = 0u64;
    for _burst in 0..100 {
        let commands: Vec<Value> =
            (0..20).map(|_| json!({"op": "publish", "room": "steady", "type": "b", "data": payload})).collect();
        up.send_raw(ndjson(&commands).as_bytes());
        for _ in 0..20 {
            assert_eq!(up.reply()["ok"], true);
        }
        for _ in 0..20 {
            seq += 1;
            assert_eq!(v.until_op("event")["seq"], seq);
        }
    }
    v.send_json(json!({"op": "ping"}));
    assert_eq!(v.until_op("pong")["op"], "pong", "still connected after {seq} events");
}

#[test]
fn a_burst_slightly_over_the_budget_reaches_a_member_that_reads_all_the_time() {
    // The member reads continuously on its own thread with an empty, default-sized socket
    // buffer; the burst (about 100 KiB) is well within what the kernel alone holds on top of
    // the 64 KiB budget. It is keeping up, so it must not be treated as a slow consumer.
    const TOTAL: u64 = 100;
    let server = Server::start(&["--outbound-budget", "65536", "--socket-unsent-bytes", "0"]);
    let mut v = server.viewer("eager");
    v.join("burst");
    let reader = std::thread::spawn(move || {
        let mut got = 0u64;
        while got < TOTAL {
            match v.next() {
                Got::Json(m) if m["op"] == "event" => {
                    got += 1;
                    assert_eq!(m["seq"], got, "in order");
                }
                Got::Json(_) => {}
                Got::Closed(code) => return Err(format!("closed with {code:?} after {got} of {TOTAL} events")),
            }
        }
        Ok(got)
    });
    let payload = "b".repeat(PAYLOAD_BYTES);
    let burst: Vec<Value> = (0..TOTAL)
        .map(|i| json!({"op": "publish", "room": "burst", "type": "b", "data": {"i": i, "p": payload}}))
        .collect();
    let mut up = server.upstream();
    up.send_raw(ndjson(&burst).as_bytes());
    for seq in 1..=TOTAL {
        assert_eq!(up.reply(), json!({"ok": true, "seq": seq}));
    }
    assert_eq!(reader.join().expect("reader thread"), Ok(TOTAL));
}

/// With the default kernel share (`limits.socket_unsent_bytes`, 64 KiB): a viewer that stops
/// reading is closed with 4009 once the budget's bytes wait for it, counting what the kernel
/// holds, not after the kernel's autotuned send buffer (up to `tcp_wmem`'s 4 MiB) has filled.
/// Everything it ever receives is what its own small receive buffer took plus what the
/// server let the kernel hold for it: within the budget. The flood is larger than the
/// kernel alone would hold uncapped, so with the cap off it would never be cut.
#[test]
fn a_viewer_that_stops_reading_is_closed_within_the_budget_whatever_the_kernel_would_buffer() {
    const ROOM: &str = "stall";
    const BUDGET: usize = 256 * 1024;
    let server = Server::start(&[
        "--outbound-budget",
        &BUDGET.to_string(),
        "--close-timeout-ms",
        "60000",
        "--presence-interval-ms",
        "100",
    ]);
    let mut slow = server.viewer_small_window("stopped");
    assert_eq!(slow.join(ROOM)["seq"], 0);
    let receive_buffer = socket2::SockRef::from(slow.tcp()).recv_buffer_size().expect("SO_RCVBUF");
    let mut reader = server.viewer("reader");
    reader.join(ROOM);
    let total = ((max_send_buffer_bytes() + 2 * BUDGET) / PAYLOAD_BYTES) as u64;
    paced_flood(&server, ROOM, total, std::slice::from_mut(&mut reader));
    let mut received = 0usize;
    let code = loop {
        match slow.next() {
            Got::Json(m) if m["op"] == "event" => received += m.to_string().len(),
            Got::Json(_) => {}
            Got::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(4009), "cut as a slow consumer ({received} bytes of events received)");
    assert!(
        received <= receive_buffer + BUDGET,
        "it received {received} bytes: more than its receive buffer ({receive_buffer}) and the budget ({BUDGET})"
    );
}
