//! The admin port over real loopback sockets, against a fake backend: every path with its
//! errors, the token, paging, body limits, `/metrics` read back by an independent Prometheus
//! text parser, and the dashboard stream's snapshots and room feed.

mod admin_support;

use admin_support::{get, member, post, request, start, stream, urlencode, FakeRoom, Step};
use roomcast::admin::{AdminSettings, Caller, Health, UpstreamOp};
use roomcast::ids::WorkerId;
use roomcast::metrics::{IngestOp, IngestOutcome, ListenerKind, Metrics, Source, WorkerLoad};
use roomcast::query::{FeedItem, LeaveReason};
use roomcast::wire::ErrorCode;
use serde_json::{json, Value};
use std::time::Duration;

fn open() -> AdminSettings {
    AdminSettings::default()
}

fn with_token(token: &str) -> AdminSettings {
    AdminSettings { token: Some(token.to_owned()), ..AdminSettings::default() }
}

#[test]
fn health_and_readiness_follow_the_backend() {
    let (admin, fake) = start(open());
    let addr = admin.local_addr();
    assert_eq!(get(addr, "/healthz", None).json(), json!({"status": "serving"}));
    assert_eq!(get(addr, "/readyz", None).json(), json!({"status": "ready"}));
    fake.world().health = Some(Health::Draining);
    assert_eq!(get(addr, "/healthz", None).status, 200);
    let reply = get(addr, "/readyz", None);
    assert_eq!(reply.error(503), "unavailable");
    assert!(reply.json()["message"].as_str().is_some_and(|m| m.contains("draining")));
    fake.world().health = Some(Health::AtCapacity);
    assert!(get(addr, "/readyz", None).json()["message"].as_str().is_some_and(|m| m.contains("capacity")));
    fake.world().health = Some(Health::Stopping);
    assert_eq!(get(addr, "/healthz", None).error(503), "unavailable");
}

