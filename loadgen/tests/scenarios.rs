//! Every loadgen scenario, run briefly against a roomcast started on free ports; the JSON
//! report's counts are checked (never its timings: the machine is shared).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    ws: String,
    ingest: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The roomcast binary built next to this test (`cargo test --workspace` builds it first).
fn roomcast_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("roomcast");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        bin.display()
    );
    bin
}

fn start() -> Server {
    let mut child = Command::new(roomcast_bin())
        .args([
            "serve",
            "--workers",
            "2",
            "--ws-listen",
            "127.0.0.1:0",
            "--ingest-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    let field = |name: &str| {
        line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{name}="))).expect("field").to_owned()
    };
    Server { ws: field("ws"), ingest: field("ingest"), child }
}

fn loadgen(server: &Server, scenario: &str, extra: &[&str]) -> Value {
    let json = std::env::temp_dir().join(format!("loadgen-{scenario}-{}.json", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg(scenario)
        .args(["--url", &format!("ws://{}/ws", server.ws), "--ingest", &server.ingest, "--json"])
        .arg(&json)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("loadgen runs");
    assert!(status.success(), "loadgen {scenario} failed");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("report written")).expect("json");
    let _ = std::fs::remove_file(json);
    report
}

#[test]
fn fanout_reports_every_delivery_and_no_loss() {
    let server = start();
    let r = loadgen(
        &server,
        "fanout",
        &["--conns", "60", "--rooms", "6", "--rate", "120", "--duration", "1", "--drain", "20"],
    );
    assert_eq!(r["joined"], 60);
    assert_eq!(r["published"], 120);
    assert_eq!(r["expected"], 120 * 10, "each message goes to the 10 members of its room");
    assert_eq!(r["delivered"], r["expected"]);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64(), r["reordered"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(r["latency"]["count"], r["delivered"], "every delivery is measured");
}

#[test]
fn comments_are_acked_and_delivered_to_every_member() {
    let server = start();
    let r = loadgen(
        &server,
        "comments",
        &["--conns", "20", "--rooms", "2", "--rate", "20", "--duration", "1", "--drain", "20"],
    );
    let sent = r["published"].as_u64().expect("comments sent");
    assert!(sent > 0);
    assert_eq!(r["ack_latency"]["count"], sent, "every comment acked");
    assert_eq!(r["delivered"], sent * 10, "each comment reaches the 10 members of its room");
    assert_eq!(r["lost"], 0);
}

#[test]
fn idle_and_storm_hold_and_count_connections() {
    let server = start();
    let idle = loadgen(&server, "idle", &["--conns", "100", "--rooms", "5", "--duration", "0.5"]);
    assert_eq!(
        (idle["connected"].as_u64(), idle["joined"].as_u64(), idle["failed"].as_u64()),
        (Some(100), Some(100), Some(0))
    );
    let storm = loadgen(&server, "storm", &["--conns", "200"]);
    assert_eq!((storm["connected"].as_u64(), storm["failed"].as_u64()), (Some(200), Some(0)));
    assert!(storm["connects_per_sec"].as_f64().is_some_and(|r| r > 0.0));
}

#[test]
fn procs_spread_connections_over_children_and_merge_their_counts() {
    let server = start();
    let r = loadgen(
        &server,
        "fanout",
        &["--conns", "60", "--rooms", "6", "--rate", "120", "--duration", "1", "--drain", "20", "--procs", "3"],
    );
    assert_eq!(r["loadgen_processes"], 3, "three children reported and were merged");
    assert_eq!(r["joined"], 60, "the three children's joins add up");
    assert_eq!(r["published"], 120);
    assert_eq!(r["delivered"], 120 * 10, "each message goes to the 10 members of its room, whichever child holds them");
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64(), r["reordered"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(r["latency"]["count"], r["delivered"], "the children's histograms are merged, not sampled");
    let comments = loadgen(
        &server,
        "comments",
        &["--conns", "20", "--rooms", "2", "--rate", "20", "--duration", "1", "--drain", "20", "--procs", "2"],
    );
    assert_eq!(comments["loadgen_processes"], 2);
    let sent = comments["published"].as_u64().expect("comments sent");
    assert!(sent > 0);
    assert_eq!(comments["ack_latency"]["count"], sent, "every comment acked, in either child");
    assert_eq!(comments["delivered"], sent * 10);
}

#[test]
fn churn_recovers_every_reconnect_without_loss() {
    let server = start();
    let r = loadgen(
        &server,
        "churn",
        &[
            "--conns",
            "20",
            "--rooms",
            "2",
            "--rate",
            "40",
            "--duration",
            "2",
            "--hold-min-ms",
            "200",
            "--hold-max-ms",
            "600",
            "--drain",
            "20",
        ],
    );
    let reconnects = r["reconnects"].as_u64().expect("reconnects counted");
    assert!(reconnects > 0, "viewers left and came back: {r}");
    assert_eq!(r["recovered"], reconnects, "every rejoin with `since` got exactly what it missed");
    assert_eq!(r["recovery_failed"], 0);
    assert_eq!(r["published"], 80);
    assert_eq!(r["expected"], 80 * 10, "every viewer ends with every event of its room, across its rejoins");
    assert_eq!(r["delivered"], r["expected"]);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64(), r["reordered"].as_u64()), (Some(0), Some(0), Some(0)));
}
