//! Durable comments proven end to end: the real `roomcast serve` binary (port 0, the ready
//! line), real viewers commenting over real WebSockets, and real components behind the
//! sinks: the file sink's JSON Lines on disk, a `redis-server` on a free loopback port, and
//! webhook receivers written here on std's `TcpListener`. The promise under test is the
//! README's: nothing is acked that is not on disk or in a sink, and every acked comment
//! reaches every sink, at least once, in per-room seq order, under the id its event carried.
//!
//! "Nothing acked that is not stored" is checked at one instant: the server is frozen with
//! SIGSTOP (every thread), the spool or the dead Redis is read, the acks the viewers got are
//! taken, and only then is it let go; or the server is killed with SIGKILL and what it left is
//! read. A snapshot taken while the server runs would let a `fast`-mode ack (sent before its
//! record is stored) pass, since the record lands a millisecond later; these tests fail that
//! way when run with `--sink-ack fast`.
//!
//! What each test costs alone (test profile, a machine with a load of ~3 on two cores): the
//! SIGKILL flood ~1.2 s, Redis down mid-flood ~1.9 s (five failed retries of 50..400 ms), the
//! failing webhook ~0.8 s, SIGKILL while the webhook fails ~0.2 s, the full spool ~0.2 s,
//! `delete_comment` ~0.1 s, presence ~0.9 s (three grace periods of 300 ms plus the
//! dispatcher's 100 ms), a room waiting for durability ~0.1 s, durable vs fast ~0.1 s; the
//! whole file ~13 s (the Redis outage lasts 10 s), its tests in parallel.
//!
//! These tests never read the server's own sink code: what is stored is read back from the
//! files, the streams and the HTTP bodies, as a consumer would.

mod flood_support;
mod sink_support;
mod support;

use flood_support::{
    check_acked_stored, check_room_order, comment_ids, config_file, copy_dir, file_sink_records, freeze, hook_records,
    http_get, http_get_text, http_post, spool_bytes, spool_records, wait_for_file, Flood, FloodLog, FloodPlan,
    HeldHook,
};
use serde_json::{json, Value};
use sink_support::{Receiver, RedisServer};
use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Instant;
use support::Server;

/// `roomcast serve` with `args` and the per-connection rate limits off: these tests are about
/// what the sinks store, and their floods send far faster than a person types.
fn start_server(args: &[&str]) -> Server {
    let mut all = vec!["--comment-rate", "0", "--message-rate", "0", "--join-rate", "0"];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// The webhook's shared secret in these tests.
const SECRET: &str = "live test secret";

/// Quick retries, so a recovered sink is tried again within a fraction of a second.
/// How long Redis stays down mid-flood.
const OUTAGE: std::time::Duration = std::time::Duration::from_secs(10);

const QUICK_RETRY: &str = "[sink.retry]\ninitial_ms = 50\nmax_ms = 400\n";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// The ids of the acked comments of `log`, from the events that carried them.
fn acked_ids(log: &FloodLog) -> Vec<String> {
    log.acked
        .iter()
        .map(|a| {
            log.comments
                .get(&(a.room.clone(), a.seq))
                .unwrap_or_else(|| panic!("{a:?}: acked, but no member saw its event"))
                .id
                .clone()
        })
        .collect()
}

fn report(what: &str, log: &FloodLog, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{what}: {} acked in {secs:.2} s ({:.0}/s), {} refused",
        log.acked.len(),
        log.acked.len() as f64 / secs,
        log.refused.len()
    );
}

// ---------------------------------------------------------------- 1. kill -9

/// SIGKILL in the middle of a flood (six viewers over 24 rooms, each keeping 32 comments in
/// flight): after a restart on the same data directory every acked comment is in the file
/// sink, once per seq, in per-room seq order, with its event's id; the log goes on after the
/// repaired tail in a new epoch.
#[test]
fn kill_9_during_a_comment_flood_keeps_every_acked_comment() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = path_str(data.path());
    let mut server = start_server(&["--sink-dir", dir]);
    let started = Instant::now();
    let flood = Flood::start(FloodPlan::new("kill"), |user| server.viewer(user));
    flood.wait_acks(20_000);
    server.signal(libc::SIGKILL);
    let status = server.wait_exit();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let log = flood.join();
    report("kill -9 flood", &log, started);
    assert!(log.refused.is_empty(), "refused during the flood: {:?}", &log.refused[..log.refused.len().min(5)]);
    assert!(log.ended.iter().all(|e| !e.contains("finished")), "every viewer saw the server go: {:?}", log.ended);
    assert!(log.sent.len() > log.acked.len(), "comments were in flight at the kill");

    let restarted = start_server(&["--sink-dir", dir]);
    // Open for business: the restarted server cut whatever line the kill tore.
    let (records, torn) = file_sink_records(data.path());
    assert!(!torn, "a torn last line survived the restart");
    let stored = check_room_order(&records, true);
    check_acked_stored(&log, &stored, "file sink");
    for r in stored.values() {
        let text = r["text"].as_str().expect("a comment has a text");
        assert!(log.sent.values().any(|s| s.text == text), "stored, but never sent: {r}");
    }

    // The log goes on after the repaired tail, in a new epoch of the room.
    let mut viewer = restarted.viewer("after-the-crash");
    let room = "kill-r0";
    viewer.join(room);
    viewer.send_json(json!({"op": "comment", "room": room, "text": "after the crash", "ref": "after"}));
    let event = viewer.until_op("event");
    let ack = viewer.until_op("ack");
    assert_eq!((ack["ref"].as_str(), ack["seq"].as_u64()), (Some("after"), Some(1)), "{ack}");
    let (records, _) = file_sink_records(data.path());
    let last = records.iter().rev().find(|r| r["room"] == room).expect("the room's records");
    assert_eq!(last["id"], event["data"]["id"], "acked, so already in the file: {last}");
    let old_epoch = log.comments.iter().find(|((r, _), _)| r == room).map(|(_, c)| flood_support::epoch_of(&c.id));
    assert_ne!(old_epoch, Some(flood_support::epoch_of(last["id"].as_str().unwrap_or_default())));
}