#[test]
fn every_path_but_healthz_needs_the_admin_token() {
    let (admin, fake) = start(with_token("s3cret"));
    let addr = admin.local_addr();
    fake.world().rooms.insert("live".into(), FakeRoom::new(3));
    assert_eq!(get(addr, "/healthz", None).status, 200);
    for path in ["/readyz", "/metrics", "/api/rooms", "/api/rooms/live", "/api/rooms/live/presence"] {
        for token in [None, Some("wrong"), Some("s3cret ")] {
            let reply = get(addr, path, token.filter(|t| !t.ends_with(' ')));
            assert_eq!(reply.error(401), "unauthorized", "{path} with {token:?}");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{path}");
        }
        assert_eq!(get(addr, path, Some("s3cret")).status, 200, "{path}");
    }
    // `?token=` is for the WebSocket only.
    assert_eq!(get(addr, "/api/rooms?token=s3cret", None).status, 401);
    assert_eq!(stream(addr, "").err(), Some(401));
    assert_eq!(stream(addr, "token=nope").err(), Some(401));
    let mut s = stream(addr, "token=s3cret").expect("the right token opens the stream");
    assert_eq!(s.next_of("snapshot")["rooms"], 1);
    // The page holds no data: it comes with 401 and asks for the token itself.
    let page = get(addr, "/admin", None);
    assert_eq!(page.status, 401);
    assert!(page.text().contains("<html"), "the page itself");
    assert_eq!(get(addr, "/admin", Some("s3cret")).status, 200);
    // Upstream commands need a token too when the admin token is set.
    assert_eq!(post(addr, "/api/publish", None, r#"{"room":"live","type":"t"}"#).error(401), "unauthorized");
    assert_eq!(post(addr, "/api/publish", Some("nope"), r#"{"room":"live","type":"t"}"#).error(401), "unauthorized");
    assert_eq!(post(addr, "/api/publish", Some("s3cret"), r#"{"room":"live","type":"t"}"#).status, 200);
    assert_eq!(fake.world().upstream_calls.last().map(|c| c.2.clone()), Some(Caller::Operator));
}

#[test]
fn the_dashboard_page_is_self_contained() {
    let (admin, _fake) = start(open());
    let page = get(admin.local_addr(), "/admin", None);
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text();
    for external in ["src=\"http", "href=\"http", "@import", "url(http", "//cdn"] {
        assert!(!html.contains(external), "the page loads nothing from elsewhere ({external})");
    }
    assert!(html.contains("/admin/stream"), "it reads the stream");
}

fn rooms_world(fake: &admin_support::Fake, n: u64) {
    let mut w = fake.world();
    for i in 0..n {
        w.rooms.insert(format!("room-{i:02}"), FakeRoom::new(i % 7));
    }
    w.rooms.insert("quiz".into(), FakeRoom::new(50));
}

fn names(page: &Value) -> Vec<String> {
    page["rooms"].as_array().expect("rooms").iter().map(|r| r["room"].as_str().expect("name").to_owned()).collect()
}

#[test]
fn rooms_are_listed_in_stable_pages() {
    let (admin, fake) = start(open());
    let addr = admin.local_addr();
    rooms_world(&fake, 25);
    let first = get(addr, "/api/rooms?limit=10", None).json();
    assert_eq!(
        (first["total"].as_u64(), first["limit"].as_u64(), first["sort"].as_str()),
        (Some(26), Some(10), Some("name"))
    );
    assert_eq!(
        first["rooms"][0],
        json!({"room": "quiz", "online": 50, "seq": 0, "epoch": "1f2e", "comment_rate": 0.0, "version": 0})
    );
    // Walk the cursors while rooms come and go before the cursor: each room once.
    let mut seen = names(&first);
    let mut next = first["next"].as_str().map(str::to_owned);
    while let Some(cursor) = next {
        fake.world().rooms.remove("room-00");
        fake.world().rooms.insert("a-late-room".into(), FakeRoom::new(1));
        let page = get(addr, &format!("/api/rooms?limit=10&cursor={}", urlencode(&cursor)), None).json();
        seen.extend(names(&page));
        next = page["next"].as_str().map(str::to_owned);
    }
    let mut expected = vec!["quiz".to_owned()];
    expected.extend((0..25).map(|i| format!("room-{i:02}")));
    assert_eq!(seen, expected);

    let prefixed = get(addr, "/api/rooms?prefix=room-1&limit=1000", None).json();
    assert_eq!((names(&prefixed).len(), prefixed["total"].as_u64(), &prefixed["next"]), (10, Some(10), &Value::Null));
    let hot = get(addr, "/api/rooms?sort=online&limit=3", None).json();
    assert_eq!(names(&hot), ["quiz", "room-06", "room-13"]);
    let more = get(
        addr,
        &format!("/api/rooms?sort=online&limit=3&cursor={}", urlencode(hot["next"].as_str().expect("next"))),
        None,
    )
    .json();
    assert_eq!(names(&more), ["room-20", "room-05", "room-12"]);
    assert_eq!(names(&get(addr, "/api/rooms?sort=online&limit=3&page=2", None).json()), names(&more));
    assert_eq!(get(addr, "/api/rooms?limit=5000", None).json()["limit"], 1000);

    for bad in
        ["limit=0", "limit=ten", "page=0", "page=1&cursor=n.a", "cursor=bogus", "sort=loud", "sort=online&cursor=n.a"]
    {
        assert_eq!(get(addr, &format!("/api/rooms?{bad}"), None).error(400), "bad_request", "{bad}");
    }
}

#[test]
fn a_room_in_full_with_the_since_rule() {
    let (admin, fake) = start(open());
    let addr = admin.local_addr();
    {
        let mut w = fake.world();
        let mut r = FakeRoom::new(4);
        for i in 1..=6 {
            r.publish("a b/c", "gift", &format!("{{\"n\":{i}}}"));
        }
        r.ring.drain(..2); // the ring holds seqs 3..=6
        r.state = Some(r#"{"title":"Live","round":2}"#.into());
        r.version = 2;
        r.leaves.record(LeaveReason::Heartbeat);
        r.comments.accepted = 9;
        r.comments.rejected.record(ErrorCode::TooLarge);
        w.rooms.insert("a b/c".into(), r);
    }
    let detail = get(addr, "/api/rooms/a%20b%2Fc", None).json();
    assert_eq!(
        (detail["room"].as_str(), detail["seq"].as_u64(), detail["online"].as_u64()),
        (Some("a b/c"), Some(6), Some(4))
    );
    assert_eq!(detail["state"], json!({"title": "Live", "round": 2}));
    assert_eq!((detail["version"].as_u64(), detail["epoch"].as_str()), (Some(2), Some("1f2e")));
    assert_eq!(detail["events"].as_array().map(Vec::len), Some(4));
    assert_eq!(detail["events"][0]["seq"], 3);
    assert_eq!(detail["recovered"], Value::Null);
    assert_eq!(detail["leaves"]["heartbeat"], 1);
    assert_eq!(
        detail["comments"],
        json!({"accepted": 9, "rejected": {
            "bad_request": 0, "unauthorized": 0, "forbidden": 0, "not_joined": 0,
            "rate_limited": 0, "too_large": 1, "unknown_op": 0, "unavailable": 0,
        }})
    );

    let seqs = |path: &str| -> (Vec<u64>, Value) {
        let v = get(addr, path, None).json();
        (
            v["events"].as_array().expect("events").iter().map(|e| e["seq"].as_u64().expect("seq")).collect(),
            v["recovered"].clone(),
        )
    };
    assert_eq!(seqs("/api/rooms/a%20b%2Fc?since=4"), (vec![5, 6], json!(true)));
    assert_eq!(seqs("/api/rooms/a%20b%2Fc?since=2&epoch=1f2e"), (vec![3, 4, 5, 6], json!(true)));
    assert_eq!(seqs("/api/rooms/a%20b%2Fc?since=1"), (vec![], json!(false)), "seq 2 is gone: nothing");
    assert_eq!(seqs("/api/rooms/a%20b%2Fc?since=4&epoch=beef"), (vec![], json!(false)), "another epoch");
    assert_eq!(seqs("/api/rooms/a%20b%2Fc?since=6"), (vec![], json!(true)), "nothing missed");

    assert_eq!(get(addr, "/api/rooms/nope", None).error(404), "not_found");
    assert_eq!(get(addr, "/api/rooms/nope/presence", None).error(404), "not_found");
    assert_eq!(get(addr, "/api/rooms/a%20b%2Fc?since=soon", None).error(400), "bad_request");
    assert_eq!(get(addr, "/api/rooms/a%20b%2Fc?epoch=1f2e", None).error(400), "bad_request");
    assert_eq!(get(addr, &format!("/api/rooms/{}", "x".repeat(129)), None).error(400), "bad_request");
    assert_eq!(get(addr, "/api/rooms/%0A", None).error(400), "bad_request");
    assert_eq!(get(addr, "/api/nothing", None).error(404), "not_found");
}

#[test]
fn presence_is_paged_by_user() {
    let (admin, fake) = start(open());
    let addr = admin.local_addr();
    let mut r = FakeRoom::new(5);
    r.members = ["erin", "bob", "dave", "alice", "carol"].iter().map(|u| member(u, 1)).collect();
    r.members[0].connections = 3;
    fake.world().rooms.insert("live".into(), r);
    let first = get(addr, "/api/rooms/live/presence?limit=2", None).json();
    assert_eq!(
        first["members"][0],
        json!({"user": "alice", "name": "alice (name)", "joined_at": 1_700_000_000_000u64, "last_seen": 1_700_000_005_000u64, "silent_ms": 2000, "connections": 1})
    );
    assert_eq!((first["online"].as_u64(), first["members"].as_array().map(Vec::len)), (Some(5), Some(2)));
    let mut users: Vec<String> = Vec::new();
    let mut page = first;
    loop {
        users.extend(
            page["members"].as_array().expect("members").iter().map(|m| m["user"].as_str().expect("user").to_owned()),
        );
        let Some(next) = page["next"].as_str().map(str::to_owned) else { break };
        page = get(addr, &format!("/api/rooms/live/presence?limit=2&cursor={}", urlencode(&next)), None).json();
    }
    assert_eq!(users, ["alice", "bob", "carol", "dave", "erin"]);
    let third = get(addr, "/api/rooms/live/presence?limit=2&page=3", None).json();
    assert_eq!(third["members"][0]["connections"], 3);
    assert_eq!(get(addr, "/api/rooms/live/presence?limit=-1", None).error(400), "bad_request");
}

#[test]
fn upstream_commands_go_through_the_ingest_logic() {
    let (admin, fake) = start(open());
    let addr = admin.local_addr();
    fake.world().rooms.insert("live".into(), FakeRoom::new(2));
    let reply = post(addr, "/api/publish", None, r#"{"room":"live","type":"gift","data":{"from":"bob"}}"#);
    assert_eq!((reply.status, reply.json()), (200, json!({"ok": true, "seq": 1})));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let detail = get(addr, "/api/rooms/live", None).json();
    assert_eq!((detail["seq"].as_u64(), &detail["events"][0]["data"]), (Some(1), &json!({"from": "bob"})));
    assert_eq!(post(addr, "/api/publish", None, r#"{"op":"publish","room":"live","type":"t"}"#).json()["seq"], 2);
    assert_eq!(
        post(addr, "/api/state", None, r#"{"room":"live","state":{"a":1}}"#).json(),
        json!({"ok": true, "seq": 3, "version": 1})
    );
    assert_eq!(post(addr, "/api/kick", None, r#"{"user":"mallory"}"#).json(), json!({"ok": true, "closed": 0}));
    assert_eq!(post(addr, "/api/delete_comment", None, r#"{"room":"live","id":"1f2e-1"}"#).json()["seq"], 4);
    assert_eq!(post(addr, "/api/close_room", None, r#"{"room":"live"}"#).json(), json!({"ok": true}));
    let calls: Vec<UpstreamOp> = fake.world().upstream_calls.iter().map(|c| c.0).collect();
    assert_eq!(
        calls,
        [
            UpstreamOp::Publish,
            UpstreamOp::Publish,
            UpstreamOp::State,
            UpstreamOp::Kick,
            UpstreamOp::DeleteComment,
            UpstreamOp::CloseRoom
        ]
    );

    // Refused before the backend: not a JSON object, or another op than the path's.
    for body in ["not json", "[1,2]", r#"{"op":"kick","user":"u"}"#, ""] {
        assert_eq!(post(addr, "/api/publish", None, body).error(400), "bad_request", "{body:?}");
    }
    // Refused by the upstream logic: its code and message, with the code's status.
    let reply = post(addr, "/api/publish", None, r#"{"room":"live"}"#);
    assert_eq!(reply.error(400), "bad_request");
    assert!(reply.json()["message"].as_str().is_some_and(|m| m.contains("type")));
    assert_eq!(post(addr, "/api/state", None, r#"{"room":"live","state":[1]}"#).error(400), "bad_request");
    assert_eq!(fake.world().upstream_calls.len(), 8, "the four bad bodies never reached it");

    // 64 KiB is the limit, as for an ingest line.
    let big = format!(r#"{{"room":"live","type":"t","data":"{}"}}"#, "x".repeat(64 * 1024));
    assert_eq!(post(addr, "/api/publish", None, &big).error(413), "too_large");
    let fits = format!(r#"{{"room":"live","type":"t","data":"{}"}}"#, "x".repeat(60 * 1024));
    assert_eq!(post(addr, "/api/publish", None, &fits).status, 200);
    assert_eq!(get(addr, "/api/publish", None).status, 405);
}

#[test]
fn upstream_commands_carry_the_ingest_token() {
    let (admin, fake) = start(AdminSettings { ingest_tokens: true, ..AdminSettings::default() });
    let addr = admin.local_addr();
    fake.world().ingest_tokens = vec!["up-1".into()];
    let body = r#"{"room":"live","type":"t"}"#;
    assert_eq!(post(addr, "/api/publish", None, body).error(401), "unauthorized");
    assert_eq!(post(addr, "/api/publish", Some("up-2"), body).error(401), "unauthorized");
    assert_eq!(post(addr, "/api/publish", Some("up-1"), body).json(), json!({"ok": true, "seq": 1}));
    assert_eq!(
        fake.world().upstream_calls.last().map(|c| c.2.clone()),
        Some(Caller::Upstream { bearer: Some("up-1".into()) })
    );
    drop(admin);

    // With an admin token as well, either token passes: the admin token as an operator.
    let (admin, fake) =
        start(AdminSettings { ingest_tokens: true, token: Some("adm".into()), ..AdminSettings::default() });
    let addr = admin.local_addr();
    fake.world().ingest_tokens = vec!["up-1".into()];
    assert_eq!(post(addr, "/api/publish", Some("adm"), body).status, 200);
    assert_eq!(post(addr, "/api/publish", Some("up-1"), body).status, 200);
    assert_eq!(post(addr, "/api/publish", Some("up-2"), body).error(401), "unauthorized");
    assert_eq!(post(addr, "/api/publish", None, body).error(401), "unauthorized");
    let callers: Vec<Caller> = fake.world().upstream_calls.iter().map(|c| c.2.clone()).collect();
    assert_eq!(callers[0], Caller::Operator);
}

#[test]
fn a_stuck_backend_is_a_503_within_the_deadline() {
    let (admin, fake) = start(AdminSettings { deadline: Duration::from_millis(200), ..AdminSettings::default() });
    fake.world().stuck = true;
    let addr = admin.local_addr();
    for path in ["/healthz", "/api/rooms", "/metrics"] {
        assert_eq!(get(addr, path, None).error(503), "unavailable", "{path}");
    }
}

fn exact_metrics() -> Metrics {
    let mut worker0 = roomcast::metrics::Counters::default();
    *worker0.connections_open.slot(ListenerKind::Ws) += 120;
    *worker0.connects.slot(ListenerKind::Ws) += 150;
    worker0.closes.record(1000);
    worker0.closes.record(4009);
    worker0.closes.record(3999);
    worker0.rooms = 4;
    worker0.published.add(Source::Ingest, 40);
    worker0.deliveries = 4_800;
    worker0.socket_writes = 600;
    worker0.bytes_out = 512_000;
    worker0.slow_consumer_closes = 1;
    worker0.comments.accepted = 17;
    worker0.comments.rejected.record(ErrorCode::RateLimited);
    worker0.ingest.record(IngestOp::Publish, IngestOutcome::Ok);
    worker0.ingest.record(IngestOp::Publish, IngestOutcome::Error(ErrorCode::BadRequest));
    worker0.presence_ticks = 30;
    worker0.online = 100;
    worker0.leaves.record(LeaveReason::SlowConsumer);
    for us in [40, 80, 3_000, 7_000_000] {
        worker0.publish_to_write.record(us);
    }
    let mut worker1 = worker0;
    *worker1.connections_open.slot(ListenerKind::Wss) += 5;
    worker1.published.add(Source::Http, 2);
    let mut m = Metrics::of_worker(
        worker0,
        WorkerLoad {
            worker: WorkerId(0),
            busy_us: 2_500_000,
            mailbox_depth: 3,
            write_stalls: 4,
            write_stalled_us: 60_000,
        },
    );
    m.merge(&Metrics::of_worker(
        worker1,
        WorkerLoad { worker: WorkerId(1), busy_us: 500_000, mailbox_depth: 0, ..WorkerLoad::default() },
    ));
    m
}

#[test]
fn metrics_parse_as_prometheus_text_with_exact_values() {
    let (admin, fake) = start(open());
    fake.world().metrics = exact_metrics();
    let reply = get(admin.local_addr(), "/metrics", None);
    assert_eq!(reply.status, 200);
    assert!(
        reply.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        reply.header("content-type")
    );
    let text = reply.text();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text parses");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is {other:?}"),
        }
    };
    assert_eq!(value("roomcast_connections_open", &[("listener", "ws")]), 240.0);
    assert_eq!(value("roomcast_connections_open", &[("listener", "wss")]), 5.0);
    assert_eq!(value("roomcast_connects_total", &[("listener", "ws")]), 300.0);
    assert_eq!(value("roomcast_closes_total", &[("code", "4009")]), 2.0);
    assert_eq!(value("roomcast_closes_total", &[("code", "other")]), 2.0);
    assert_eq!(value("roomcast_closes_total", &[("code", "1001")]), 0.0);
    assert_eq!(value("roomcast_rooms", &[]), 8.0);
    assert_eq!(value("roomcast_messages_published_total", &[("source", "ingest")]), 80.0);
    assert_eq!(value("roomcast_messages_published_total", &[("source", "http")]), 2.0);
    assert_eq!(value("roomcast_messages_published_total", &[("source", "comment")]), 0.0);
    assert_eq!(value("roomcast_deliveries_total", &[]), 9_600.0);
    assert_eq!(value("roomcast_socket_writes_total", &[]), 1_200.0);
    assert_eq!(value("roomcast_sent_bytes_total", &[]), 1_024_000.0);
    assert_eq!(value("roomcast_slow_consumer_closes_total", &[]), 2.0);
    assert_eq!(value("roomcast_comments_accepted_total", &[]), 34.0);
    assert_eq!(value("roomcast_comments_rejected_total", &[("reason", "rate_limited")]), 2.0);
    assert_eq!(value("roomcast_ingest_commands_total", &[("op", "publish"), ("result", "ok")]), 2.0);
    assert_eq!(value("roomcast_ingest_commands_total", &[("op", "publish"), ("result", "bad_request")]), 2.0);
    assert_eq!(value("roomcast_presence_ticks_total", &[]), 60.0);
    assert_eq!(value("roomcast_online", &[]), 200.0);
    assert_eq!(value("roomcast_leaves_total", &[("reason", "slow_consumer")]), 2.0);
    assert_eq!(value("roomcast_leaves_total", &[("reason", "left")]), 0.0);
    assert_eq!(value("roomcast_worker_busy_seconds_total", &[("worker", "0")]), 2.5);
    assert_eq!(value("roomcast_worker_mailbox_depth", &[("worker", "0")]), 3.0);
    assert_eq!(value("roomcast_worker_mailbox_depth", &[("worker", "1")]), 0.0);
    assert_eq!(value("roomcast_worker_write_stalls_total", &[("worker", "0")]), 4.0);
    assert_eq!(value("roomcast_worker_write_stall_seconds_total", &[("worker", "0")]), 0.06);
    assert_eq!(value("roomcast_worker_write_stalls_total", &[("worker", "1")]), 0.0);

    let histogram = scrape.samples.iter().find(|s| s.metric == "roomcast_publish_to_write_seconds").expect("histogram");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else { panic!("{:?}", histogram.value) };
    let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count).expect("bucket");
    assert_eq!((at(0.00005), at(0.0001), at(0.005), at(5.0), at(f64::INFINITY)), (2.0, 4.0, 6.0, 6.0, 8.0));
    assert!(text.lines().any(|l| l == "roomcast_publish_to_write_seconds_count 8"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("roomcast_publish_to_write_seconds_sum 14.00624")), "{text}");
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(parts[2].starts_with("roomcast_"), "{line}");
        assert_eq!(parts[3] == "counter", parts[2].ends_with("_total"), "{line}");
    }
}

#[test]
fn the_stream_sends_snapshots_and_a_rooms_live_feed() {
    let (admin, fake) = start(AdminSettings { pulse_interval: Duration::from_millis(100), ..AdminSettings::default() });
    let addr = admin.local_addr();
    {
        let mut w = fake.world();
        let mut live = FakeRoom::new(30);
        live.publish("live", "comment", r#"{"id":"1f2e-1","user":"ann","name":"Ann","text":"first"}"#);
        live.members = vec![member("ann", 1), member("bob", 2)];
        w.rooms.insert("live".into(), live);
        w.rooms.insert("quiet".into(), FakeRoom::new(2));
        *w.metrics.totals.connections_open.slot(ListenerKind::Ws) += 33;
        w.step = Step { ms: 1000, deliveries: 300, comments: 12, errors_closes: 1, slow: 2, stalls: 0, wave: false };
    }
    assert_eq!(stream(addr, "room=nope").err(), Some(404), "an unknown room is refused before the upgrade");
    assert_eq!(request(addr, "GET", "/admin/stream", &[], b"").error(400), "bad_request", "not a WebSocket");

    let mut s = stream(addr, "room=live").expect("stream");
    let room = s.next_of("room");
    assert_eq!((room["room"].as_str(), room["detail"]["online"].as_u64()), (Some("live"), Some(30)));
    assert_eq!(room["detail"]["events"][0]["data"]["text"], "first");
    assert_eq!(room["presence"]["members"][1]["user"], "bob");
    let first = s.next_of("snapshot");
    let second = s.next_of("snapshot");
    assert_eq!(
        (second["connections"].as_u64(), second["rooms"].as_u64(), second["online"].as_u64()),
        (Some(33), Some(2), Some(32))
    );
    assert_eq!((second["comments_per_s"].as_f64(), second["deliveries_per_s"].as_f64()), (Some(12.0), Some(300.0)));
    assert_eq!(
        (second["interval"]["errors"].as_u64(), second["interval"]["slow_consumer_closes"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(second["top_rooms"][0]["room"], "live");
    let points = |v: &Value| v["series"]["online"].as_array().map(Vec::len).unwrap_or(0);
    assert!(points(&second) > points(&first), "the sparkline grows with each snapshot");

    // A publish through the admin port reaches the feed as the members saw it.
    assert_eq!(
        post(addr, "/api/publish", None, r#"{"room":"live","type":"gift","data":{"g":"rose"}}"#).json()["seq"],
        2
    );
    let feed = s.next_of("feed");
    assert_eq!((feed["room"].as_str(), feed["item"]["kind"].as_str()), (Some("live"), Some("message")));
    assert_eq!(
        (feed["item"]["message"]["seq"].as_u64(), &feed["item"]["message"]["data"]),
        (Some(2), &json!({"g": "rose"}))
    );
    fake.feed("live", || FeedItem::Left { user: "bob".into(), reason: LeaveReason::Heartbeat });
    assert_eq!(s.next_of("feed")["item"], json!({"kind": "left", "user": "bob", "reason": "heartbeat"}));
    // The room's numbers are refreshed as they change.
    fake.world().rooms.get_mut("live").expect("live").online = 31;
    let deadline = std::time::Instant::now() + admin_support::WAIT;
    while s.next_of("room")["detail"]["online"] != 31 {
        assert!(std::time::Instant::now() < deadline, "the room view never showed 31 online");
    }
    // Closing the room ends the feed.
    assert_eq!(post(addr, "/api/close_room", None, r#"{"room":"live"}"#).status, 200);
    assert_eq!(s.next_of("feed")["item"], json!({"kind": "closed"}));
    s.next_of("room_closed");

    // The dashboard going away closes its feed on the worker side.
    fake.world().rooms.insert("again".into(), FakeRoom::new(1));
    let watcher = stream(addr, "room=again").expect("stream");
    assert_eq!(fake.taps("again"), 1);
    drop(watcher);
    let deadline = std::time::Instant::now() + admin_support::WAIT;
    loop {
        fake.feed("again", || FeedItem::Left { user: "x".into(), reason: LeaveReason::Left });
        if fake.taps("again") == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the tap stayed open after its dashboard left");
        std::thread::yield_now();
    }

    // Shutdown closes open dashboards with 1001 ("going away").
    let mut open_stream = stream(addr, "").expect("stream");
    open_stream.next_of("snapshot");
    admin.shutdown();
    assert_eq!(open_stream.close_code(), Some(1001));
    assert!(std::net::TcpStream::connect(addr).is_err(), "the port is closed");
}
