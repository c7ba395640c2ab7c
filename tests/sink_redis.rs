//! The Redis Streams sink against a real `redis-server` started on a free loopback port:
//! entry contents and order, trimming, and Redis killed in the middle of a flood and started
//! again on the same port (every record reported durable reaches the streams, in order per
//! room, and was in the spool or the stream all along).

mod sink_support;

use roomcast::sink::config::{RedisSinkConfig, StreamLayout};
use roomcast::sink::{self, EncodedRecord, PresenceKind, PresenceRecord, SinkRecord};
use sink_support::{check_all_durable_in_order, config_in, wait_until, Durable, Flood, RedisServer, WAIT};
use std::collections::HashMap;
use std::time::Instant;

/// Every entry of `key`: (type, room, record line).
fn entries(conn: &mut redis::Connection, key: &str) -> Vec<(String, String, String)> {
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query(conn).expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|id| {
            let field = |name: &str| id.get::<String>(name).unwrap_or_else(|| panic!("entry {} has no {name}", id.id));
            (field("type"), field("room"), field("record"))
        })
        .collect()
}

fn redis_config(tmp: &std::path::Path, url: String) -> sink::SinkConfig {
    let mut config = config_in(tmp);
    config.file.enabled = false;
    config.redis = Some(RedisSinkConfig { url, batch_ms: 1, ..RedisSinkConfig::default() });
    config
}

fn submit(handle: &sink::SinkHandle, origin: u16, ticket: u64, record: SinkRecord) {
    let deadline = Instant::now() + WAIT;
    while handle.try_submit(origin, ticket, record.clone()).is_err() {
        assert!(Instant::now() < deadline, "refused for {WAIT:?}");
        std::thread::yield_now();
    }
}

#[test]
fn entries_carry_the_record_in_order_per_room() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = RedisServer::start(tmp.path(), &["--save", "", "--appendonly", "no"]);
    let mut config = redis_config(tmp.path(), server.url());
    if let Some(r) = &mut config.redis {
        r.presence = true;
    }
    config.presence.grace_ms = 0;
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let handle = rt.handle();
    let mut flood = Flood::new(0, 3);
    for _ in 0..300 {
        let (ticket, record) = flood.peek();
        submit(&handle, 0, ticket, record);
        flood.taken();
    }
    let tomb = SinkRecord::Tombstone { room: "room-0-1".into(), id: "e1-5".into(), seq: 101, ts_ms: 9 };
    submit(&handle, 0, 301, tomb.clone());
    let online = PresenceKind::Online { user: "alice".into(), name: "Alice".into() };
    handle.try_submit_presence(PresenceRecord { room: "room-0-2".into(), kind: online, ts_ms: 10 }).expect("presence");
    durable.wait_for(0, 301);
    let m = rt.shutdown();
    assert_eq!(m.sinks[0].name, "redis");
    assert_eq!(m.sinks[0].records_written, 302);
    let mut conn = server.connection();
    let mut all = Vec::new();
    for r in 0..3 {
        let room = format!("room-0-{r}");
        let got = entries(&mut conn, &format!("roomcast:comments:{room}"));
        for (kind, entry_room, line) in &got {
            assert_eq!(entry_room, &room);
            let record = EncodedRecord::from_line(line).expect("a record line").decode().expect("decodes");
            assert_eq!(kind, record.kind().as_str());
            if let SinkRecord::Comment { room: rr, seq, text, .. } = &record {
                all.push((rr.to_string(), *seq, text.clone()));
            }
        }
        if r == 1 {
            assert_eq!(got.last().map(|e| e.2.clone()), Some(tomb.encode().line), "the tombstone follows the comments");
        }
        if r == 2 {
            // Presence has its own queue: it is in the stream, not necessarily after the comments.
            assert!(got.iter().any(|e| e.0 == "presence" && e.2.contains("\"online\"")), "no presence entry");
        }
    }
    check_all_durable_in_order(&all, &HashMap::from([(0, 300)]));
    assert_eq!(all.len(), 300, "no duplicates without failures");
}

