//! The dashboard in a real browser: headless Chromium (Debian's `/usr/bin/chromium`) driven by
//! `tests/browser/dashboard.mjs` (playwright-core from `npm ci`) opens `/admin` on an admin
//! port whose fake backend this test changes step by step, and checks after each change that
//! the page shows the new numbers and room view without a reload. The last picture is saved
//! to `target/admin.png`.
//!
//! Missing tools fail the test with the install step; nothing is skipped.

mod admin_support;

use admin_support::{member, post, start, start_on, FakeRoom, Step, WAIT};
use roomcast::admin::AdminSettings;
use roomcast::metrics::ListenerKind;
use roomcast::query::{FeedItem, LeaveReason};
use roomcast::wire::ErrorCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "dashboard-test-token";

fn require(ok: bool, what: &str) {
    assert!(ok, "{what}");
}

/// The browser script, killed if the test ends early.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
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
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = std::sync::Arc::clone(&stderr);
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
fn the_dashboard_follows_the_server_without_a_reload() {
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

    let screenshot: PathBuf = root.join("target").join("admin.png");
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
        w.step = Step { ms: 1000, deliveries: 2_400, comments: 12, errors_closes: 2, slow: 1, wave: false };
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
    let addr = admin.local_addr();
    admin.shutdown();
    browser.outage_step("outage", json!({"conn-status": {"contains": "reconnecting"}}));
    let admin = start_on(addr, &fake, settings);
    fake.world().rooms.get_mut("live-1").expect("live-1").comment_rate = 5.1;
    browser.outage_step("back", json!({"conn-status": "live", "room-rate": "5.1", "heat-rate:live-1": "5.1"}));

    // A livelier minute for the picture: comments, a gift, leaves, a refusal.
    fake.world().step = Step { ms: 1000, deliveries: 2_600, comments: 9, errors_closes: 0, slow: 0, wave: true };
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
