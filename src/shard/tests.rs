//! Deterministic simulation of several shards: mail is routed by hand, the clock is a number,
//! and what each connection would receive is decoded from its outbound queue.

use super::mail::{IngestReply, Mail, ReplyTo};
use super::*;
use crate::ids::RoomName;
use crate::ids::Seq;
use crate::metrics::Source;
use crate::query::LeaveReason;
use crate::wire::frame::{FrameReader, Role};
use crate::wire::ErrorCode;
use crate::wire::Incoming;
use serde_json::Value;
use std::ops::ControlFlow;

struct Sim {
    shards: Vec<Shard<()>>,
    now: u64,
    replies: Vec<IngestReply>,
}

fn config(budget: usize) -> Config {
    let mut c = Config::default();
    c.limits.outbound_budget = budget;
    // The simulated shell has no kernel buffer: the whole budget is the queue's.
    c.limits.socket_unsent_bytes = 0;
    // The simulated clock moves only when a test moves it, so a batching window would hold
    // messages for ever; the window has its own tests below.
    c.fanout.batch_window_ms = 0;
    c
}

impl Sim {
    fn new(workers: usize) -> Self {
        Self::with_config(workers, &config(1 << 20))
    }

    fn with_config(workers: usize, cfg: &Config) -> Self {
        let shards =
            (0..workers).map(|w| Shard::new(WorkerId(w as u16), ShardConfig::new(cfg, workers, 0xabcd))).collect();
        Self { shards, now: 1_000_000, replies: Vec::new() }
    }

    /// Run end-of-turn on every shard and carry mail until nothing moves.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for s in &mut self.shards {
                s.end_turn(self.now);
            }
            for from in 0..self.shards.len() {
                for to in 0..self.shards.len() {
                    let mail = self.shards[from].take_outbox(WorkerId(to as u16));
                    moved |= !mail.is_empty();
                    for m in mail {
                        self.shards[to].handle_mail(m, self.now);
                    }
                }
                self.replies.extend(self.shards[from].take_ingest_replies());
            }
            if !moved {
                return;
            }
        }
    }

    fn open(&mut self, worker: usize, user: &str) -> (usize, ConnKey) {
        let key = self.shards[worker].open((), Some(user), self.now);
        self.settle();
        (worker, key)
    }

    fn send(&mut self, (w, key): (usize, ConnKey), json: &str) {
        let mut buf = json.as_bytes().to_vec();
        self.shards[w].handle_incoming(key, Incoming::Text(&mut buf), self.now);
        self.settle();
    }

    fn publish(&mut self, room: &str, n: u64) {
        let home = home_of(room, self.shards.len());
        for i in 0..n {
            let reply = Some(ReplyTo { conn: 0, generation: 0, serial: i, part: 0 });
            let mail = Mail::Publish {
                room: name(room),
                kind: "gift".into(),
                data: format!("{{\"i\":{i}}}").into(),
                source: Source::Ingest,
                reply,
            };
            self.shards[usize::from(home.0)].handle_mail(mail, self.now);
        }
        self.settle();
    }

    /// Everything queued for the connection, decoded, and the queue emptied (as if written).
    fn received(&mut self, (w, key): (usize, ConnKey)) -> Vec<Value> {
        let (_, out) = self.shards[w].transmit(key).expect("connection exists");
        let mut bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let queued = out.queued();
        out.advance(queued);
        let mut reader = FrameReader::new(Role::Client);
        let mut out = Vec::new();
        reader
            .feed(&mut bytes, 1 << 20, |msg| {
                match msg {
                    Incoming::Text(t) => out.push(serde_json::from_slice(t).expect("server sends JSON")),
                    Incoming::Close(code, _) => out.push(serde_json::json!({ "close": code })),
                    _ => {}
                }
                ControlFlow::Continue(())
            })
            .expect("server frames are valid");
        out
    }
}

fn name(room: &str) -> RoomName {
    RoomName::new(room).expect("a valid room name")
}

fn ops(msgs: &[Value]) -> Vec<&str> {
    msgs.iter().map(|m| m["op"].as_str().unwrap_or("close")).collect()
}

fn event_seqs(msgs: &[Value], room: &str) -> Vec<u64> {
    msgs.iter().filter(|m| m["op"] == "event" && m["room"] == room).map(|m| m["seq"].as_u64().expect("seq")).collect()
}

