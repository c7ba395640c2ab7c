//! The `roomcast` command as a user meets it, by spawning the binary: configuration errors exit
//! with status 2 and name the flag or the key, each cause of a startup error is printed once,
//! listen addresses take host names, `check-config` redacts secrets, `gen-cert` refuses to
//! replace files without `--force` and writes the key with mode 0600, and a second server on a
//! port another process listens on is refused unless sharing is asked for.
//!
//! Every process is bounded in time and killed when the test ends (or fails).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one command or wait may take.
const WAIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_roomcast")
}

/// A fresh directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roomcast-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// What a finished command did.
#[derive(Debug)]
struct Outcome {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Read all of `from` on a thread; the text arrives on the returned channel at end of stream.
fn collect(mut from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = from.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// `roomcast ARGS` with piped output and only warnings logged.
fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roomcast starts")
}

/// Run `roomcast ARGS` to completion (killed and failed after [`WAIT`]).
fn run(args: &[&str]) -> Outcome {
    let mut child = spawn(args);
    let stdout = collect(child.stdout.take().expect("stdout piped"));
    let stderr = collect(child.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("roomcast {args:?} still running after {WAIT:?}");
        }
        // A child's exit has no readiness event to wait on (as in tests/support).
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = |rx: mpsc::Receiver<String>| rx.recv_timeout(WAIT).expect("output collected");
    Outcome { status: status.code(), stdout: text(stdout), stderr: text(stderr) }
}

/// A server that printed its ready line; killed when dropped.
struct Serving {
    child: Child,
    ready: String,
}

impl Serving {
    /// Start `roomcast serve ARGS` and wait for the ready line; `Err` with what the process
    /// printed when it exited instead.
    fn start(args: &[&str]) -> Result<Self, Outcome> {
        // The admin port too gets a free port unless the test names one (9090 may be taken).
        let admin: &[&str] = if args.contains(&"--admin-listen") { &[] } else { &["--admin-listen", "127.0.0.1:0"] };
        let mut child = spawn(&[&["serve"], args, admin].concat());
        let stderr = collect(child.stderr.take().expect("stderr piped"));
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so a later print never meets a closed pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("roomcast serve {args:?}: no ready line within {WAIT:?}");
            }
        };
        if line.starts_with("roomcast ready ") {
            return Ok(Self { child, ready: line });
        }
        // End of stdout without a ready line: the process is exiting.
        let status = child.wait().expect("wait").code();
        Err(Outcome { status, stdout: line, stderr: stderr.recv_timeout(WAIT).unwrap_or_default() })
    }

    /// The address the ready line gives for `name` (`ws`, `ingest`).
    fn addr(&self, name: &str) -> String {
        self.ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name}= in {:?}", self.ready))
            .to_owned()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loopback listeners on kernel-chosen ports, no admin port.
const LOOPBACK: [&str; 6] = ["--ws-listen", "127.0.0.1:0", "--ingest-listen", "127.0.0.1:0", "--workers", "2"];

fn serve_fails(args: &[&str]) -> Outcome {
    let mut all = vec!["serve"];
    all.extend_from_slice(&LOOPBACK);
    if !args.contains(&"--admin-listen") {
        all.extend_from_slice(&["--admin-listen", "127.0.0.1:0"]);
    }
    all.extend_from_slice(args);
    let out = run(&all);
    assert_ne!(out.status, Some(0), "serve {args:?} should fail: {out:?}");
    out
}

#[test]
fn a_bad_flag_exits_2_naming_the_flag() {
    let out = serve_fails(&["--max-message", "10"]);
    assert_eq!(out.status, Some(2), "{out:?}");
    assert_eq!(out.stderr.trim(), "roomcast: --max-message: must be 125..=16777216 bytes (got 10)");
    let out = run(&["serve", "--ws-listen", "8080"]);
    assert_eq!(out.status, Some(2), "{out:?}");
    assert!(out.stderr.contains("--ws-listen") && out.stderr.contains("HOST:PORT"), "{}", out.stderr);
}

