//! Every loadgen scenario, run briefly against a roomcast started on free ports; the JSON
//! report's counts are checked (never its timings: the machine is shared, so the count tests
//! tolerate a late publisher with `--lag-tolerance-ms`). Invalid runs must exit non-zero and say
//! why on their last line; the `.hgrm` file is read back with a parser written here.
//!
//! Every process is bounded in time and killed by a guard, also when a test panics.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Longest a server may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Longest one loadgen run may take.
const RUN_WITHIN: Duration = Duration::from_secs(120);
/// Loose enough that a busy test machine does not make a count test invalid for lag.
const LAX_LAG: [&str; 2] = ["--lag-tolerance-ms", "5000"];

/// Kills its process when dropped (a test that panics leaves nothing running).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    guard: Guard,
    ws: String,
    ingest: String,
    /// The wss address, when the server was started with a certificate.
    wss: Option<String>,
}

impl Server {
    fn pid(&self) -> String {
        self.guard.0.id().to_string()
    }
}

/// The roomcast binary built next to this test (`cargo test --workspace` builds it first).
fn roomcast_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("roomcast");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        bin.display()
    );
    bin
}

fn start(extra: &[&str]) -> Server {
    let child = Command::new(roomcast_bin())
        .args(["serve", "--workers", "2", "--ws-listen", "127.0.0.1:0", "--ingest-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .arg("--sink-dir")
        .arg(unique_path("data", "d"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let mut guard = Guard(child);
    let stdout = guard.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(READY_WITHIN).expect("the server prints its ready line in time");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in the ready line {line:?}"))
            .to_owned()
    };
    let wss = Some(field("wss")).filter(|w| w != "off");
    Server { ws: field("ws"), ingest: field("ingest"), wss, guard }
}

/// A file name no other test (or test process) uses.
fn unique_path(what: &str, ext: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("loadgen-test-{}-{n}-{what}.{ext}", std::process::id()))
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// Run loadgen with `args`, killed if it takes longer than [`RUN_WITHIN`].
fn run_loadgen(args: &[&str]) -> Finished {
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen starts");
    let mut guard = Guard(child);
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(guard.0.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(guard.0.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    // The pipes close when loadgen (and any child of it) exits.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send((stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default()));
    });
    let (stdout, stderr) =
        rx.recv_timeout(RUN_WITHIN).unwrap_or_else(|_| panic!("loadgen {args:?} ran over {RUN_WITHIN:?}"));
    let status = guard.0.wait().expect("loadgen exit status");
    Finished { status, stdout, stderr }
}

/// Run a scenario against `server` and return its JSON report; it must be valid.
fn loadgen(server: &Server, scenario: &str, extra: &[&str]) -> Value {
    let (report, run) = loadgen_report(server, scenario, extra);
    assert!(run.status.success(), "loadgen {scenario} failed ({}): {}\n{}", run.status, run.last_line(), run.stderr);
    assert_eq!(run.last_line(), "valid           true");
    report
}

fn loadgen_report(server: &Server, scenario: &str, extra: &[&str]) -> (Value, Finished) {
    let json = unique_path(scenario, "json");
    let url = format!("ws://{}/ws", server.ws);
    let json_arg = json.to_string_lossy().into_owned();
    let mut args = vec![scenario, "--url", &url, "--json", &json_arg];
    if matches!(scenario, "fanout" | "churn") {
        args.extend(["--ingest", &server.ingest]);
    }
    args.extend(extra);
    let run = run_loadgen(&args);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report from loadgen {scenario} ({e}): {}\n{}", run.stdout, run.stderr));
    let _ = std::fs::remove_file(json);
    (serde_json::from_str(&text).expect("json"), run)
}

#[test]
fn fanout_reports_every_delivery_and_no_loss_and_its_hgrm_reads_back() {
    let server = start(&[]);
    let hgrm = unique_path("fanout", "hgrm");
    let hgrm_arg = hgrm.to_string_lossy().into_owned();
    let mut args = vec!["--conns", "60", "--rooms", "6", "--rate", "120", "--duration", "1", "--drain", "20"];
    args.extend(LAX_LAG);
    args.extend(["--hgrm", &hgrm_arg]);
    let r = loadgen(&server, "fanout", &args);
    assert_eq!(r["joined"], 60);
    assert_eq!(r["published"], 120);
    assert_eq!(r["expected"], 120 * 10, "each message goes to the 10 members of its room");
    assert_eq!(r["delivered"], r["expected"]);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64(), r["reordered"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(r["latency"]["count"], r["delivered"], "every delivery is measured");
    let text = std::fs::read_to_string(&hgrm).expect("hgrm written");
    let _ = std::fs::remove_file(&hgrm);
    let parsed = parse_hgrm(&text);
    assert_eq!(Some(parsed.total), r["delivered"].as_u64(), "footer Total count");
    assert_eq!(
        parsed.rows.last().map(|row| row.total_count),
        r["delivered"].as_u64(),
        "the last TotalCount is every value"
    );
    assert_eq!(parsed.rows.last().map(|row| row.percentile), Some(1.0));
    assert!(
        parsed.rows.windows(2).all(|w| w[0].total_count <= w[1].total_count && w[0].value <= w[1].value),
        "TotalCount is cumulative and values ascend:\n{text}"
    );
    assert!(parsed.rows.windows(2).all(|w| w[0].percentile < w[1].percentile), "percentiles ascend:\n{text}");
    let max_ms = r["latency"]["max_ms"].as_f64().expect("max");
    assert!((parsed.max - max_ms).abs() < 0.001 + max_ms * 1e-3, "footer Max {} vs report {max_ms}", parsed.max);
}

/// `--poll-us` clients still see every delivery, and `--timeline` has one line per message
/// whose deliveries add up to the run's, each first delivery no later than its last.
#[test]
fn polling_clients_get_every_delivery_and_the_timeline_has_each_message() {
    let server = start(&[]);
    let timeline = unique_path("fanout", "csv");
    let timeline_arg = timeline.to_string_lossy().into_owned();
    let mut args = vec!["--conns", "40", "--rooms", "4", "--rate", "80", "--duration", "1", "--drain", "20"];
    args.extend(LAX_LAG);
    args.extend(["--poll-us", "200", "--timeline", &timeline_arg]);
    let r = loadgen(&server, "fanout", &args);
    assert_eq!(r["delivered"], 80 * 10);
    assert_eq!(r["lost"], 0);
    let text = std::fs::read_to_string(&timeline).expect("timeline written");
    let _ = std::fs::remove_file(&timeline);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("due_s,deliveries,first_ms,last_ms"));
    let rows: Vec<Vec<f64>> = lines.map(|l| l.split(',').map(|f| f.parse().expect("a number")).collect()).collect();
    assert_eq!(rows.len(), 80, "one line per message:\n{text}");
    assert!(rows.iter().all(|row| row[1] == 10.0 && row[2] <= row[3]), "10 deliveries each, first <= last:\n{text}");
    assert!(rows.windows(2).all(|w| w[0][0] < w[1][0]), "in send order:\n{text}");
    assert_eq!(r["message_spread"]["messages"], 80);
    let latest = rows.iter().map(|row| row[3]).fold(0.0, f64::max);
    assert!((r["message_spread"]["last_max_ms"].as_f64().expect("latest") - latest).abs() < 0.01);
}

struct HgrmRow {
    value: f64,
    percentile: f64,
    total_count: u64,
}

struct Hgrm {
    rows: Vec<HgrmRow>,
    max: f64,
    total: u64,
}

/// An independent reader of HdrHistogram's percentile distribution text (as the plotter and
/// wrk2 users read it): a header, rows `Value Percentile TotalCount [1/(1-Percentile)]`, and the
/// `#[Mean`, `#[Max`, `#[Buckets` footer.
fn parse_hgrm(text: &str) -> Hgrm {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]);
    assert_eq!(lines.next(), Some(""), "a blank line after the header");
    let (mut rows, mut max, mut total, mut footer) = (Vec::new(), None, None, 0);
    for line in lines {
        if let Some(rest) = line.strip_prefix("#[") {
            footer += 1;
            let fields: Vec<&str> = rest.trim_end_matches(']').split(',').collect();
            let value = |i: usize| fields[i].split('=').nth(1).expect("key = value").trim().to_owned();
            if rest.starts_with("Max") {
                max = Some(value(0).parse::<f64>().expect("max"));
                total = Some(value(1).parse::<u64>().expect("total count is an integer"));
            }
            continue;
        }
        assert_eq!(footer, 0, "rows come before the footer: {line}");
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() == 4 || (f.len() == 3 && f[1] == "1.000000000000"), "row {line:?}");
        rows.push(HgrmRow {
            value: f[0].parse().expect("value"),
            percentile: f[1].parse().expect("percentile"),
            total_count: f[2].parse().expect("TotalCount is an integer"),
        });
    }
    assert_eq!(footer, 3, "Mean, Max and Buckets lines");
    Hgrm { rows, max: max.expect("#[Max line"), total: total.expect("#[Max line") }
}

