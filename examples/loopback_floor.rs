//! The hardware floor of fan-out on this machine: how many loopback socket writes per second
//! one core can do, with one small frame per write and with several frames coalesced into one
//! write. roomcast's deliveries per CPU-second are judged against these numbers (BENCHMARKS.md).
//!
//! Run: `cargo run --release --example loopback_floor -- [pairs] [seconds] [frame_bytes]`
//! (defaults 5000 connections, 3 s per case, 100-byte frames). The writer runs on this thread;
//! a second thread drains every receiving socket so the buffers never fill.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let pairs = args.first().copied().unwrap_or(5_000) as usize;
    let seconds = args.get(1).copied().unwrap_or(3);
    let frame = args.get(2).copied().unwrap_or(100) as usize;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(pairs);
    let mut readers = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        writers.push(server);
        readers.push(client);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || drain_all(readers, &stop))
    };
    println!("loopback floor: {pairs} connections, {frame}-byte frames, {seconds} s per case");
    println!("{:>8} {:>14} {:>16} {:>14}", "frames", "writes/s", "frames/s", "cpu us/write");
    for batch in [1usize, 4, 16] {
        let buf = vec![b'x'; frame * batch];
        let start = Instant::now();
        let cpu0 = thread_cpu();
        let mut writes = 0u64;
        while start.elapsed() < Duration::from_secs(seconds) {
            for w in &mut writers {
                w.write_all(&buf)?;
                writes += 1;
            }
        }
        let cpu = thread_cpu() - cpu0;
        let wall = start.elapsed().as_secs_f64();
        println!(
            "{batch:>8} {:>14.0} {:>16.0} {:>14.2}",
            writes as f64 / wall,
            (writes * batch as u64) as f64 / wall,
            cpu.as_secs_f64() * 1e6 / writes as f64
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    Ok(())
}

/// CPU time of the calling thread (the writer), so the drain thread's work is not counted.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn drain_all(mut readers: Vec<TcpStream>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for r in &mut readers {
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                idle = false;
            }
        }
        if idle {
            std::thread::yield_now();
        }
    }
}
