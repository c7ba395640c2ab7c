//! The demo page in a real browser: headless Chromium opens it, joins a room typed into it,
//! sees an event published through the ingest socket, presence and its own comment; the
//! README's console snippet, run from the page, joins a room too. A screenshot is written to
//! `CARGO_TARGET_TMPDIR/demo-page.png` for a person to look at.
//!
//! Chromium is driven over the DevTools protocol (a WebSocket, with tungstenite's client);
//! every wait is a promise in the page that resolves on a DOM change (MutationObserver) or
//! fails at its deadline, so the test waits on events, not sleeps. The page is served by the
//! server itself on its ws port, so it talks to the server through its own origin.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::{Server, WAIT};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium with a DevTools connection to its one page; killed when dropped.
struct Browser {
    child: Child,
    profile: PathBuf,
    devtools: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// DevTools events that arrived while waiting for a call's answer.
    events: Vec<Value>,
}

impl Browser {
    fn open(url: &str) -> Self {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "this test needs Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`"
        );
        let profile = support::temp_dir("chromium");
        let mut child = Command::new(CHROMIUM)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1200,800"])
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let browser_url = match rx.recv_timeout(WAIT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("chromium printed no DevTools address within {WAIT:?}");
            }
        };
        let port = browser_url.split(['/', ':']).nth(4).expect("port in the DevTools address").to_owned();
        let page_ws = page_target(&port, "about:blank");
        let (devtools, _) = tungstenite::connect(page_ws.as_str()).expect("DevTools WebSocket");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = devtools.get_ref() {
            s.set_read_timeout(Some(WAIT)).expect("read timeout");
        }
        let mut browser = Self { child, profile, devtools, next_id: 0, events: Vec::new() };
        browser.call("Page.enable", json!({}));
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser.call("Page.navigate", json!({"url": url}));
        browser.wait_event("Page.loadEventFired");
        browser
    }

    /// Read DevTools messages until the event `method` (or take it from those seen already).
    fn wait_event(&mut self, method: &str) -> Value {
        if let Some(at) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(at);
        }
        loop {
            let v = self.next_message();
            if v["method"] == method {
                return v;
            }
        }
    }

    fn next_message(&mut self) -> Value {
        loop {
            let msg = self.devtools.read().expect("DevTools answers in time");
            if let Ok(text) = msg.to_text() {
                if !text.is_empty() {
                    return serde_json::from_str(text).expect("DevTools sends JSON");
                }
            }
        }
    }

    /// One DevTools call; returns its `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.devtools.send(tungstenite::Message::text(request)).expect("DevTools send");
        loop {
            let v = self.next_message();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Evaluate `expr` in the page (awaiting a promise); its value, or a panic with the page's
    /// exception.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "awaitPromise": true, "returnByValue": true}));
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page threw: {}", e["exception"]["description"].as_str().unwrap_or(&e.to_string()));
        }
        r["result"]["value"].clone()
    }

    /// Wait until `condition` (a JS expression) is truthy, re-checked on every DOM change, and
    /// return its value; fails after 20 s with `what`.
    fn wait_for(&mut self, condition: &str, what: &str) -> Value {
        self.eval(&format!(
            r#"new Promise((ok, fail) => {{
                const check = () => {{ const v = ({condition}); if (v) {{ obs.disconnect(); clearTimeout(t); ok(v); }} }};
                const obs = new MutationObserver(check);
                const t = setTimeout(() => {{ obs.disconnect(); fail(new Error({what:?} + " did not happen; page: " + document.body.innerText)); }}, 20000);
                obs.observe(document.body, {{subtree: true, childList: true, characterData: true, attributes: true}});
                check();
            }})"#
        ))
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = shot["data"].as_str().expect("base64 PNG");
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).expect("PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The DevTools WebSocket of the page showing `url`, from `/json/list` on `port`.
fn page_target(port: &str, url: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut http = TcpStream::connect(format!("127.0.0.1:{port}")).expect("DevTools HTTP");
        http.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(http, "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").expect("ask");
        // DevTools keeps the connection open: read the head, then Content-Length bytes.
        let mut reader = BufReader::new(http);
        let mut length = 0;
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("Content-Length");
                }
            }
            line.clear();
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("DevTools target list");
        let body = String::from_utf8_lossy(&body);
        let targets: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        let page =
            targets.iter().find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)));
        if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
            return ws.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no page target for {url} in {body}");
        // The page target appears once navigation starts; DevTools has no event for that here.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The README's console snippet (the ```js block of "Try it").