// ---------------------------------------------------------------- 2. Redis down

/// Every comment record in the per-room streams of `rooms`, in stream order per room; each
/// entry's `type` and `room` fields agree with its record.
fn stream_records(conn: &mut redis::Connection, rooms: &[String]) -> Vec<Value> {
    let mut all = Vec::new();
    for room in rooms {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("roomcast:comments:{room}"))
            .arg("-")
            .arg("+")
            .query(conn)
            .expect("XRANGE");
        for entry in reply.ids {
            let field = |name: &str| entry.get::<String>(name).unwrap_or_else(|| panic!("{} has no {name}", entry.id));
            let record: Value = serde_json::from_str(&field("record")).expect("an entry's record is JSON");
            assert_eq!((record["type"].as_str(), record["room"].as_str()), (Some(&*field("type")), Some(&**room)));
            all.push(record);
        }
    }
    all
}

/// Redis killed (SIGKILL; `appendfsync always`, so what it answered is on its disk) while six
/// viewers flood, kept down for 10 s (and through several failed retries), then started
/// again on the same port. File sink off: Redis and its spool are the only durable places, so every ack during
/// the outage is the spool's. Nothing acked was outside the spool and the stream as it was at
/// the kill; afterwards every acked comment reaches the stream, in order per room.
#[test]
fn redis_down_mid_flood_then_every_acked_comment_reaches_the_stream() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let redis_dir = tmp.path().join("redis");
    std::fs::create_dir_all(&redis_dir).expect("redis dir");
    let redis_args = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"];
    let mut redis = RedisServer::start(&redis_dir, &redis_args);
    let data = tmp.path().join("data");
    let config = config_file(
        tmp.path(),
        &format!(
            "[sink.file]\nenabled = false\n[sink.redis]\nurl = \"{}\"\ntimeout_ms = 1000\n{QUICK_RETRY}",
            redis.url()
        ),
    );
    let server = start_server(&["--config", &config, "--sink-dir", path_str(&data)]);
    // A smaller window than the other floods: ten seconds of spooled comments stay in the
    // tens of thousands.
    let plan = FloodPlan { window: 4, ..FloodPlan::new("redis") };
    let rooms: Vec<String> = (0..plan.rooms).map(|r| format!("redis-r{r}")).collect();
    let started = Instant::now();
    let flood = Flood::start(plan, |user| server.viewer(user));
    flood.wait_acks(1_500);

    redis.kill();
    let outage_ends = Instant::now() + OUTAGE;
    let acked_at_kill = flood.acks();
    // Acks go on while Redis is away (the spool holds the records) and the sink retries.
    flood.wait_acks(acked_at_kill + 2_000);
    server.wait_for_log(|log| log.matches("sink write failed").count() >= 5);
    // One instant: what the spool holds, what Redis held at its kill, and every ack sent.
    let at_kill = tmp.path().join("redis-at-kill");
    let (spooled, during) = {
        let _frozen = freeze(&server);
        let spooled = spool_records(&data.join("spool").join("redis"));
        copy_dir(&redis_dir, &at_kill);
        (spooled, flood.snapshot())
    };
    // The outage's length is this test's input, not a wait standing in for an event.
    std::thread::sleep(outage_ends.saturating_duration_since(Instant::now()));
    redis.restart();
    flood.wait_acks(during.acked.len() + 1_500);
    server.wait_for_log(|log| log.contains("sink healthy again"));
    let log = flood.finish();
    report("flood through a Redis outage", &log, started);
    assert!(log.refused.is_empty(), "refused: {:?}", &log.refused[..log.refused.len().min(5)]);

    // Nothing acked was outside the spool and the stream as the kill left it.
    let frozen = RedisServer::start(&at_kill, &redis_args);
    let stream_at_kill = stream_records(&mut frozen.connection(), &rooms);
    drop(frozen);
    let (in_spool, in_stream) = (comment_ids(&spooled), comment_ids(&stream_at_kill));
    let ids = acked_ids(&during);
    for id in &ids {
        assert!(in_spool.contains(id) || in_stream.contains(id), "acked, but neither spooled nor in Redis: {id}");
    }
    let only_spooled = ids.iter().filter(|id| !in_stream.contains(*id)).count();
    // At least the acks after the kill, less those of writes Redis took just before it.
    assert!(only_spooled >= 1_500, "acks during the outage came from the spool ({only_spooled})");

    // Every acked comment reaches the stream, in order per room.
    let mut conn = redis.connection();
    let wanted: HashSet<String> = acked_ids(&log).into_iter().collect();
    let deadline = Instant::now() + flood_support::WAIT;
    let records = loop {
        let records = stream_records(&mut conn, &rooms);
        let got = comment_ids(&records);
        if wanted.is_subset(&got) {
            break records;
        }
        let missing = wanted.difference(&got).count();
        assert!(Instant::now() < deadline, "{missing} acked comments never reached the stream");
        // A remote store to poll: no event announces a replayed entry.
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stored = check_room_order(&records, true);
    check_acked_stored(&log, &stored, "Redis stream");
    wait_for_spool_drained(&data.join("spool").join("redis"));
}

