//! The dashboard in a real browser: headless Chromium (Debian's `/usr/bin/chromium`) driven by
//! `tests/browser/dashboard.mjs` (playwright-core from `npm ci`) opens `/admin` and checks,
//! step by step, that the page shows the new numbers and room view without a reload.
//!
//! * Against a real `roomcast serve`: the test drives real viewers (tungstenite) in sixteen
//!   rooms, comments, publishes, state changes, joins, leaves, a refused comment and a
//!   connection closed for bad input, and the page must show exactly what the server then
//!   holds. It ends with ten snapshots of a live scene (comments scrolling, gifts,
//!   reactions) and saves the picture to `target/admin.png` (`docs/admin.png` is one).
//! * Against a fake backend, for what a real server cannot show on demand: the admin port
//!   going away and coming back (the page backs off and reconnects), and rates and error
//!   counts set exactly. Its picture goes to `target/admin-fake.png`.
//!
//! The two run one after the other (one Chromium at a time). Missing tools fail the test
//! with the install step; nothing is skipped.

mod admin_support;
mod live_support;
mod support;

use admin_support::{member, post, start, start_on, FakeRoom, Step, WAIT};
use roomcast::admin::AdminSettings;
use roomcast::metrics::ListenerKind;
use roomcast::query::{FeedItem, LeaveReason};
use roomcast::wire::ErrorCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// One Chromium at a time: the machine's cores are shared.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

const TOKEN: &str = "dashboard-test-token";

fn require(ok: bool, what: &str) {
    assert!(ok, "{what}");
}

/// The repository root, after checking that the browser, Node.js and playwright-core are
/// there (each missing one fails with its install step).
fn tools() -> &'static Path {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    require(
        root.join("node_modules/playwright-core/package.json").exists(),
        "playwright-core is not installed: run `npm ci` in the repository root",
    );
    require(Path::new("/usr/bin/chromium").exists(), "Chromium is not installed: run `apt-get install -y chromium`");
    require(
        Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
        "node is not installed: run `apt-get install -y nodejs npm`",
    );
    root
}

