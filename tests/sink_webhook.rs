//! The webhook sink against a receiver written here: 500s are retried while the records wait
//! in the spool and acks go on, then everything is delivered, signatures verify, and a
//! replayed batch carries the same ids. Also: a full spool refuses new records and nothing is
//! reported durable that is not on disk; presence records are debounced on their way out;
//! file + webhook run side by side, each with its own progress.

mod sink_support;

use roomcast::sink::config::{Secret, WebhookSinkConfig};
use roomcast::sink::{self, Backpressure, EncodedRecord, PresenceKind, PresenceRecord, SinkRecord};
use sink_support::{check_all_durable_in_order, config_in, wait_until, Durable, Flood, Receiver, Request, WAIT};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

const SECRET: &str = "test secret";

fn webhook_config(tmp: &std::path::Path, url: &str) -> sink::SinkConfig {
    let mut config = config_in(tmp);
    config.webhook = Some(WebhookSinkConfig {
        url: url.to_owned(),
        secret: Secret::new(SECRET),
        batch_ms: 1,
        batch_records: 200,
        timeout_ms: 5_000,
        ..WebhookSinkConfig::default()
    });
    config
}

fn records_of(request: &Request) -> Vec<SinkRecord> {
    let items: Vec<serde_json::Value> = serde_json::from_slice(&request.body).expect("a JSON array");
    items
        .into_iter()
        .map(|v| EncodedRecord::from_line(&v.to_string()).expect("a record").decode().expect("decodes"))
        .collect()
}

fn comment_rows(records: &[SinkRecord]) -> Vec<(String, u64, String)> {
    records
        .iter()
        .filter_map(|r| match r {
            SinkRecord::Comment { room, seq, text, .. } => Some((room.to_string(), *seq, text.clone())),
            _ => None,
        })
        .collect()
}

fn submit_until(handle: &sink::SinkHandle, flood: &mut Flood, ticket: u64) {
    let deadline = Instant::now() + WAIT;
    while flood.next_ticket <= ticket {
        let (t, record) = flood.peek();
        match handle.try_submit(flood.origin, t, record) {
            Ok(()) => flood.taken(),
            Err(_) => {
                assert!(Instant::now() < deadline, "refused for {WAIT:?}");
                std::thread::yield_now();
            }
        }
    }
}

#[test]
fn failing_receiver_is_retried_from_the_spool_then_gets_everything_signed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start(500);
    let config = webhook_config(tmp.path(), &receiver.url);
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let handle = rt.handle();
    let mut flood = Flood::new(0, 5);
    submit_until(&handle, &mut flood, 1_000);
    // Acked while the receiver fails: file sink + webhook spool hold every record.
    durable.wait_for(0, 1_000);
    receiver.wait_for("three failed posts", |r| r.iter().filter(|q| q.status == 500).count() >= 3);
    let during = rt.metrics();
    let hook = &during.sinks[1];
    assert_eq!(hook.name, "webhook");
    // The receiver counts a post before the sink has read its answer.
    assert!(!hook.healthy && hook.retries >= 2 && hook.spooled_records > 0, "{hook:?}");
    assert!(hook.last_error.as_deref().is_some_and(|e| e.contains("500")), "{hook:?}");
    assert!(during.sinks[0].healthy && during.sinks[0].records_written == 1_000, "the file sink goes on alone");
    receiver.set_status(200);
    submit_until(&handle, &mut flood, 1_500);
    durable.wait_for(0, 1_500);
    wait_until("the webhook to catch up", || rt.metrics().sinks[1].lag_records == 0);
    let m = rt.shutdown();
    assert!(m.sinks[1].healthy && m.spool_records == 0, "{m:?}");
    let requests = receiver.requests();
    for r in &requests {
        assert!(sink_support::verify_signature(SECRET.as_bytes(), r), "bad signature on {:?}", r.headers);
        assert!(!sink_support::verify_signature(b"other", r));
        assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"));
    }
    assert!(readme_python_verifies(&requests[0]), "the README's Python verifier rejects a real request");
    let delivered: Vec<SinkRecord> = requests.iter().filter(|r| r.status == 200).flat_map(records_of).collect();
    check_all_durable_in_order(&comment_rows(&delivered), &HashMap::from([(0, 1_500)]));
    // Every record of a failed post was posted again, the same record with the same id.
    let delivered_lines: HashSet<String> = delivered.iter().map(|r| r.encode().line).collect();
    let failed: Vec<SinkRecord> = requests.iter().filter(|r| r.status == 500).flat_map(records_of).collect();
    assert!(!failed.is_empty());
    for r in &failed {
        assert!(delivered_lines.contains(&r.encode().line), "never delivered again: {r:?}");
    }
    let first_failed_ids: Vec<String> = records_of(&requests[0])
        .iter()
        .filter_map(|r| if let SinkRecord::Comment { id, .. } = r { Some(id.clone()) } else { None })
        .collect();
    let retried_ids: Vec<String> = records_of(&requests[1])
        .iter()
        .filter_map(|r| if let SinkRecord::Comment { id, .. } = r { Some(id.clone()) } else { None })
        .collect();
    assert!(retried_ids.starts_with(&first_failed_ids[..first_failed_ids.len().min(retried_ids.len())]));
}