fn readme_snippet() -> String {
    let readme = include_str!("../README.md");
    let from = readme.find("browser console").expect("README mentions the browser console");
    let block = &readme[from..];
    let start = block.find("```js\n").expect("a js block") + "```js\n".len();
    let len = block[start..].find("```").expect("block end");
    block[start..start + len].to_owned()
}

#[test]
fn the_demo_page_shows_a_published_event_presence_and_comments_in_chromium() {
    let server = Server::start(&["--presence-interval-ms", "100"]);
    let url = format!("http://{}/", server.ws);
    let mut browser = Browser::open(&url);
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
    );

    browser.wait_for(r#"document.getElementById("state").textContent.startsWith("connected")"#, "connected");
    browser.eval(
        r#"document.getElementById("user").value = "alice";
           document.getElementById("room").value = "demo-room";
           document.getElementById("join").click(); true"#,
    );
    browser.wait_for(r#"document.getElementById("where").textContent === "in demo-room""#, "joined demo-room");
    browser.wait_for(r#"document.getElementById("joined").innerText.includes("alice")"#, "alice in presence");
    assert_eq!(browser.eval(r#"document.getElementById("online").textContent"#), "1");

    let mut up = server.upstream();
    let reply =
        up.call(json!({"op": "publish", "room": "demo-room", "type": "gift", "data": {"from": "bob", "gift": "rose"}}));
    assert_eq!(reply["ok"], true, "{reply}");
    let events = browser.wait_for(r#"document.getElementById("events").innerText.includes("rose") && document.getElementById("events").innerText"#, "the gift event");
    assert!(events.as_str().is_some_and(|e| e.contains("gift")), "{events}");

    browser.eval(
        r#"document.getElementById("text").value = "hello from Chromium";
           document.getElementById("send").click(); true"#,
    );
    browser.wait_for(r#"document.getElementById("comments").innerText.includes("hello from Chromium")"#, "own comment");
    browser.wait_for(r#"document.getElementById("said").textContent.startsWith("delivered as #")"#, "comment ack");

    // The README's console snippet, run from this page, reaches the same server.
    let snippet = readme_snippet();
    let joined = browser.eval(&format!(
        r#"new Promise((ok, fail) => {{
            {snippet}
            ws.addEventListener("message", (m) => {{ if (JSON.parse(m.data).op === "joined") ok(m.data); }});
            ws.addEventListener("error", () => fail(new Error("the snippet's WebSocket failed")));
            setTimeout(() => fail(new Error("no joined within 20 s")), 20000);
        }})"#
    ));
    let joined: Value = serde_json::from_str(joined.as_str().expect("joined text")).expect("JSON");
    assert_eq!((joined["op"].as_str(), joined["room"].as_str()), (Some("joined"), Some("live-1")), "{joined}");

    // The snippet's `ws` is its own: the page keeps its connection and still shows events.
    let reply = up.call(json!({"op": "publish", "room": "demo-room", "type": "score", "data": {"home": 2}}));
    assert_eq!(reply["ok"], true, "{reply}");
    browser.wait_for(r#"document.getElementById("events").innerText.includes("score")"#, "an event after the snippet");

    let png = browser.screenshot();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-page.png");
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("demo page screenshot: {}", path.display());
}