#[test]
fn comments_are_acked_and_delivered_to_every_member() {
    let server = start(&[]);
    let mut args = vec!["--conns", "20", "--rooms", "2", "--rate", "20", "--duration", "1", "--drain", "20"];
    args.extend(LAX_LAG);
    let r = loadgen(&server, "comments", &args);
    let sent = r["published"].as_u64().expect("comments sent");
    assert!(sent > 0);
    assert_eq!(r["ack_latency"]["count"], sent, "every comment acked");
    assert_eq!(r["delivered"], sent * 10, "each comment reaches the 10 members of its room");
    assert_eq!(r["lost"], 0);
}

#[test]
fn idle_and_storm_hold_and_count_connections() {
    let server = start(&[]);
    let idle = loadgen(&server, "idle", &["--conns", "100", "--rooms", "5", "--duration", "0.5"]);
    assert_eq!(
        (idle["connected"].as_u64(), idle["joined"].as_u64(), idle["failed"].as_u64()),
        (Some(100), Some(100), Some(0))
    );
    let svg = unique_path("storm", "svg");
    let hgrm = unique_path("storm", "hgrm");
    let (svg_arg, hgrm_arg) = (svg.to_string_lossy().into_owned(), hgrm.to_string_lossy().into_owned());
    let storm = loadgen(&server, "storm", &["--conns", "200", "--svg", &svg_arg, "--hgrm", &hgrm_arg]);
    assert_eq!((storm["connected"].as_u64(), storm["failed"].as_u64()), (Some(200), Some(0)));
    assert!(storm["connects_per_sec"].as_f64().is_some_and(|r| r > 0.0));
    assert_eq!(storm["connect_latency"]["count"], 200, "every TCP connect is measured");
    assert_eq!(storm["upgrade_latency"]["count"], 200, "every upgrade is measured");
    let parsed = parse_hgrm(&std::fs::read_to_string(&hgrm).expect("hgrm written"));
    assert_eq!(parsed.total, 200, "storm's .hgrm is its upgrade latency");
    let chart = std::fs::read_to_string(&svg).expect("svg written");
    assert_eq!(chart.matches("<polyline").count(), 2, "connect and upgrade lines");
    let _ = (std::fs::remove_file(svg), std::fs::remove_file(hgrm));
}