#[test]
fn a_full_spool_refuses_and_nothing_unspooled_is_durable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start(503);
    let mut config = webhook_config(tmp.path(), &receiver.url);
    config.file.enabled = false;
    config.spool.max_bytes = 1 << 20;
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let handle = rt.handle();
    let mut flood = Flood::new(3, 4);
    let deadline = Instant::now() + WAIT;
    let refusal = loop {
        assert!(Instant::now() < deadline, "never refused");
        let (t, record) = flood.peek();
        match handle.try_submit(3, t, record) {
            Ok(()) => flood.taken(),
            Err(Backpressure::SpoolFull) => break Backpressure::SpoolFull,
            Err(Backpressure::QueueFull) => std::thread::yield_now(),
            Err(other) => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(refusal.error_code().as_str(), "unavailable");
    assert!(!handle.accepting());
    let m = rt.metrics();
    // Past the limit by at most one batch of `batch_records` (an empty spool takes one).
    assert!(!m.accepting && m.spool_bytes <= (1 << 20) + 200 * 200, "{m:?}");
    // What was reported durable is on disk in the spool (nothing was delivered). Reports come
    // from the runner's thread: read the report first, then the files it promises.
    wait_until("a durable report", || durable.max(3) > 0);
    let reported = durable.max(3);
    let spool_dir = config.spool_dir().join("webhook");
    let mut spooled = Vec::new();
    for n in sink::segment::list_segments(&spool_dir, "spool").expect("spool segments") {
        let text = std::fs::read_to_string(spool_dir.join(sink::segment::segment_name("spool", n))).expect("read");
        spooled.extend(text.lines().map(|l| EncodedRecord::from_line(l).expect("line").decode().expect("record")));
    }
    check_all_durable_in_order(&comment_rows(&spooled), &HashMap::from([(3, reported)]));
    assert!(receiver.requests().iter().all(|r| r.status == 503));
    // The receiver comes back: the spool drains and records are taken again.
    receiver.set_status(204);
    wait_until("the spool to drain", || rt.metrics().spool_records == 0 && handle.accepting());
    let last = flood.next_ticket - 1;
    durable.wait_for(3, last);
    submit_until(&handle, &mut flood, last + 10);
    durable.wait_for(3, last + 10);
    rt.shutdown();
    let delivered: Vec<SinkRecord> =
        receiver.requests().iter().filter(|r| r.status == 204).flat_map(records_of).collect();
    check_all_durable_in_order(&comment_rows(&delivered), &HashMap::from([(3, last + 10)]));
}

#[test]
fn a_refusing_receiver_gets_records_moved_to_rejected_not_dropped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start(400);
    let mut config = webhook_config(tmp.path(), &receiver.url);
    config.file.enabled = false;
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let mut flood = Flood::new(0, 1);
    submit_until(&rt.handle(), &mut flood, 20);
    durable.wait_for(0, 20);
    let m = rt.shutdown();
    assert_eq!(m.sinks[0].rejected_records, 20);
    let rejected = std::fs::read_to_string(config.spool_dir().join("webhook").join(sink::spool::REJECTED_FILE))
        .expect("rejected.jsonl");
    assert_eq!(rejected.lines().count(), 20);
}