#[test]
fn one_stream_layout_and_maxlen_trimming() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = RedisServer::start(tmp.path(), &["--save", "", "--appendonly", "no"]);
    let mut config = redis_config(tmp.path(), server.url());
    if let Some(r) = &mut config.redis {
        r.streams = StreamLayout::Single;
        r.key = "all-comments".into();
        r.maxlen = 100;
    }
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let handle = rt.handle();
    let mut flood = Flood::new(4, 5);
    for _ in 0..2_000 {
        let (ticket, record) = flood.peek();
        submit(&handle, 4, ticket, record);
        flood.taken();
    }
    durable.wait_for(4, 2_000);
    rt.shutdown();
    let mut conn = server.connection();
    let len: u64 = redis::cmd("XLEN").arg("all-comments").query(&mut conn).expect("XLEN");
    assert!((100..2_000).contains(&len), "MAXLEN ~ 100 keeps at least 100 and trims (XLEN {len})");
    let got = entries(&mut conn, "all-comments");
    let last = EncodedRecord::from_line(&got[got.len() - 1].2).expect("line").decode().expect("decodes");
    assert!(matches!(last, SinkRecord::Comment { text, .. } if text == "o4t2000"));
}

#[test]
fn redis_killed_mid_flood_loses_nothing_reported_durable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let redis_dir = tmp.path().join("redis");
    std::fs::create_dir_all(&redis_dir).expect("redis dir");
    // AOF with fsync per write: what Redis acknowledged survives its SIGKILL.
    let args = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"];
    let mut server = RedisServer::start(&redis_dir, &args);
    let mut config = redis_config(tmp.path(), server.url());
    config.file.enabled = true;
    if let Some(r) = &mut config.redis {
        r.timeout_ms = 1_000;
    }
    let durable = Durable::new();
    let rt = sink::start(&config, durable.clone()).expect("start");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..2u16)
        .map(|origin| {
            let handle = rt.handle();
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut flood = Flood::new(origin, 20);
                let deadline = Instant::now() + WAIT;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                    let (ticket, record) = flood.peek();
                    match handle.try_submit(origin, ticket, record) {
                        Ok(()) => flood.taken(),
                        Err(_) => std::thread::yield_now(),
                    }
                }
                flood.next_ticket - 1
            })
        })
        .collect();
    durable.wait_for(0, 2_000);
    durable.wait_for(1, 2_000);
    server.kill();
    let at_kill = (durable.max(0), durable.max(1));
    // Acks go on while Redis is down: the records are in the spool.
    durable.wait_for(0, at_kill.0 + 2_000);
    durable.wait_for(1, at_kill.1 + 2_000);
    wait_until("records in the redis spool", || rt.metrics().sinks[1].spool_records > 0);
    let down = rt.metrics();
    assert!(!down.sinks[1].healthy, "{:?}", down.sinks[1]);
    assert!(down.sinks[1].retries > 0 && down.sinks[1].last_error.is_some());
    server.restart();
    wait_until("replay after the restart", || rt.metrics().sinks[1].healthy);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let submitted: Vec<u64> = flooders.into_iter().map(|t| t.join().expect("flooder")).collect();
    durable.wait_for(0, submitted[0]);
    durable.wait_for(1, submitted[1]);
    wait_until("the spool to drain", || {
        let m = rt.metrics();
        m.spool_records == 0 && m.sinks.iter().all(|s| s.lag_records == 0)
    });
    let m = rt.shutdown();
    assert!(m.sinks[1].spooled_records > 0);
    assert_eq!(m.sinks[1].abandoned_records + m.sinks[1].rejected_records, 0);
    let mut conn = server.connection();
    let mut all = Vec::new();
    for origin in 0..2 {
        for r in 0..20 {
            let key = format!("roomcast:comments:room-{origin}-{r}");
            for (_, _, line) in entries(&mut conn, &key) {
                if let SinkRecord::Comment { room, seq, text, .. } =
                    EncodedRecord::from_line(&line).expect("line").decode().expect("decodes")
                {
                    all.push((room.to_string(), seq, text));
                }
            }
        }
    }
    let reported = HashMap::from([(0, durable.max(0)), (1, durable.max(1))]);
    assert_eq!((reported[&0], reported[&1]), (submitted[0], submitted[1]));
    check_all_durable_in_order(&all, &reported);
}
