//! The ingest publisher of `fanout` and `churn`: one TCP connection to the ingest socket,
//! opened with `auth` (`--ingest-token`) or `hello`, whose answer is read before publishing so
//! that a refused or missing token is reported as such (not as a broken pipe later); then one
//! `publish` per message on the open-loop [`Timetable`], each carrying its intended send time,
//! while a reader thread collects the replies (each room's last seq).
//!
//! It never waits for the server between messages (that would be closed-loop); it only
//! records how late it itself was ([`Lateness`]).

use crate::progress::Progress;
use crate::timetable::{Lateness, Timetable};
use anyhow::{bail, Context};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Wake this long before a message is due, then spin: a sleep alone overshoots by the
/// scheduler's slack.
const SPIN_BEFORE: Duration = Duration::from_micros(150);
/// Sleep only when the next message is further away than this.
const SLEEP_IF_AHEAD: Duration = Duration::from_micros(200);
/// How long the ingest socket has to answer `auth` or `hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Ingest address.
    pub ingest: String,
    /// Token for `auth`.
    pub token: Option<String>,
    /// Rooms `<prefix>-0 .. <prefix>-(rooms-1)`; message k goes to room k mod rooms.
    pub rooms: usize,
    /// Room name prefix.
    pub room_prefix: String,
    /// Messages per second.
    pub rate: f64,
    /// Seconds of publishing.
    pub duration: Duration,
    /// Extra payload bytes per message.
    pub payload: usize,
    /// A message this late is late.
    pub lag_tolerance: Duration,
}

/// What was published.
#[derive(Debug)]
pub struct Published {
    /// Messages per room.
    pub per_room: Vec<u64>,
    /// The last seq the server gave each room.
    pub last_seq: Vec<u64>,
    /// Error replies.
    pub errors: u64,
    /// How late the publisher was.
    pub lateness: Lateness,
}

/// An open ingest connection, past its `auth` or `hello`.
pub struct Publisher {
    plan: Plan,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Publisher {
    /// Connect and open the session: `auth` with the token, or `hello` without one. Fails with
    /// what the server said when it refused (e.g. it needs a token and none was given).
    pub fn connect(plan: Plan) -> anyhow::Result<Self> {
        let stream =
            TcpStream::connect(&plan.ingest).with_context(|| format!("connecting to ingest {}", plan.ingest))?;
        stream.set_nodelay(true)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let first = match &plan.token {
            Some(token) => serde_json::json!({"op": "auth", "token": token}),
            None => serde_json::json!({"op": "hello", "acks": true}),
        };
        (&stream).write_all(format!("{first}\n").as_bytes()).context("writing to the ingest socket")?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        stream.set_read_timeout(None)?;
        let reply: Option<serde_json::Value> = serde_json::from_str(line.trim()).ok();
        match (read, reply) {
            (Ok(_), Some(v)) if v["ok"] == true => Ok(Self { plan, stream, reader }),
            (Ok(_), Some(v)) => {
                let (code, message) = (v["error"].as_str().unwrap_or("?"), v["message"].as_str().unwrap_or(""));
                match (&plan.token, code) {
                    (None, "unauthorized") => bail!(
                        "the ingest socket at {} requires a token (it answered {code}: {message}): pass --ingest-token TOKEN",
                        plan.ingest
                    ),
                    (Some(_), "unauthorized") => {
                        bail!("the ingest socket at {} refused --ingest-token ({code}: {message})", plan.ingest)
                    }
                    _ => bail!("the ingest socket at {} refused the session ({code}: {message})", plan.ingest),
                }
            }
            (Ok(0), None) => bail!("the ingest socket at {} closed the connection before answering", plan.ingest),
            (Ok(_), None) => bail!("the ingest socket at {} answered {:?}, not a reply", plan.ingest, line.trim()),
            (Err(e), _) => {
                Err(e).with_context(|| format!("waiting for the ingest socket at {} to answer", plan.ingest))
            }
        }
    }

    /// Publish the whole timetable, printing progress; returns once every message is written
    /// and every reply read (or the connection ended).
    pub fn run(self, progress: &mut Progress<'_>) -> anyhow::Result<Published> {
        let Self { plan, mut stream, reader } = self;
        let mut table = Timetable::new(plan.rate, plan.duration);
        let total = table.total();
        let rooms = plan.rooms.max(1);
        let first_error = Arc::new(Mutex::new(None));
        let replies = {
            let first_error = Arc::clone(&first_error);
            std::thread::spawn(move || read_replies(reader, total, rooms, &first_error))
        };
        let mut per_room = vec![0u64; rooms];
        let mut lateness = Lateness::new(plan.lag_tolerance);
        let writer = Writer { plan: &plan, padding: "x".repeat(plan.payload), base_ns: crate::client::unix_ns() };
        let realtime = RealTime::enter();
        let start = Instant::now();
        let mut buf = String::new();
        let mut written = 0u64;
        while let Some(next) = table.next_due_ns() {
            if !wait_for(start, next, realtime.is_some()) {
                continue;
            }
            buf.clear();
            let now = start.elapsed().as_nanos() as u64;
            for (k, due) in table.take_due(now) {
                per_room[(k as usize) % rooms] += 1;
                lateness.record(Duration::from_nanos(now.saturating_sub(due)));
                writer.line(&mut buf, k, due);
                written += 1;
            }
            if let Err(e) = stream.write_all(buf.as_bytes()) {
                let said = first_error.lock().ok().and_then(|e| e.clone());
                bail!(
                    "the ingest connection broke after {written} of {total} messages ({e}){}",
                    said.map(|s| format!("; the server's last error reply: {s}")).unwrap_or_default()
                );
            }
            progress.tick();
        }
        drop(realtime);
        let (last_seq, errors) = replies.join().map_err(|_| anyhow::anyhow!("ingest reply reader panicked"))?;
        Ok(Published { per_room, last_seq, errors, lateness })
    }
}

/// Sleep or spin until `due_ns` after `start`. False when it slept and the caller should look
/// again (the sleep may end early or late). A real-time thread ([`RealTime`]) only sleeps: its
/// sleep ends on time, and spinning at real-time priority would starve the client threads on
/// its core.
fn wait_for(start: Instant, due_ns: u64, realtime: bool) -> bool {
    let now = start.elapsed().as_nanos() as u64;
    if realtime {
        if now < due_ns {
            std::thread::sleep(Duration::from_nanos(due_ns - now));
        }
        return start.elapsed().as_nanos() >= u128::from(due_ns);
    }
    if now + (SLEEP_IF_AHEAD.as_nanos() as u64) < due_ns {
        std::thread::sleep(Duration::from_nanos(due_ns - now - SPIN_BEFORE.as_nanos() as u64));
        return false;
    }
    while start.elapsed().as_nanos() < u128::from(due_ns) {
        std::hint::spin_loop();
    }
    true
}

/// Writes `publish` lines.
struct Writer<'a> {
    plan: &'a Plan,
    padding: String,
    /// The timetable's start, ns since the Unix epoch (`data.t` is written in that clock).
    base_ns: u64,
}

