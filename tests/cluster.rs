//! Several roomcast nodes sharing rooms through Redis (issue 12), proven over real sockets: a
//! real `redis-server` on a free loopback port (AOF with fsync always, in a temp dir) and three
//! real `roomcast serve` processes started with `--cluster-redis-url`. Each test starts its own
//! Redis and nodes and kills them when it ends (Drop).
//!
//! What is shown: publishes on every node (ingest and `POST /api/publish`) reach the viewers on
//! every node in one gap-free seq order; comments likewise, each commenter acked with its seq;
//! `online` counts distinct users over the nodes; a viewer that moves to another node recovers
//! exactly what it missed; `kill -9` of a node costs the other nodes' viewers nothing, its users
//! leave presence and its viewers recover elsewhere; Redis killed and restarted mid-run: the
//! outage's publishes are refused with `unavailable`, service comes back by itself and nothing
//! acked is lost; Redis dropping the nodes' subscription connections mid-flood closes no viewer
//! (the history holds what they missed) and costs them no event; only nodes with members follow
//! a room, and a private room `user:<id>` reaches that user's connections on every node; rooms
//! spread over two Redis servers keep one order each; kicks and closed rooms reach every node;
//! the query API answers for a room from any node; a node that stops takes its viewers out of
//! presence as it goes.
//!
//! Nothing here waits on a clock for a fact it can observe: the tests wait for frames (bounded
//! by [`CLUSTER_WAIT`]), and where there is no frame to wait for (Redis coming back) they retry
//! a publish until it is accepted, with a deadline. No test measures how long anything took.
//! The machine needs `redis-server` (`apt-get install -y redis-server`; `.ci/run` installs it).

mod cluster_support;
mod flood_support;
mod sink_support;
mod support;

