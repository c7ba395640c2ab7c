//! SIGTERM and SIGINT close every viewer connection with 1001 (plain and TLS, joined or not,
//! on either worker) and the process exits with status 0, also when a viewer never answers.

mod support;

use serde_json::json;
use support::{Got, Server, Viewer};

#[test]
fn sigterm_closes_viewers_with_1001_and_exits_cleanly() {
    let mut server = Server::start_tls(&[]);
    let mut plain = server.viewer("p");
    let mut tls = server.tls_viewer("t");
    plain.join("r");
    tls.join("r");
    let status = server.terminate();
    assert_eq!(plain.close_code(), Some(1001));
    assert_eq!(tls.close_code(), Some(1001));
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
}

/// Open `n` plain and `n` TLS viewers; every third joins nothing, the rest join one of three
/// rooms and see one event, so each has been fully set up before the signal.
fn crowd_of(server: &Server, n: usize) -> Vec<Viewer> {
    let mut viewers: Vec<Viewer> =
        (0..n).flat_map(|i| [server.viewer(&format!("p{i}")), server.tls_viewer(&format!("t{i}"))]).collect();
    let mut up = server.upstream();
    for (i, v) in viewers.iter_mut().enumerate() {
        if i % 3 != 0 {
            v.join(&format!("room{}", i % 3));
        }
    }
    for room in ["room1", "room2"] {
        assert_eq!(up.call(json!({"op": "publish", "room": room, "type": "t"}))["ok"], true);
    }
    for (i, v) in viewers.iter_mut().enumerate() {
        if i % 3 != 0 {
            assert_eq!(v.until_op("event")["room"], format!("room{}", i % 3));
        }
    }
    viewers
}

fn every_viewer_gets_1001_and_the_process_exits_0(signal: i32) {
    let mut server = Server::start_tls(&[]);
    let mut viewers = crowd_of(&server, 20);
    server.signal(signal);
    for (i, v) in viewers.iter_mut().enumerate() {
        let code = v.close_code();
        assert_eq!(code, Some(1001), "viewer {i} closed with {code:?}");
    }
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn sigterm_closes_forty_viewers_on_both_workers_with_1001_and_exits_0() {
    every_viewer_gets_1001_and_the_process_exits_0(libc::SIGTERM);
}

#[test]
fn sigint_closes_forty_viewers_on_both_workers_with_1001_and_exits_0() {
    every_viewer_gets_1001_and_the_process_exits_0(libc::SIGINT);
}

#[test]
fn a_viewer_that_never_answers_the_close_does_not_keep_the_process_alive() {
    let mut server = Server::start(&["--close-timeout-ms", "500"]);
    let mute = server.viewer("mute");
    let mut polite = server.viewer("polite");
    polite.join("r");
    server.signal(libc::SIGTERM);
    assert_eq!(polite.close_code(), Some(1001));
    // `mute` is neither read nor dropped: its close frame stays unanswered.
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    drop(mute);
}

#[test]
fn a_viewer_in_the_middle_of_a_stream_gets_a_gap_free_prefix_then_1001() {
    let mut server = Server::start(&[]);
    let mut v = server.viewer("streaming");
    v.join("live");
    let mut up = server.upstream();
    let batch: String =
        (0..500).map(|i| format!("{}\n", json!({"op": "publish", "room": "live", "type": "t", "data": i}))).collect();
    up.send_raw(batch.as_bytes());
    for seq in 1..=500u64 {
        assert_eq!(up.reply()["seq"], seq);
    }
    server.signal(libc::SIGTERM);
    let mut last = 0u64;
    let code = loop {
        match v.next() {
            Got::Json(m) if m["op"] == "event" => {
                let seq = m["seq"].as_u64().expect("seq");
                assert_eq!(seq, last + 1, "gap-free up to the close");
                last = seq;
            }
            Got::Json(_) => {}
            Got::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1001), "closed with 1001 after {last} events");
    assert_eq!(server.wait_exit().code(), Some(0));
}
