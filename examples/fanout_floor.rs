//! The hardware floor of one fan-out load, in its exact shape: `conns` connections in `groups`
//! rooms, one frame to every member of the next room every `interval_ms`, round robin, the
//! readers in another process on the other core. `loopback_floor` measures writes to sockets
//! that are written all the time; a fan-out to 19,000 viewers in 10 rooms writes each socket
//! once every 200 ms, so every write meets cold kernel state (the socket, its peer, their
//! timers) and the viewers' TCP starts each receive after an idle gap. This is the number a
//! message's fan-out time in `loadgen fanout` is judged against (BENCHMARKS.md, issue 13).
//!
//! Run: `cargo run --release --example fanout_floor -- [conns] [groups] [seconds] [frame_bytes]
//! [interval_ms]` (defaults 19000 10 8 200 20). The writer (this process) runs on core 0 and
//! the reader (a child: this program with `--read`) on core 1, polling an edge-triggered epoll
//! set without sleeping, as `loadgen --poll-us` does. Two processes because one may hold at
//! most ~19,900 sockets. Prints each pass's wall time (p50, p90, max: a pass is one message's
//! fan-out), the writer's CPU per write, and when each write was done after its message was
//! due (p50, p99, p99.9, max; open loop, as the loadgen publishes): the least a server's
//! delivery latency for this load can be here, before any work of its own.

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use roomcast::runtime::nonblocking;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WRITER_CORE: usize = 0;
const READER_CORE: usize = 1;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--read") {
        let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).ok_or_else(|| bad("--read ADDR CONNS"))?;
        let conns = args.get(2).and_then(|a| a.parse().ok()).ok_or_else(|| bad("--read ADDR CONNS"))?;
        return read_all(addr, conns);
    }
    let number = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let conns = number(0, 19_000) as usize;
    let groups = number(1, 10).max(1) as usize;
    let seconds = number(2, 8);
    let frame = vec![b'x'; number(3, 200) as usize];
    let interval = Duration::from_millis(number(4, 20));

    pin_to(WRITER_CORE);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut reader = Command::new(std::env::current_exe()?)
        .args(["--read", &listener.local_addr()?.to_string(), &conns.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        sockets.push(socket);
    }
    // The reader says when it polls: from then on every frame is read at once.
    let mut ready = String::new();
    BufReader::new(reader.stdout.take().ok_or_else(|| bad("reader stdout"))?).read_line(&mut ready)?;

    let per_group = conns / groups;
    let mut passes = Vec::new();
    // Each write's completion after its message was due (open loop: a late pass does not move
    // the next one's due time), the floor under `loadgen fanout`'s delivery latency.
    let mut lateness_us: Vec<u32> = Vec::with_capacity(conns * 2 * seconds as usize);
    let mut writes = 0u64;
    let cpu_before = thread_cpu();
    let started = Instant::now();
    let mut due = started;
    for group in (0..groups).cycle() {
        if started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        let pass = Instant::now();
        for socket in &mut sockets[group * per_group..(group + 1) * per_group] {
            socket.write_all(&frame)?;
            writes += 1;
            lateness_us.push(due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
        passes.push(pass.elapsed());
        due += interval;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let cpu = thread_cpu() - cpu_before;
    drop(sockets);
    reader.kill()?;
    reader.wait()?;

    passes.sort();
    lateness_us.sort_unstable();
    let ms = |q: f64| passes[((passes.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    let late = |q: f64| f64::from(lateness_us[((lateness_us.len() - 1) as f64 * q) as usize]) / 1e3;
    println!(
        "{conns} connections in {groups} groups of {per_group}, {} B frames, a pass every {} ms: {} passes, \
         pass p50 {:.1} ms p90 {:.1} ms max {:.1} ms, writer CPU {:.2} us per write; \
         write done after due: p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms max {:.1} ms",
        frame.len(),
        interval.as_millis(),
        passes.len(),
        ms(0.5),
        ms(0.9),
        ms(1.0),
        cpu.as_secs_f64() * 1e6 / writes.max(1) as f64,
        late(0.5),
        late(0.99),
        late(0.999),
        late(1.0),
    );
    Ok(())
}

/// The reader: open `conns` connections to `addr` and drain them until they close.
fn read_all(addr: SocketAddr, conns: usize) -> io::Result<()> {
    pin_to(READER_CORE);
    let mut poll = Poll::new()?;
    let mut sockets = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut socket = MioStream::from_std(std::net::TcpStream::connect(addr)?);
        poll.registry().register(&mut socket, Token(i), Interest::READABLE)?;
        sockets.push(socket);
    }
    println!("polling");
    io::stdout().flush()?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, Some(Duration::ZERO))?;
        for event in &events {
            let Some(socket) = sockets.get_mut(event.token().0) else { continue };
            loop {
                match nonblocking::call(|| socket.read(&mut buf)) {
                    Ok(Some(0)) => return Ok(()),
                    Ok(Some(n)) if n == buf.len() => {}
                    _ => break,
                }
            }
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("usage: {what}"))
}

/// Run this thread on `core` when the machine has it (else leave it where it is).
#[allow(unsafe_code)]
fn pin_to(core: usize) {
    // SAFETY: `set` is a zeroed, owned cpu_set_t (all-zero is a valid empty set); CPU_SET
    // writes one bit inside it (core < CPU_SETSIZE is checked), and sched_setaffinity reads
    // exactly size_of::<cpu_set_t>() bytes from it. A failure leaves the affinity unchanged.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if core < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// CPU time of the calling thread (the writer), so the reader's work is not counted.
#[allow(unsafe_code)]
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
