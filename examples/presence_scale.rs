//! Presence at scale in the sans-IO core, no sockets: 1,000,000 viewers in 10,000 rooms, then
//! the memory they take and the cost of a presence tick.
//!
//! Two shards as in a two-worker server: every viewer is on worker 1, the rooms are homed on
//! both by hash. The cost of worker 0's tick is therefore pure home work (coalescing the
//! interval's joins and leaves into one `presence` frame per changed room) for about half the
//! rooms; the fan-out of those frames to the members happens on worker 1 and is timed apart.
//!
//! Run: `cargo run --release --example presence_scale -- [viewers] [rooms]`

use roomcast::config::Config;
use roomcast::ids::{ConnKey, WorkerId};
use roomcast::shard::{Shard, ShardConfig};
use roomcast::wire::frame::Incoming;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Carry mail both ways until quiet and empty every outbound queue; returns the time spent on
/// the members' worker and how many connections got frames.
fn settle(shards: &mut [Shard<()>], dirty: &mut Vec<ConnKey>, now: u64) -> (Duration, usize) {
    let mut spent = Duration::ZERO;
    let mut touched = 0;
    loop {
        let mut moved = false;
        for from in 0..2 {
            let to = 1 - from;
            let mail = shards[from].take_outbox(WorkerId(to as u16));
            moved |= !mail.is_empty();
            let t = Instant::now();
            for m in mail {
                shards[to].handle_mail(m, now);
            }
            shards[to].end_turn(now);
            if to == 1 {
                spent += t.elapsed();
            }
        }
        shards[1].take_dirty(dirty, usize::MAX);
        touched += dirty.len();
        for k in dirty.iter() {
            if let Some((_, out)) = shards[1].transmit(*k) {
                let n = out.queued();
                out.advance(n);
            }
        }
        if !moved {
            return (spent, touched);
        }
    }
}

/// Worker 0's tick, apart so that a profiler can single it out
/// (`valgrind --tool=callgrind --toggle-collect='*home_tick*'`).
#[inline(never)]
fn home_tick(shard: &mut Shard<()>, now: u64) {
    // The tick sends a quiet room's frames at once (every room here is quiet) and lets an
    // active room's ride its next batch, which the end of the turn sends: both are its cost.
    shard.tick(now);
    shard.end_turn(now);
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let viewers = args.first().copied().unwrap_or(1_000_000);
    let rooms = args.get(1).copied().unwrap_or(10_000);
    let config = Config::default();
    let mut shards: Vec<Shard<()>> = (0..2).map(|w| Shard::new(WorkerId(w), ShardConfig::new(&config, 2, 1))).collect();
    let mut dirty = Vec::new();
    let mut now = 1_000_000u64;
    for s in &mut shards {
        s.tick(now);
    }
    let before = rss_kib();
    let started = Instant::now();
    let mut keys = Vec::with_capacity(viewers);
    for i in 0..viewers {
        let key = shards[1].open((), Some(&format!("viewer-{i}")), now);
        let mut join = format!(r#"{{"op":"join","room":"room-{}"}}"#, i % rooms).into_bytes();
        shards[1].handle_incoming(key, Incoming::Text(&mut join), now);
        keys.push(key);
        if i % 10_000 == 0 {
            settle(&mut shards, &mut dirty, now);
        }
    }
    settle(&mut shards, &mut dirty, now);
    let after = rss_kib();
    println!(
        "{viewers} viewers in {rooms} rooms: set up in {:.2} s; RSS {} MiB -> {} MiB = {:.0} bytes per viewer",
        started.elapsed().as_secs_f64(),
        before / 1024,
        after / 1024,
        (after - before) as f64 * 1024.0 / viewers as f64
    );
    let homed = (0..rooms).filter(|r| shards[0].home(&format!("room-{r}")).is_some()).count();
    let tick = |label: &str, shards: &mut Vec<Shard<()>>, dirty: &mut Vec<ConnKey>, now: u64| {
        let t = Instant::now();
        home_tick(&mut shards[0], now);
        let home = t.elapsed();
        home_tick(&mut shards[1], now);
        let (fanout, touched) = settle(shards, dirty, now);
        println!(
            "{label}: home tick for its {homed} rooms {:.2} ms; fan-out on the members' worker {:.1} ms ({touched} connections got frames)",
            home.as_secs_f64() * 1e3,
            fanout.as_secs_f64() * 1e3
        );
    };
    now += 1_000;
    tick("every room changed (all just joined, lists of 100)", &mut shards, &mut dirty, now);
    // The joins' presence deltas are gone once announced: the steady memory per viewer.
    let steady = rss_kib();
    println!(
        "after the first tick (the joins announced): RSS {} MiB = {:.0} bytes per viewer",
        steady / 1024,
        (steady - before) as f64 * 1024.0 / viewers as f64
    );
    // 15 intervals, each with a fresh 1% of viewers leaving (spread over all rooms): the
    // median home tick is the figure (single ticks are noisy on a shared machine).
    let mut ticks = Vec::new();
    for wave in 0..15 {
        for key in keys.iter().skip(wave).step_by(101) {
            shards[1].remove(*key, now);
        }
        settle(&mut shards, &mut dirty, now);
        now += 1_000;
        let t = Instant::now();
        home_tick(&mut shards[0], now);
        ticks.push(t.elapsed());
        home_tick(&mut shards[1], now);
        settle(&mut shards, &mut dirty, now);
    }
    ticks.sort();
    println!(
        "after 1% of viewers left, spread over all rooms, 15 intervals: home tick for its {homed} rooms: median {:.2} ms (min {:.2}, max {:.2})",
        ticks[ticks.len() / 2].as_secs_f64() * 1e3,
        ticks[0].as_secs_f64() * 1e3,
        ticks[ticks.len() - 1].as_secs_f64() * 1e3
    );
    now += 1_000;
    tick("nothing changed", &mut shards, &mut dirty, now);
}