use cluster_support::{
    assert_acked_seen, assert_each_source_in_order, assert_increasing, assert_same_mapping, assert_seqs_are_one_to,
    comment_text, gap_free, join, listed, payload, publish_http, publish_http_many, publish_ingest, publish_op, Acked,
    Cluster, CommentPlan, View, Watch, CLUSTER_WAIT, NODES,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Lines an ingest publisher writes before reading their replies.
const BATCH: usize = 50;

/// The events every watcher saw, each checked gap-free from seq 1 and to hold exactly `total`;
/// their mappings, checked equal.
fn gap_free_views(watches: &[Watch], room: &str, total: usize) -> Vec<(String, View)> {
    let views: Vec<_> = watches
        .iter()
        .map(|w| {
            let seen = w.wait_events(total);
            let view = gap_free(&w.name, room, &seen.events, 1);
            assert_eq!(view.len(), total, "{}: more events than were published", w.name);
            (w.name.clone(), view)
        })
        .collect();
    assert_same_mapping(&views);
    views
}

// ---------------------------------------------------------------- 1. one order for publishes

/// Ingest publishes on all three nodes and `POST /api/publish` on A, concurrently: 3,200
/// events, which every viewer on every node sees gap-free, in one seq -> payload mapping that
/// is the publishers' acks.
#[test]
fn publishes_on_every_node_reach_every_viewer_in_one_order() {
    const PER_NODE: usize = 1_000;
    const OVER_HTTP: usize = 200;
    let room = "one-order";
    let cluster = Cluster::start(&[]);
    let mut watches = Vec::new();
    for i in 0..NODES.len() {
        for k in 0..2 {
            let w = cluster.watch(i, &format!("viewer{k}"), room);
            assert_eq!(w.seen().joined["seq"], 0, "{}: a fresh room starts at seq 0", w.name);
            watches.push(w);
        }
    }
    let upstreams: Vec<_> = cluster.nodes.iter().map(support::Server::upstream).collect();
    let acked: Vec<(String, Vec<Acked>)> = std::thread::scope(|s| {
        let mut publishers: Vec<_> = upstreams
            .into_iter()
            .zip(NODES)
            .map(|(mut up, label)| {
                let source = format!("ingest-{label}");
                s.spawn(move || {
                    let acked = publish_ingest(&mut up, room, &source, 0, PER_NODE, BATCH);
                    (source, acked)
                })
            })
            .collect();
        let node_a = cluster.node(0);
        publishers
            .push(s.spawn(move || ("http-a".to_owned(), publish_http_many(node_a, room, "http-a", 0, OVER_HTTP))));
        publishers.into_iter().map(|p| p.join().expect("a publisher thread")).collect()
    });
    for (source, acks) in &acked {
        assert_increasing(source, acks);
    }
    let all: Vec<Acked> = acked.iter().flat_map(|(_, a)| a.iter().cloned()).collect();
    let total = NODES.len() * PER_NODE + OVER_HTTP;
    assert_seqs_are_one_to(&all, total as u64);
    for (name, view) in gap_free_views(&watches, room, total) {
        assert_acked_seen(&name, &view, &all);
    }
}

// ---------------------------------------------------------------- 2. one order for comments

/// Two commenters on each node, 150 comments each with 16 in flight: every viewer sees all 900
/// comment events gap-free in one order, each commenter gets an `ack` per comment whose seq
/// is its comment's.
#[test]
fn comments_from_every_node_reach_every_viewer_in_one_order() {
    const PER_COMMENTER: usize = 150;
    let room = "chatter";
    let cluster = Cluster::start(&[]);
    let plan = CommentPlan { room: room.to_owned(), count: PER_COMMENTER, window: 16 };
    let mut watches = Vec::new();
    // Everybody joins before anybody comments, so every viewer's first event is seq 1.
    let joined: Vec<_> = (0..NODES.len())
        .flat_map(|i| (0..2).map(move |k| (i, format!("talker{i}{k}"))))
        .map(|(i, user)| {
            let (viewer, joined) = cluster.join(i, &user, room);
            (format!("{user}@{}", NODES[i]), user, viewer, joined)
        })
        .collect();
    let mut users = BTreeMap::new();
    for (name, user, viewer, joined) in joined {
        users.insert(name.clone(), user);
        watches.push(Watch::spawn(name, viewer, joined, Some(plan.clone())));
    }
    let total = watches.len() * PER_COMMENTER;
    let mut views = Vec::new();
    for w in &watches {
        let seen = w.wait(CLUSTER_WAIT, "every ack and every comment", |s| {
            s.acks.len() + s.errors.len() >= PER_COMMENTER && s.events.len() >= total
        });
        assert!(seen.errors.is_empty(), "{}: comments refused: {:?}", w.name, seen.errors);
        let view = gap_free(&w.name, room, &seen.events, 1);
        assert_eq!(view.len(), total, "{}: more events than comments", w.name);
        // Every comment of this viewer is acked once, with the seq its event has.
        let mut refs = HashSet::new();
        for ack in &seen.acks {
            let r = ack["ref"].as_str().unwrap_or_else(|| panic!("{}: an ack without the ref: {ack}", w.name));
            assert!(refs.insert(r.to_owned()), "{}: {r} acked twice", w.name);
            let seq = ack["seq"].as_u64().unwrap_or_else(|| panic!("{}: an ack without a seq: {ack}", w.name));
            let (kind, data) = view.get(&seq).unwrap_or_else(|| panic!("{}: {ack} names an unseen seq", w.name));
            assert_eq!(kind, "comment", "{}: {ack} names a {kind} event", w.name);
            assert_eq!(
                (data["text"].as_str(), data["user"].as_str()),
                (Some(r), Some(users[&w.name].as_str())),
                "{}: {ack} names the event {data}",
                w.name
            );
        }
        let want: HashSet<String> = (0..PER_COMMENTER).map(|i| comment_text(&w.name, i)).collect();
        assert_eq!(refs, want, "{}: the acked refs are the comments sent", w.name);
        drop(seen);
        views.push((w.name.clone(), view));
    }
    assert_same_mapping(&views);
    // And the order holds every comment once: 900 distinct ids and texts.
    let (_, first) = &views[0];
    let ids: HashSet<&Value> = first.values().map(|(_, d)| &d["id"]).collect();
    let texts: HashSet<&Value> = first.values().map(|(_, d)| &d["text"]).collect();
    assert_eq!((ids.len(), texts.len()), (total, total), "each comment is one event with an id of its own");
}

// ---------------------------------------------------------------- 3. online over the nodes

/// `online` counts distinct users over all nodes: ann and bob on A, bob and cat on B, dan on
/// C make four; another connection of ann (on C) or dan (on B) changes nothing; bob leaving A
/// while still on B keeps him counted; cat leaving takes her out.
#[test]
fn online_counts_distinct_users_across_nodes() {
    let room = "stage";
    let cluster = Cluster::start(&["--presence-interval-ms", "200"]);
    let ann = cluster.watch(0, "ann", room);
    assert_eq!(ann.seen().joined["online"], 1, "ann is the first in the room");
    let bob_a = cluster.watch(0, "bob", room);
    let bob_b = cluster.watch(1, "bob", room);
    let cat = cluster.watch(1, "cat", room);
    let dan = cluster.watch(2, "dan", room);
    for w in [&ann, &cat, &dan] {
        drop(w.wait_online(4));
    }
    let ann_lists = listed(&ann.seen().presence, "joined");
    for user in ["bob", "cat", "dan"] {
        assert!(ann_lists.iter().any(|u| u == user), "ann@a's presence never listed {user} as joined: {ann_lists:?}");
    }
    // Every node counts the four now: a second connection of a user already there is no one new.
    let ann_c = cluster.watch(2, "ann", room);
    assert_eq!(ann_c.seen().joined["online"], 4, "ann's second connection (on C) adds no one");
    let dan_b = cluster.watch(1, "dan", room);
    assert_eq!(dan_b.seen().joined["online"], 4, "dan's second connection (on B) adds no one");

    let marks: Vec<usize> = [&ann, &dan].iter().map(|w| w.seen().presence.len()).collect();
    drop((bob_a, ann_c, dan_b));
    drop(cat);
    // ann, bob (on B) and dan.
    for w in [&ann, &dan, &bob_b] {
        drop(w.wait_online(3));
    }
    for (w, mark) in [&ann, &dan].into_iter().zip(&marks) {
        let seen = w.seen();
        let after = &seen.presence[*mark..];
        assert!(
            after.iter().all(|p| p["online"].as_u64() >= Some(3)),
            "{}: online fell below 3 while bob stayed on B: {after:?}",
            w.name
        );
        let left = listed(after, "left");
        assert!(left.iter().any(|u| u == "cat"), "{}: cat's leave was not listed: {after:?}", w.name);
        assert!(
            !left.iter().any(|u| u != "cat"),
            "{}: someone still in the room was listed as left: {after:?}",
            w.name
        );
    }
    // A fourth user again: the count goes back to 4 (it would reach only 3 had bob's leave of
    // A taken him out everywhere).
    let marks: Vec<usize> = [&ann, &dan].iter().map(|w| w.seen().presence.len()).collect();
    let fay = cluster.watch(2, "fay", room);
    for (w, mark) in [&ann, &dan].into_iter().zip(marks) {
        let seen = w.wait(CLUSTER_WAIT, "online = 4 with fay", |s| s.presence[mark..].iter().any(|p| p["online"] == 4));
        let after = &seen.presence[mark..];
        assert!(after.iter().all(|p| p["online"].as_u64() >= Some(3)), "{}: {after:?}", w.name);
    }
    drop(fay);
}

// ---------------------------------------------------------------- 4. moving to another node

/// mia watches on A, leaves after seq 5, misses 6..=12 (published on B, A and over HTTP on
/// C) and joins on C with since 5 and the epoch: exactly 6..=12 are replayed, `recovered:
/// true`, and the live stream goes on from 13.
#[test]
fn a_viewer_moved_to_another_node_recovers_exactly_what_it_missed() {
    let room = "moving";
    let cluster = Cluster::start(&[]);
    let mut up_b = cluster.node(1).upstream();
    let (mut mia, joined) = cluster.join(0, "mia", room);
    let epoch = joined["epoch"].clone();
    assert!(epoch.is_string(), "joined carries the epoch: {joined}");
    let before = publish_ingest(&mut up_b, room, "before", 0, 5, 5);
    let mut last = 0;
    for a in &before {
        let e = mia.next_msg();
        assert_eq!((&e["op"], &e["seq"], &e["data"]), (&json!("event"), &json!(a.seq), &a.data), "mia@a: {e}");
        last = a.seq;
    }
    assert_eq!(last, 5);
    drop(mia);

    let mut missed = publish_ingest(&mut up_b, room, "missed-b", 0, 3, 3);
    missed.extend(publish_ingest(&mut cluster.node(0).upstream(), room, "missed-a", 0, 2, 2));
    missed.extend(publish_http_many(cluster.node(2), room, "missed-http-c", 0, 2));
    assert_eq!(missed.iter().map(|a| a.seq).collect::<Vec<_>>(), (6..=12).collect::<Vec<_>>());

    let mut moved = cluster.node(2).viewer("mia");
    let (replayed, joined) = join(&mut moved, room, Some((last, &epoch)));
    let got: Vec<(Value, Value)> = replayed.iter().map(|e| (e["seq"].clone(), e["data"].clone())).collect();
    let want: Vec<(Value, Value)> = missed.iter().map(|a| (json!(a.seq), a.data.clone())).collect();
    assert_eq!(got, want, "mia@c: the replay is exactly the missed events");
    assert_eq!(
        (&joined["recovered"], &joined["seq"], &joined["epoch"]),
        (&json!(true), &json!(12), &epoch),
        "mia@c: {joined}"
    );
    let after = publish_ingest(&mut up_b, room, "after", 0, 1, 1);
    let e = moved.next_msg();
    assert_eq!((&e["op"], &e["seq"], &e["data"]), (&json!("event"), &json!(13), &after[0].data), "mia@c: {e}");
}

// ---------------------------------------------------------------- 5. kill -9 of a node

/// ua on A, ub on B, uc on C; 500 events, then B is killed with SIGKILL while 1,500 more are
/// published on A and C: ua and uc see all 2,000 gap-free; ub drops out of their presence
/// (within node_ttl_ms + node_ttl_ms/3 + 2 presence intervals: the frame is awaited, with a
/// generous deadline); ub, reconnecting to A with since and epoch, recovers the rest.
#[test]
fn kill_9_of_a_node_costs_the_others_nothing_and_its_viewers_recover_elsewhere() {
    const BEFORE: usize = 500;
    const AFTER_PER_NODE: usize = 750;
    let room = "k9";
    let mut cluster =
        Cluster::start(&["--node-ttl-ms", "1500", "--presence-interval-ms", "200", "--history-size", "5000"]);
    let ua = cluster.watch(0, "ua", room);
    let ub = cluster.watch(1, "ub", room);
    let uc = cluster.watch(2, "uc", room);
    let epoch = ub.seen().joined["epoch"].clone();
    for w in [&ua, &ub, &uc] {
        drop(w.wait_online(3));
    }
    let mut up_a = cluster.node(0).upstream();
    let mut up_c = cluster.node(2).upstream();
    let mut acked = publish_ingest(&mut up_a, room, "before-a", 0, BEFORE / 2, BATCH);
    acked.extend(publish_ingest(&mut up_c, room, "before-c", 0, BEFORE / 2, BATCH));
    for w in [&ua, &ub, &uc] {
        drop(w.wait_events(BEFORE));
    }
    let marks: Vec<usize> = [&ua, &uc].iter().map(|w| w.seen().presence.len()).collect();

    let after: Vec<Acked> = std::thread::scope(|s| {
        let a = s.spawn(|| publish_ingest(&mut up_a, room, "after-a", 0, AFTER_PER_NODE, 10));
        let c = s.spawn(|| publish_ingest(&mut up_c, room, "after-c", 0, AFTER_PER_NODE, 10));
        cluster.kill_9(1);
        let mut after = a.join().expect("publisher on A");
        after.extend(c.join().expect("publisher on C"));
        after
    });
    acked.extend(after);
    let total = BEFORE + 2 * AFTER_PER_NODE;
    assert_seqs_are_one_to(&acked, total as u64);

    // B's viewer lost its node; what it saw is a gap-free prefix of the one order.
    let (ub_last, ub_view) = {
        let seen = ub.wait_end();
        (seen.last_seq(), gap_free(&ub.name, room, &seen.events, 1))
    };
    assert!(ub_last >= BEFORE as u64, "ub@b saw the first {BEFORE} events");
    let seen_by_ub: Vec<Acked> = acked.iter().filter(|a| a.seq <= ub_last).cloned().collect();
    assert_acked_seen(&ub.name, &ub_view, &seen_by_ub);
    drop(ub);

    // ub leaves presence on A and C: the dead node's heartbeat expires.
    for (w, mark) in [&ua, &uc].into_iter().zip(marks) {
        let seen = w.wait(CLUSTER_WAIT, "ub out of presence", |s| s.presence[mark..].iter().any(|p| p["online"] == 2));
        let left = listed(&seen.presence[mark..], "left");
        assert!(left.iter().any(|u| u == "ub"), "{}: ub's leave was not listed: {left:?}", w.name);
    }
    let views = gap_free_views(&[ua, uc], room, total);
    for (name, view) in &views {
        assert_acked_seen(name, view, &acked);
    }

    // ub comes back on A with what it last saw.
    let mut back = cluster.node(0).viewer("ub");
    let (replayed, joined) = join(&mut back, room, Some((ub_last, &epoch)));
    assert_eq!(
        (&joined["recovered"], &joined["seq"], &joined["epoch"]),
        (&json!(true), &json!(total), &epoch),
        "ub@a after B died: {joined}"
    );
    let replay = gap_free("ub@a", room, &replayed, ub_last + 1);
    assert_eq!(replay.len() as u64, total as u64 - ub_last, "ub@a: the replay ends at the latest seq");
    assert_acked_seen("ub@a", &replay, &acked.iter().filter(|a| a.seq > ub_last).cloned().collect::<Vec<_>>());
}

// ---------------------------------------------------------------- 6. Redis restarted

/// Every node publishes; Redis is killed: publishes on every node (ingest, and HTTP on A) are
/// refused with `unavailable` while the viewers stay connected; Redis restarts on the same
/// port and dir: each node accepts publishes again by itself (retried until one is accepted,
/// with a deadline), and every acked publish reaches every viewer, in order, gap-free.
#[test]
fn redis_restarted_mid_run_refuses_publishes_then_resumes_losing_nothing_acked() {
    const PER_PHASE: usize = 100;
    let room = "outage";
    let mut cluster = Cluster::start(&[]);
    let watches: Vec<Watch> = (0..NODES.len()).map(|i| cluster.watch(i, "fan", room)).collect();
    let mut ups: Vec<_> = cluster.nodes.iter().map(support::Server::upstream).collect();
    let mut acked = Vec::new();
    for (up, label) in ups.iter_mut().zip(NODES) {
        acked.extend(publish_ingest(up, room, &format!("first-{label}"), 0, PER_PHASE, BATCH));
    }
    acked.extend(publish_http_many(cluster.node(0), room, "first-http-a", 0, 20));
    let before = acked.len();
    for w in &watches {
        drop(w.wait_events(before));
    }

    cluster.redis.kill();
    for (i, (up, label)) in ups.iter_mut().zip(NODES).enumerate() {
        for n in 0..3 {
            let op = publish_op(room, &payload(&format!("outage-{label}"), n));
            let reply = up.call(op.clone());
            assert_eq!(
                (&reply["ok"], &reply["error"]),
                (&json!(false), &json!("unavailable")),
                "node {label}: {op} while Redis is down answered {reply}"
            );
        }
        let (status, reply) = publish_http(cluster.node(i), room, &payload(&format!("outage-http-{label}"), 0));
        assert_eq!((status, &reply["error"]), (503, &json!("unavailable")), "node {label}: POST while Redis is down");
    }
    for w in &watches {
        let seen = w.seen();
        assert!(seen.end.is_none(), "{}: lost its connection while Redis was down: {:?}", w.name, seen.end);
    }

    cluster.redis.restart();
    // No frame says a node reconnected to Redis: retry a publish on each until it is accepted.
    let mut unavailable = 0;
    for (up, label) in ups.iter_mut().zip(NODES) {
        let deadline = Instant::now() + CLUSTER_WAIT;
        let source = format!("back-{label}");
        for n in 0.. {
            let op = publish_op(room, &payload(&source, n));
            let reply = up.call(op.clone());
            if reply["ok"] == true {
                let seq = reply["seq"].as_u64().unwrap_or_else(|| panic!("{op} acked without a seq: {reply}"));
                acked.push(Acked { seq, data: op["data"].clone() });
                break;
            }
            assert_eq!(reply["error"], "unavailable", "node {label}: {op} after Redis restarted answered {reply}");
            unavailable += 1;
            assert!(Instant::now() < deadline, "node {label} refused publishes {CLUSTER_WAIT:?} after Redis came back");
            // Polling: there is no event that announces the node's reconnection.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("publishes refused after the restart, before each node reconnected: {unavailable}");
    for (up, label) in ups.iter_mut().zip(NODES) {
        acked.extend(publish_ingest(up, room, &format!("second-{label}"), 0, PER_PHASE, BATCH));
    }
    acked.extend(publish_http_many(cluster.node(1), room, "second-http-b", 0, 20));
    assert_each_source_in_order(&acked);
    let max = acked.iter().map(|a| a.seq).max().expect("something was acked");
    let all_seqs: HashSet<u64> = acked.iter().map(|a| a.seq).collect();
    assert_eq!(all_seqs.len(), acked.len(), "no seq acked twice");
    let unacked: Vec<u64> = (1..=max).filter(|s| !all_seqs.contains(s)).collect();
    if !unacked.is_empty() {
        // Allowed (a publish applied whose reply was lost), but worth knowing.
        eprintln!("seqs no publisher was acked for: {unacked:?}");
    }
    let total = usize::try_from(max).expect("fits usize");
    for (name, view) in gap_free_views(&watches, room, total) {
        assert_acked_seen(&name, &view, &acked);
    }
}

// ---------------------------------------------------------------- 7. subscriptions dropped

/// Redis drops every node's subscription connection (`CLIENT KILL TYPE pubsub`) five times
/// during a flood of 10,000 publishes on A, with the history bound far above it: nothing is
/// lost in Redis, so the viewers on B and C stay connected (no 1012: the cluster's history
/// holds all they missed while their node resubscribed) and see every event gap-free.
#[test]
fn a_dropped_subscription_is_caught_up_from_history_without_closing_anyone() {
    const TOTAL: usize = 10_000;
    const KILLS: usize = 5;
    let room = "resubscribe";
    let cluster = Cluster::start(&["--history-size", "20000"]);
    let watches: Vec<Watch> = [1, 2].into_iter().map(|i| cluster.watch(i, "fan", room)).collect();
    let mut up = cluster.node(0).upstream();
    let mut redis = cluster.redis.connection();
    let acked = std::thread::scope(|s| {
        let flood = s.spawn(move || publish_ingest(&mut up, room, "flood-a", 0, TOTAL, 20));
        for k in 1..=KILLS {
            // Each round waits for the viewers to get further: their nodes subscribed again.
            let at = k * TOTAL / (KILLS + 2);
            for w in &watches {
                drop(w.wait_events(at));
            }
            // The viewers may have got this far from the last catch-up while their nodes are
            // still between connections: wait until both follow the room again (there is no
            // event for that: poll, bounded).
            let deadline = Instant::now() + CLUSTER_WAIT;
            loop {
                let (_, followers): (String, u64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(format!("rc:{{{room}}}:c"))
                    .query(&mut redis)
                    .expect("PUBSUB NUMSUB");
                if followers == 2 {
                    break;
                }
                assert!(Instant::now() < deadline, "B and C did not subscribe again within {CLUSTER_WAIT:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
            let killed: u64 =
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut redis).expect("CLIENT KILL");
            assert!(killed >= 1, "B and C hold subscription connections");
        }
        flood.join().expect("the publisher on A")
    });
    assert_seqs_are_one_to(&acked, TOTAL as u64);
    for (name, view) in gap_free_views(&watches, room, TOTAL) {
        assert_acked_seen(&name, &view, &acked);
    }
}

// ---------------------------------------------------------------- 8. traffic only where needed

/// The number of nodes subscribed to `room`'s channel.
fn followers(redis: &mut redis::Connection, room: &str) -> u64 {
    let (_, n): (String, u64) =
        redis::cmd("PUBSUB").arg("NUMSUB").arg(format!("rc:{{{room}}}:c")).query(redis).expect("PUBSUB NUMSUB");
    n
}

/// Poll (there is no event for a subscription) until `room` has `n` followers.
fn wait_followers(redis: &mut redis::Connection, room: &str, n: u64) {
    let deadline = Instant::now() + CLUSTER_WAIT;
    while followers(redis, room) != n {
        assert!(Instant::now() < deadline, "{room} did not get {n} following nodes within {CLUSTER_WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A room is followed only by the nodes with members in it (and dropped when the last leaves),
/// and a user's private room `user:<id>` reaches that user's connections on every node and
/// nobody else's.
#[test]
fn only_the_nodes_that_need_a_room_receive_it_and_private_rooms_reach_their_users_nodes() {
    let cluster = Cluster::start(&["--room-idle-ms", "0"]);
    let mut redis = cluster.redis.connection();
    // A room with a member on B only: only B follows it, until the member leaves.
    let (mut bob, _) = cluster.join(1, "bob", "only-b");
    assert_eq!(followers(&mut redis, "only-b"), 1, "a joined room is followed once joined");
    bob.send_json(json!({"op": "leave", "room": "only-b"}));
    assert_eq!(bob.until_op("left")["room"], "only-b");
    wait_followers(&mut redis, "only-b", 0);
    // ann on B and C: her private room is followed by those two nodes only.
    let mut anns: Vec<_> = [1, 2].into_iter().map(|i| cluster.node(i).viewer("ann")).collect();
    wait_followers(&mut redis, "user:ann", 2);
    let mut up = cluster.node(0).upstream();
    let acked = publish_ingest(&mut up, "user:ann", "private", 0, 20, 20);
    for (ann, node) in anns.iter_mut().zip(["b", "c"]) {
        let events: Vec<Value> = (0..20).map(|_| ann.next_msg()).collect();
        let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert_eq!(seqs, acked.iter().map(|a| a.seq).collect::<Vec<_>>(), "ann@{node} got her events in order");
        assert!(events.iter().all(|e| e["room"] == "user:ann"), "ann@{node}: {events:?}");
    }
    // bob (on B too) got none of them: the next thing he sees is his own room's event.
    let (_, joined) = join(&mut bob, "only-b", None);
    assert!(joined["seq"].is_u64(), "joined without a seq: {joined}");
    publish_ingest(&mut up, "only-b", "marker", 0, 1, 1);
    let next = bob.next_msg();
    assert_eq!((next["op"].as_str(), next["room"].as_str()), (Some("event"), Some("only-b")), "bob saw {next}");
}

// ---------------------------------------------------------------- 9. rooms over two Redis

/// With a second Redis (`--cluster-redis-shard`) the rooms are spread over both, each room
/// sequenced by one of them: every viewer still sees its room gap-free and in one order.
#[test]
fn rooms_spread_over_two_redis_servers_keep_one_order_each() {
    const ROOMS: usize = 12;
    const EVENTS: usize = 30;
    let dir = tempfile::tempdir().expect("a temp dir for the second redis");
    let second = sink_support::RedisServer::start(dir.path(), &["--save", ""]);
    let shard = format!("{}/", second.url());
    let cluster = Cluster::start(&["--cluster-redis-shard", shard.as_str()]);
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("spread-{r}")).collect();
    let watches: Vec<(usize, Watch)> =
        rooms.iter().enumerate().map(|(r, room)| (r, cluster.watch(r % 3, &format!("v{r}"), room))).collect();
    let mut up = cluster.node(0).upstream();
    let acked: Vec<Vec<Acked>> = rooms.iter().map(|room| publish_ingest(&mut up, room, room, 0, EVENTS, 10)).collect();
    for (r, watch) in &watches {
        assert_seqs_are_one_to(&acked[*r], EVENTS as u64);
        let seen = watch.wait_events(EVENTS);
        let view = gap_free(&watch.name, &rooms[*r], &seen.events, 1);
        assert_acked_seen(&watch.name, &view, &acked[*r]);
    }
    let rooms_on = |redis: &mut redis::Connection| -> usize {
        let keys: Vec<String> = redis::cmd("KEYS").arg("rc:{spread-*}:m").query(redis).expect("KEYS");
        keys.len()
    };
    let (first, other) = (rooms_on(&mut cluster.redis.connection()), rooms_on(&mut second.connection()));
    assert_eq!(first + other, ROOMS, "each room lives on one server");
    assert!(first > 0 && other > 0, "both servers hold rooms ({first} and {other})");
}

// ---------------------------------------------------------------- 10. moderation everywhere

/// A kick or a `close_room` sent to one node's upstream acts on every node: the kicked user's
/// connection on another node is closed with 4010, a user kicked from one room leaves it there,
/// and a closed room's members everywhere get `left` (`closed`), and the room starts over with a
/// new epoch.
#[test]
fn kicks_and_closed_rooms_reach_every_node() {
    let cluster = Cluster::start(&[]);
    let (mut ann, _) = cluster.join(1, "ann", "mod");
    let (mut bob, _) = cluster.join(2, "bob", "mod");
    let (mut cat, before) = cluster.join(2, "cat", "mod");
    let mut up = cluster.node(0).upstream();
    let reply = up.call(json!({"op": "kick", "user": "ann"}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(ann.close_code(), Some(4010), "ann's connection on B was closed as kicked");
    let reply = up.call(json!({"op": "kick", "user": "bob", "room": "mod"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let left = bob.until_op("left");
    assert_eq!((left["room"].as_str(), left["reason"].as_str()), (Some("mod"), Some("kicked")));
    let reply = up.call(json!({"op": "close_room", "room": "mod"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let left = cat.until_op("left");
    assert_eq!((left["room"].as_str(), left["reason"].as_str()), (Some("mod"), Some("closed")));
    let (_, after) = join(&mut cat, "mod", None);
    assert_ne!(after["epoch"], before["epoch"], "a closed room starts over with a new epoch");
}

// ---------------------------------------------------------------- 11. the query API anywhere

/// `GET /api/rooms/{room}` on a node with no member of the room answers from the cluster: its
/// seq, epoch, state and history, and `since` recovers by the `join` rule.
#[test]
fn the_query_api_answers_for_rooms_the_node_does_not_follow() {
    let cluster = Cluster::start(&[]);
    let (_bob, joined) = cluster.join(1, "bob", "asked");
    let mut up = cluster.node(0).upstream();
    let acked = publish_ingest(&mut up, "asked", "q", 0, 5, 5);
    assert_eq!(up.call(json!({"op": "state", "room": "asked", "state": {"score": [1, 0]}}))["ok"], true);
    let admin = cluster.node(2).admin.clone().expect("node C has an admin port");
    let (status, room) = flood_support::http_get(&admin, "/api/rooms/asked");
    assert_eq!(status, 200, "{room}");
    assert_eq!((room["seq"].as_u64(), room["version"].as_u64()), (Some(6), Some(1)), "{room}");
    assert_eq!(room["epoch"], joined["epoch"]);
    assert_eq!(room["state"], json!({"score": [1, 0]}));
    assert_eq!(room["events"].as_array().map(Vec::len), Some(6));
    let epoch = joined["epoch"].as_str().expect("an epoch");
    let (_, recent) = flood_support::http_get(&admin, &format!("/api/rooms/asked?since=3&epoch={epoch}"));
    let seqs: Vec<u64> = recent["events"].as_array().into_iter().flatten().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!((seqs, recent["recovered"].as_bool()), (vec![4, 5, 6], Some(true)), "{recent}");
    assert_seqs_are_one_to(&acked, 5);
    let (status, _) = flood_support::http_get(&admin, "/api/rooms/never-made");
    assert_eq!(status, 404, "a room the cluster does not know is unknown");
}

// ---------------------------------------------------------------- 12. a node that stops leaves

/// A node stopped with SIGTERM takes its viewers out of the cluster's presence as it goes,
/// long before its heartbeat would expire (here a minute): the other nodes' viewers see them
/// leave.
#[test]
fn a_node_that_stops_takes_its_viewers_out_of_presence() {
    let room = "leaving";
    let mut cluster = Cluster::start(&["--presence-interval-ms", "200", "--node-ttl-ms", "60000", "--drain-ms", "100"]);
    let ann = cluster.watch(0, "ann", room);
    let bob = cluster.watch(1, "bob", room);
    drop(ann.wait_online(2));
    // bob stays connected: the node closes him as it drains (1001), and leaves.
    let status = cluster.nodes[1].terminate();
    assert!(status.success(), "node B stopped cleanly: {status:?}");
    assert_eq!(bob.wait_end().close_code, Some(1001), "bob was told to reconnect elsewhere");
    let seen = ann.wait_online(1);
    assert!(listed(&seen.presence, "left").iter().any(|u| u == "bob"), "bob left: {:?}", seen.presence);
}