/// `/metrics` from the admin port at `admin`, parsed by the `prometheus-parse` crate.
fn metrics(admin: &str) -> prometheus_parse::Scrape {
    let (status, text) = http_get_text(admin, "/metrics");
    assert_eq!(status, 200, "{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The spool at `dir` eventually holds nothing undelivered.
fn wait_for_spool_drained(dir: &Path) {
    let deadline = Instant::now() + flood_support::WAIT;
    while spool_bytes(dir) > 0 {
        assert!(Instant::now() < deadline, "the spool at {} never drained", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- 3. webhook 500s

fn webhook_config(dir: &Path, url: &str, extra: &str) -> String {
    config_file(
        dir,
        &format!(
            "[sink.file]\nenabled = false\n[sink.webhook]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n\
             batch_ms = 1\nbatch_records = 200\n{extra}{QUICK_RETRY}"
        ),
    )
}

/// A receiver's check of a request: the signature verifies with the shared secret (HMAC-SHA256
/// over `timestamp + "." + body`, computed here with the `hmac` and `sha2` crates), not with
/// another, and the timestamp is within the README's 300 s tolerance.
fn check_signed(request: &sink_support::Request) {
    assert!(sink_support::verify_signature(SECRET.as_bytes(), request), "bad signature: {:?}", request.headers);
    assert!(!sink_support::verify_signature(b"another secret", request));
    let ts: u64 = request.headers.get("x-roomcast-timestamp").and_then(|t| t.parse().ok()).expect("a timestamp");
    let now = sink_support::now_ms() / 1_000;
    assert!(now.abs_diff(ts) <= 300, "timestamp {ts} is not within 300 s of {now}");
}

/// The webhook answers 500 while six viewers flood: the comments are acked all the same (they
/// are spooled: no request was answered 2xx yet), the sink retries, every request is signed;
/// then it answers 200 and every acked comment is delivered in per-room order, each record
/// of a failed request again with the same id, each retry starting with the batch before it.
#[test]
fn a_failing_webhook_is_retried_from_the_spool_then_gets_every_comment_signed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let receiver = Receiver::start(500);
    let config = webhook_config(tmp.path(), &receiver.url, "");
    let server = start_server(&["--config", &config, "--sink-dir", path_str(&data)]);
    let started = Instant::now();
    let flood = Flood::start(FloodPlan::new("hook"), |user| server.viewer(user));
    flood.wait_acks(1_500);
    // The receiver counts a post before the sink has read its answer; the sink sends the next
    // post only after counting the last failure, so four posts mean three counted retries.
    receiver.wait_for("four failed posts", |r| r.iter().filter(|q| q.status == 500).count() >= 4);
    // One instant: what the spool holds and every ack sent.
    let (spooled, during) = {
        let _frozen = freeze(&server);
        (comment_ids(&spool_records(&data.join("spool").join("webhook"))), flood.snapshot())
    };
    assert!(receiver.requests().iter().all(|r| r.status == 500));
    for id in acked_ids(&during) {
        assert!(spooled.contains(&id), "acked while the webhook failed, but not spooled: {id}");
    }
    // What an operator sees meanwhile: the webhook unhealthy, retrying, its spool growing.
    let admin = server.admin.clone().expect("the admin port is on");
    let (status, sinks) = http_get(&admin, "/api/sinks");
    assert_eq!(status, 200, "{sinks}");
    let hook = sinks["sinks"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "webhook")).expect("webhook");
    assert_eq!(hook["healthy"], false, "{sinks}");
    assert!(hook["retries"].as_u64() >= Some(3), "{sinks}");
    assert!(hook["spool_bytes"].as_u64() > Some(0), "{sinks}");
    assert!(hook["last_error"].as_str().is_some_and(|e| e.contains("500")), "{sinks}");
    let scrape = metrics(&admin);
    let sample = |name: &str| {
        scrape.samples.iter().find(|s| s.metric == name && s.labels.get("sink") == Some("webhook")).map(|s| &s.value)
    };
    assert!(matches!(sample("roomcast_sink_healthy"), Some(prometheus_parse::Value::Gauge(v)) if *v == 0.0));
    assert!(matches!(sample("roomcast_sink_retries_total"), Some(prometheus_parse::Value::Counter(v)) if *v >= 3.0));
    assert!(matches!(sample("roomcast_sink_spool_bytes"), Some(prometheus_parse::Value::Gauge(v)) if *v > 0.0));
    assert!(sample("roomcast_sink_last_error_info").is_some(), "no last error series");

    receiver.set_status(200);
    flood.wait_acks(during.acked.len() + 1_000);
    let log = flood.finish();
    report("flood through a failing webhook", &log, started);
    let wanted: HashSet<String> = acked_ids(&log).into_iter().collect();
    receiver.wait_for("every acked comment delivered", |requests| {
        let got: HashSet<String> =
            requests.iter().filter(|r| r.status == 200).flat_map(|r| comment_ids(&hook_records(&r.body))).collect();
        wanted.is_subset(&got)
    });

    wait_for_spool_drained(&data.join("spool").join("webhook"));
    // The sink's own account catches up with the files once its last batch is answered.
    let deadline = Instant::now() + flood_support::WAIT;
    loop {
        let (_, sinks) = http_get(&admin, "/api/sinks");
        let hook = sinks["sinks"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "webhook")).expect("webhook");
        if (hook["healthy"].as_bool(), hook["spool_records"].as_u64()) == (Some(true), Some(0)) {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook never reported a drained spool: {sinks}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let requests = receiver.requests();
    requests.iter().for_each(check_signed);
    let delivered: Vec<Value> =
        requests.iter().filter(|r| r.status == 200).flat_map(|r| hook_records(&r.body)).collect();
    let stored = check_room_order(&delivered, true);
    check_acked_stored(&log, &stored, "webhook");
    let delivered_lines: HashSet<String> = delivered.iter().map(Value::to_string).collect();
    for r in requests.iter().filter(|r| r.status == 500).flat_map(|r| hook_records(&r.body)) {
        assert!(delivered_lines.contains(&r.to_string()), "failed, then never delivered as it was: {r}");
    }
    // Until the first success every post retries the spool's head: each starts with the
    // records of the one before (the same records, ids and all).
    let first_ok = requests.iter().position(|r| r.status == 200).expect("a 200");
    for pair in requests[..=first_ok].windows(2) {
        let (before, after) = (hook_records(&pair[0].body), hook_records(&pair[1].body));
        assert!(after.starts_with(&before), "a retry that does not start with the batch before it");
    }
}

/// SIGKILL while the webhook fails: every comment acked from the spool survives in it, and
/// the server restarted on the same data directory replays the spool once the webhook answers,
/// before anything new: a comment made after the restart is delivered after all of them.
#[test]
fn kill_9_while_the_webhook_fails_then_the_restart_replays_the_spool_first() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let receiver = Receiver::start(500);
    let config = webhook_config(tmp.path(), &receiver.url, "");
    let args = ["--config", &config, "--sink-dir", path_str(&data)];
    let mut server = start_server(&args);
    let flood = Flood::start(FloodPlan::new("replay"), |user| server.viewer(user));
    flood.wait_acks(2_000);
    receiver.wait_for("a failed post", |r| !r.is_empty());
    server.signal(libc::SIGKILL);
    server.wait_exit();
    let log = flood.join();
    assert!(receiver.requests().iter().all(|r| r.status == 500), "nothing was delivered before the kill");

    receiver.set_status(200);
    let restarted = start_server(&args);
    let mut viewer = restarted.viewer("after-the-restart");
    viewer.join("replay-r0");
    viewer.send_json(json!({"op": "comment", "room": "replay-r0", "text": "after the restart", "ref": "new"}));
    let new_id = viewer.until_op("event")["data"]["id"].as_str().expect("an id").to_owned();
    assert_eq!(viewer.until_op("ack")["ref"], "new");
    let mut wanted: HashSet<String> = acked_ids(&log).into_iter().collect();
    wanted.insert(new_id.clone());
    receiver.wait_for("the spool replayed, then the new comment", |requests| {
        let got: HashSet<String> =
            requests.iter().filter(|r| r.status == 200).flat_map(|r| comment_ids(&hook_records(&r.body))).collect();
        wanted.is_subset(&got)
    });
    let delivered: Vec<Value> =
        receiver.requests().iter().filter(|r| r.status == 200).flat_map(|r| hook_records(&r.body)).collect();
    let stored = check_room_order(&delivered, true);
    check_acked_stored(&log, &stored, "webhook");
    let position = |id: &str| delivered.iter().position(|r| r["id"] == id).expect("delivered");
    let last_old = acked_ids(&log).iter().map(|id| position(id)).max().expect("acked comments");
    assert!(position(&new_id) > last_old, "a new comment overtook the spool's replay");
}

// ---------------------------------------------------------------- 4. spool full

/// The webhook fails for good and the spool is the smallest allowed (1 MiB): once it is full
/// the viewers hear `unavailable` (with their `ref` and the room), the refused comments are
/// never sequenced, and every ack is for a comment in the spool. When the webhook answers
/// again the spool drains, the comments that waited are acked, new ones are taken again, and
/// nothing refused is ever delivered.
#[test]
fn a_full_spool_refuses_with_unavailable_and_acks_nothing_it_did_not_store() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let spool = data.join("spool").join("webhook");
    let receiver = Receiver::start(500);
    let config = webhook_config(tmp.path(), &receiver.url, "[sink.spool]\nmax_bytes = 1048576\n");
    let server = start_server(&["--config", &config, "--sink-dir", path_str(&data)]);
    let plan = FloodPlan {
        viewers: 4,
        rooms: 8,
        rooms_per_viewer: 4,
        window: 16,
        text_chars: 400,
        patience: Some(std::time::Duration::from_millis(20)),
        ..FloodPlan::new("full")
    };
    let started = Instant::now();
    let flood = Flood::start(plan, |user| server.viewer(user));
    flood.wait("20 refusals", |log| log.refused.len() >= 20);
    let during = flood.snapshot();
    let spooled_bytes = spool_bytes(&spool);
    let spooled = comment_ids(&spool_records(&spool));
    assert!(receiver.requests().iter().all(|r| r.status == 500));
    for r in &during.refused {
        assert_eq!(r.code, "unavailable", "{r:?}");
        assert_eq!(r.error_room.as_deref(), Some(r.room.as_str()), "the error names the room: {r:?}");
        assert!(r.message.contains("try again"), "a message for people: {r:?}");
    }
    for id in acked_ids(&during) {
        assert!(spooled.contains(&id), "acked, but not in the spool: {id}");
    }
    // Full means within one batch (200 records of ~500 bytes) of the limit, never past it.
    assert!(spooled_bytes <= 1 << 20, "the spool went past its limit: {spooled_bytes}");
    assert!(spooled_bytes > (1 << 20) - 200 * 600, "refused with room in the spool: {spooled_bytes}");

    receiver.set_status(200);
    let refused_before = during.refused.len();
    flood.wait("acks again after the spool drained", |log| log.acked.len() >= during.acked.len() + 500);
    let log = flood.finish();
    report("flood into a full spool", &log, started);
    assert!(log.refused.len() >= refused_before);
    let wanted: HashSet<String> = acked_ids(&log).into_iter().collect();
    receiver.wait_for("every acked comment delivered", |requests| {
        let got: HashSet<String> =
            requests.iter().filter(|r| r.status == 200).flat_map(|r| comment_ids(&hook_records(&r.body))).collect();
        wanted.is_subset(&got)
    });
    let requests = receiver.requests();
    let delivered: Vec<Value> =
        requests.iter().filter(|r| r.status == 200).flat_map(|r| hook_records(&r.body)).collect();
    let stored = check_room_order(&delivered, true);
    check_acked_stored(&log, &stored, "webhook");
    // What was refused was never acked, never sequenced, never delivered.
    let acked_refs: HashSet<&str> = log.acked.iter().map(|a| a.reference.as_str()).collect();
    let sequenced: HashSet<&str> = log.comments.values().map(|c| c.text.as_str()).collect();
    let delivered_texts: HashSet<&str> = delivered.iter().filter_map(|r| r["text"].as_str()).collect();
    for r in &log.refused {
        assert!(!acked_refs.contains(r.reference.as_str()), "refused and acked: {r:?}");
        let text = log.sent[&r.reference].text.as_str();
        assert!(!sequenced.contains(text), "refused, yet sent to the room: {r:?}");
        assert!(!delivered_texts.contains(text), "refused, yet delivered: {r:?}");
    }
    // Everything sent was answered, one way or the other.
    assert_eq!(log.acked.len() + log.refused.len(), log.sent.len(), "{:?}", log.ended);
}

// ---------------------------------------------------------------- 5. delete_comment

/// `delete_comment` over the ingest socket and over `POST /api/delete_comment`: both viewers
/// get `comment_deleted` in seq order (right after what came before, no gap), the reply
/// carries its seq, and the reply comes once the tombstone is durable: the file already holds
/// it, with the comment's id and the event's seq.
#[test]
fn delete_comment_reaches_viewers_in_order_and_the_sink_as_a_tombstone() {
    let server = start_server(&[]);
    let room = "moderated";
    let (mut alice, mut bob) = (server.viewer("alice"), server.viewer("bob"));
    alice.join(room);
    bob.join(room);
    let mut ids = Vec::new();
    for (n, text) in ["first, to be deleted", "second, also deleted", "third, kept"].iter().enumerate() {
        alice.send_json(json!({"op": "comment", "room": room, "text": text, "ref": n}));
        let event = alice.until_op("event");
        let ack = alice.until_op("ack");
        assert_eq!((ack["ref"].as_u64(), ack["seq"].as_u64()), (Some(n as u64), Some(n as u64 + 1)), "{ack}");
        assert_eq!(bob.until_op("event"), event);
        ids.push(event["data"]["id"].as_str().expect("a comment id").to_owned());
    }

    let mut upstream = server.upstream();
    let reply = upstream.call(json!({"op": "delete_comment", "room": room, "id": ids[0]}));
    assert_eq!(reply, json!({"ok": true, "seq": 4}));
    let tombstone =
        |records: &[Value], id: &str| records.iter().find(|r| r["type"] == "tombstone" && r["id"] == id).cloned();
    let (records, _) = file_sink_records(&server.data);
    let first = tombstone(&records, &ids[0]).expect("the reply waited for the tombstone to be durable");
    assert_eq!((first["room"].as_str(), first["seq"].as_u64()), (Some(room), Some(4)), "{first}");

    let admin = server.admin.clone().expect("the admin port is on");
    let (status, reply) = http_post(&admin, "/api/delete_comment", &json!({"room": room, "id": ids[1]}));
    assert_eq!((status, reply), (200, json!({"ok": true, "seq": 5})));
    let (records, _) = file_sink_records(&server.data);
    let second = tombstone(&records, &ids[1]).expect("the HTTP reply waited for the tombstone too");
    assert_eq!(second["seq"], 5, "{second}");

    for viewer in [&mut alice, &mut bob] {
        for (seq, id) in [(4, &ids[0]), (5, &ids[1])] {
            let event = viewer.until_op("event");
            assert_eq!(
                (event["seq"].as_u64(), event["type"].as_str()),
                (Some(seq), Some("comment_deleted")),
                "{event}"
            );
            assert_eq!(event["data"], json!({"id": id}));
        }
    }
    // In the file: the three comments, then the two tombstones, in the room's seq order.
    let (records, _) = file_sink_records(&server.data);
    check_room_order(&records, true);
    let order: Vec<(String, u64)> = records
        .iter()
        .filter(|r| r["room"] == room)
        .map(|r| (r["type"].as_str().unwrap_or_default().to_owned(), r["seq"].as_u64().unwrap_or(0)))
        .collect();
    let expected: Vec<(String, u64)> =
        [("comment", 1), ("comment", 2), ("comment", 3), ("tombstone", 4), ("tombstone", 5)]
            .iter()
            .map(|(t, s)| (t.to_string(), *s))
            .collect();
    assert_eq!(order, expected);

    // A room that does not exist has no comment to delete.
    let refused = upstream.call(json!({"op": "delete_comment", "room": "nowhere", "id": ids[2]}));
    assert_eq!((refused["ok"].as_bool(), refused["error"].as_str()), (Some(false), Some("bad_request")), "{refused}");
}

// ---------------------------------------------------------------- 6. presence

/// The presence records of `room` in the file: (kind, user), in order.
fn presence_of(records: &[Value], room: &str) -> Vec<(String, Option<String>)> {
    records
        .iter()
        .filter(|r| r["type"] == "presence" && r["room"] == room)
        .map(|r| (r["kind"].as_str().unwrap_or_default().to_owned(), r["user"].as_str().map(str::to_owned)))
        .collect()
}

/// Read `viewer` until a `presence` message lists `user` under `list` (`joined` or `left`).
fn wait_for_presence(viewer: &mut support::Viewer, list: &str, user: &str) {
    loop {
        let p = viewer.until_op("presence");
        if p[list].as_array().is_some_and(|l| l.iter().any(|u| u["user"] == user)) {
            return;
        }
    }
}

fn kind(kind: &str, user: Option<&str>) -> (String, Option<String>) {
    (kind.to_owned(), user.map(str::to_owned))
}

/// Presence records in the file sink (`presence = true`, a 300 ms grace): the first viewer
/// makes the room `occupied`, each user is `online` once; a phone that drops its connection
/// and reconnects within the grace produces nothing; a real departure produces exactly one
/// `offline`, and the last one gone `vacated`.
#[test]
fn presence_records_are_debounced_one_per_real_change() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let grace_ms = 300;
    let config =
        config_file(tmp.path(), &format!("[sink.file]\npresence = true\n[sink.presence]\ngrace_ms = {grace_ms}\n"));
    let server = start_server(&["--config", &config, "--presence-interval-ms", "20"]);
    let room = "watched";
    let mut stays = server.viewer("stays");
    stays.join(room);
    wait_for_file(&server.data, "occupied and online", |r| presence_of(r, room).len() >= 2);

    // A phone drops its connection (no close handshake) and reconnects at once. Whether the
    // reconnect came within the grace is checked from the outside: the server saw the leave
    // after `dropped` and the join before `joined`. A machine too busy to reconnect within
    // the grace makes that attempt say nothing; another user tries again.
    let mut phone_user = None;
    for attempt in 0..3 {
        let user = format!("phone{attempt}");
        let mut phone = server.viewer(&user);
        phone.join(room);
        wait_for_presence(&mut stays, "joined", &user);
        let dropped = Instant::now();
        drop(phone);
        // The home took the leave once the other member hears of it.
        wait_for_presence(&mut stays, "left", &user);
        let mut back = server.viewer(&user);
        back.join(room);
        if dropped.elapsed().as_millis() < grace_ms as u128 {
            phone_user = Some((user, back));
            break;
        }
        eprintln!("attempt {attempt}: the reconnect took {:?}, longer than the grace; trying again", dropped.elapsed());
        drop(back);
    }
    let (phone_user, phone) = phone_user.expect("a reconnect within the grace in three attempts");

    // A real departure of another user: exactly one offline, after the grace. Downs are
    // written in the order their grace ends, so once it is in the file a pending offline of
    // the phone (whose grace ended earlier) would be too.
    let mut leaver = server.viewer("leaver");
    leaver.join(room);
    drop(leaver);
    let offline_leaver = kind("offline", Some("leaver"));
    wait_for_file(&server.data, "the leaver's offline", |r| presence_of(r, room).contains(&offline_leaver));

    // The last viewers go: the room is vacated.
    drop(phone);
    drop(stays);
    let records = wait_for_file(&server.data, "vacated", |r| presence_of(r, room).contains(&kind("vacated", None)));
    let got = presence_of(&records, room);
    let count = |k: &(String, Option<String>)| got.iter().filter(|g| *g == k).count();
    let phone_user = phone_user.as_str();
    assert_eq!(got.first(), Some(&kind("occupied", None)), "{got:?}");
    assert_eq!(got.last(), Some(&kind("vacated", None)), "{got:?}");
    for user in ["stays", "leaver", phone_user] {
        assert_eq!(count(&kind("online", Some(user))), 1, "{user}: {got:?}");
        assert_eq!(count(&kind("offline", Some(user))), 1, "{user}: {got:?}");
    }
    assert_eq!((count(&kind("occupied", None)), count(&kind("vacated", None))), (1, 1), "{got:?}");
    assert!(
        records.iter().all(|r| !r["room"].as_str().is_some_and(|n| n.starts_with("user:"))),
        "a private room's presence reached the sink"
    );
}

// ---------------------------------------------------------------- 7. durable vs fast

/// A server whose file sink is joined by a webhook that holds every request until released.
fn held_webhook_server(dir: &Path, hook: &HeldHook, mode: &str) -> Server {
    let config = config_file(
        dir,
        &format!("[sink.webhook]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nbatch_ms = 1\ntimeout_ms = 60000\n", hook.url),
    );
    start_server(&["--config", &config, "--sink-ack", mode])
}

/// Read `viewer` until an `event`; it must be the next one of `room` after `seq`.
fn next_event(viewer: &mut support::Viewer, room: &str, seq: u64) -> Value {
    let event = viewer.until_op("event");
    assert_eq!((event["room"].as_str(), event["seq"].as_u64()), (Some(room), Some(seq + 1)), "{event}");
    event
}

/// A room waiting for durability (`durable`, the webhook holding its first batch): a viewer
/// joining it, with or without `since`, starts at the last seq members were sent and gets the
/// held comments after the release, once each. The query API (`GET /api/rooms/{room}`)
/// answers the same way: a client told `recovered: false` reloads from it (PROTOCOL.md), and
/// must not get a comment that no member was sent and that is not durable yet (it would then
/// get it again as an event, or, after a crash, have seen a comment that never was).
#[test]
fn a_room_waiting_for_durability_shows_only_what_members_were_sent() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let hook = HeldHook::start();
    let server = held_webhook_server(tmp.path(), &hook, "durable");
    let admin = server.admin.clone().expect("the admin port is on");
    let room = "waiting";
    let mut alice = server.viewer("alice");
    let epoch = alice.join(room)["epoch"].as_str().expect("an epoch").to_owned();
    for n in 0..3 {
        alice.send_json(json!({"op": "comment", "room": room, "text": format!("held {n}"), "ref": n}));
    }
    hook.wait_for("the first comment at the webhook", |r| !r.is_empty());

    let mut bob = server.viewer("bob");
    bob.send_json(json!({"op": "join", "room": room, "since": 0, "epoch": epoch}));
    let joined = bob.until_op("joined");
    assert_eq!((joined["seq"].as_u64(), joined["recovered"].as_bool()), (Some(0), Some(true)), "{joined}");
    let mut carol = server.viewer("carol");
    assert_eq!(carol.join(room)["seq"], 0);
    let (status, detail) = http_get(&admin, &format!("/api/rooms/{room}"));
    assert_eq!(status, 200, "{detail}");
    let (_, recent) = http_get(&admin, &format!("/api/rooms/{room}?since=0&epoch={epoch}"));

    hook.release();
    for viewer in [&mut alice, &mut bob, &mut carol] {
        for seq in 0..3 {
            next_event(viewer, room, seq);
        }
    }
    // Once each: the next comment follows the held ones directly.
    alice.send_json(json!({"op": "comment", "room": room, "text": "after the release", "ref": 3}));
    for viewer in [&mut alice, &mut bob, &mut carol] {
        next_event(viewer, room, 3);
    }
    let shown = |v: &Value| (v["seq"].as_u64(), v["events"].as_array().map(Vec::len));
    assert_eq!(
        (shown(&detail), shown(&recent)),
        ((Some(0), Some(0)), (Some(0), Some(0))),
        "the query API showed comments no member was sent, not yet durable: {detail} (with ?since=0: {recent})"
    );
}