/// A wss storm of `conns` (with `extra` flags) against `server`, whose certificate is `cert`;
/// returns its JSON report, which must be valid.
fn wss_storm(server: &Server, cert: &str, conns: &str, extra: &[&str]) -> Value {
    let port = server.wss.as_deref().and_then(|a| a.rsplit(':').next()).expect("the server serves wss");
    let url = format!("wss://localhost:{port}/ws");
    let json = unique_path("wss-storm", "json");
    let json_arg = json.to_string_lossy().into_owned();
    let pid = server.pid();
    let mut args =
        vec!["storm", "--url", &url, "--ca", cert, "--conns", conns, "--server-pid", &pid, "--json", &json_arg];
    args.extend(extra);
    let run = run_loadgen(&args);
    assert!(run.status.success(), "loadgen {args:?} failed ({}): {}\n{}", run.status, run.last_line(), run.stderr);
    assert_eq!(run.last_line(), "valid           true");
    let text = std::fs::read_to_string(&json).expect("report written");
    let _ = std::fs::remove_file(json);
    serde_json::from_str(&text).expect("json")
}

#[test]
fn a_wss_storm_is_full_handshakes_unless_asked_to_resume_and_then_every_reconnect_resumes() {
    let dir = unique_path("tls", "d");
    let made = Command::new(roomcast_bin()).arg("gen-cert").arg("--out").arg(&dir).output().expect("gen-cert runs");
    assert!(made.status.success(), "gen-cert: {}", String::from_utf8_lossy(&made.stderr));
    let (cert, key) = (dir.join("cert.pem").display().to_string(), dir.join("key.pem").display().to_string());
    // The server sends session tickets by default.
    let server = start(&["--wss-listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key, "--accept-rate", "0"]);
    let full = wss_storm(&server, &cert, "100", &[]);
    assert_eq!((full["connected"].as_u64(), full["tls_resumed"].as_u64()), (Some(100), Some(0)), "{full}");
    assert!(full["connect_server_cpu_seconds"].as_f64().is_some(), "the server's CPU while connecting: {full}");
    let resumed = wss_storm(&server, &cert, "100", &["--tls-resume"]);
    assert_eq!((resumed["connected"].as_u64(), resumed["tls_resumed"].as_u64()), (Some(100), Some(100)), "{resumed}");
    assert_eq!(resumed["upgrade_latency"]["count"], 100, "only the resumed round is measured");
    assert_eq!(resumed["failed"].as_u64(), Some(0));
    // Against a server that sends no tickets the resumed round cannot resume, and says so.
    let no_tickets =
        start(&["--wss-listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key, "--tls-session-tickets", "0"]);
    let port = no_tickets.wss.as_deref().and_then(|a| a.rsplit(':').next()).expect("wss").to_owned();
    let url = format!("wss://localhost:{port}/ws");
    let run = run_loadgen(&["storm", "--url", &url, "--ca", &cert, "--conns", "20", "--tls-resume"]);
    assert_eq!(run.status.code(), Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(run.last_line().contains("only 0 of 20 reconnects resumed their TLS session"), "{}", run.last_line());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn procs_spread_connections_over_children_and_merge_their_counts() {
    let server = start(&[]);
    let mut args =
        vec!["--conns", "60", "--rooms", "6", "--rate", "120", "--duration", "1", "--drain", "20", "--procs", "3"];
    args.extend(LAX_LAG);
    let r = loadgen(&server, "fanout", &args);
    assert_eq!(r["loadgen_processes"], 3, "three children reported and were merged");
    assert_eq!(r["joined"], 60, "the three children's joins add up");
    assert_eq!(r["published"], 120);
    assert_eq!(r["delivered"], 120 * 10, "each message goes to the 10 members of its room, whichever child holds them");
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64(), r["reordered"].as_u64()), (Some(0), Some(0), Some(0)));
    assert_eq!(r["latency"]["count"], r["delivered"], "the children's histograms are merged, not sampled");
    assert_eq!(r["message_spread"]["messages"], 120, "each message's spread is merged over the children");
    let mut args =
        vec!["--conns", "20", "--rooms", "2", "--rate", "20", "--duration", "1", "--drain", "20", "--procs", "2"];
    args.extend(LAX_LAG);
    let comments = loadgen(&server, "comments", &args);
    assert_eq!(comments["loadgen_processes"], 2);
    let sent = comments["published"].as_u64().expect("comments sent");
    assert!(sent > 0);
    assert_eq!(comments["ack_latency"]["count"], sent, "every comment acked, in either child");
    assert_eq!(comments["delivered"], sent * 10);
}

/// Run `fanout` with `args` and return its report and run (valid or not).
fn fanout_report(args: &[&str]) -> (Value, Finished) {
    let json = unique_path("fanout-urls", "json");
    let json_arg = json.to_string_lossy().into_owned();
    let mut all = vec!["fanout", "--json", &json_arg];
    all.extend(args);
    all.extend(LAX_LAG);
    let run = run_loadgen(&all);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report from loadgen {all:?} ({e}): {}\n{}", run.stdout, run.stderr));
    let _ = std::fs::remove_file(json);
    (serde_json::from_str(&text).expect("json"), run)
}

#[test]
fn viewers_spread_over_several_urls_and_each_urls_viewers_are_counted() {
    // Two independent servers; only A's ingest is published to, so B's viewers (half of each
    // room, over all three children) join and receive nothing: lost, and the run invalid.
    let (a, b) = (start(&[]), start(&[]));
    let (url_a, url_b) = (format!("ws://{}/ws", a.ws), format!("ws://{}/ws", b.ws));
    let (pid_a, pid_b) = (a.pid(), b.pid());
    let mut args = vec!["--url", &url_a, "--url", &url_b, "--ingest", &a.ingest, "--server-pid", &pid_a];
    args.extend(["--server-pid", &pid_b, "--procs", "3", "--conns", "40", "--rooms", "5"]);
    args.extend(["--rate", "40", "--duration", "1", "--drain", "3"]);
    let (r, run) = fanout_report(&args);
    assert_eq!(run.status.code(), Some(INVALID_RUN), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(r["joined"], 40, "both servers took their viewers: {r}");
    assert_eq!(r["url"], format!("{url_a},{url_b}"));
    assert_eq!(r["published"], 40);
    // Room r has 8 members, 4 on each server (connection i: room i mod 5, server (i / 5) mod 2).
    assert_eq!(r["expected"], 40 * 8);
    let per_url = r["per_url"].as_array().expect("per_url");
    let row = |u: &Value| (u["url"].as_str().map(str::to_owned), u["conns"].as_u64(), u["delivered"].as_u64());
    assert_eq!(row(&per_url[0]), (Some(url_a), Some(20), Some(40 * 4)), "{r}");
    assert_eq!(row(&per_url[1]), (Some(url_b), Some(20), Some(0)), "{r}");
    assert_eq!((per_url[0]["lost"].as_u64(), per_url[1]["lost"].as_u64()), (Some(0), Some(40 * 4)));
    assert_eq!(per_url[0]["latency"]["count"], 40 * 4, "the children's per-URL histograms are merged");
    assert_eq!((r["delivered"].as_u64(), r["lost"].as_u64()), (Some(40 * 4), Some(40 * 4)));
    assert_eq!(r["server_pids"], serde_json::json!([a.guard.0.id(), b.guard.0.id()]));
    let each: Vec<f64> =
        r["server_cpu_seconds_each"].as_array().expect("each").iter().filter_map(Value::as_f64).collect();
    assert_eq!(each.len(), 2, "{r}");
    let total = r["server_cpu_seconds"].as_f64().expect("summed");
    assert!((total - each.iter().sum::<f64>()).abs() < 1e-9, "{total} is the sum of {each:?}");
}

#[test]
fn one_server_given_twice_is_one_valid_run_split_in_two() {
    let server = start(&[]);
    let url = format!("ws://{}/ws", server.ws);
    let (urls, pid) = (format!("{url},{url}"), server.pid());
    let pids = format!("{pid},{pid}");
    let mut args = vec!["--url", &urls, "--ingest", &server.ingest, "--server-pid", &pids, "--conns", "30"];
    args.extend(["--rooms", "3", "--rate", "30", "--duration", "1", "--drain", "20"]);
    let (r, run) = fanout_report(&args);
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    assert_eq!((r["delivered"].as_u64(), r["expected"].as_u64()), (Some(300), Some(300)));
    let per_url = r["per_url"].as_array().expect("per_url");
    let delivered: Vec<u64> = per_url.iter().filter_map(|u| u["delivered"].as_u64()).collect();
    assert_eq!(delivered, [150, 150], "{r}");
    assert!(run.stdout.contains(&format!("  {url}  15 conns, 150 delivered")), "{}", run.stdout);
    assert_eq!(r["server_cpu_seconds_each"].as_array().map(Vec::len), Some(2));
}

#[test]
fn one_url_reports_as_before() {
    let server = start(&[]);
    let pid = server.pid();
    let mut args = vec!["--conns", "10", "--rooms", "2", "--rate", "20", "--duration", "0.5", "--drain", "20"];
    args.extend(LAX_LAG);
    args.extend(["--server-pid", &pid]);
    let r = loadgen(&server, "fanout", &args);
    assert_eq!(r["url"], format!("ws://{}/ws", server.ws));
    assert_eq!(r["urls"].as_array().map(Vec::len), Some(1));
    assert_eq!(r["per_url"], serde_json::json!([]), "no per-URL figures for one URL");
    assert!(r["server_cpu_seconds"].as_f64().is_some());
    let window: Vec<u64> = r["window_unix_ms"].as_array().expect("window").iter().filter_map(Value::as_u64).collect();
    assert!(window.len() == 2 && window[0] <= window[1] && window[1] - window[0] >= 300, "{window:?}");
}

#[test]
fn churn_recovers_every_reconnect_without_loss() {
    let server = start(&[]);
    let mut args = vec!["--conns", "20", "--rooms", "2", "--rate", "40", "--duration", "2"];
    args.extend(["--hold-min-ms", "200", "--hold-max-ms", "600", "--drain", "20"]);
    args.extend(LAX_LAG);
    let r = loadgen(&server, "churn", &args);
    let reconnects = r["reconnects"].as_u64().expect("reconnects counted");
    assert!(reconnects > 0, "viewers left and came back: {r}");
    assert_eq!(r["recovered"], reconnects, "every rejoin with `since` got exactly what it missed");
    assert_eq!(r["recovery_failed"], 0);
    assert_eq!(r["published"], 80);
    assert_eq!(r["expected"], 80 * 10, "every viewer ends with every event of its room, across its rejoins");
    assert_eq!(r["delivered"], r["expected"]);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64(), r["reordered"].as_u64()), (Some(0), Some(0), Some(0)));
}

/// Exit status of an invalid run (loadgen's main.rs).
const INVALID_RUN: i32 = 2;

#[test]
fn storm_against_a_closed_port_is_invalid_and_says_why() {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let run = run_loadgen(&["storm", "--url", &url, "--conns", "20", "--connect-timeout", "30"]);
    assert_eq!(run.status.code(), Some(INVALID_RUN), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.last_line(), "valid           false: 20 of 20 connections failed");
}

#[test]
fn fanout_with_every_connection_failed_is_invalid_and_says_why() {
    let server = start(&[]);
    // The server refuses the upgrade on any path but /ws: every connection fails.
    let url = format!("ws://{}/not-the-path", server.ws);
    let json = unique_path("fanout-failed", "json");
    let json_arg = json.to_string_lossy().into_owned();
    let mut args = vec!["fanout", "--url", &url, "--ingest", &server.ingest, "--json", &json_arg];
    args.extend(["--conns", "10", "--rooms", "2", "--rate", "20", "--duration", "0.5", "--drain", "1"]);
    args.extend(LAX_LAG);
    let run = run_loadgen(&args);
    assert_eq!(run.status.code(), Some(INVALID_RUN), "{}\n{}", run.stdout, run.stderr);
    assert!(run.last_line().starts_with("valid           false: 10 of 10 connections failed"), "{}", run.last_line());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    let _ = std::fs::remove_file(json);
    assert_eq!((r["valid"].as_bool(), r["failed"].as_u64()), (Some(false), Some(10)));
}

#[test]
fn a_server_with_ingest_tokens_needs_the_flag_and_says_so() {
    let server = start(&["--ingest-token", "sekrit"]);
    let mut args = vec!["--conns", "10", "--rooms", "2", "--rate", "20", "--duration", "0.5", "--drain", "20"];
    args.extend(LAX_LAG);
    let run = fanout_run(&server, &args);
    assert_eq!(run.status.code(), Some(1), "a run that could not publish is an error: {}", run.stderr);
    assert!(run.stderr.contains("requires a token") && run.stderr.contains("--ingest-token"), "{}", run.stderr);
    assert!(!run.stderr.contains("Broken pipe"), "{}", run.stderr);
    args.extend(["--ingest-token", "sekrit"]);
    let r = loadgen(&server, "fanout", &args);
    assert_eq!(r["published"], 10);
    assert_eq!(r["delivered"], 10 * 5);
    let wrong = fanout_run(&server, &[&args[..args.len() - 1], &["wrong"]].concat());
    assert_eq!(wrong.status.code(), Some(1));
    assert!(wrong.stderr.contains("refused --ingest-token"), "{}", wrong.stderr);
}

/// A fanout run against `server` that may end without a report.
fn fanout_run(server: &Server, extra: &[&str]) -> Finished {
    let url = format!("ws://{}/ws", server.ws);
    let mut args = vec!["fanout", "--url", &url, "--ingest", &server.ingest];
    args.extend(extra);
    run_loadgen(&args)
}

/// Open one viewer (upgraded: the server has accepted it) and keep it.
fn hold_a_viewer(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(&server.ws).expect("connect");
    s.set_read_timeout(Some(READY_WITHIN)).expect("timeout");
    let request = roomcast::wire::upgrade::client_request("x", "/ws?user=other", "dGhlIHNhbXBsZSBub25jZQ==");
    s.write_all(&request).expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("upgrade response");
        assert!(n > 0, "closed before the upgrade");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    s
}

#[test]
fn idle_measures_from_the_rss_before_its_connections_and_warns_about_others() {
    let fresh = start(&[]);
    let pid = fresh.pid();
    let r = loadgen(&fresh, "idle", &["--conns", "50", "--rooms", "5", "--duration", "0.2", "--server-pid", &pid]);
    assert_eq!(r["server_conns_before"], 0);
    assert_eq!(r["warnings"].as_array().map(Vec::len), Some(0), "a fresh server: no warning: {r}");
    assert!(r["server_rss_kib"][0].as_u64().is_some() && r["server_rss_per_conn"].as_f64().is_some());

    let busy = start(&[]);
    let _other = hold_a_viewer(&busy);
    let pid = busy.pid();
    let (r, run) =
        loadgen_report(&busy, "idle", &["--conns", "50", "--rooms", "5", "--duration", "0.2", "--server-pid", &pid]);
    assert!(run.status.success(), "a warning does not invalidate the run: {}", run.stdout);
    assert_eq!(r["server_conns_before"], 1);
    assert!(run.stdout.contains("warning         the server already held 1 connections"), "{}", run.stdout);
}

/// A stand-in server: answers the upgrade and the join, pings twice, and checks what the
/// loadgen viewer sends back (a masked pong with the ping's payload each time, and nothing
/// else) and the JWT in its upgrade request.
#[test]
fn viewers_answer_pings_with_masked_pongs_and_send_nothing_else() {
    use roomcast::wire::frame::{FrameReader, Incoming, Role};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let runner = std::thread::spawn(move || {
        run_loadgen(&["idle", "--url", &url, "--conns", "1", "--duration", "1", "--jwt-secret", "s3cret"])
    });
    let (mut sock, _) = listener.accept().expect("loadgen connects");
    sock.set_read_timeout(Some(RUN_WITHIN)).expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(sock.read(&mut byte).expect("request"), 1, "request cut short");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ascii");
    let target = head.split_whitespace().nth(1).expect("request target");
    let token = target.split("token=").nth(1).expect("?token= sent").split('&').next().expect("token");
    assert!(target.contains("user=lg0"), "{target}");
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .expect("an HS256 token signed with --jwt-secret")
    .claims;
    assert_eq!(
        (&claims["sub"], &claims["rooms"], &claims["comment"]),
        (&"lg0".into(), &serde_json::json!(["*"]), &true.into())
    );
    sock.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .expect("101");

    // Everything the viewer sends from here on, decoded as a server decodes it (which
    // rejects an unmasked frame).
    let (tx, rx) = mpsc::channel::<(u8, Vec<u8>)>();
    let mut reading = sock.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut reader = FrameReader::new(Role::Server);
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok(n) = reading.read(&mut buf) else { return };
            if n == 0 {
                return;
            }
            let fed = reader.feed(&mut buf[..n], 1 << 20, |m| {
                let frame = match m {
                    Incoming::Text(t) => (0x1, t.to_vec()),
                    Incoming::Pong(p) => (0xA, p.to_vec()),
                    Incoming::Ping(p) => (0x9, p.to_vec()),
                    Incoming::Binary(b) => (0x2, b.to_vec()),
                    Incoming::Close(..) => (0x8, Vec::new()),
                };
                let _ = tx.send(frame);
                std::ops::ControlFlow::Continue(())
            });
            assert!(fed.is_ok(), "the viewer sent a frame a server must reject (unmasked?): {fed:?}");
        }
    });
    let next = || rx.recv_timeout(RUN_WITHIN).expect("a frame from the viewer");
    let (op, join) = next();
    assert_eq!(op, 0x1);
    assert!(String::from_utf8_lossy(&join).contains(r#""op":"join""#), "{}", String::from_utf8_lossy(&join));
    sock.write_all(&roomcast::wire::frame::text_frame(
        br#"{"op":"joined","room":"lg-0","seq":0,"epoch":"e","recovered":false,"online":1,"state":null}"#,
    ))
    .expect("joined");
    for payload in [&b"hb-1"[..], b"", b"a longer heartbeat payload"] {
        let mut ping = vec![0x89, payload.len() as u8];
        ping.extend_from_slice(payload);
        sock.write_all(&ping).expect("ping");
        assert_eq!(next(), (0xA, payload.to_vec()), "a pong with the ping's payload, and nothing before it");
    }
    let run = runner.join().expect("runner");
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    // loadgen has exited: the reader sees the end of the stream and drops its sender.
    let mut rest = Vec::new();
    loop {
        match rx.recv_timeout(RUN_WITHIN) {
            Ok(frame) => rest.push(frame),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the viewer's connection did not end with loadgen"),
        }
    }
    assert!(rest.is_empty(), "the viewer sent nothing else unasked: {rest:?}");
}