#[test]
fn presence_is_debounced_on_its_way_to_the_sinks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start(200);
    let mut config = webhook_config(tmp.path(), &receiver.url);
    config.file.presence = true;
    if let Some(w) = &mut config.webhook {
        w.presence = true;
    }
    let rt = sink::start(&config, Durable::new()).expect("start");
    let handle = rt.handle();
    assert!(handle.wants_presence());
    // Timestamps an hour ahead: no grace period can end while the test runs, so what is
    // cancelled is decided by the records' own times alone.
    let t0 = sink_support::now_ms() + 3_600_000;
    let user = |kind: fn(String, String) -> PresenceKind, who: &str, ts_ms: u64| PresenceRecord {
        room: "live-1".into(),
        kind: kind(who.into(), who.into()),
        ts_ms,
    };
    let online = |u: String, n: String| PresenceKind::Online { user: u, name: n };
    let offline = |u: String, n: String| PresenceKind::Offline { user: u, name: n };
    let room = |kind, ts_ms| PresenceRecord { room: "live-1".into(), kind, ts_ms };
    for change in [
        room(PresenceKind::Occupied, t0),
        user(online, "phone", t0),
        user(online, "laptop", t0 + 10),
        user(offline, "phone", t0 + 1_000),
        user(online, "phone", t0 + 2_500),   // a reconnect within the 3 s grace
        user(offline, "laptop", t0 + 4_000), // a real departure
    ] {
        handle.try_submit_presence(change).expect("taken");
    }
    let m = rt.shutdown();
    let kinds = |records: Vec<SinkRecord>| -> Vec<(String, Option<String>)> {
        records
            .into_iter()
            .filter_map(|r| match r {
                SinkRecord::Presence(p) => {
                    let kind = match &p.kind {
                        PresenceKind::Occupied => "occupied",
                        PresenceKind::Vacated => "vacated",
                        PresenceKind::Online { .. } => "online",
                        PresenceKind::Offline { .. } => "offline",
                    };
                    Some((kind.to_owned(), p.kind.user().map(str::to_owned)))
                }
                _ => None,
            })
            .collect()
    };
    let expected = vec![
        ("occupied".to_owned(), None),
        ("online".to_owned(), Some("phone".to_owned())),
        ("online".to_owned(), Some("laptop".to_owned())),
        ("offline".to_owned(), Some("laptop".to_owned())),
    ];
    let in_file: Vec<SinkRecord> = sink::file::read_dir(&config.file.dir)
        .expect("read")
        .into_iter()
        .map(|r| r.decode().expect("decodes"))
        .collect();
    assert_eq!(kinds(in_file), expected);
    let posted: Vec<SinkRecord> = receiver.requests().iter().flat_map(records_of).collect();
    assert_eq!(kinds(posted), expected);
    assert_eq!(m.sinks.iter().map(|s| s.records_written).collect::<Vec<_>>(), [4, 4]);
}

/// Run the README's Python `verify` on a request the sink sent.
fn readme_python_verifies(request: &Request) -> bool {
    let readme = include_str!("../README.md");
    let code = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README has a python block");
    let script = format!(
        "{code}\nimport sys\nbody = open(sys.argv[1], 'rb').read()\nprint(verify(sys.argv[2].encode(), body, sys.argv[3], sys.argv[4]))\n"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let body = dir.path().join("body");
    std::fs::write(&body, &request.body).expect("write body");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&body)
        .arg(SECRET)
        .arg(&request.headers["x-roomcast-timestamp"])
        .arg(&request.headers["x-roomcast-signature"])
        .output()
        .expect("python3 runs the README's verifier (apt-get install -y python3)");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

#[test]
fn a_restart_replays_the_spool_before_new_records() {
    let tmp = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start(500);
    let mut config = webhook_config(tmp.path(), &receiver.url);
    config.file.enabled = false;
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let mut flood = Flood::new(0, 3);
    submit_until(&rt.handle(), &mut flood, 300);
    durable.wait_for(0, 300);
    let m = rt.shutdown();
    assert_eq!(m.spool_records, 300, "everything waits in the spool at shutdown: {m:?}");
    // A start while the receiver still fails: the spooled records count as the sink's lag.
    let rt = sink::start(&config, Durable::new()).expect("restart, receiver down");
    let lane = rt.metrics().sinks[0].clone();
    assert_eq!((lane.lag_records, lane.spool_records), (300, 300), "spooled records are lag: {lane:?}");
    rt.shutdown();
    // Next start: the receiver answers, old records go out before any new one.
    receiver.set_status(200);
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("restart");
    let handle = rt.handle();
    submit_until(&handle, &mut flood, 400);
    durable.wait_for(0, 400);
    wait_until("the webhook to catch up", || rt.metrics().sinks[0].lag_records == 0);
    rt.shutdown();
    let delivered: Vec<SinkRecord> =
        receiver.requests().iter().filter(|r| r.status == 200).flat_map(records_of).collect();
    let texts: Vec<String> = comment_rows(&delivered).into_iter().map(|(_, _, t)| t).collect();
    let expected: Vec<String> = (1..=400).map(|t| format!("o0t{t}")).collect();
    assert_eq!(texts, expected, "spooled records first, in order, then the new ones");
}