/// A room closed while its comment waits for the webhook: the members get `left` (`closed`)
/// and never the comment (it may never be stored); the commenter's ack still comes, after
/// the release, because by then the comment is stored.
#[test]
fn a_room_closed_while_a_comment_waits_never_shows_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let hook = HeldHook::start();
    let server = held_webhook_server(tmp.path(), &hook, "durable");
    let admin = server.admin.clone().expect("the admin port is on");
    let room = "closing";
    let (mut alice, mut bob) = (server.viewer("alice"), server.viewer("bob"));
    alice.join(room);
    bob.join(room);
    alice.send_json(json!({"op": "comment", "room": room, "text": "held", "ref": 1}));
    hook.wait_for("the comment at the webhook", |r| !r.is_empty());
    let (status, reply) = http_post(&admin, "/api/close_room", &json!({"room": room}));
    assert_eq!(status, 200, "{reply}");
    for viewer in [&mut alice, &mut bob] {
        let left = viewer.next_msg();
        assert_eq!((left["op"].as_str(), left["reason"].as_str()), (Some("left"), Some("closed")), "{left}");
    }
    hook.release();
    let ack = alice.next_msg();
    assert_eq!((ack["op"].as_str(), ack["ref"].as_u64()), (Some("ack"), Some(1)), "{ack}");
    // Nothing of the closed room came in between: the next reply is to this ping.
    for viewer in [&mut alice, &mut bob] {
        viewer.send_json(json!({"op": "ping", "ref": 99}));
        let next = viewer.next_msg();
        assert_eq!(next["op"], "pong", "{next}");
    }
}

