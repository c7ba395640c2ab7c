//! A member that does not read is closed with 4009 once its queue passes the outbound budget;
//! what it did receive is gap-free, and every other member receives everything.

mod support;

use serde_json::json;
use support::{Got, Server};

#[test]
fn a_viewer_that_never_reads_is_closed_with_4009_and_the_rest_get_everything() {
    let server = Server::start(&["--outbound-budget", "262144", "--close-timeout-ms", "60000"]);
    let mut slow = server.viewer_small_window("sloth");
    slow.join("busy");
    let mut fast: Vec<_> = (0..3).map(|i| server.viewer(&format!("hare{i}"))).collect();
    for f in &mut fast {
        f.join("busy");
    }
    let mut up = server.upstream();
    let payload = "p".repeat(1024);
    let (chunks, per_chunk) = (200u64, 50u64);
    // Publish in chunks; the fast readers drain each chunk before the next is sent, so only
    // the one that never reads falls behind. 10 MB in all: more than the kernel buffers.
    for chunk in 0..chunks {
        let mut batch = String::new();
        for _ in 0..per_chunk {
            batch.push_str(&json!({"op": "publish", "room": "busy", "type": "blob", "data": payload}).to_string());
            batch.push('\n');
        }
        up.send_raw(batch.as_bytes());
        for _ in 0..per_chunk {
            assert_eq!(up.reply()["ok"], true);
        }
        for f in &mut fast {
            for i in 1..=per_chunk {
                assert_eq!(f.until_op("event")["seq"], chunk * per_chunk + i, "fast readers get everything in order");
            }
        }
    }
    let total = chunks * per_chunk;
    // Now the slow one reads what it was sent: a gap-free prefix, then 4009.
    let mut last = 0u64;
    let code = loop {
        match slow.next() {
            Got::Json(m) if m["op"] == "event" => {
                let seq = m["seq"].as_u64().expect("seq");
                assert_eq!(seq, last + 1, "no gap in what the slow consumer got");
                last = seq;
            }
            Got::Json(_) => {}
            Got::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(4009));
    assert!(last < total, "it was cut off before the end ({last} of {total})");
}