/// The browser script, killed if the test ends early.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Browser {
    fn start(root: &Path, url: &str, screenshot: &Path) -> Self {
        let mut child = Command::new("node")
            .current_dir(root)
            .arg("tests/browser/dashboard.mjs")
            .arg(url)
            .args(["--token", TOKEN, "--screenshot"])
            .arg(screenshot)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node (install it with `apt-get install -y nodejs npm`)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err_pipe.read_to_string(&mut text);
            if let Ok(mut s) = sink.lock() {
                s.push_str(&text);
            }
        });
        let stdin = child.stdin.take();
        let mut browser = Self { child, stdin, lines, stderr };
        let ready = browser.reply("start");
        assert_eq!(ready["ready"], true, "the page did not come up: {ready}");
        browser
    }

    /// The script's next line, within [`WAIT`] (it bounds each step to 20 s itself).
    fn reply(&mut self, what: &str) -> Value {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|_| panic!("{what}: not JSON: {line}")),
            Err(_) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!("{what}: no answer from the browser script within {WAIT:?}; its stderr:\n{stderr}");
            }
        }
    }

    fn step(&mut self, name: &str, open_room: Option<&str>, expect: Value) {
        self.send(json!({"step": name, "expect": expect}), open_room);
    }

    /// A step while the server is down on purpose: connection errors are expected.
    fn outage_step(&mut self, name: &str, expect: Value) {
        self.send(json!({"step": name, "expect": expect, "outage": true}), None);
    }

    fn send(&mut self, mut line: Value, open_room: Option<&str>) {
        let name = line["step"].as_str().unwrap_or_default().to_owned();
        if let Some(room) = open_room {
            line["open_room"] = json!(room);
        }
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("send the step");
        stdin.flush().expect("flush");
        let reply = self.reply(&name);
        assert_eq!(reply["ok"], true, "step {name}: {reply:#}");
    }

    fn finish(mut self) -> Value {
        drop(self.stdin.take());
        let done = self.reply("screenshot");
        let status = self.child.wait().expect("the script ends");
        assert!(status.success() && done["done"] == true, "the script failed: {done:#}");
        done
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const NAMES: [&str; 24] = [
    "Ann", "Bo", "Chen", "Dana", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Mo", "Nia", "Otto",
    "Pia", "Quinn", "Ravi", "Sara", "Tomas", "Uma", "Vik", "Wen", "Yara",
];

fn comment(room: &mut FakeRoom, name: &str, text: &str) {
    let data = json!({"id": format!("{}-{}", room.epoch, room.seq + 1), "user": name.to_lowercase(), "name": name, "text": text});
    room.publish("live-1", "comment", &data.to_string());
}

#[test]
fn the_dashboard_shows_an_outage_and_exact_rates_from_a_fake_backend() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = tools();

    let settings = AdminSettings {
        token: Some(TOKEN.into()),
        pulse_interval: Duration::from_millis(250),
        ..AdminSettings::default()
    };
    let (admin, fake) = start(settings.clone());
    {
        let mut w = fake.world();
        let mut live = FakeRoom::new(0);
        live.members = (0..120)
            .map(|i| {
                let mut m = member(&format!("viewer-{i:03}"), 1 + (i % 3 == 0) as u32);
                m.name = format!("{} {}", NAMES[i as usize % NAMES.len()], (b'A' + (i / 24) as u8) as char);
                m.silent_ms = 400 + (i as u64 * 7_919) % 40_000;
                m
            })
            .collect();
        live.online = live.members.len() as u64;
        live.state = Some(r#"{"title":"Final round","host":"Mira","round":2,"question":7}"#.into());
        live.version = 2;
        live.comment_rate = 4.2;
        for (i, text) in ["first!", "what a finish", "go go go", "that was close"].iter().enumerate() {
            comment(&mut live, NAMES[i], text);
        }
        live.leaves.left = 31;
        live.leaves.heartbeat = 4;
        live.leaves.slow_consumer = 1;
        live.comments.accepted = 412;
        live.comments.rejected.record(ErrorCode::RateLimited);
        w.rooms.insert("live-1".into(), live);
        let mut second = FakeRoom::new(40);
        second.comment_rate = 1.5;
        w.rooms.insert("live-2".into(), second);
        w.rooms.insert("quiz".into(), FakeRoom::new(7));
        for i in 1..=20u64 {
            let mut r = FakeRoom::new(i);
            r.seq = i * 13;
            r.comment_rate = (i % 4) as f64 * 0.3;
            w.rooms.insert(format!("room-{i:02}"), r);
        }
        let t = &mut w.metrics.totals;
        *t.connections_open.slot(ListenerKind::Ws) += 180;
        *t.connections_open.slot(ListenerKind::Wss) += 20;
        w.step = Step { ms: 1000, deliveries: 2_400, comments: 5, ..Step::default() };
    }

    let screenshot: PathBuf = root.join("target").join("admin-fake.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{}/admin", admin.local_addr());
    let mut browser = Browser::start(root, &url, &screenshot);

    // Totals and the heat list, straight from the stream.
    browser.step(
        "totals",
        None,
        json!({
            "conn-status": "live",
            "total-connections": "200",
            "total-rooms": "23",
            "total-online": "377",
            "rate-deliveries": "2,400",
            "rate-comments": "5.0",
            "count-errors": "0",
            "heat-room": "live-1",
            "heat-online:live-1": "120",
            "heat-row": {"count": 23},
        }),
    );

    // The server's numbers change; the page follows by itself.
    {
        let mut w = fake.world();
        *w.metrics.totals.connections_open.slot(ListenerKind::Wss) += 60;
        w.rooms.get_mut("live-2").expect("live-2").online = 300;
        w.step = Step { ms: 1000, deliveries: 2_400, comments: 12, errors_closes: 2, slow: 1, stalls: 3, wave: false };
    }
    browser.step(
        "update",
        None,
        json!({
            "total-connections": "260",
            "total-online": "637",
            "heat-room": "live-2",
            "heat-online:live-2": "300",
            "rate-comments": "12.0",
            "count-errors": "2",
            "count-slow": "1",
            "count-stalls": "3",
        }),
    );

    // Clicking a room opens its view: state, presence, recent comments.
    browser.step(
        "room",
        Some("live-1"),
        json!({
            "room-name": "live-1",
            "room-online": "120",
            "room-seq": "4",
            "room-version": "2",
            "room-state": {"contains": "\"title\": \"Final round\""},
            "room-presence-count": "120",
            "presence-user:viewer-007": {"contains": "viewer-007"},
            "comments": {"contains": "what a finish"},
            "room-leave:heartbeat": {"contains": "4"},
        }),
    );

    // A comment arrives in the room's live feed.
    let seq = fake.publish(
        "live-1",
        "comment",
        &json!({"id": "1f2e-5", "user": "zoe", "name": "Zoe", "text": "hello from the test"}).to_string(),
    );
    assert_eq!(seq, 5);
    browser.step("comment", None, json!({"comments": {"contains": "hello from the test"}, "room-seq": "5"}));

    // Someone joins: the presence message updates online, the refresh lists them.
    {
        let mut w = fake.world();
        let live = w.rooms.get_mut("live-1").expect("live-1");
        live.members.push(member("zoe", 1));
        live.online = live.members.len() as u64;
    }
    fake.feed("live-1", || {
        FeedItem::message(r#"{"op":"presence","room":"live-1","online":121,"joined":[{"user":"zoe","name":"Zoe"}]}"#)
            .expect("json")
    });
    browser.step(
        "presence",
        None,
        json!({
            "room-online": "121",
            "room-presence-count": "121",
            "presence-user:zoe": {"contains": "zoe"},
            "activity": {"contains": "joined: Zoe"},
        }),
    );

    // A state change through the admin port reaches the room view.
    let reply = post(
        admin.local_addr(),
        "/api/state",
        Some(TOKEN),
        r#"{"room":"live-1","state":{"title":"Final round","host":"Mira","round":3,"question":1}}"#,
    );
    assert_eq!(reply.json(), json!({"ok": true, "seq": 6, "version": 3}));
    browser.step("state", None, json!({"room-state": {"contains": "\"round\": 3"}, "room-version": "3"}));

    // The admin port goes away and comes back: the page says so, backs off and reconnects.
    // The driver is told before the port goes, so the page's first refused request (which
    // can come before the next step reaches the driver) counts as expected.
    browser.outage_step("outage-begins", json!({}));
    let addr = admin.local_addr();
    admin.shutdown();
    browser.outage_step("outage", json!({"conn-status": {"contains": "reconnecting"}}));
    let admin = start_on(addr, &fake, settings);
    fake.world().rooms.get_mut("live-1").expect("live-1").comment_rate = 5.1;
    browser.outage_step("back", json!({"conn-status": "live", "room-rate": "5.1", "heat-rate:live-1": "5.1"}));

    // A livelier minute for the picture: comments, a gift, leaves, a refusal.
    fake.world().step =
        Step { ms: 1000, deliveries: 2_600, comments: 9, errors_closes: 0, slow: 0, stalls: 0, wave: true };
    let lines = [
        "this is the best round so far",
        "Mira is on fire tonight",
        "question 1 is easy",
        "B for sure",
        "no way, it's C",
        "greetings from Lisbon",
        "hype!!!",
        "can you repeat the question?",
    ];
    for (i, text) in lines.iter().enumerate() {
        let name = NAMES[(i * 5 + 3) % NAMES.len()];
        let id = format!("1f2e-{}", 7 + i);
        let data = json!({"id": id, "user": name.to_lowercase(), "name": name, "text": text});
        fake.publish("live-1", "comment", &data.to_string());
        if i == 2 {
            fake.publish("live-1", "gift", r#"{"from":"dana","gift":"rose","count":3}"#);
        }
    }
    fake.feed("live-1", || FeedItem::Left { user: "viewer-044".into(), reason: LeaveReason::Heartbeat });
    fake.feed("live-1", || FeedItem::Rejected { user: "viewer-090".into(), reason: ErrorCode::RateLimited });
    fake.feed("live-1", || {
        FeedItem::message(r#"{"op":"reactions","room":"live-1","counts":{"heart":42,"clap":17}}"#).expect("json")
    });
    let asked = fake.world().snapshots;
    fake.wait_snapshots(asked + 30);
    browser.step(
        "picture",
        None,
        json!({"comments": {"contains": "can you repeat the question?"}, "activity": {"contains": "rate_limited"}}),
    );
    let done = browser.finish();
    assert_eq!(done["done"], true);
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "the screenshot {} is missing or empty ({size} bytes)", screenshot.display());
    admin.shutdown();
}

/// The real scene: rooms and how many viewers each has when the page opens.
const SCENE: [(&str, usize); 16] = [
    ("final-round", 48),
    ("quiz-night", 30),
    ("gaming-night", 24),
    ("lobby", 18),
    ("music-live", 14),
    ("startup-pitch", 11),
    ("jazz-bar", 10),
    ("dev-talk", 9),
    ("yoga-morning", 8),
    ("cooking-show", 7),
    ("art-stream", 6),
    ("science-hour", 6),
    ("chess-club", 5),
    ("book-club", 4),
    ("news-desk", 4),
    ("backstage", 3),
];

const FIRST_NAMES: [&str; 48] = [
    "mira", "dana", "chen", "ann", "bo", "eli", "farah", "gus", "hana", "ivo", "jun", "kai", "lena", "mo", "nia",
    "otto", "pia", "quinn", "ravi", "sara", "tomas", "uma", "vik", "wen", "yara", "aiko", "bruno", "cleo", "dev",
    "esme", "felix", "greta", "hugo", "ines", "jonas", "kira", "luca", "maya", "nils", "olga", "pablo", "rosa", "sven",
    "tara", "ugo", "vera", "wim", "xena",
];

const LINES: [&str; 40] = [
    "this is the best round so far",
    "Mira is on fire tonight",
    "question 7 is easy",
    "B for sure",
    "no way, it's C",
    "greetings from Lisbon",
    "hype!!!",
    "can you repeat the question?",
    "my whole family is watching",
    "that was close",
    "go go go",
    "first time here, love it",
    "who else is up this late?",
    "the timer is brutal",
    "I knew it!",
    "audio is perfect now",
    "hello from Osaka",
    "what a comeback",
    "is this live?",
    "round 3 let's go",
    "C was my guess too",
    "someone clip that",
    "the host is so calm",
    "I need this on replay",
    "chat is flying tonight",
    "can't believe that answer",
    "greetings from Montreal",
    "team blue all the way",
    "this question is a trap",
    "wow",
    "D, final answer",
    "lag-free for once",
    "sending roses",
    "that buzzer sound",
    "ok this is tense",
    "5 seconds left!!",
    "we need a tiebreak",
    "hi everyone",
    "respect to both players",
    "encore!",
];

/// Distinct user ids: the first names, then the same with `.b`, `.c`, ...
fn user_id(i: usize) -> String {
    let name = FIRST_NAMES[i % FIRST_NAMES.len()];
    match i / FIRST_NAMES.len() {
        0 => name.to_owned(),
        n => format!("{name}.{}", (b'a' + n as u8) as char),
    }
}

/// A viewer of the scene that never reads after its `joined` (the kernel holds what it is
/// sent; the test is far shorter than the heartbeat).
struct Extra {
    room: &'static str,
    v: support::Viewer,
}

#[test]
fn the_dashboard_follows_a_real_server_without_a_reload() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = tools();
    let server = support::Server::start(&["--admin-token", TOKEN, "--presence-interval-ms", "250"]);
    let addr = live_support::admin(&server);
    let publish = |body: Value| {
        let reply = post(addr, "/api/publish", Some(TOKEN), &body.to_string());
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["seq"].as_u64().expect("seq")
    };
    let set_state = |state: Value| {
        let reply = post(addr, "/api/state", Some(TOKEN), &json!({"room": "final-round", "state": state}).to_string());
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    };

    // The host watches the big room and reads everything; the others only join.
    let mut host = live_support::Witness::open(&server, "mira");
    host.join("final-round");
    let mut extras: Vec<Extra> = Vec::new();
    let mut next_user = 1;
    for (room, viewers) in SCENE {
        let already = usize::from(room == "final-round");
        for _ in already..viewers {
            let mut v = server.viewer(&user_id(next_user));
            next_user += 1;
            v.join(room);
            extras.push(Extra { room, v });
        }
    }
    let mut connections: usize = 1 + extras.len();
    for (room, _) in &SCENE[1..] {
        assert_eq!(publish(json!({"room": room, "type": "notice", "data": {"text": "welcome"}})), 1);
    }
    let state = set_state(json!({"title": "Final round", "host": "Mira", "round": 2, "question": 7}));
    assert_eq!(state["version"], 1);
    let say = |extras: &mut Vec<Extra>, room: &str, nth: usize, text: &str| {
        let e = extras.iter_mut().filter(|e| e.room == room).nth(nth).expect("a viewer of the room");
        e.v.send_json(json!({"op": "comment", "room": room, "text": text}));
    };
    for (i, text) in LINES[..4].iter().enumerate() {
        say(&mut extras, "final-round", i * 3, text);
    }
    let mut seq = 0;
    for _ in 0..5 {
        seq = host.next_sequenced("final-round")["seq"].as_u64().expect("seq");
    }
    assert_eq!(seq, 5, "the state and four comments");

    let screenshot: PathBuf = root.join("target").join("admin.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut browser = Browser::start(root, &format!("http://{addr}/admin"), &screenshot);
    let online: usize = SCENE.iter().map(|(_, n)| n).sum();
    browser.step(
        "totals",
        None,
        json!({
            "conn-status": "live",
            "total-connections": connections.to_string(),
            "total-rooms": SCENE.len().to_string(),
            "total-online": online.to_string(),
            "heat-row": {"count": SCENE.len()},
            "heat-room": "final-round",
            "heat-online:final-round": "48",
            "heat-online:backstage": "3",
        }),
    );

    // Viewers come and go; the page follows by itself.
    for _ in 0..4 {
        let mut v = server.viewer(&user_id(next_user));
        next_user += 1;
        v.join("quiz-night");
        extras.push(Extra { room: "quiz-night", v });
        connections += 1;
    }
    for e in extras.iter_mut().filter(|e| e.room == "lobby").take(2) {
        e.v.send_json(json!({"op": "leave", "room": "lobby"}));
        e.room = "";
    }
    browser.step(
        "comings and goings",
        None,
        json!({
            "total-connections": connections.to_string(),
            "total-online": (online + 4 - 2).to_string(),
            "heat-online:quiz-night": "34",
            "heat-online:lobby": "16",
        }),
    );

    // The room view: state, presence, the comments so far.
    browser.step(
        "room",
        Some("final-round"),
        json!({
            "room-name": "final-round",
            "room-online": "48",
            "room-seq": "5",
            "room-version": "1",
            "room-state": {"contains": "\"title\": \"Final round\""},
            "room-presence-count": "48",
            "presence-user:mira": {"contains": "mira"},
            "comments": {"contains": LINES[0]},
            "room-comments-accepted": "4",
        }),
    );

    // A comment from a viewer, a gift and a state change from upstream.
    let ack = host.comment("final-round", "hello from the test", 1);
    assert_eq!(ack["seq"], 6);
    browser.step("comment", None, json!({"comments": {"contains": "hello from the test"}, "room-seq": "6"}));
    assert_eq!(
        publish(json!({"room": "final-round", "type": "gift", "data": {"from": "dana", "gift": "rose", "count": 3}})),
        7
    );
    browser.step("gift", None, json!({"activity": {"contains": "gift=rose"}, "room-seq": "7"}));
    assert_eq!(set_state(json!({"title": "Final round", "host": "Mira", "round": 3, "question": 1}))["version"], 2);
    browser.step(
        "state",
        None,
        json!({"room-state": {"contains": "\"round\": 3"}, "room-version": "2", "room-seq": "8"}),
    );

    // Someone joins, then leaves.
    let mut zoe = live_support::Witness::open(&server, "zoe");
    connections += 1;
    assert_eq!(zoe.join("final-round")["online"], 49);
    browser.step(
        "join",
        None,
        json!({
            "room-online": "49",
            "activity": {"contains": "joined: zoe"},
            "presence-user:zoe": {"contains": "zoe"},
            "total-online": (online + 4 - 2 + 1).to_string(),
        }),
    );
    zoe.leave("final-round");
    browser.step(
        "leave",
        None,
        json!({"room-online": "48", "activity": {"contains": "zoe left (left)"}, "room-leave:left": "left 1"}),
    );

    // A refused comment and a connection closed for bad input.
    assert_eq!(host.comment("final-round", &"x".repeat(501), 2)["code"], "too_large");
    let mut rude = server.viewer("rude");
    rude.send_json(json!({"op": "comment", "room": "lobby", "text": "y".repeat(5000)}));
    assert_eq!(rude.close_code(), Some(1009));
    browser.step(
        "refusals",
        None,
        json!({
            "activity": {"contains": "comment from mira refused (too_large)"},
            "room-comments-rejected": "+1 refused",
            "room-comments-accepted": "5",
            "total-errors": "1",
            "total-connections": connections.to_string(),
        }),
    );

    // A live stretch for the picture: after each snapshot, a burst of comments in the big
    // rooms (the server's own snapshots pace it), a gift now and then.
    let mut watch = admin_support::stream(addr, &format!("token={TOKEN}")).expect("the stream opens");
    let mut line = 4;
    let mut last = String::new();
    for round in 0..10 {
        watch.next_of("snapshot");
        let burst = [
            ("final-round", 5),
            ("quiz-night", 2),
            ("gaming-night", 2),
            ("lobby", 1),
            ("music-live", usize::from(round % 2 == 0)),
            ("jazz-bar", usize::from(round % 3 == 0)),
        ];
        for (room, count) in burst {
            let members = SCENE.iter().find(|(r, _)| *r == room).map_or(1, |(_, n)| n - 2);
            for k in 0..count {
                let text = LINES[line % LINES.len()];
                line += 1;
                say(&mut extras, room, (round * 7 + k * 11) % members, text);
                if room == "final-round" {
                    last = text.to_owned();
                }
            }
        }
        if round % 3 == 1 {
            let gift = ["rose", "star", "crown"][(round / 3) % 3];
            publish(json!({"room": "final-round", "type": "gift", "data": {"from": user_id(round + 5), "gift": gift}}));
        }
        if round % 4 == 2 {
            for e in extras.iter_mut().filter(|e| e.room == "final-round").take(6) {
                e.v.send_json(json!({"op": "react", "room": "final-round", "kind": "heart"}));
            }
        }
    }
    watch.next_of("snapshot");
    browser.step("live", None, json!({"comments": {"contains": last}, "conn-status": "live"}));
    let done = browser.finish();
    assert_eq!(done["done"], true);
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "the screenshot {} is missing or empty ({size} bytes)", screenshot.display());
    drop(extras);
}
