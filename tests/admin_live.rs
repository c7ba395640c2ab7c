//! The admin port against a real `roomcast serve` (two workers, every port 0, started by
//! `tests/support`): what the query API answers is held against what real viewers received
//! over their sockets. Rooms are placed on both homes and viewers on both workers, so every
//! answer that merges workers (lists, presence activity, counters) is exercised.
//!
//! No answer is polled for: each question is asked after an event that proves the owners
//! already know (a `joined`, a `left` or close echo, an ingest reply, an `ack`, a presence
//! message), because a worker sends its mail before it writes to its sockets, and a
//! question travels behind that mail in the owner's mailbox.

mod admin_support;
mod live_support;
mod support;

use admin_support::urlencode;

use live_support::{
    admin, close_normally, get, get_json, next_ms_after, place, post, post_ok, room_homed_at, scrape, viewer_on,
    wall_ms, Witness,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use support::{ndjson, Got, Server};

/// Witnesses from placed viewers, worker 0's first.
fn witnesses(placed: Vec<Vec<(support::Viewer, Value)>>) -> Vec<Witness> {
    placed.into_iter().flatten().map(|(v, hello)| Witness::new(v, hello)).collect()
}

fn detail(server: &Server, room: &str) -> Value {
    get_json(server, &format!("/api/rooms/{}", urlencode(room)))
}

/// What the API says of a room against what each of its members (`members`, indices into
/// `ws`) saw: seq, epoch, online, and the history ring's messages exactly as received (the
/// ring holds everything these tests publish); and the room list says the same.
fn agrees(server: &Server, room: &str, ws: &mut [Witness], members: &[usize]) {
    let online = members.len() as u64;
    for &i in members {
        ws[i].until_online(room, online);
    }
    let d = detail(server, room);
    assert_eq!(d["online"], online, "{d}");
    for &i in members {
        let w = &ws[i];
        let seen = w.seen(room);
        let joined_seq = seen.joined["seq"].as_u64().expect("joined.seq");
        let last = seen.messages.last().map_or(joined_seq, |m| m["seq"].as_u64().expect("seq"));
        assert_eq!(d["seq"], last, "{} saw seq {last}; the API says {}", w.user(), d["seq"]);
        assert_eq!(d["epoch"], seen.joined["epoch"], "{}", w.user());
        assert_eq!(d["online"], seen.online, "{}", w.user());
        // A member got every message after the seq its `joined` named (and the replayed ones
        // before it): the ring's tail from its first.
        let first = seen.messages.first().map_or(joined_seq + 1, |m| m["seq"].as_u64().expect("seq"));
        assert!(first <= joined_seq + 1, "{}: a gap after its join", w.user());
        let tail: Vec<&Value> =
            d["events"].as_array().expect("events").iter().filter(|e| e["seq"].as_u64() >= Some(first)).collect();
        assert_eq!(tail, seen.messages.iter().collect::<Vec<_>>(), "{}: the ring holds what it received", w.user());
    }
    let listed = get_json(server, &format!("/api/rooms?prefix={}", urlencode(room)));
    let summary = listed["rooms"].as_array().expect("rooms").iter().find(|r| r["room"] == room).expect("listed");
    for key in ["online", "seq", "epoch", "version"] {
        assert_eq!(summary[key], d[key], "{key} in the list and in the room");
    }
}

#[test]
fn a_room_in_the_api_agrees_with_what_its_viewers_saw_on_both_workers() {
    let server = Server::start(&["--presence-interval-ms", "100"]);
    let mut spares = Vec::new();
    // Viewers 0 and 1 on worker 0, 2 and 3 on worker 1; a room homed on each worker.
    let mut ws = witnesses(place(&server, "viewer", 2, 2, &mut spares));
    let rooms = [room_homed_at("stage", 0, 2), room_homed_at("stage", 1, 2)];
    for room in &rooms {
        for (i, w) in ws.iter_mut().enumerate() {
            let joined = w.join(room);
            assert_eq!(joined["online"], i + 1, "joins one by one: {joined}");
        }
    }
    let mut up = server.upstream();
    for room in &rooms {
        for i in 0..4u64 {
            let body = json!({"room": room, "type": "tick", "data": {"i": i}});
            let seq = if i % 2 == 0 {
                let mut line = body.clone();
                line["op"] = json!("publish");
                up.call(line)["seq"].clone()
            } else {
                post_ok(&server, "/api/publish", &body)["seq"].clone()
            };
            assert_eq!(seq, i + 1);
            for w in ws.iter_mut() {
                assert_eq!(w.next_sequenced(room)["seq"], i + 1);
            }
        }
        agrees(&server, room, &mut ws, &[0, 1, 2, 3]);
    }

    // Leaves across workers: a viewer of worker 0 leaves the room homed on worker 1 and the
    // other way round; the count is right as soon as `left` arrives.
    ws[1].leave(&rooms[1]);
    ws[2].leave(&rooms[0]);
    assert_eq!(detail(&server, &rooms[0])["online"], 3);
    assert_eq!(detail(&server, &rooms[1])["online"], 3);
    agrees(&server, &rooms[0], &mut ws, &[0, 1, 3]);
    agrees(&server, &rooms[1], &mut ws, &[0, 2, 3]);

    // A connection closes: it leaves both rooms at once.
    close_normally(ws.remove(3).v);
    assert_eq!(detail(&server, &rooms[0])["online"], 2);
    assert_eq!(detail(&server, &rooms[1])["online"], 2);
    agrees(&server, &rooms[0], &mut ws, &[0, 1]);

    // A newcomer: its `joined`, the next publish and the API agree.
    let mut late = Witness::open(&server, "late");
    let joined = late.join(&rooms[1]);
    assert_eq!((&joined["online"], &joined["seq"]), (&json!(3), &json!(4)));
    ws.push(late);
    let seq = up.call(json!({"op": "publish", "room": rooms[1], "type": "tick", "data": "late"}))["seq"].clone();
    assert_eq!(seq, 5);
    for i in [0, 2, 3] {
        assert_eq!(ws[i].next_sequenced(&rooms[1])["seq"], 5);
    }
    let d = detail(&server, &rooms[1]);
    assert_eq!((&d["seq"], &d["online"]), (&json!(5), &json!(3)));
    agrees(&server, &rooms[1], &mut ws, &[0, 2, 3]);
    drop(spares);
}

#[test]
fn the_upstream_paths_reach_viewers_with_the_next_seq() {
    let server = Server::start(&[]);
    let mut ann = Witness::open(&server, "ann");
    let mut bob = Witness::open(&server, "bob");
    ann.join("show");
    bob.join("show");

    let reply = post_ok(&server, "/api/publish", &json!({"room": "show", "type": "gift", "data": {"gift": "rose"}}));
    assert_eq!(reply, json!({"ok": true, "seq": 1}));
    for w in [&mut ann, &mut bob] {
        let e = w.next_sequenced("show");
        assert_eq!(
            (&e["op"], &e["seq"], &e["type"], &e["data"]),
            (&json!("event"), &json!(1), &json!("gift"), &json!({"gift": "rose"}))
        );
    }
    // The ingest socket and the HTTP path share one sequence.
    let mut up = server.upstream();
    assert_eq!(
        up.call(json!({"op": "publish", "room": "show", "type": "t", "data": 2})),
        json!({"ok": true, "seq": 2})
    );
    let reply = post_ok(&server, "/api/publish", &json!({"op": "publish", "room": "show", "type": "t", "data": 3}));
    assert_eq!(reply["seq"], 3, "the next seq after the socket's");
    for w in [&mut ann, &mut bob] {
        assert_eq!(w.next_sequenced("show")["seq"], 2);
        assert_eq!(w.next_sequenced("show")["data"], 3);
    }
    let reply = post_ok(&server, "/api/publish", &json!({"rooms": ["show", "other"], "type": "t", "data": 4}));
    assert_eq!(reply, json!({"ok": true, "seqs": [4, 1]}));
    for w in [&mut ann, &mut bob] {
        assert_eq!(w.next_sequenced("show")["seq"], 4);
    }

    let reply = post_ok(&server, "/api/state", &json!({"room": "show", "state": {"title": "Live", "round": 1}}));
    assert_eq!(reply, json!({"ok": true, "seq": 5, "version": 1}));
    for w in [&mut ann, &mut bob] {
        let s = w.next_sequenced("show");
        assert_eq!(
            s,
            json!({"op": "state", "room": "show", "seq": 5, "version": 1, "state": {"title": "Live", "round": 1}})
        );
    }
    let d = detail(&server, "show");
    assert_eq!((&d["state"], &d["version"], &d["seq"]), (&json!({"title": "Live", "round": 1}), &json!(1), &json!(5)));

    // Kick from one room: `left` with its reason; the connection stays.
    assert_eq!(
        post_ok(&server, "/api/kick", &json!({"user": "bob", "room": "show"})),
        json!({"ok": true, "closed": 1})
    );
    let left = bob.until("left", |m| m["op"] == "left");
    assert_eq!(left, json!({"op": "left", "room": "show", "reason": "kicked"}));
    bob.v.send_json(json!({"op": "ping"}));
    bob.until("pong", |m| m["op"] == "pong");
    assert_eq!(detail(&server, "show")["online"], 1);

    // Kick everywhere: every connection of the user is closed with 4010.
    let mut tabs = [server.viewer("carl"), server.viewer("carl")];
    tabs[0].join("show");
    assert_eq!(post_ok(&server, "/api/kick", &json!({"user": "carl"})), json!({"ok": true, "closed": 2}));
    for tab in &mut tabs {
        assert_eq!(tab.close_code(), Some(4010));
    }

    // Closing the room: its members are told, and it is gone from the API.
    assert_eq!(post_ok(&server, "/api/close_room", &json!({"room": "show", "reason": "over"})), json!({"ok": true}));
    let left = ann.until("left", |m| m["op"] == "left");
    assert_eq!(left, json!({"op": "left", "room": "show", "reason": "closed"}));
    assert_eq!(get(&server, "/api/rooms/show", None).error(404), "not_found");
    assert_eq!(detail(&server, "other")["seq"], 1, "the other room is untouched");

    // Refusals keep their ingest code as the HTTP status.
    assert_eq!(post(&server, "/api/publish", None, &json!({"room": "show"})).error(400), "bad_request");
    assert_eq!(post(&server, "/api/state", None, &json!({"room": "show", "state": 1})).error(400), "bad_request");
}

#[test]
fn tokens_guard_every_path_but_healthz_and_either_token_publishes() {
    const INGEST: &str = "ingest-secret";
    const ADMIN: &str = "admin-secret";
    let server = Server::start(&["--ingest-token", INGEST, "--admin-token", ADMIN]);
    assert_eq!(get(&server, "/healthz", None).json(), json!({"status": "serving"}));
    let body = json!({"room": "vault", "type": "t"});
    for token in [None, Some("wrong")] {
        let reply = post(&server, "/api/publish", token, &body);
        assert_eq!(reply.error(401), "unauthorized", "{token:?}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    let mut v = Witness::open(&server, "vera");
    v.join("vault");
    assert_eq!(post(&server, "/api/publish", Some(INGEST), &body).json(), json!({"ok": true, "seq": 1}));
    assert_eq!(post(&server, "/api/publish", Some(ADMIN), &body).json(), json!({"ok": true, "seq": 2}));
    assert_eq!(v.next_sequenced("vault")["seq"], 1);
    assert_eq!(v.next_sequenced("vault")["seq"], 2);
    for path in ["/readyz", "/metrics", "/api/rooms", "/api/rooms/vault", "/api/rooms/vault/presence"] {
        for token in [None, Some("wrong"), Some(INGEST)] {
            assert_eq!(get(&server, path, token).error(401), "unauthorized", "{path} with {token:?}");
        }
        assert_eq!(get(&server, path, Some(ADMIN)).status, 200, "{path}");
    }
    assert_eq!(get(&server, "/api/rooms/vault", Some(ADMIN)).json()["seq"], 2);
    let addr = admin(&server);
    assert_eq!(admin_support::stream(addr, "").err(), Some(401));
    assert_eq!(admin_support::stream(addr, &format!("token={INGEST}")).err(), Some(401));
    let mut stream =
        admin_support::stream(addr, &format!("token={ADMIN}&room=vault")).expect("the admin token opens it");
    assert_eq!(stream.next_of("room")["detail"]["seq"], 2);
    assert_eq!(get(&server, "/admin", None).status, 401, "the page comes, asking for the token");
}

fn names(page: &Value) -> Vec<String> {
    page["rooms"].as_array().expect("rooms").iter().map(|r| r["room"].as_str().expect("name").to_owned()).collect()
}

/// Walk a room list from its first page by `next`; every page's names and the pages.
fn walk(server: &Server, query: &str, between_pages: &mut dyn FnMut(usize)) -> (Vec<String>, Vec<Value>) {
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut path = format!("/api/rooms?{query}");
    loop {
        let page = get_json(server, &path);
        seen.extend(names(&page));
        let next = page["next"].as_str().map(str::to_owned);
        pages.push(page);
        between_pages(pages.len());
        match next {
            Some(cursor) => path = format!("/api/rooms?{query}&cursor={}", urlencode(&cursor)),
            None => return (seen, pages),
        }
    }
}

#[test]
fn hundreds_of_rooms_are_paged_each_exactly_once() {
    let server = Server::start(&[]);
    let mut all: Vec<String> =
        (0..300).map(|i| format!("r-{i:03}")).chain((0..50).map(|i| format!("alpha-{i:02}"))).collect();
    let mut up = server.upstream();
    for chunk in all.chunks(50) {
        let reply = up.call(json!({"op": "publish", "rooms": chunk, "type": "open", "data": null}));
        assert_eq!(reply["seqs"], json!(vec![1; chunk.len()]));
    }
    all.sort();
    // Three rooms with viewers, for the online order.
    let mut viewers = Vec::new();
    for (room, n) in [("r-123", 3), ("alpha-07", 2), ("r-250", 1)] {
        for i in 0..n {
            let mut w = Witness::open(&server, &format!("{room}-v{i}"));
            let joined = w.join(room);
            assert_eq!(joined["online"], i + 1);
            viewers.push(w);
        }
    }

    // By name, 37 a page: every room once, in order, the total on every page.
    let (seen, pages) = walk(&server, "limit=37", &mut |_| {});
    assert_eq!(seen, all);
    assert_eq!(pages.len(), 10);
    for page in &pages {
        assert_eq!((&page["total"], &page["limit"], &page["sort"]), (&json!(350), &json!(37), &json!("name")));
    }
    let hot =
        pages.iter().flat_map(|p| p["rooms"].as_array().expect("rooms")).find(|r| r["room"] == "r-123").expect("r-123");
    assert_eq!((&hot["online"], &hot["seq"], &hot["version"]), (&json!(3), &json!(1), &json!(0)));
    assert_eq!(hot["epoch"], viewers[0].seen("r-123").joined["epoch"]);

    // While walking, rooms already listed are closed and new ones appear before the cursor:
    // the rooms that exist throughout are still listed exactly once.
    let mut next_new = 0;
    let (seen, _) = walk(&server, "limit=37", &mut |page| {
        let listed = &all[(page - 1) * 37];
        post_ok(&server, "/api/close_room", &json!({"room": listed}));
        next_new += 1;
        post_ok(&server, "/api/publish", &json!({"room": format!("a-new-{next_new}"), "type": "t"}));
    });
    assert_eq!(seen, all, "each room that existed throughout, exactly once");
    let closed: BTreeSet<String> = (0..10).map(|p| all[p * 37].clone()).collect();
    let now = walk(&server, "limit=1000", &mut |_| {}).0;
    assert_eq!(now.len(), 350 - closed.len() + 10);
    assert!(now.iter().all(|r| !closed.contains(r)));
    all.retain(|r| !closed.contains(r));

    // A prefix.
    let (seen, pages) = walk(&server, "prefix=r-1&limit=30", &mut |_| {});
    let expected: Vec<String> = all.iter().filter(|r| r.starts_with("r-1")).cloned().collect();
    assert_eq!(seen, expected);
    assert_eq!(pages[0]["total"], expected.len());

    // By online: the rooms with viewers first, then by name; each once.
    let first = get_json(&server, "/api/rooms?sort=online&limit=2");
    assert_eq!(names(&first), ["r-123", "alpha-07"]);
    let mut by_online: Vec<String> = vec!["r-123".into(), "alpha-07".into(), "r-250".into()];
    let mut rest: Vec<String> = now.iter().filter(|r| !by_online.contains(r)).cloned().collect();
    rest.sort();
    by_online.extend(rest);
    let (seen, pages) = walk(&server, "sort=online&limit=64", &mut |_| {});
    assert_eq!(seen, by_online);
    let third = get_json(&server, "/api/rooms?sort=online&limit=64&page=3");
    assert_eq!(names(&third), names(&pages[2]), "page=3 is the third page of the walk");
    let capped = get_json(&server, "/api/rooms?limit=5000");
    assert_eq!((&capped["limit"], &capped["next"], names(&capped).len()), (&json!(1000), &Value::Null, now.len()));
    assert_eq!(get(&server, "/api/rooms?limit=0", None).error(400), "bad_request");
}

/// A fresh viewer's `join` with a recovery position: the messages replayed before `joined`,
/// and `joined`.
fn rejoin(server: &Server, user: &str, room: &str, since: u64, epoch: Option<&str>) -> (Vec<Value>, Value) {
    let mut w = Witness::open(server, user);
    let joined = w.join_since(room, Some((since, epoch)));
    let replayed = w.seen(room).messages.clone();
    close_normally(w.v);
    (replayed, joined)
}

/// `GET /api/rooms/{room}?since=..`: the events and `recovered`.
fn since(server: &Server, room: &str, since: u64, epoch: Option<&str>) -> (Vec<Value>, Value) {
    let epoch = epoch.map(|e| format!("&epoch={}", urlencode(e))).unwrap_or_default();
    let d = get_json(server, &format!("/api/rooms/{room}?since={since}{epoch}"));
    (d["events"].as_array().expect("events").clone(), d["recovered"].clone())
}

#[test]
fn since_follows_the_join_recovery_rule() {
    let server = Server::start(&["--history-size", "4"]);
    let mut reader = Witness::open(&server, "reader");
    let epoch = reader.join("news")["epoch"].as_str().expect("epoch").to_owned();
    let mut up = server.upstream();
    let mut publish = |n: u64, reader: &mut Witness| {
        for i in 0..n {
            up.call(json!({"op": "publish", "room": "news", "type": "headline", "data": {"i": i}}));
            reader.next_sequenced("news");
        }
    };
    publish(3, &mut reader);
    let got = reader.seen("news").messages.clone();
    let d = detail(&server, "news");
    assert_eq!((d["events"].as_array().expect("events"), &d["recovered"]), (&got, &Value::Null));

    let mut n = 0;
    let mut check = |since_seq: u64, epoch: Option<&str>, recovered: bool, expected: &[Value]| {
        n += 1;
        let (replayed, joined) = rejoin(&server, &format!("rejoin-{n}"), "news", since_seq, epoch);
        let (events, api_recovered) = since(&server, "news", since_seq, epoch);
        assert_eq!(joined["recovered"], recovered, "join since {since_seq} epoch {epoch:?}");
        assert_eq!(api_recovered, recovered, "the API since {since_seq} epoch {epoch:?}");
        assert_eq!(replayed, expected, "what the join replayed");
        assert_eq!(events, expected, "what the API returned, since {since_seq} epoch {epoch:?}");
    };
    check(1, Some(&epoch), true, &got[1..]);
    check(3, Some(&epoch), true, &[]);
    publish(4, &mut reader); // seq 7; the ring holds 4..=7
    let got = reader.seen("news").messages.clone();
    check(3, Some(&epoch), true, &got[3..]);
    check(5, Some(&epoch), true, &got[5..]);
    check(2, Some(&epoch), false, &[]);
    check(7, Some(&epoch), true, &[]);
    check(5, Some("not-the-epoch"), false, &[]);
}

#[test]
fn since_without_an_epoch_recovers_exactly_as_a_join_without_one() {
    // PROTOCOL.md: `join` takes `since` and, optionally, `epoch`; the API's `?since=` alone is
    // allowed too. Both must apply the same rule.
    let server = Server::start(&[]);
    let mut reader = Witness::open(&server, "reader");
    reader.join("news");
    let mut up = server.upstream();
    for i in 0..3 {
        up.call(json!({"op": "publish", "room": "news", "type": "headline", "data": i}));
        reader.next_sequenced("news");
    }
    let (replayed, joined) = rejoin(&server, "no-epoch", "news", 1, None);
    let (events, recovered) = since(&server, "news", 1, None);
    assert_eq!(
        (recovered.clone(), events.len()),
        (joined["recovered"].clone(), replayed.len()),
        "GET ?since=1 says recovered={recovered} with {} events; join since 1 without epoch says recovered={} \
         with {} replayed",
        events.len(),
        joined["recovered"],
        replayed.len()
    );
}

/// `(joined_at, last_seen, silent_ms, connections)` of `user` in a presence page.
fn member(page: &Value, user: &str) -> (u64, u64, u64, u64) {
    let m = page["members"].as_array().expect("members").iter().find(|m| m["user"] == user).expect("listed");
    assert_eq!(m["name"], user, "without a token the display name is the user id");
    let n = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k} in {m}"));
    (n("joined_at"), n("last_seen"), n("silent_ms"), n("connections"))
}

fn within(what: &str, value: u64, low: u64, high: u64) {
    assert!(low <= value && value <= high, "{what} = {value}, outside [{low}, {high}]");
}

#[test]
fn presence_lists_viewers_with_their_tabs_and_activity() {
    let server = Server::start(&[]);
    // Alice has a tab on each worker, Bob one.
    let (tab1, hello) = viewer_on(&server, "alice", 0);
    let mut tab1 = Witness::new(tab1, hello);
    let t_a1_join = wall_ms();
    tab1.join("stage");
    let t_a1_joined = wall_ms();
    let t_a2 = wall_ms();
    let (tab2, hello) = viewer_on(&server, "alice", 1);
    let t_a2_hello = wall_ms();
    let mut tab2 = Witness::new(tab2, hello);
    let t_a2_join = wall_ms();
    tab2.join("stage");
    let t_a2_joined = wall_ms();
    let t_b = wall_ms();
    let mut bob = Witness::open(&server, "bob");
    let t_b_hello = wall_ms();
    let t_b_join = wall_ms();
    bob.join("stage");
    let t_b_joined = wall_ms();

    let q1 = wall_ms();
    let page = get_json(&server, "/api/rooms/stage/presence");
    let q1_end = wall_ms();
    assert_eq!((&page["room"], &page["online"], &page["next"]), (&json!("stage"), &json!(2), &Value::Null));
    let users: Vec<&str> =
        page["members"].as_array().expect("members").iter().map(|m| m["user"].as_str().expect("user")).collect();
    assert_eq!(users, ["alice", "bob"], "by user id; two tabs are one viewer");
    let (joined_at, last_seen, silent, connections) = member(&page, "alice");
    assert_eq!(connections, 2);
    within("alice joined_at (her first tab's join)", joined_at, t_a1_join, t_a1_joined);
    within("alice last_seen (her latest frame: tab 2's join)", last_seen, t_a2_join, t_a2_joined);
    // She never spoke: silent since her latest tab connected, on whichever worker.
    within("alice silent_ms", silent, q1.saturating_sub(t_a2_hello), q1_end - t_a2);
    let (joined_at, last_seen, silent, connections) = member(&page, "bob");
    assert_eq!(connections, 1);
    within("bob joined_at", joined_at, t_b_join, t_b_joined);
    within("bob last_seen", last_seen, t_b_join, t_b_joined);
    within("bob silent_ms", silent, q1.saturating_sub(t_b_hello), q1_end - t_b);

    // Bob speaks: his silence starts again and his last frame is the comment.
    next_ms_after(q1_end);
    let t_c = wall_ms();
    assert_eq!(bob.comment("stage", "hello", 1)["op"], "ack");
    let t_c_acked = wall_ms();
    let q2 = wall_ms();
    let page = get_json(&server, "/api/rooms/stage/presence");
    let q2_end = wall_ms();
    let (_, last_seen, silent, _) = member(&page, "bob");
    within("bob last_seen after his comment", last_seen, t_c, t_c_acked);
    within("bob silent_ms after his comment", silent, 0, q2_end - t_c);
    let (_, _, silent, _) = member(&page, "alice");
    within("alice silent_ms (she still said nothing)", silent, q2.saturating_sub(t_a2_hello), q2_end - t_a2);

    // Paged by user id.
    let first = get_json(&server, "/api/rooms/stage/presence?limit=1");
    assert_eq!((first["members"][0]["user"].as_str(), first["limit"].as_u64()), (Some("alice"), Some(1)));
    let cursor = first["next"].as_str().expect("a next page");
    let second = get_json(&server, &format!("/api/rooms/stage/presence?limit=1&cursor={}", urlencode(cursor)));
    assert_eq!((second["members"][0]["user"].as_str(), &second["next"]), (Some("bob"), &Value::Null));

    // A tab leaves: one viewer with one connection.
    tab2.leave("stage");
    let page = get_json(&server, "/api/rooms/stage/presence");
    assert_eq!((member(&page, "alice").3, &page["online"]), (1, &json!(2)));
    bob.leave("stage");
    let page = get_json(&server, "/api/rooms/stage/presence");
    assert_eq!((page["members"].as_array().map(Vec::len), &page["online"]), (Some(1), &json!(1)));
    assert_eq!(get(&server, "/api/rooms/nowhere/presence", None).error(404), "not_found");
}

#[test]
fn presence_activity_is_the_rooms_own() {
    // `last_seen`: "when any of its connections in the room last sent a frame". A tab of the
    // same user in another room is not in this room.
    let server = Server::start(&[]);
    let mut elsewhere = Witness::open(&server, "alice");
    elsewhere.join("other-room");
    let mut here = Witness::open(&server, "alice");
    let t_join = wall_ms();
    here.join("stage");
    let t_joined = wall_ms();
    next_ms_after(t_joined);
    assert_eq!(elsewhere.comment("other-room", "I am only over here", 1)["op"], "ack");
    let page = get_json(&server, "/api/rooms/stage/presence");
    let (_, last_seen, _, connections) = member(&page, "alice");
    assert_eq!(connections, 1, "one connection of alice is in the room");
    within("alice's last_seen in stage (her stage tab's join)", last_seen, t_join, t_joined);
}

#[test]
fn leaves_and_comments_are_counted_per_room_by_reason() {
    let server = Server::start(&["--presence-interval-ms", "100", "--max-comment-chars", "20"]);
    let mut watcher = Witness::open(&server, "watcher");
    watcher.join("arena");
    let mut victims: Vec<Witness> = ["lefty", "closer", "dropper", "kicked-here", "kicked-everywhere"]
        .iter()
        .map(|u| Witness::open(&server, u))
        .collect();
    for v in &mut victims {
        v.join("arena");
    }
    let leaves = |expected: Value, online: u64| {
        let d = detail(&server, "arena");
        assert_eq!(d["leaves"], expected);
        assert_eq!(d["online"], online);
    };
    let counts = |left: u64, closed: u64, kicked: u64| json!({"left": left, "closed": closed, "heartbeat": 0, "kicked": kicked, "slow_consumer": 0, "room_closed": 0});
    leaves(counts(0, 0, 0), 6);
    let mut victims = victims.into_iter();
    let mut next = || victims.next().expect("a victim");

    next().leave("arena");
    leaves(counts(1, 0, 0), 5);
    close_normally(next().v);
    leaves(counts(1, 1, 0), 4);
    // Gone without a close frame: the server learns it from the socket's end; the watcher
    // learns it from presence (online passed 3 while the victims joined: sync first).
    watcher.sync();
    let dropper = next();
    dropper.v.tcp().shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop(dropper);
    watcher.until_online("arena", 3);
    leaves(counts(1, 2, 0), 3);
    let mut kicked = next();
    let mut up = server.upstream();
    assert_eq!(
        up.call(json!({"op": "kick", "user": "kicked-here", "room": "arena"})),
        json!({"ok": true, "closed": 1})
    );
    assert_eq!(kicked.until("left", |m| m["op"] == "left")["reason"], "kicked");
    leaves(counts(1, 2, 1), 2);
    let mut everywhere = next();
    assert_eq!(post_ok(&server, "/api/kick", &json!({"user": "kicked-everywhere"}))["closed"], 1);
    assert_eq!(everywhere.v.close_code(), Some(4010));
    leaves(counts(1, 2, 2), 1);

    // Comments: taken, and refused by reason (the sender's error code).
    assert_eq!(watcher.comment("arena", "gg", 1)["op"], "ack");
    assert_eq!(watcher.comment("arena", "this is far too long for the room", 2)["code"], "too_large");
    assert_eq!(watcher.comment("arena", "", 3)["code"], "bad_request");
    let mut outsider = Witness::open(&server, "outsider");
    assert_eq!(outsider.comment("arena", "let me in", 4)["code"], "not_joined");
    assert_eq!(outsider.comment("nowhere", "anyone?", 5)["code"], "not_joined");
    let d = detail(&server, "arena");
    assert_eq!(
        d["comments"],
        json!({"accepted": 1, "rejected": {
            "bad_request": 1, "unauthorized": 0, "forbidden": 0, "not_joined": 1,
            "rate_limited": 0, "too_large": 1, "unknown_op": 0, "unavailable": 0,
        }})
    );
    // The totals agree, with the refusal in a room that does not exist counted there only.
    let m = scrape(&server, None);
    for (reason, n) in [("left", 1.0), ("closed", 2.0), ("kicked", 2.0), ("heartbeat", 0.0), ("slow_consumer", 0.0)] {
        assert_eq!(m.value("roomcast_leaves_total", &[("reason", reason)]), n, "{reason}");
    }
    assert_eq!(m.value("roomcast_comments_accepted_total", &[]), 1.0);
    for (reason, n) in [("too_large", 1.0), ("bad_request", 1.0), ("not_joined", 2.0), ("rate_limited", 0.0)] {
        assert_eq!(m.value("roomcast_comments_rejected_total", &[("reason", reason)]), n, "{reason}");
    }

    // Closing the room: its remaining viewers leave with `room_closed` (the room itself goes).
    post_ok(&server, "/api/close_room", &json!({"room": "arena"}));
    assert_eq!(watcher.until("left", |m| m["op"] == "left")["reason"], "closed");
    assert_eq!(scrape(&server, None).value("roomcast_leaves_total", &[("reason", "room_closed")]), 1.0);
}

#[test]
fn a_heartbeat_expiry_is_counted_as_one() {
    let server = Server::start(&["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "2000"]);
    // Joins, then answers nothing, not even pings: a frozen client.
    let mut frozen = server.deaf_viewer("frozen");
    let joined = frozen.join("vigil");
    assert_eq!(joined["online"], 1);
    let (code, pings) = frozen.close_code();
    assert_eq!(code, Some(1001), "closed as gone away");
    assert!(pings >= 1, "pinged before");
    let d = detail(&server, "vigil");
    assert_eq!(
        (d["leaves"].clone(), &d["online"]),
        (json!({"left": 0, "closed": 0, "heartbeat": 1, "kicked": 0, "slow_consumer": 0, "room_closed": 0}), &json!(0))
    );
    let m = scrape(&server, None);
    assert_eq!(m.value("roomcast_leaves_total", &[("reason", "heartbeat")]), 1.0);
    assert_eq!(m.value("roomcast_closes_total", &[("code", "1001")]), 1.0);
}

/// The most a socket send buffer may grow to here (tcp_wmem's third field).
fn max_send_buffer_bytes() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20)
}

#[test]
fn a_slow_consumer_is_counted_in_each_of_its_rooms() {
    const BUDGET: usize = 4096;
    const PAYLOAD: usize = 60 * 1024;
    let server =
        Server::start(&["--outbound-budget", "4096", "--socket-unsent-bytes", "0", "--close-timeout-ms", "60000"]);
    let mut sloth = server.viewer_small_window("sloth");
    sloth.join("arena");
    sloth.join("flood");
    // Far more than the kernel's buffers and the budget together hold, into a room only the
    // sloth is in; it reads nothing meanwhile.
    let total = (2 * max_send_buffer_bytes() + 2 * BUDGET) / PAYLOAD + 1;
    let mut up = server.upstream();
    let payload = "s".repeat(PAYLOAD);
    let mut sent = 0;
    while sent < total {
        let burst: Vec<Value> = (sent..total.min(sent + 8))
            .map(|i| json!({"op": "publish", "room": "flood", "type": "blob", "data": {"i": i, "p": payload}}))
            .collect();
        up.send_raw(ndjson(&burst).as_bytes());
        for _ in 0..burst.len() {
            assert_eq!(up.reply()["ok"], true);
        }
        sent += burst.len();
    }
    let code = loop {
        match sloth.next() {
            Got::Closed(code) => break code,
            Got::Json(_) => {}
        }
    };
    assert_eq!(code, Some(4009));
    let d = detail(&server, "arena");
    assert_eq!((&d["leaves"]["slow_consumer"], &d["online"]), (&json!(1), &json!(0)));
    assert_eq!(detail(&server, "flood")["leaves"]["slow_consumer"], 1);
    let m = scrape(&server, None);
    assert_eq!(m.value("roomcast_slow_consumer_closes_total", &[]), 1.0);
    assert_eq!(m.value("roomcast_closes_total", &[("code", "4009")]), 1.0);
    assert_eq!(m.value("roomcast_leaves_total", &[("reason", "slow_consumer")]), 2.0, "one per room");
}

#[test]
fn metrics_move_by_exactly_what_the_test_caused() {
    let server = Server::start(&["--presence-interval-ms", "100"]);
    let mut spares = Vec::new();
    let mut ws = witnesses(place(&server, "m", 2, 2, &mut spares));
    let conns = (ws.len() + spares.len()) as f64;
    let s0 = scrape(&server, None);
    assert_eq!(s0.value("roomcast_connects_total", &[("listener", "ws")]), conns);
    assert_eq!(s0.value("roomcast_connections_open", &[("listener", "ws")]), conns);
    assert_eq!(s0.value("roomcast_connections_open", &[("listener", "wss")]), 0.0);
    assert_eq!((s0.value("roomcast_rooms", &[]), s0.value("roomcast_online", &[])), (0.0, 0.0));

    let room = room_homed_at("metered", 0, 2);
    for w in ws.iter_mut() {
        w.join(&room);
    }
    for w in ws.iter_mut() {
        w.until_online(&room, 4);
    }
    let s1 = scrape(&server, None);
    assert_eq!((s1.value("roomcast_rooms", &[]), s1.value("roomcast_online", &[])), (1.0, 4.0));

    // Publishes, one at a time, each received by every member before the next.
    let mut up = server.upstream();
    for i in 0..3 {
        assert_eq!(up.call(json!({"op": "publish", "room": room, "type": "t", "data": i}))["ok"], true);
        ws.iter_mut().for_each(|w| drop(w.next_sequenced(&room)));
    }
    for i in 0..2 {
        post_ok(&server, "/api/publish", &json!({"room": room, "type": "t", "data": i}));
        ws.iter_mut().for_each(|w| drop(w.next_sequenced(&room)));
    }
    let s2 = scrape(&server, None);
    assert_eq!(s2.delta(&s1, "roomcast_deliveries_total", &[]), 4.0 * 5.0, "members x messages");
    assert_eq!(s2.delta(&s1, "roomcast_messages_published_total", &[("source", "ingest")]), 3.0);
    assert_eq!(s2.delta(&s1, "roomcast_messages_published_total", &[("source", "http")]), 2.0);
    assert_eq!(s2.delta(&s1, "roomcast_messages_published_total", &[("source", "comment")]), 0.0);
    assert_eq!(s2.delta(&s1, "roomcast_ingest_commands_total", &[("op", "publish"), ("result", "ok")]), 5.0);
    assert!(s2.delta(&s1, "roomcast_socket_writes_total", &[]) >= 1.0);
    assert!(s2.delta(&s1, "roomcast_sent_bytes_total", &[]) >= 4.0 * 5.0 * 40.0, "at least the events' bytes");
    // One observation per message and worker with members (both have two).
    let count = "roomcast_publish_to_write_seconds_count";
    assert_eq!(s2.delta(&s1, count, &[]), 5.0 * 2.0);
    let buckets = s2.buckets("roomcast_publish_to_write_seconds");
    assert!(buckets.windows(2).all(|b| b[0].1 <= b[1].1), "cumulative buckets: {buckets:?}");
    assert_eq!(buckets.last().map(|b| (b.0, b.1)), Some((f64::INFINITY, s2.value(count, &[]))));
    assert!(s2.value("roomcast_publish_to_write_seconds_sum", &[]) >= 0.0);

    // Comments: two taken, three refused, one per reason.
    let first = &mut ws[0];
    for (i, text) in ["one", "two"].iter().enumerate() {
        assert_eq!(first.comment(&room, text, i as u64)["op"], "ack");
    }
    assert_eq!(first.comment(&room, &"x".repeat(501), 10)["code"], "too_large");
    assert_eq!(first.comment(&room, "", 11)["code"], "bad_request");
    assert_eq!(first.comment("nowhere", "hi", 12)["code"], "not_joined");
    let s3 = scrape(&server, None);
    assert_eq!(s3.delta(&s2, "roomcast_comments_accepted_total", &[]), 2.0);
    assert_eq!(s3.delta(&s2, "roomcast_messages_published_total", &[("source", "comment")]), 2.0);
    for reason in ["too_large", "bad_request", "not_joined"] {
        assert_eq!(s3.delta(&s2, "roomcast_comments_rejected_total", &[("reason", reason)]), 1.0, "{reason}");
    }
    assert_eq!(s3.delta(&s2, "roomcast_comments_rejected_total", &[("reason", "rate_limited")]), 0.0);

    // Upstream commands by op and result, from the socket and the HTTP paths.
    assert_eq!(up.call(json!({"op": "publish", "room": "", "type": "t"}))["error"], "bad_request");
    assert_eq!(up.call(json!({"op": "warp"}))["error"], "unknown_op");
    assert_eq!(up.call(json!({"op": "state", "room": room, "state": {"a": 1}}))["ok"], true);
    assert_eq!(up.call(json!({"op": "kick", "user": "nobody"})), json!({"ok": true, "closed": 0}));
    post_ok(&server, "/api/state", &json!({"room": room, "state": {"a": 2}}));
    assert_eq!(post(&server, "/api/publish", None, &json!({"room": "", "type": "t"})).error(400), "bad_request");
    let s4 = scrape(&server, None);
    for (op, result, n) in
        [("publish", "bad_request", 2.0), ("unknown", "unknown_op", 1.0), ("state", "ok", 2.0), ("kick", "ok", 1.0)]
    {
        assert_eq!(
            s4.delta(&s3, "roomcast_ingest_commands_total", &[("op", op), ("result", result)]),
            n,
            "{op} {result}"
        );
    }
    assert_eq!(s4.delta(&s3, "roomcast_ingest_commands_total", &[("op", "publish"), ("result", "ok")]), 0.0);

    // Connections end three ways: a close frame, a kick, a dropped socket.
    let mut ws = ws.into_iter();
    let (mut stays, dropped, mut kicked, closes) =
        (ws.next().expect("0"), ws.next().expect("1"), ws.next().expect("2"), ws.next().expect("3"));
    // Each end is awaited where the client can see it: the close echo (the handshake is
    // complete, the server drops the socket in the turn it writes it), the end of stream
    // after a server close, the presence that follows a dropped socket.
    close_normally(closes.v);
    let kicked_user = kicked.user();
    assert_eq!(post_ok(&server, "/api/kick", &json!({"user": kicked_user}))["closed"], 1);
    assert_eq!(kicked.v.close_code(), Some(4010));
    until_end_of_stream(kicked.v);
    dropped.v.tcp().shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop(dropped);
    stays.until_online(&room, 1);
    let s5 = scrape(&server, None);
    for (code, n) in [("1000", 1.0), ("4010", 1.0), ("1006", 1.0), ("other", 0.0), ("1001", 0.0), ("4009", 0.0)] {
        assert_eq!(s5.delta(&s4, "roomcast_closes_total", &[("code", code)]), n, "closes with {code}");
    }
    assert_eq!(s5.value("roomcast_connections_open", &[("listener", "ws")]), conns - 3.0);
    assert_eq!(s5.delta(&s4, "roomcast_connects_total", &[("listener", "ws")]), 0.0);
    for (reason, n) in [("closed", 2.0), ("kicked", 1.0), ("left", 0.0)] {
        assert_eq!(s5.delta(&s4, "roomcast_leaves_total", &[("reason", reason)]), n, "leaves {reason}");
    }
    assert_eq!((s5.value("roomcast_rooms", &[]), s5.value("roomcast_online", &[])), (1.0, 1.0));
    assert_eq!(s5.value("roomcast_slow_consumer_closes_total", &[]), 0.0);

    // Names and types as a Prometheus user expects them.
    for (name, kind) in [
        ("roomcast_deliveries_total", "counter"),
        ("roomcast_connections_open", "gauge"),
        ("roomcast_rooms", "gauge"),
        ("roomcast_online", "gauge"),
        ("roomcast_publish_to_write_seconds", "histogram"),
        ("roomcast_worker_busy_seconds_total", "counter"),
        ("roomcast_worker_mailbox_depth", "gauge"),
        ("roomcast_worker_write_stalls_total", "counter"),
        ("roomcast_worker_write_stall_seconds_total", "counter"),
    ] {
        assert!(s5.declares(name, kind), "# TYPE {name} {kind} in\n{}", s5.text);
    }
    for suffix in ["_bucket{le=\"+Inf\"}", "_sum ", "_count "] {
        assert!(
            s5.text.lines().any(|l| l.starts_with(&format!("roomcast_publish_to_write_seconds{suffix}"))),
            "{suffix}"
        );
    }
    for worker in ["0", "1"] {
        assert!(s5.value("roomcast_worker_busy_seconds_total", &[("worker", worker)]) > 0.0);
        assert!(s5.value("roomcast_worker_mailbox_depth", &[("worker", worker)]) >= 0.0);
    }
    for line in s5.text.lines().filter(|l| l.starts_with("# TYPE")) {
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(parts[2].starts_with("roomcast_"), "{line}");
        assert_eq!(parts[3] == "counter", parts[2].ends_with("_total"), "{line}");
    }
    drop(spares);
}

/// After a close frame from the server: send the close reply tungstenite queued and read
/// the raw socket until its end, which the server sends once it dropped the connection.
fn until_end_of_stream(mut v: support::Viewer) {
    let _ = v.ws.flush();
    let mut sock = v.tcp().try_clone().expect("clone the socket");
    let mut buf = [0u8; 256];
    loop {
        match std::io::Read::read(&mut sock, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[test]
fn deliveries_count_every_message_of_a_batch() {
    // The batching window puts a busy room's messages in one buffer per member; the counter
    // is documented as one per member per message (README "Metrics"; the metric's help).
    let server = Server::start(&["--batch-window-ms", "200", "--presence-interval-ms", "100"]);
    let mut ws: Vec<Witness> = ["ann", "bob"].iter().map(|u| Witness::open(&server, u)).collect();
    for w in ws.iter_mut() {
        w.join("busy");
    }
    for w in ws.iter_mut() {
        w.until_online("busy", 2);
    }
    let before = scrape(&server, None);
    let burst: Vec<Value> = (0..4).map(|i| json!({"op": "publish", "room": "busy", "type": "t", "data": i})).collect();
    let mut up = server.upstream();
    up.send_raw(ndjson(&burst).as_bytes());
    for _ in 0..4 {
        assert_eq!(up.reply()["ok"], true);
    }
    for w in ws.iter_mut() {
        for seq in 1..=4 {
            assert_eq!(w.next_sequenced("busy")["seq"], seq);
        }
    }
    let after = scrape(&server, None);
    assert_eq!(
        after.delta(&before, "roomcast_deliveries_total", &[]),
        2.0 * 4.0,
        "2 members x 4 messages; writes: {}",
        after.delta(&before, "roomcast_socket_writes_total", &[])
    );
}

#[test]
fn a_refused_command_is_counted_under_the_op_it_named() {
    // A publish that lacks a field is still a publish: `ingest_commands_total{op, result}`
    // counts commands by op and result, and over HTTP the path itself names the op.
    let server = Server::start(&[]);
    let before = scrape(&server, None);
    let mut up = server.upstream();
    assert_eq!(up.call(json!({"op": "publish", "room": "r"}))["error"], "bad_request");
    assert_eq!(post(&server, "/api/publish", None, &json!({"room": "r"})).error(400), "bad_request");
    assert_eq!(post(&server, "/api/state", None, &json!({"room": "r"})).error(400), "bad_request");
    let after = scrape(&server, None);
    let delta =
        |op: &str| after.delta(&before, "roomcast_ingest_commands_total", &[("op", op), ("result", "bad_request")]);
    assert_eq!(
        (delta("publish"), delta("state"), delta("unknown")),
        (2.0, 1.0, 0.0),
        "bad_request by op (publish, state, unknown)"
    );
}

/// The next feed item of an `/admin/stream` that is not a presence message.
fn next_feed(stream: &mut admin_support::Stream) -> Value {
    loop {
        let frame = stream.next_of("feed");
        assert_eq!(frame["room"], "live");
        let item = frame["item"].clone();
        if item["kind"] == "message" && item["message"]["op"] == "presence" {
            continue;
        }
        return item;
    }
}

#[test]
fn the_stream_shows_a_snapshot_and_a_rooms_live_feed() {
    let server = Server::start(&["--presence-interval-ms", "100"]);
    let addr = admin(&server);
    let mut ann = Witness::open(&server, "ann");
    let mut bob = Witness::open(&server, "bob");
    ann.join("live");
    bob.join("live");
    let mut up = server.upstream();
    up.call(json!({"op": "publish", "room": "live", "type": "gift", "data": {"gift": "rose"}}));
    bob.next_sequenced("live");
    bob.until_online("live", 2);
    assert_eq!(admin_support::stream(addr, "room=nowhere").err(), Some(404));

    let mut feed = admin_support::stream(addr, "room=live").expect("the stream opens");
    let room = feed.next_of("room");
    assert_eq!((&room["detail"]["seq"], &room["detail"]["online"]), (&json!(1), &json!(2)));
    assert_eq!(room["detail"]["events"].as_array().expect("events"), &bob.seen("live").messages);
    let users: Vec<&str> = room["presence"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user"].as_str().expect("user"))
        .collect();
    assert_eq!(users, ["ann", "bob"]);

    // A comment, as the members received it.
    assert_eq!(ann.comment("live", "hi there", 1)["seq"], 2);
    let seen = bob.next_sequenced("live");
    assert_eq!(next_feed(&mut feed), json!({"kind": "message", "message": seen}));
    // A publish through the admin port.
    assert_eq!(post_ok(&server, "/api/publish", &json!({"room": "live", "type": "poll", "data": [1, 2]}))["seq"], 3);
    let seen = bob.next_sequenced("live");
    assert_eq!(next_feed(&mut feed), json!({"kind": "message", "message": seen}));
    // A leave with its reason, and a refused comment.
    bob.leave("live");
    assert_eq!(next_feed(&mut feed), json!({"kind": "left", "user": "bob", "reason": "left"}));
    let mut carol = Witness::open(&server, "carol");
    assert_eq!(carol.comment("live", "me too", 7)["code"], "not_joined");
    assert_eq!(next_feed(&mut feed), json!({"kind": "rejected", "user": "carol", "reason": "not_joined"}));
    // The presence that follows the leave.
    loop {
        let item = feed.next_of("feed")["item"].clone();
        if item["message"]["op"] == "presence" && item["message"]["online"] == 1 {
            break;
        }
    }

    // Snapshots: once two were taken after the last change, the second asked the owners
    // after it.
    let mark = wall_ms();
    let mut plain = admin_support::stream(addr, "").expect("the stream opens");
    let mut after = 0;
    let snapshot = loop {
        let s = plain.next_of("snapshot");
        if s["at_ms"].as_u64().expect("at_ms") > mark {
            after += 1;
            if after == 2 {
                break s;
            }
        }
    };
    assert_eq!((&snapshot["connections"], &snapshot["rooms"], &snapshot["online"]), (&json!(3), &json!(1), &json!(1)));
    assert_eq!(snapshot["totals"]["comments"], 1);
    assert_eq!(snapshot["totals"]["comments_rejected"], 1);
    let top = &snapshot["top_rooms"][0];
    assert_eq!((&top["room"], &top["online"], &top["seq"]), (&json!("live"), &json!(1), &json!(3)));

    // Closing the room ends its feed.
    post_ok(&server, "/api/close_room", &json!({"room": "live"}));
    assert_eq!(next_feed(&mut feed), json!({"kind": "closed"}));
    feed.next_of("room_closed");
}