/// One viewer's comments and their acks, with a webhook (besides the file sink) that holds
/// every request unanswered until released. In `durable` mode the ack waits for the webhook:
/// none is readable while it holds the batch, and it comes after the release. In `fast` mode
/// 200 comments are acked while the webhook still holds its first request; once released,
/// all of them are in the file sink and delivered to the webhook.
#[test]
fn durable_acks_wait_for_every_sink_and_fast_acks_do_not() {
    for mode in ["durable", "fast"] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let hook = HeldHook::start();
        let server = held_webhook_server(tmp.path(), &hook, mode);
        let room = "acks";
        let mut viewer = server.viewer(&format!("{mode}-viewer"));
        viewer.join(room);
        let count = if mode == "durable" { 1 } else { 200 };
        for n in 0..count {
            viewer.send_json(json!({"op": "comment", "room": room, "text": format!("{mode} {n}"), "ref": n}));
        }
        hook.wait_for("the first batch at the webhook", |r| !r.is_empty());
        if mode == "durable" {
            // Held: nothing may have been acked. What is already readable is all there is to
            // look at (a wrong ack would have had the whole round trip to the webhook to come).
            viewer.tcp().set_nonblocking(true).expect("non-blocking");
            loop {
                match viewer.ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        let op: Value = serde_json::from_str(&t).expect("JSON");
                        assert!(
                            op["op"] != "ack" && op["op"] != "event",
                            "sent while the webhook holds the comment: {t}"
                        );
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            viewer.tcp().set_nonblocking(false).expect("blocking");
            hook.release();
            let ack = viewer.until_op("ack");
            assert_eq!(ack["ref"], 0);
            assert!(hook.requests()[0].answered, "acked before the webhook answered");
        } else {
            let mut acked = HashSet::new();
            while acked.len() < count {
                let ack = viewer.until_op("ack");
                acked.insert(ack["ref"].as_u64().expect("a numeric ref"));
            }
            assert!(hook.requests().iter().all(|r| !r.answered), "the webhook still holds everything");
            hook.release();
        }
        let texts: HashSet<String> = (0..count).map(|n| format!("{mode} {n}")).collect();
        let records = wait_for_file(&server.data, "every comment", |r| {
            texts.iter().all(|t| r.iter().any(|rec| rec["text"] == t.as_str()))
        });
        check_room_order(&records, true);
        hook.wait_for("every comment at the webhook", |requests| {
            let got: HashSet<String> = requests
                .iter()
                .flat_map(|r| hook_records(&r.body))
                .filter_map(|r| r["text"].as_str().map(str::to_owned))
                .collect();
            texts.is_subset(&got)
        });
    }
}