impl Writer<'_> {
    /// Append message `k`, due `due_ns` after the start.
    fn line(&self, buf: &mut String, k: u64, due_ns: u64) {
        let room = (k as usize) % self.plan.rooms.max(1);
        let _ = writeln!(
            buf,
            r#"{{"op":"publish","room":"{}-{}","type":"lg","data":{{"t":{},"i":{},"p":"{}"}}}}"#,
            self.plan.room_prefix,
            room,
            self.base_ns + due_ns,
            k,
            self.padding
        );
    }
}

/// Read up to `total` replies: each room's last seq (message k went to room k mod `rooms`) and
/// the number of error replies; the first error's text goes to `first_error`.
fn read_replies(
    reader: BufReader<TcpStream>,
    total: u64,
    rooms: usize,
    first_error: &Mutex<Option<String>>,
) -> (Vec<u64>, u64) {
    let mut last_seq = vec![0u64; rooms];
    let mut errors = 0u64;
    for (k, line) in reader.lines().take(total as usize).enumerate() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["seq"].as_u64()) {
            Some(seq) => last_seq[k % rooms] = last_seq[k % rooms].max(seq),
            None => {
                errors += 1;
                if let Ok(mut first) = first_error.lock() {
                    first.get_or_insert(line);
                }
            }
        }
    }
    (last_seq, errors)
}

/// The publishing thread at real-time priority (`SCHED_FIFO` 1) while it publishes, where the
/// kernel allows it (root, or `CAP_SYS_NICE`); its old policy comes back on drop. The client
/// threads share its core (`taskset`): right after a join storm they are busy for tens of
/// milliseconds, and a publisher at their priority waited that long for the core (up to 36 ms
/// late at 19,000 viewers), which every delivery of that message then carried as latency.
/// Without the privilege nothing changes but the lateness the report already shows.
struct RealTime {
    policy: libc::c_int,
    param: libc::sched_param,
}

// The scheduler calls have no wrapper in std or in the crates this workspace uses.
#[allow(unsafe_code)]
impl RealTime {
    fn enter() -> Option<Self> {
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; the call takes no pointer.
        let policy = unsafe { libc::sched_getscheduler(0) };
        // SAFETY: pid 0 is the calling thread; `param` is a valid, writable `sched_param` that
        // outlives the call, which only writes it.
        if policy < 0 || unsafe { libc::sched_getparam(0, &mut param) } != 0 {
            return None;
        }
        let fifo = libc::sched_param { sched_priority: 1 };
        // SAFETY: pid 0 is the calling thread; `fifo` is a valid `sched_param` the call only reads.
        (unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) } == 0).then_some(Self { policy, param })
    }
}

#[allow(unsafe_code)]
impl Drop for RealTime {
    fn drop(&mut self) {
        // SAFETY: pid 0 is the calling thread (the one that entered: `RealTime` is neither sent
        // nor shared, it lives on `run`'s stack); `self.param` is a valid `sched_param`.
        unsafe { libc::sched_setscheduler(0, self.policy, &self.param) };
    }
}
