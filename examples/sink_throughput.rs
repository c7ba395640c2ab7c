//! Durable records per second through the whole sink runner: a flood of comments from two
//! "home worker" threads into the file sink (fsync with group commit), and optionally into a
//! Redis Streams sink (XADD in MULTI/EXEC batches) on a `redis-server` this example starts.
//! Each figure is from the first submission until the last ticket is reported durable.
//!
//! Run: `cargo run --release --example sink_throughput -- [records] [--redis]` (default
//! 400000 records, 100-character comments over 200 rooms). Data goes to a fresh directory
//! under the system temp dir, removed at the end; `--redis` needs `/usr/bin/redis-server`
//! (`apt-get install -y redis-server`).

use roomcast::sink::config::RedisSinkConfig;
use roomcast::sink::{self, DurableNotify, SinkConfig, SinkRecord};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const ORIGINS: u16 = 2;
const ROOMS: u64 = 200;

#[derive(Default)]
struct Watermarks {
    max: Mutex<[u64; ORIGINS as usize]>,
    changed: Condvar,
}

impl DurableNotify for Watermarks {
    fn durable(&self, origin: u16, ticket: u64) {
        if let Ok(mut max) = self.max.lock() {
            if let Some(slot) = max.get_mut(origin as usize) {
                *slot = ticket;
            }
            self.changed.notify_all();
        }
    }
}

fn flood(config: &SinkConfig, records: u64) -> Result<(f64, sink::SinkMetrics), Box<dyn std::error::Error>> {
    let marks = Arc::new(Watermarks::default());
    let rt = sink::start(config, marks.clone())?;
    let per_origin = records / u64::from(ORIGINS);
    let text: String = "x".repeat(100);
    let started = Instant::now();
    let threads: Vec<_> = (0..ORIGINS)
        .map(|origin| {
            let handle = rt.handle();
            let text = text.clone();
            std::thread::spawn(move || {
                let mut seqs = vec![0u64; ROOMS as usize];
                for ticket in 1..=per_origin {
                    let r = (ticket % ROOMS) as usize;
                    seqs[r] += 1;
                    let record = SinkRecord::Comment {
                        room: format!("live-{origin}-{r}").into(),
                        seq: seqs[r],
                        id: format!("1f3a-{}", seqs[r]),
                        user: format!("user-{}", ticket % 1000),
                        name: "Viewer".to_owned(),
                        text: text.clone(),
                        ts_ms: 1_764_576_000_000 + ticket,
                    };
                    while handle.try_submit(origin, ticket, record.clone()).is_err() {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a producer panicked")?;
    }
    let mut max = marks.max.lock().map_err(|_| "poisoned")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while max.iter().any(|&m| m < per_origin) {
        let left = deadline.checked_duration_since(Instant::now()).ok_or("not durable within 300 s")?;
        max = marks.changed.wait_timeout(max, left).map_err(|_| "poisoned")?.0;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(max);
    let metrics = rt.shutdown();
    Ok(((per_origin * u64::from(ORIGINS)) as f64 / elapsed, metrics))
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &std::path::Path) -> Result<(Redis, u16), Box<dyn std::error::Error>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("/usr/bin/redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("/usr/bin/redis-server: {e} (apt-get install -y redis-server)"))?;
    let redis = Redis(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not listen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((redis, port))
}

fn report(what: &str, rate: f64, m: &sink::SinkMetrics) {
    let s = &m.sinks[0];
    println!(
        "{what}: {rate:.0} durable records/s ({} records in {} writes, {:.0} per write)",
        s.records_written,
        s.batches,
        s.records_written as f64 / s.batches.max(1) as f64
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let records: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(400_000);
    let with_redis = args.iter().any(|a| a == "--redis");
    let dir = std::env::temp_dir().join(format!("roomcast-sink-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let mut file = SinkConfig::default();
    file.file.dir = dir.join("data");
    let (rate, m) = flood(&file, records)?;
    report("file sink (fsync, defaults)", rate, &m);

    if with_redis {
        let (redis, port) = start_redis(&dir)?;
        let mut config = SinkConfig::default();
        config.file.enabled = false;
        config.spool.dir = Some(dir.join("spool-redis"));
        config.redis = Some(RedisSinkConfig { url: format!("redis://127.0.0.1:{port}"), ..RedisSinkConfig::default() });
        let (rate, m) = flood(&config, records)?;
        report("redis sink (XADD, defaults)", rate, &m);
        drop(redis);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