#[test]
fn a_bad_file_exits_2_naming_the_key() {
    let dir = temp_dir("keys");
    let file = dir.join("c.toml");
    let check = |toml: &str, expected: &str| {
        std::fs::write(&file, toml).expect("write config");
        let out = serve_fails(&["--config", file.to_str().expect("path")]);
        assert_eq!(out.status, Some(2), "{out:?}");
        assert!(out.stderr.starts_with(&format!("roomcast: {expected}")), "{toml:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "one line, no echoed source: {}", out.stderr);
    };
    check("[limits]\nmax_message = 10\n", "limits.max_message: must be 125..=16777216 bytes (got 10)");
    check("[limits]\nmax_mesage = 5\n", "limits.max_mesage: unknown key `max_mesage`, expected one of");
    check("[limits]\nmax_message = \"big\"\n", "limits.max_message: invalid type: string \"big\"");
    check("[ingest]\nunix = \"/tmp/roomcast-ingest.sock\"\n", "ingest.unix: Unix-socket ingest is not available yet");
    let out = run(&["check-config", "--config", file.to_str().expect("path")]);
    assert_eq!(out.status, Some(2), "check-config exits 2 as well: {out:?}");
    let missing = dir.join("missing.toml");
    let out = serve_fails(&["--config", missing.to_str().expect("path")]);
    assert_eq!(out.status, Some(2), "{out:?}");
    assert_eq!(out.stderr.matches("No such file").count(), 1, "the cause once: {}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ingest_over_a_unix_socket_is_refused_rather_than_ignored() {
    let out = serve_fails(&["--ingest-unix", "/tmp/roomcast-ingest.sock"]);
    assert_eq!(out.status, Some(2), "{out:?}");
    assert!(
        out.stderr.starts_with("roomcast: --ingest-unix: Unix-socket ingest is not available yet"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let dir = temp_dir("redact");
    let file = dir.join("c.toml");
    std::fs::write(&file, "workers = 3\n[ingest]\ntokens = [\"s3cret-one\", \"s3cret-two\"]\n").expect("write");
    let out = run(&["check-config", "--config", file.to_str().expect("path")]);
    assert_eq!(out.status, Some(0), "{out:?}");
    assert!(!out.stdout.contains("s3cret"), "tokens must not be printed: {}", out.stdout);
    let printed: toml::Table = toml::from_str(&out.stdout).expect("the output is TOML");
    assert_eq!(printed["workers"].as_integer(), Some(3));
    let tokens = printed["ingest"]["tokens"].as_array().expect("tokens listed");
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t.as_str() == Some("<redacted>")), "{tokens:?}");
    assert_eq!(printed["ws"]["demo_page"].as_bool(), Some(true));
    let _ = std::fs::remove_dir_all(dir);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn gen_cert_keeps_existing_files_unless_forced_and_the_key_is_private() {
    let dir = temp_dir("gencert");
    let out_dir = dir.to_str().expect("path");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = run(&["gen-cert", "--out", out_dir]);
    assert_eq!(out.status, Some(0), "{out:?}");
    assert_eq!(mode(&key), 0o600, "key.pem is private");
    let first = (std::fs::read(&cert).expect("cert"), std::fs::read(&key).expect("key"));

    let out = run(&["gen-cert", "--out", out_dir]);
    assert_eq!(out.status, Some(1), "{out:?}");
    assert!(out.stderr.contains("exists; pass --force to replace it"), "{}", out.stderr);
    assert_eq!(std::fs::read(&key).expect("key"), first.1, "the key is untouched");

    // A key someone made readable gets 0600 again when replaced.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(&["gen-cert", "--out", out_dir, "--force"]);
    assert_eq!(out.status, Some(0), "{out:?}");
    assert_ne!(std::fs::read(&cert).expect("cert"), first.0, "a new certificate");
    assert_ne!(std::fs::read(&key).expect("key"), first.1, "a new key");
    assert_eq!(mode(&key), 0o600, "the replaced key is private");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_unusable_certificate_or_key_fails_at_startup_with_a_clear_message() {
    let dir = temp_dir("badtls");
    let (a, b) = (dir.join("a"), dir.join("b"));
    for d in [&a, &b] {
        let out = run(&["gen-cert", "--out", d.to_str().expect("path")]);
        assert_eq!(out.status, Some(0), "{out:?}");
    }
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let path = |p: &Path| p.to_str().expect("path").to_owned();
    let (cert_a, key_a, key_b) = (path(&a.join("cert.pem")), path(&a.join("key.pem")), path(&b.join("key.pem")));
    let missing = path(&dir.join("missing.pem"));
    let tls =
        |cert: &str, key: &str| serve_fails(&["--wss-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key]);

    let out = tls(&missing, &key_a);
    assert_eq!(out.status, Some(2), "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        format!("roomcast: TLS setup: cannot read {missing}: No such file or directory (os error 2)")
    );

    let out = tls(&path(&garbage), &key_a);
    assert_eq!(out.status, Some(2), "{out:?}");
    assert!(
        out.stderr.starts_with(&format!("roomcast: TLS setup: {}: holds no PEM", path(&garbage))),
        "{}",
        out.stderr
    );

    let out = tls(&cert_a, &cert_a);
    assert_eq!(out.status, Some(2), "a certificate is not a key: {out:?}");
    assert!(out.stderr.contains("holds no PEM private key"), "{}", out.stderr);

    let out = tls(&cert_a, &key_b);
    assert_eq!(out.status, Some(2), "{out:?}");
    assert!(
        out.stderr.starts_with("roomcast: TLS setup: the certificate and key do not form a valid TLS configuration: "),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn listen_addresses_take_host_names() {
    let server = Serving::start(&["--ws-listen", "localhost:0", "--ingest-listen", "localhost:0", "--workers", "1"])
        .unwrap_or_else(|out| panic!("serve with host names: {out:?}"));
    for name in ["ws", "ingest"] {
        let addr: std::net::SocketAddr = server.addr(name).parse().expect("the ready line has an address");
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{name}={addr}");
    }
}

#[test]
fn a_second_server_on_the_same_port_is_refused_unless_sharing_is_asked_for() {
    let mut first = Serving::start(&LOOPBACK).unwrap_or_else(|out| panic!("first server: {out:?}"));
    let ws = first.addr("ws");

    let out = Serving::start(&["--ws-listen", &ws, "--ingest-listen", "127.0.0.1:0", "--workers", "2"])
        .err()
        .expect("a second server on the same ws port must not start");
    assert_eq!(out.status, Some(2), "{out:?}");
    let expected =
        format!("roomcast: cannot listen on {ws} (ws): pid {} (roomcast) already listens on port", first.pid());
    assert!(out.stderr.starts_with(&expected), "expected {expected:?}, got {}", out.stderr);
    assert!(out.stderr.contains("--reuse-port"), "{}", out.stderr);

    // The ingest port is one server's too.
    let ingest = first.addr("ingest");
    let out = Serving::start(&["--ws-listen", "127.0.0.1:0", "--ingest-listen", &ingest, "--workers", "1"])
        .err()
        .expect("a second server on the same ingest port must not start");
    assert_eq!(out.status, Some(2), "{out:?}");
    assert!(out.stderr.contains(&format!("cannot listen on {ingest} (ingest)")), "{}", out.stderr);

    // Asked for, the port is shared: both serve.
    let mut second =
        Serving::start(&["--ws-listen", &ws, "--ingest-listen", "127.0.0.1:0", "--workers", "2", "--reuse-port"])
            .unwrap_or_else(|out| panic!("with --reuse-port the second server runs: {out:?}"));
    assert_eq!(second.addr("ws"), ws);
    assert!(first.running() && second.running(), "both servers serve");
}