#[test]
fn hello_then_joined_then_events_in_order_on_every_shard() {
    let mut sim = Sim::new(3);
    let conns: Vec<_> = (0..6).map(|i| sim.open(i % 3, &format!("u{i}"))).collect();
    for &c in &conns {
        let hello = sim.received(c);
        assert_eq!(ops(&hello), ["hello"]);
        sim.send(c, r#"{"op":"join","room":"live"}"#);
        let joined = sim.received(c);
        assert_eq!(ops(&joined), ["joined"]);
        assert_eq!(joined[0]["seq"], 0);
    }
    sim.publish("live", 50);
    for &c in &conns {
        assert_eq!(event_seqs(&sim.received(c), "live"), (1..=50).collect::<Vec<_>>());
    }
    assert_eq!(sim.replies.len(), 50, "every publish is acknowledged");
}

#[test]
fn a_late_joiner_gets_everything_after_its_joined_seq_and_nothing_twice() {
    let mut sim = Sim::new(2);
    let early = sim.open(0, "early");
    sim.send(early, r#"{"op":"join","room":"r"}"#);
    sim.publish("r", 10);
    let late = sim.open(1, "late");
    sim.send(late, r#"{"op":"join","room":"r"}"#);
    sim.publish("r", 5);
    let got = sim.received(late);
    let joined = got.iter().find(|m| m["op"] == "joined").expect("joined");
    assert_eq!(joined["seq"], 10);
    assert_eq!(joined["online"], 2);
    assert_eq!(event_seqs(&got, "r"), (11..=15).collect::<Vec<_>>());
    assert_eq!(event_seqs(&sim.received(early), "r"), (1..=15).collect::<Vec<_>>());
}

#[test]
fn comment_reaches_every_member_and_is_acked_with_its_seq() {
    let mut sim = Sim::new(2);
    let a = sim.open(0, "alice");
    let b = sim.open(1, "bob");
    for c in [a, b] {
        sim.send(c, r#"{"op":"join","room":"chat"}"#);
        sim.received(c);
    }
    sim.send(a, r#"{"op":"comment","room":"chat","text":"hi \"there\"","ref":"r1"}"#);
    let got_a = sim.received(a);
    let ev = got_a.iter().find(|m| m["op"] == "event").expect("sender sees its comment");
    assert_eq!(ev["type"], "comment");
    assert_eq!(ev["data"]["user"], "alice");
    assert_eq!(ev["data"]["text"], "hi \"there\"");
    let ack = got_a.iter().find(|m| m["op"] == "ack").expect("ack");
    assert_eq!(ack["ref"], "r1");
    assert_eq!(ack["seq"], ev["seq"]);
    let got_b = sim.received(b);
    assert_eq!(event_seqs(&got_b, "chat"), [1]);
}

#[test]
fn errors_keep_the_connection_open() {
    let mut sim = Sim::new(2);
    let a = sim.open(0, "alice");
    sim.received(a);
    sim.send(a, r#"{"op":"comment","room":"nope","text":"x","ref":7}"#);
    sim.send(a, r#"{"op":"join","room":"user:bob"}"#);
    sim.send(a, r#"{"op":"leave","room":"nope"}"#);
    sim.send(a, r#"{"op":"ping"}"#);
    let got = sim.received(a);
    let codes: Vec<_> = got.iter().filter(|m| m["op"] == "error").map(|m| m["code"].as_str()).collect();
    assert_eq!(codes, [Some("not_joined"), Some("forbidden"), Some("not_joined")]);
    assert_eq!(got[0]["ref"], 7);
    assert_eq!(ops(&got).last(), Some(&"pong"));
}

#[test]
fn leave_stops_delivery_and_updates_online() {
    let mut sim = Sim::new(2);
    let a = sim.open(0, "alice");
    let b = sim.open(1, "bob");
    for c in [a, b] {
        sim.send(c, r#"{"op":"join","room":"r"}"#);
    }
    sim.send(a, r#"{"op":"leave","room":"r"}"#);
    assert_eq!(ops(&sim.received(a)).last(), Some(&"left"));
    sim.publish("r", 3);
    assert!(event_seqs(&sim.received(a), "r").is_empty());
    assert_eq!(event_seqs(&sim.received(b), "r"), [1, 2, 3]);
    let home = home_of("r", 2);
    assert_eq!(sim.shards[usize::from(home.0)].home("r").map(HomeRoom::online), Some(1));
}

#[test]
fn one_viewer_with_many_tabs_is_online_once() {
    let mut sim = Sim::new(2);
    let tabs = [sim.open(0, "carol"), sim.open(1, "carol"), sim.open(1, "carol")];
    for t in tabs {
        sim.send(t, r#"{"op":"join","room":"r"}"#);
    }
    let home = usize::from(home_of("r", 2).0);
    assert_eq!(sim.shards[home].home("r").map(HomeRoom::online), Some(1));
    sim.shards[0].remove(tabs[0].1, sim.now);
    sim.settle();
    assert_eq!(sim.shards[home].home("r").map(HomeRoom::online), Some(1));
    for t in &tabs[1..] {
        sim.shards[1].remove(t.1, sim.now);
    }
    sim.settle();
    assert_eq!(sim.shards[home].home("r").map(HomeRoom::online), Some(0));
}

#[test]
fn a_consumer_over_budget_is_closed_with_4009_and_the_rest_get_everything() {
    let mut sim = Sim::with_config(2, &config(4096));
    let slow = sim.open(0, "slow");
    let fast = sim.open(1, "fast");
    for c in [slow, fast] {
        sim.send(c, r#"{"op":"join","room":"r"}"#);
    }
    sim.received(slow);
    let mut fast_seqs = Vec::new();
    for _ in 0..20 {
        sim.publish("r", 10);
        fast_seqs.extend(event_seqs(&sim.received(fast), "r"));
        // The shell's write attempt for the slow one takes nothing; then the budget is judged.
        sim.shards[slow.0].enforce_budget(slow.1);
        sim.settle();
    }
    assert_eq!(fast_seqs, (1..=200).collect::<Vec<_>>());
    let got = sim.received(slow);
    let seqs = event_seqs(&got, "r");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "what the slow one got is gap-free");
    assert_eq!(got.last().map(|m| m["close"].clone()), Some(Value::from(4009)));
    assert_eq!(sim.shards[0].counters().slow_consumer_closes, 1);
}

#[test]
fn private_room_reaches_the_user_without_a_join() {
    let mut sim = Sim::new(2);
    let a = sim.open(0, "alice");
    sim.received(a);
    sim.publish("user:alice", 2);
    assert_eq!(event_seqs(&sim.received(a), "user:alice"), [1, 2]);
}

impl Sim {
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        for s in &mut self.shards {
            s.expire(self.now);
            s.tick(self.now);
        }
        self.settle();
    }

    fn home(&self, room: &str) -> &HomeRoom {
        let home = usize::from(home_of(room, self.shards.len()).0);
        self.shards[home].home(room).expect("room exists at its home")
    }

    fn ingest(&mut self, to: WorkerId, mail: Mail) {
        self.shards[usize::from(to.0)].handle_mail(mail, self.now);
        self.settle();
    }
}

fn presence(msgs: &[Value]) -> Vec<&Value> {
    msgs.iter().filter(|m| m["op"] == "presence").collect()
}

#[test]
fn presence_is_coalesced_to_one_message_per_interval_and_nets_out() {
    let mut sim = Sim::new(2);
    sim.advance(1_000); // start the interval clock
    let watcher = sim.open(0, "watcher");
    sim.send(watcher, r#"{"op":"join","room":"r"}"#);
    sim.advance(1_000);
    sim.received(watcher);
    // Within one interval: two users come, one of them goes again, one tab of watcher opens.
    let a = sim.open(1, "a");
    let b = sim.open(0, "b");
    let tab = sim.open(1, "watcher");
    for c in [a, b, tab] {
        sim.send(c, r#"{"op":"join","room":"r"}"#);
    }
    sim.shards[0].remove(b.1, sim.now);
    sim.settle();
    assert!(presence(&sim.received(watcher)).is_empty(), "nothing before the interval ends");
    sim.advance(1_000);
    let got = sim.received(watcher);
    let p = presence(&got);
    assert_eq!(p.len(), 1, "one presence message per interval: {got:?}");
    assert_eq!(p[0]["online"], 2);
    assert_eq!(p[0]["joined"], serde_json::json!([{"user": "a", "name": "a"}]));
    assert_eq!(p[0]["left"], serde_json::json!([]));
    sim.advance(1_000);
    assert!(presence(&sim.received(watcher)).is_empty(), "nothing changed, nothing sent");
}

#[test]
fn large_rooms_get_online_without_lists() {
    let mut cfg = config(1 << 20);
    cfg.presence.large_room = 3;
    let mut sim = Sim::with_config(2, &cfg);
    sim.advance(1_000);
    let watcher = sim.open(0, "w");
    sim.send(watcher, r#"{"op":"join","room":"big"}"#);
    for i in 0..5 {
        let c = sim.open(i % 2, &format!("v{i}"));
        sim.send(c, r#"{"op":"join","room":"big"}"#);
    }
    sim.advance(1_000);
    let got = sim.received(watcher);
    let p = presence(&got);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["online"], 6);
    assert!(p[0].get("joined").is_none(), "no lists above the threshold: {}", p[0]);
}

#[test]
fn silent_connections_expire_and_leave_presence() {
    let mut cfg = config(1 << 20);
    cfg.presence.heartbeat_ms = 1_000;
    let mut sim = Sim::with_config(2, &cfg);
    let quiet = sim.open(0, "quiet");
    let chatty = sim.open(1, "chatty");
    for c in [quiet, chatty] {
        sim.send(c, r#"{"op":"join","room":"r"}"#);
        sim.received(c);
    }
    for _ in 0..4 {
        sim.advance(1_000);
        sim.send(chatty, r#"{"op":"ping"}"#);
    }
    let got = sim.received(quiet);
    assert_eq!(got.last().map(|m| m["close"].clone()), Some(Value::from(1001)), "{got:?}");
    assert!(sim.shards[1].conn(chatty.1).is_some_and(|c| c.session.is_open()));
    assert_eq!(sim.home("r").online(), 1);
}

#[test]
fn reactions_are_counted_per_interval_into_one_message() {
    let mut sim = Sim::new(2);
    sim.advance(1_000);
    let a = sim.open(0, "a");
    let b = sim.open(1, "b");
    for c in [a, b] {
        sim.send(c, r#"{"op":"join","room":"r"}"#);
    }
    sim.advance(1_000);
    sim.received(a);
    for _ in 0..3 {
        sim.send(a, r#"{"op":"react","room":"r","kind":"heart"}"#);
    }
    sim.send(b, r#"{"op":"react","room":"r","kind":"fire"}"#);
    sim.advance(1_000);
    let got = sim.received(a);
    let r: Vec<_> = got.iter().filter(|m| m["op"] == "reactions").collect();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["counts"], serde_json::json!({"heart": 3, "fire": 1}));
}

#[test]
fn kick_closes_every_connection_of_the_user_or_takes_it_out_of_one_room() {
    let mut sim = Sim::new(2);
    let tabs = [sim.open(0, "troll"), sim.open(1, "troll")];
    let other = sim.open(1, "nice");
    for c in [tabs[0], tabs[1], other] {
        sim.send(c, r#"{"op":"join","room":"r"}"#);
        sim.received(c);
    }
    let reply = Some(ReplyTo { conn: 0, generation: 0, serial: 0, part: 0 });
    for w in 0..2 {
        sim.ingest(WorkerId(w), Mail::Kick { user: "troll".into(), room: Some(name("r")), reply });
    }
    for t in tabs {
        let got = sim.received(t);
        assert_eq!(got.last().map(|m| (m["op"].clone(), m["reason"].clone())), Some(("left".into(), "kicked".into())));
    }
    let closed: u64 =
        sim.replies.iter().map(|r| if let IngestReply::Kicked { closed, .. } = r { *closed } else { 0 }).sum();
    assert_eq!(closed, 2);
    for w in 0..2 {
        sim.ingest(WorkerId(w), Mail::Kick { user: "troll".into(), room: None, reply: None });
    }
    for t in tabs {
        assert_eq!(sim.received(t).last().map(|m| m["close"].clone()), Some(Value::from(4010)));
    }
    assert!(sim.received(other).iter().all(|m| m.get("close").is_none()));
}

#[test]
fn close_room_sends_left_closed_and_frees_the_room() {
    let mut sim = Sim::new(2);
    let a = sim.open(0, "a");
    let b = sim.open(1, "b");
    for c in [a, b] {
        sim.send(c, r#"{"op":"join","room":"r"}"#);
        sim.received(c);
    }
    sim.publish("r", 2);
    let home = home_of("r", 2);
    sim.ingest(home, Mail::CloseRoom { room: name("r"), reply: None });
    for c in [a, b] {
        let got = sim.received(c);
        assert_eq!(event_seqs(&got, "r"), [1, 2]);
        assert_eq!(got.last().map(|m| m["reason"].clone()), Some("closed".into()));
    }
    assert!(sim.shards[usize::from(home.0)].home("r").is_none());
    sim.send(a, r#"{"op":"join","room":"r"}"#);
    let got = sim.received(a);
    assert_eq!(got[0]["seq"], 0, "a closed room starts over");
}

#[test]
fn empty_quiet_rooms_are_freed() {
    let mut cfg = config(1 << 20);
    cfg.history.room_idle_ms = 5_000;
    let mut sim = Sim::with_config(2, &cfg);
    sim.publish("lonely", 1);
    let a = sim.open(0, "a");
    sim.send(a, r#"{"op":"join","room":"busy"}"#);
    for _ in 0..7 {
        sim.advance(1_000);
        sim.send(a, r#"{"op":"ping"}"#);
    }
    let homes = |sim: &Sim, room: &str| sim.shards.iter().filter(|s| s.home(room).is_some()).count();
    assert_eq!(homes(&sim, "lonely"), 0, "empty and quiet: freed");
    assert_eq!(homes(&sim, "busy"), 1, "a room with a member stays");
}

#[test]
fn recovery_replays_exactly_the_missed_messages_or_nothing() {
    let mut sim = Sim::new(2);
    let a = sim.open(0, "a");
    sim.send(a, r#"{"op":"join","room":"r"}"#);
    let joined = sim.received(a);
    let epoch = joined.iter().find(|m| m["op"] == "joined").map(|m| m["epoch"].clone()).expect("joined");
    sim.publish("r", 5);
    sim.received(a);
    sim.shards[0].remove(a.1, sim.now);
    sim.publish("r", 3);
    // Reconnect on the other worker with what it had seen.
    let b = sim.open(1, "a");
    sim.send(b, &format!(r#"{{"op":"join","room":"r","since":5,"epoch":{epoch}}}"#));
    sim.publish("r", 1);
    let got = sim.received(b);
    assert_eq!(event_seqs(&got, "r"), [6, 7, 8, 9]);
    let joined = got.iter().find(|m| m["op"] == "joined").expect("joined");
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["seq"], 8);
    let c = sim.open(1, "c");
    sim.send(c, r#"{"op":"join","room":"r","since":5,"epoch":"not-it"}"#);
    let got = sim.received(c);
    assert!(event_seqs(&got, "r").is_empty(), "wrong epoch: nothing replayed");
    assert_eq!(got.iter().find(|m| m["op"] == "joined").map(|m| m["recovered"].clone()), Some(false.into()));
}

#[test]
fn recovery_outside_the_ring_replays_nothing() {
    let mut cfg = config(1 << 20);
    cfg.history.size = 4;
    let mut sim = Sim::with_config(2, &cfg);
    let a = sim.open(0, "a");
    sim.send(a, r#"{"op":"join","room":"r"}"#);
    let epoch = sim.received(a).iter().find(|m| m["op"] == "joined").map(|m| m["epoch"].clone()).expect("joined");
    sim.publish("r", 10);
    sim.send(a, r#"{"op":"leave","room":"r"}"#);
    sim.send(a, &format!(r#"{{"op":"join","room":"r","since":2,"epoch":{epoch}}}"#));
    let got = sim.received(a);
    let joined = got.iter().find(|m| m["op"] == "joined").expect("joined");
    assert_eq!(joined["recovered"], false);
    assert_eq!(event_seqs(&got, "r"), (1..=10).collect::<Vec<_>>(), "only the live events from before the leave");
}

#[test]
fn state_is_sequenced_with_events_and_carried_by_joined() {
    let mut sim = Sim::new(2);
    let a = sim.open(1, "a");
    sim.send(a, r#"{"op":"join","room":"r"}"#);
    sim.received(a);
    let home = home_of("r", 2);
    sim.publish("r", 1);
    sim.ingest(
        home,
        Mail::SetState { room: name("r"), state: r#"{"phase":"live"}"#.into(), source: Source::Ingest, reply: None },
    );
    sim.publish("r", 1);
    let got = sim.received(a);
    let seqs: Vec<(String, u64)> = got
        .iter()
        .filter(|m| m["op"] == "event" || m["op"] == "state")
        .map(|m| (m["op"].as_str().unwrap_or("").to_owned(), m["seq"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(seqs, [("event".into(), 1), ("state".into(), 2), ("event".into(), 3)]);
    let b = sim.open(0, "b");
    sim.send(b, r#"{"op":"join","room":"r"}"#);
    let joined = sim.received(b).into_iter().find(|m| m["op"] == "joined").expect("joined");
    assert_eq!(joined["state"], serde_json::json!({"phase": "live"}));
    assert_eq!(joined["seq"], 3);
}

mod model {
    //! Property test of presence against a naive model: after any sequence of connects,
    //! joins, leaves, heartbeats, disconnects and clock advances, each room's `online` equals
    //! the number of distinct users with a live, joined, unexpired connection.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const ROOMS: [&str; 2] = ["r0", "r1"];
    const TIMEOUT_MS: u64 = 1_000;

    #[derive(Debug, Clone)]
    enum Op {
        Connect { user: u8, worker: u8 },
        Join { conn: u8, room: u8 },
        Leave { conn: u8, room: u8 },
        Heartbeat { conn: u8 },
        Disconnect { conn: u8 },
        Advance { ticks: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u8..2).prop_map(|(user, worker)| Op::Connect { user, worker }),
            (any::<u8>(), 0u8..2).prop_map(|(conn, room)| Op::Join { conn, room }),
            (any::<u8>(), 0u8..2).prop_map(|(conn, room)| Op::Leave { conn, room }),
            any::<u8>().prop_map(|conn| Op::Heartbeat { conn }),
            any::<u8>().prop_map(|conn| Op::Disconnect { conn }),
            (1u8..8).prop_map(|ticks| Op::Advance { ticks }),
        ]
    }

    struct ModelConn {
        at: (usize, ConnKey),
        /// Keys are reused once a connection is gone (an expired one is dropped when its close
        /// handshake times out), so the model names its connection by id as well.
        id: crate::ids::ConnId,
        user: u8,
        last_seen: u64,
        rooms: BTreeSet<u8>,
        gone: bool,
    }

    fn live(c: &ModelConn, now: u64) -> bool {
        !c.gone && now < c.last_seen + TIMEOUT_MS
    }

    proptest! {
        #[test]
        fn online_is_distinct_live_joined_users(ops in proptest::collection::vec(op(), 1..120)) {
            let mut cfg = config(1 << 20);
            cfg.presence.heartbeat_ms = 400;
            cfg.presence.timeout_ms = TIMEOUT_MS;
            let mut sim = Sim::with_config(2, &cfg);
            let mut conns: Vec<ModelConn> = Vec::new();
            for op in ops {
                match op {
                    Op::Connect { user, worker } => {
                        let at = sim.open(usize::from(worker), &format!("u{user}"));
                        let id = sim.shards[at.0].conn(at.1).expect("just opened").session.id();
                        conns.push(ModelConn { at, id, user, last_seen: sim.now, rooms: BTreeSet::new(), gone: false });
                    }
                    Op::Join { conn, room } | Op::Leave { conn, room } if !conns.is_empty() => {
                        let i = usize::from(conn) % conns.len();
                        if !live(&conns[i], sim.now) {
                            continue;
                        }
                        let join = matches!(op, Op::Join { .. });
                        let verb = if join { "join" } else { "leave" };
                        sim.send(conns[i].at, &format!(r#"{{"op":"{verb}","room":"{}"}}"#, ROOMS[usize::from(room)]));
                        conns[i].last_seen = sim.now;
                        if join {
                            conns[i].rooms.insert(room);
                        } else {
                            conns[i].rooms.remove(&room);
                        }
                    }
                    Op::Heartbeat { conn } if !conns.is_empty() => {
                        let i = usize::from(conn) % conns.len();
                        if live(&conns[i], sim.now) {
                            sim.send(conns[i].at, r#"{"op":"ping"}"#);
                            conns[i].last_seen = sim.now;
                        }
                    }
                    Op::Disconnect { conn } if !conns.is_empty() => {
                        let i = usize::from(conn) % conns.len();
                        if !conns[i].gone {
                            let (w, key) = conns[i].at;
                            if sim.shards[w].conn(key).is_some_and(|c| c.session.id() == conns[i].id) {
                                sim.shards[w].remove(key, sim.now);
                            }
                            sim.settle();
                            conns[i].gone = true;
                        }
                    }
                    Op::Advance { ticks } => sim.advance(u64::from(ticks) * 100),
                    _ => {}
                }
                // Expired connections are closed by the shard; the model just stops counting them.
                for (r, room) in ROOMS.iter().enumerate() {
                    let want: BTreeSet<u8> = conns
                        .iter()
                        .filter(|c| live(c, sim.now) && c.rooms.contains(&(r as u8)))
                        .map(|c| c.user)
                        .collect();
                    let home = usize::from(home_of(room, 2).0);
                    let online = sim.shards[home].home(room).map_or(0, HomeRoom::online);
                    prop_assert_eq!(online, want.len() as u64, "room {} at {}", room, sim.now);
                }
            }
        }
    }
}

#[test]
fn viewer_activity_tracks_last_seen_and_silence_across_tabs() {
    let mut sim = Sim::new(1);
    let start = sim.now;
    let tabs = [sim.open(0, "vic"), sim.open(0, "vic")];
    sim.send(tabs[0], r#"{"op":"join","room":"r"}"#);
    sim.advance(1_000);
    sim.send(tabs[1], r#"{"op":"ping"}"#);
    sim.advance(2_000);
    sim.send(tabs[0], r#"{"op":"react","room":"r","kind":"clap"}"#);
    sim.advance(500);
    let a = sim.shards[0].viewer_activity("vic", sim.now).expect("online here");
    assert_eq!(a.last_seen_ms, start + 3_000, "the reaction is the latest frame");
    assert_eq!(a.silent_ms, 500, "silence counts from the latest reaction of any tab");
    assert!(sim.home("r").viewer_joined_at("vic").is_some_and(|t| t == start));
    assert_eq!(sim.shards[0].viewer_activity("nobody", sim.now), None);
}

/// Buffers waiting in a connection's queue: each is one write's worth for the shell.
fn queued_buffers(sim: &Sim, (w, key): (usize, ConnKey)) -> usize {
    sim.shards[w].conn(key).expect("connection exists").session.outbound().iter().count()
}

#[test]
fn a_busy_room_holds_its_messages_for_the_batching_window_then_sends_them_as_one_buffer() {
    let mut cfg = config(1 << 20);
    cfg.fanout.batch_window_ms = 10;
    let mut sim = Sim::with_config(2, &cfg);
    let members = [sim.open(0, "a"), sim.open(1, "b")];
    for c in members {
        sim.received(c);
        sim.send(c, r#"{"op":"join","room":"live"}"#);
        sim.received(c);
    }
    let home = usize::from(home_of("live", 2).0);
    for s in &mut sim.shards {
        s.tick(sim.now);
    }
    let start = sim.now;
    // A quiet room's message goes out at the end of the turn: no added latency.
    sim.publish("live", 1);
    for c in members {
        assert_eq!(event_seqs(&sim.received(c), "live"), [1]);
    }
    // Within the window after that write, messages are held...
    sim.now = start + 3;
    sim.publish("live", 2);
    for c in members {
        assert!(event_seqs(&sim.received(c), "live").is_empty(), "held until the window ends");
    }
    assert!(sim.shards[home].next_wake_ms() <= start + 10, "the worker wakes by the end of the window");
    sim.now = start + 9;
    sim.settle();
    for c in members {
        assert!(event_seqs(&sim.received(c), "live").is_empty());
    }
    // ...and sent together when it ends: in order, one buffer per member.
    sim.now = start + 10;
    sim.settle();
    for c in members {
        assert_eq!(queued_buffers(&sim, c), 1, "one write per member for the whole window");
        assert_eq!(event_seqs(&sim.received(c), "live"), [2, 3]);
    }
}

#[test]
fn a_join_during_the_batching_window_sends_the_held_messages_first() {
    let mut cfg = config(1 << 20);
    cfg.fanout.batch_window_ms = 50;
    let mut sim = Sim::with_config(2, &cfg);
    let early = sim.open(0, "a");
    sim.received(early);
    sim.send(early, r#"{"op":"join","room":"live"}"#);
    sim.received(early);
    sim.publish("live", 1);
    assert_eq!(event_seqs(&sim.received(early), "live"), [1]);
    sim.now += 1;
    sim.publish("live", 2);
    assert!(event_seqs(&sim.received(early), "live").is_empty(), "held by the window");
    let late = sim.open(1, "b");
    sim.received(late);
    sim.send(late, r#"{"op":"join","room":"live"}"#);
    assert_eq!(event_seqs(&sim.received(early), "live"), [2, 3], "the join flushed the held batch");
    let joined = sim.received(late);
    assert_eq!(ops(&joined), ["joined"]);
    assert_eq!(joined[0]["seq"], 3, "the newcomer starts after the held messages, which it does not get");
    sim.now += 100;
    sim.publish("live", 1);
    assert_eq!(event_seqs(&sim.received(late), "live"), [4]);
    assert_eq!(event_seqs(&sim.received(early), "live"), [4]);
}

#[test]
fn a_comment_is_not_held_by_the_window_and_its_ack_follows_its_event() {
    let mut cfg = config(1 << 20);
    cfg.fanout.batch_window_ms = 50;
    let mut sim = Sim::with_config(2, &cfg);
    let (a, b) = (sim.open(0, "a"), sim.open(1, "b"));
    for c in [a, b] {
        sim.send(c, r#"{"op":"join","room":"chat"}"#);
        sim.received(c);
    }
    sim.publish("chat", 1);
    sim.now += 1;
    sim.publish("chat", 1);
    sim.send(a, r#"{"op":"comment","room":"chat","text":"hi","ref":"c"}"#);
    let got = sim.received(a);
    assert_eq!(ops(&got), ["event", "event", "event", "ack"], "held events, the comment, then its ack");
    assert_eq!(got[3]["seq"], got[2]["seq"]);
    assert_eq!(event_seqs(&sim.received(b), "chat"), [1, 2, 3]);
}

#[test]
fn a_heartbeat_expiry_yields_its_close_frame_and_its_leave_in_the_same_turn() {
    // Issue: with expiry after the mail and writes of a turn, the close frame and the `Leave`
    // waited for the next wake. Now one `handle_timeout` produces both, ready for the turn's
    // outputs (the worker drains mail and writes after it).
    let mut cfg = config(1 << 20);
    cfg.presence.heartbeat_ms = 400;
    cfg.presence.timeout_ms = 1_000;
    let mut sim = Sim::with_config(2, &cfg);
    let room = (0..).map(|i| format!("r{i}")).find(|r| home_of(r, 2) == WorkerId(1)).expect("a room homed on 1");
    let quiet = sim.open(0, "quiet");
    sim.send(quiet, &format!(r#"{{"op":"join","room":"{room}"}}"#));
    sim.received(quiet);
    assert_eq!(sim.home(&room).online(), 1);
    // One turn of worker 0, past the timeout: nothing else is called before the outputs.
    sim.now += 1_100;
    sim.shards[0].handle_timeout(sim.now);
    let mail = sim.shards[0].take_outbox(WorkerId(1));
    assert!(
        mail.iter().any(|m| matches!(m, Mail::Leave { reason: LeaveReason::Heartbeat, .. })),
        "the leave is in this turn's mail: {mail:?}"
    );
    let got = sim.received(quiet);
    assert_eq!(got.last().map(|m| m["close"].clone()), Some(Value::from(1001)), "and the close frame in its queue");
    for m in mail {
        sim.shards[1].handle_mail(m, sim.now);
    }
    assert_eq!(sim.home(&room).online(), 0);
}

mod durability {
    //! Comments leave through the home (DESIGN.md): with a fake sink port, the order rules of
    //! `durable` and `fast` acks, backpressure, joins into a held room and tombstones.

    use super::*;
    use crate::shard::durable::SinkPort;
    use crate::sink::{AckMode, Backpressure, PresenceKind, PresenceRecord, SinkRecord};
    use std::sync::{Arc, Mutex};

    /// What the fake sinks were handed.
    #[derive(Debug, Default)]
    struct Taken {
        records: Vec<(u64, SinkRecord)>,
        presence: Vec<PresenceRecord>,
        refuse: bool,
    }

    #[derive(Debug)]
    struct FakePort(Arc<Mutex<Taken>>, AckMode);

    impl SinkPort for FakePort {
        fn ack_mode(&self) -> AckMode {
            self.1
        }
        fn wants_presence(&self) -> bool {
            true
        }
        fn submit(&mut self, ticket: u64, record: SinkRecord) -> Result<(), Backpressure> {
            let mut taken = self.0.lock().expect("lock");
            if taken.refuse {
                return Err(Backpressure::QueueFull);
            }
            taken.records.push((ticket, record));
            Ok(())
        }
        fn submit_presence(&mut self, record: PresenceRecord) -> Result<(), Backpressure> {
            self.0.lock().expect("lock").presence.push(record);
            Ok(())
        }
    }

    /// Two shards whose rooms' sinks are fakes; the room `chat` is homed on shard 1.
    fn sim(mode: AckMode) -> (Sim, Arc<Mutex<Taken>>, String) {
        let mut sim = Sim::new(2);
        let taken = Arc::new(Mutex::new(Taken::default()));
        for s in &mut sim.shards {
            s.set_sink(Box::new(FakePort(Arc::clone(&taken), mode)));
        }
        let room = (0..).map(|i| format!("chat{i}")).find(|r| home_of(r, 2) == WorkerId(1)).expect("a room on 1");
        (sim, taken, room)
    }

    fn durable(sim: &mut Sim, ticket: u64) {
        sim.shards[1].handle_durable(ticket, sim.now);
        sim.settle();
    }

    #[test]
    fn in_durable_mode_the_event_and_the_ack_wait_for_the_sinks_and_the_ack_follows_the_event() {
        let (mut sim, taken, room) = sim(AckMode::Durable);
        let (a, b) = (sim.open(0, "a"), sim.open(0, "b"));
        for c in [a, b] {
            sim.send(c, &format!(r#"{{"op":"join","room":"{room}"}}"#));
            sim.received(c);
        }
        sim.send(a, &format!(r#"{{"op":"comment","room":"{room}","text":"one","ref":1}}"#));
        sim.publish(&room, 1);
        sim.send(a, &format!(r#"{{"op":"comment","room":"{room}","text":"two","ref":2}}"#));
        assert!(sim.received(a).is_empty() && sim.received(b).is_empty(), "nothing before the sinks hold it");
        let tickets: Vec<u64> = taken.lock().expect("lock").records.iter().map(|(t, _)| *t).collect();
        assert_eq!(tickets, [1, 2], "each comment was handed over with the next ticket");
        let SinkRecord::Comment { seq, id, text, .. } = &taken.lock().expect("lock").records[0].1 else {
            panic!("a comment")
        };
        assert_eq!((*seq, text.as_str()), (1, "one"));
        assert!(id.ends_with("-1"), "{id}");
        // The first is durable: its event, the event published after it, and its ack; the
        // second comment still waits.
        durable(&mut sim, 1);
        let got = sim.received(a);
        assert_eq!(ops(&got), ["event", "event", "ack"]);
        assert_eq!(
            (got[0]["seq"].as_u64(), got[1]["seq"].as_u64(), got[2]["ref"].as_u64()),
            (Some(1), Some(2), Some(1))
        );
        assert_eq!(event_seqs(&sim.received(b), &room), [1, 2]);
        durable(&mut sim, 2);
        let got = sim.received(a);
        assert_eq!(ops(&got), ["event", "ack"]);
        assert_eq!((got[0]["seq"].as_u64(), got[1]["seq"].as_u64()), (Some(3), Some(3)));
        assert_eq!(event_seqs(&sim.received(b), &room), [3]);
    }

    #[test]
    fn in_fast_mode_nothing_waits_but_every_comment_is_handed_over() {
        let (mut sim, taken, room) = sim(AckMode::Fast);
        let a = sim.open(0, "a");
        sim.send(a, &format!(r#"{{"op":"join","room":"{room}"}}"#));
        sim.received(a);
        sim.send(a, &format!(r#"{{"op":"comment","room":"{room}","text":"hi","ref":"x"}}"#));
        assert_eq!(ops(&sim.received(a)), ["event", "ack"]);
        assert_eq!(taken.lock().expect("lock").records.len(), 1);
    }

    #[test]
    fn a_comment_the_sinks_refuse_is_not_sequenced_and_the_commenter_hears_unavailable() {
        let (mut sim, taken, room) = sim(AckMode::Durable);
        let a = sim.open(0, "a");
        sim.send(a, &format!(r#"{{"op":"join","room":"{room}"}}"#));
        sim.received(a);
        taken.lock().expect("lock").refuse = true;
        sim.send(a, &format!(r#"{{"op":"comment","room":"{room}","text":"hi","ref":9}}"#));
        let got = sim.received(a);
        assert_eq!(ops(&got), ["error"]);
        assert_eq!(
            (got[0]["code"].as_str(), got[0]["ref"].as_u64(), got[0]["room"].as_str()),
            (Some("unavailable"), Some(9), Some(room.as_str()))
        );
        assert_eq!(sim.home(&room).seq().0, 0, "nothing was sequenced");
        taken.lock().expect("lock").refuse = false;
        sim.send(a, &format!(r#"{{"op":"comment","room":"{room}","text":"again","ref":10}}"#));
        durable(&mut sim, 1);
        assert_eq!(event_seqs(&sim.received(a), &room), [1], "the next comment gets seq 1: no gap");
    }

    #[test]
    fn a_join_into_a_waiting_room_starts_at_the_last_seq_sent_and_gets_the_held_frames_after() {
        let (mut sim, _taken, room) = sim(AckMode::Durable);
        let a = sim.open(0, "a");
        sim.send(a, &format!(r#"{{"op":"join","room":"{room}"}}"#));
        sim.received(a);
        sim.publish(&room, 1);
        sim.send(a, &format!(r#"{{"op":"comment","room":"{room}","text":"held","ref":1}}"#));
        sim.publish(&room, 1);
        let late = sim.open(0, "late");
        sim.received(late);
        sim.send(late, &format!(r#"{{"op":"join","room":"{room}"}}"#));
        let joined = sim.received(late);
        assert_eq!(
            (ops(&joined).as_slice(), joined[0]["seq"].as_u64()),
            (&["joined"][..], Some(1)),
            "seq 1 was sent, 2 and 3 wait"
        );
        durable(&mut sim, 1);
        assert_eq!(event_seqs(&sim.received(late), &room), [2, 3], "the held frames, no gap, none twice");
        assert_eq!(event_seqs(&sim.received(a), &room), [1, 2, 3]);
    }

    #[test]
    fn a_deleted_comment_reaches_the_room_in_seq_order_and_the_sinks_as_a_tombstone() {
        let (mut sim, taken, room) = sim(AckMode::Durable);
        let a = sim.open(0, "a");
        sim.send(a, &format!(r#"{{"op":"join","room":"{room}"}}"#));
        sim.received(a);
        sim.send(a, &format!(r#"{{"op":"comment","room":"{room}","text":"oops","ref":1}}"#));
        durable(&mut sim, 1);
        let id = sim.received(a)[0]["data"]["id"].as_str().expect("comment id").to_owned();
        let reply = Some(ReplyTo { conn: 0, generation: 0, serial: 0, part: 0 });
        sim.ingest(WorkerId(1), Mail::DeleteComment { room: name(&room), id: id.as_str().into(), reply });
        assert!(sim.received(a).is_empty() && sim.replies.is_empty(), "the tombstone waits for the sinks too");
        durable(&mut sim, 2);
        let got = sim.received(a);
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["seq"].as_u64(), got[0]["data"]["id"].as_str()),
            (Some("comment_deleted"), Some(2), Some(id.as_str()))
        );
        assert!(matches!(sim.replies[..], [IngestReply::Published { seq: Seq(2), .. }]), "{:?}", sim.replies);
        let records = &taken.lock().expect("lock").records;
        assert!(matches!(&records[1], (2, SinkRecord::Tombstone { id: t, seq: 2, .. }) if *t == id));
        let missing = Some(ReplyTo { conn: 0, generation: 0, serial: 1, part: 0 });
        sim.ingest(WorkerId(0), Mail::DeleteComment { room: name("nowhere"), id: "1-1".into(), reply: missing });
        assert!(matches!(&sim.replies[1], IngestReply::Refused { code: ErrorCode::BadRequest, .. }));
    }

    #[test]
    fn presence_transitions_go_to_the_sinks_once_per_change() {
        let (mut sim, taken, room) = sim(AckMode::Durable);
        let tabs = [sim.open(0, "vic"), sim.open(1, "vic")];
        for t in tabs {
            sim.send(t, &format!(r#"{{"op":"join","room":"{room}"}}"#));
        }
        sim.shards[0].remove(tabs[0].1, sim.now);
        sim.settle();
        sim.shards[1].remove(tabs[1].1, sim.now);
        sim.settle();
        let kinds: Vec<&str> = taken
            .lock()
            .expect("lock")
            .presence
            .iter()
            .map(|p| match p.kind {
                PresenceKind::Occupied => "occupied",
                PresenceKind::Online { .. } => "online",
                PresenceKind::Offline { .. } => "offline",
                PresenceKind::Vacated => "vacated",
            })
            .collect();
        assert_eq!(kinds, ["occupied", "online", "offline", "vacated"], "two tabs are one viewer");
    }
}

#[test]
fn an_active_rooms_presence_rides_its_next_batch_and_a_quiet_rooms_goes_alone() {
    let mut sim = Sim::new(2);
    sim.advance(1_000); // start the interval clock
    let watcher = sim.open(0, "watcher");
    sim.send(watcher, r#"{"op":"join","room":"live"}"#);
    sim.advance(1_000);
    sim.received(watcher);
    // The room is active: a message this interval.
    sim.advance(500);
    sim.publish("live", 1);
    sim.received(watcher);
    let a = sim.open(1, "a");
    sim.send(a, r#"{"op":"join","room":"live"}"#);
    sim.advance(500);
    assert!(presence(&sim.received(watcher)).is_empty(), "an active room's presence waits for its next batch");
    sim.advance(100);
    sim.publish("live", 1);
    assert_eq!(queued_buffers(&sim, watcher), 1, "presence and the event in one write");
    let got = sim.received(watcher);
    assert_eq!(ops(&got), ["event", "presence"], "the batch, then what rides it: {got:?}");
    assert_eq!(presence(&got)[0]["joined"], serde_json::json!([{"user": "a", "name": "a"}]));
    // No batch follows: the presence still goes within the interval, alone.
    let b = sim.open(1, "b");
    sim.send(b, r#"{"op":"join","room":"live"}"#);
    sim.advance(400);
    assert!(presence(&sim.received(watcher)).is_empty(), "waiting for a batch");
    sim.advance(1_000);
    let got = sim.received(watcher);
    assert_eq!(presence(&got).len(), 1, "sent alone by the end of the next interval: {got:?}");
    // A room quiet for a whole interval sends its presence at the tick itself.
    let c = sim.open(1, "c");
    sim.send(c, r#"{"op":"join","room":"live"}"#);
    sim.advance(1_000);
    assert_eq!(presence(&sim.received(watcher)).len(), 1, "a quiet room's presence goes at the tick");
}

#[test]
fn a_quiet_rooms_presence_is_written_after_every_waiting_event() {
    let mut sim = Sim::new(1);
    sim.advance(1_000);
    let quiet = sim.open(0, "q");
    sim.send(quiet, r#"{"op":"join","room":"quiet"}"#);
    let busy = sim.open(0, "b");
    sim.send(busy, r#"{"op":"join","room":"busy"}"#);
    sim.advance(1_000);
    let mut keys = Vec::new();
    sim.shards[0].take_dirty(&mut keys, usize::MAX);
    sim.received(quiet);
    sim.received(busy);
    let newcomer = sim.open(0, "n");
    sim.send(newcomer, r#"{"op":"join","room":"quiet"}"#);
    sim.advance(1_000); // the quiet room's presence goes alone: a background write
    sim.publish("busy", 1);
    sim.shards[0].take_dirty(&mut keys, 2);
    assert_eq!(keys, [newcomer.1, busy.1], "replies and events first, oldest first");
    sim.shards[0].take_dirty(&mut keys, usize::MAX);
    assert_eq!(keys, [quiet.1], "then the presence");
    assert_eq!(presence(&sim.received(quiet)).len(), 1);
    assert_eq!(event_seqs(&sim.received(busy), "busy"), [1]);
    // A background member that an event reaches meanwhile is written once, with both.
    let late = sim.open(0, "l");
    sim.send(late, r#"{"op":"join","room":"quiet"}"#);
    sim.shards[0].take_dirty(&mut keys, usize::MAX);
    sim.received(quiet);
    sim.advance(1_000);
    sim.publish("quiet", 1);
    sim.shards[0].take_dirty(&mut keys, usize::MAX);
    assert_eq!(keys.iter().filter(|&&k| k == quiet.1).count(), 1, "listed once: {keys:?}");
    assert_eq!(ops(&sim.received(quiet)), ["presence", "event"]);
}

mod cluster {
    //! The homes of a cluster node (`cluster.rs`, `homes/follow.rs`) against a fake broker that
    //! sequences like the Redis script: joins wait for the room's snapshot, the cluster's order
    //! reaches the members once each, a gap is filled from a new snapshot, a lost history
    //! closes the members with 1012, acks follow their events, refusals answer `unavailable`.

    use super::*;
    use crate::shard::cluster::{Broadcast, BrokerPort, PresenceChange, SequenceRequest, Snapshot, Then};
    use std::sync::{Arc, Mutex};

    /// What the homes asked of the fake broker.
    #[derive(Debug, Default)]
    struct Asked {
        sequence: Vec<SequenceRequest>,
        follow: Vec<String>,
        presence: Vec<(String, Vec<PresenceChange>)>,
        down: bool,
    }

    #[derive(Debug)]
    struct FakeBroker(Arc<Mutex<Asked>>);

    impl BrokerPort for FakeBroker {
        fn sequence(&mut self, request: SequenceRequest) -> Result<(), Then> {
            let mut asked = self.0.lock().expect("lock");
            if asked.down {
                return Err(request.then);
            }
            asked.sequence.push(request);
            Ok(())
        }
        fn follow(&mut self, room: &RoomName) {
            self.0.lock().expect("lock").follow.push(room.to_string());
        }
        fn unfollow(&mut self, _: &RoomName) {}
        fn presence(&mut self, room: &RoomName, changes: Vec<PresenceChange>, _: Vec<(Box<str>, u64)>) {
            self.0.lock().expect("lock").presence.push((room.to_string(), changes));
        }
        fn private(&mut self, _: &Arc<str>, _: bool) {}
        fn control(&mut self, _: crate::shard::cluster::ClusterOp) {}
    }

    const ROOM: &str = "live";

    fn cluster_sim() -> (Sim, Arc<Mutex<Asked>>) {
        let mut sim = Sim::new(2);
        let asked = Arc::new(Mutex::new(Asked::default()));
        for s in &mut sim.shards {
            s.set_broker(Box::new(FakeBroker(Arc::clone(&asked))));
        }
        (sim, asked)
    }

    fn message(seq: u64, epoch: &str) -> Broadcast {
        // Published at the simulation's start (history keeps messages by age).
        let ts_ms = 1_000_000;
        let json = crate::shard::cluster::Template::event(ROOM, "gift", &format!("{{\"n\":{seq}}}"), ts_ms)
            .fill(seq, 0, epoch);
        Broadcast { seq, epoch: epoch.into(), state: None, ts_ms, frame: frame::text_frame_with(|o| o.extend(json)) }
    }

    fn home(sim: &mut Sim, mail: Mail) {
        let home = usize::from(home_of(ROOM, 2).0);
        sim.shards[home].handle_mail(mail, sim.now);
        sim.settle();
    }

    fn snapshot(sim: &mut Sim, epoch: &str, seqs: std::ops::RangeInclusive<u64>) {
        let history: Vec<Broadcast> = seqs.clone().map(|s| message(s, epoch)).collect();
        let snapshot = Snapshot { epoch: epoch.into(), seq: *seqs.end(), version: 0, state: None, history };
        home(sim, Mail::Synced { room: name(ROOM), snapshot: Box::new(snapshot) });
    }

    fn broadcast(sim: &mut Sim, seq: u64, epoch: &str) {
        home(sim, Mail::Broadcast { room: name(ROOM), message: message(seq, epoch) });
    }

    fn seqs(got: &[Value]) -> Vec<u64> {
        got.iter().filter(|m| m["op"] == "event").filter_map(|m| m["seq"].as_u64()).collect()
    }

    #[test]
    fn a_join_waits_for_the_snapshot_then_the_clusters_order_arrives_once() {
        let (mut sim, asked) = cluster_sim();
        let v = sim.open(0, "ann");
        sim.received(v);
        sim.send(v, r#"{"op":"join","room":"live"}"#);
        assert!(sim.received(v).is_empty(), "no joined before the room is in step");
        assert_eq!(asked.lock().expect("lock").follow, ["live"]);
        // A broadcast that races the snapshot is kept, and one the snapshot holds is dropped.
        broadcast(&mut sim, 6, "e1");
        broadcast(&mut sim, 5, "e1");
        snapshot(&mut sim, "e1", 3..=5);
        broadcast(&mut sim, 6, "e1");
        broadcast(&mut sim, 7, "e1");
        let got = sim.received(v);
        let joined = got.iter().find(|m| m["op"] == "joined").expect("joined");
        assert_eq!((joined["seq"].as_u64(), joined["epoch"].as_str()), (Some(5), Some("e1")));
        assert_eq!(seqs(&got), [6, 7], "every seq after joined, once, in order");
        // Recovery from the cluster's history on this node.
        let w = sim.open(1, "bob");
        sim.received(w);
        sim.send(w, r#"{"op":"join","room":"live","since":4,"epoch":"e1"}"#);
        let got = sim.received(w);
        assert_eq!(seqs(&got), [5, 6, 7]);
        assert_eq!(got.iter().find(|m| m["op"] == "joined").map(|j| j["recovered"].as_bool()), Some(Some(true)));
    }

    #[test]
    fn a_gap_is_filled_from_a_new_snapshot() {
        let (mut sim, asked) = cluster_sim();
        let v = sim.open(0, "ann");
        sim.send(v, r#"{"op":"join","room":"live"}"#);
        snapshot(&mut sim, "e1", 1..=2);
        sim.received(v);
        broadcast(&mut sim, 4, "e1");
        assert!(seqs(&sim.received(v)).is_empty(), "3 is missing: nothing out of order");
        assert_eq!(asked.lock().expect("lock").follow.len(), 2, "a new snapshot was asked for");
        broadcast(&mut sim, 5, "e1");
        snapshot(&mut sim, "e1", 1..=4);
        assert_eq!(seqs(&sim.received(v)), [3, 4, 5]);
    }

    #[test]
    fn a_history_the_cluster_lost_closes_the_members_with_1012() {
        let (mut sim, _) = cluster_sim();
        let v = sim.open(0, "ann");
        sim.send(v, r#"{"op":"join","room":"live"}"#);
        snapshot(&mut sim, "e1", 1..=2);
        sim.received(v);
        broadcast(&mut sim, 1, "e2");
        snapshot(&mut sim, "e2", 1..=1);
        let got = sim.received(v);
        assert!(seqs(&got).is_empty(), "nothing of the new epoch on the old connection: {got:?}");
        assert_eq!(got.last().map(|m| m["close"].clone()), Some(serde_json::json!(1012)));
    }

    #[test]
    fn publishes_go_to_the_cluster_and_answer_unavailable_when_it_is_down() {
        let (mut sim, asked) = cluster_sim();
        sim.publish(ROOM, 1);
        let request = asked.lock().expect("lock").sequence.pop().expect("sent to the cluster");
        let filled: Value = serde_json::from_slice(&request.template.fill(9, 0, "e")).expect("JSON");
        assert_eq!((filled["seq"].as_u64(), filled["data"]["i"].as_u64()), (Some(9), Some(0)));
        assert!(sim.replies.is_empty(), "the broker answers a sequenced publish itself");
        asked.lock().expect("lock").down = true;
        sim.publish(ROOM, 1);
        assert!(
            matches!(sim.replies.as_slice(), [IngestReply::Refused { code: ErrorCode::Unavailable, .. }]),
            "{:?}",
            sim.replies
        );
    }

    #[test]
    fn a_comments_ack_follows_its_event_whichever_arrives_first() {
        let (mut sim, asked) = cluster_sim();
        let v = sim.open(0, "ann");
        sim.send(v, r#"{"op":"join","room":"live"}"#);
        snapshot(&mut sim, "e1", 1..=1);
        sim.received(v);
        sim.send(v, r#"{"op":"comment","room":"live","text":"hi","ref":7}"#);
        let request = asked.lock().expect("lock").sequence.pop().expect("the comment went to the cluster");
        let filled: Value = serde_json::from_slice(&request.template.fill(2, 0, "e1")).expect("JSON");
        assert_eq!(filled["data"]["id"], "e1-2");
        // The answer comes before the broadcast: the ack waits for the event.
        home(&mut sim, Mail::Sequenced { room: name(ROOM), outcome: Ok((2, "e1".into())), then: request.then });
        assert!(sim.received(v).is_empty(), "no ack before the event");
        let frame = frame::text_frame_with(|o| o.extend(filled.to_string().into_bytes()));
        let message = Broadcast { seq: 2, epoch: "e1".into(), state: None, ts_ms: 1, frame };
        home(&mut sim, Mail::Broadcast { room: name(ROOM), message });
        let ops: Vec<String> = sim.received(v).iter().map(|m| m["op"].as_str().unwrap_or("").to_owned()).collect();
        assert_eq!(ops, ["event", "ack"]);
    }

    #[test]
    fn presence_goes_to_the_cluster_and_comes_back_as_the_clusters() {
        let (mut sim, asked) = cluster_sim();
        let v = sim.open(0, "ann");
        sim.send(v, r#"{"op":"join","room":"live"}"#);
        snapshot(&mut sim, "e1", 1..=1);
        sim.received(v);
        sim.advance(2_000);
        let reported = asked.lock().expect("lock").presence.clone();
        assert_eq!(reported.len(), 1);
        assert_eq!((reported[0].1[0].user.as_ref(), reported[0].1[0].online), ("ann", true));
        assert!(sim.received(v).iter().all(|m| m["op"] != "presence"), "the room announces the cluster's view only");
        let report = crate::shard::cluster::ClusterPresence {
            online: 3,
            joined: vec![(Arc::from("ann"), Arc::from("ann")), (Arc::from("zed"), Arc::from("Zed"))],
            ..Default::default()
        };
        home(&mut sim, Mail::ClusterPresence { room: name(ROOM), report: Box::new(report) });
        sim.advance(2_000);
        let got = sim.received(v);
        let presence = got.iter().find(|m| m["op"] == "presence").expect("presence");
        assert_eq!(presence["online"], 3);
        assert_eq!(presence["joined"].as_array().map(Vec::len), Some(2));
    }
}
