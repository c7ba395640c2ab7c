//! Criterion benches of the pure core's hot paths: encoding a broadcast frame once for N
//! members, decoding client ops (simd-json, as the server does, next to serde_json), the timer
//! wheel, the history ring, and one publish through a shard to N local members.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use roomcast::config::Config;
use roomcast::ids::RoomName;
use roomcast::ids::WorkerId;
use roomcast::metrics::Source;
use roomcast::room::history::History;
use roomcast::session::outbound::Outbound;
use roomcast::shard::mail::Mail;
use roomcast::shard::{Shard, ShardConfig};
use roomcast::wheel::TimerWheel;
use roomcast::wire::frame::{self, Incoming};
use roomcast::wire::{decode_client_op, decode_client_op_with, server_msg};
use std::hint::black_box;

fn encode_for_members(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_once_for_members");
    for members in [1usize, 100, 10_000] {
        g.throughput(Throughput::Elements(members as u64));
        g.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, &members| {
            let mut queues: Vec<Outbound> = (0..members).map(|_| Outbound::default()).collect();
            b.iter(|| {
                let frame = frame::text_frame_with(|out| {
                    server_msg::event(out, "live-1", 42, "gift", r#"{"from":"bob","gift":"rose"}"#, 1_700_000_000_000)
                });
                for q in &mut queues {
                    let _ = q.push(&frame, 1 << 20);
                }
                for q in &mut queues {
                    let n = q.queued();
                    q.advance(n);
                }
            })
        });
    }
    g.finish();
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct SerdeOp<'a> {
    op: &'a str,
    room: Option<&'a str>,
    text: Option<&'a str>,
    #[serde(rename = "ref")]
    reference: Option<&'a serde_json::value::RawValue>,
}

fn decode_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_client_op");
    let msg = br#"{"op":"comment","room":"live-1","text":"what a great stream, hello from the bench","ref":"c-17"}"#;
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("simd_json_in_place_reused_buffers", |b| {
        let mut buf = msg.to_vec();
        let mut buffers = simd_json::Buffers::new(4096);
        b.iter(|| {
            buf.copy_from_slice(msg);
            black_box(decode_client_op_with(&mut buf, &mut buffers).is_ok())
        })
    });
    g.bench_function("simd_json_in_place_fresh_buffers", |b| {
        let mut buf = msg.to_vec();
        b.iter(|| {
            buf.copy_from_slice(msg);
            black_box(decode_client_op(&mut buf).is_ok())
        })
    });
    g.bench_function("serde_json_borrowed", |b| {
        b.iter(|| black_box(serde_json::from_slice::<SerdeOp<'_>>(msg).is_ok()))
    });
    g.finish();
}

fn wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel");
    let keys = 100_000usize;
    g.throughput(Throughput::Elements(keys as u64));
    g.bench_function("arm_rearm_poll_100k", |b| {
        b.iter_batched(
            || TimerWheel::new(100, 0),
            |mut w| {
                for k in 0..keys {
                    w.arm(k, 10_000 + (k as u64 % 5_000));
                }
                for k in 0..keys {
                    w.arm(k, 20_000 + (k as u64 % 5_000));
                }
                let mut fired = Vec::with_capacity(keys);
                w.poll(30_000, &mut fired);
                black_box(fired.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn history(c: &mut Criterion) {
    let mut g = c.benchmark_group("history_ring");
    let frame = Bytes::from(vec![b'x'; 120]);
    g.bench_function("push_into_full_512", |b| {
        let mut h = History::new(512, u64::MAX);
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            h.push(seq, seq, frame.clone());
        })
    });
    g.bench_function("replay_64_of_512", |b| {
        let mut h = History::new(512, u64::MAX);
        for seq in 1..=512 {
            h.push(seq, seq, frame.clone());
        }
        b.iter(|| black_box(h.replay(448, 512).map(|it| it.count())))
    });
    g.finish();
}

fn publish_through_shard(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_through_shard");
    for members in [100usize, 10_000] {
        g.throughput(Throughput::Elements(members as u64));
        g.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, &members| {
            // The clock stands still here, so no batching window: every publish is sent at
            // the end of its turn, which is the path being measured.
            let mut config = Config::default();
            config.fanout.batch_window_ms = 0;
            let cfg = ShardConfig::new(&config, 1, 1);
            let mut shard: Shard<()> = Shard::new(WorkerId(0), cfg);
            let keys: Vec<_> = (0..members).map(|i| shard.open((), Some(&format!("u{i}")), 0)).collect();
            for &k in &keys {
                let mut join = br#"{"op":"join","room":"hot"}"#.to_vec();
                shard.handle_incoming(k, Incoming::Text(&mut join), 0);
            }
            let mut dirty = Vec::new();
            let drain = |shard: &mut Shard<()>, dirty: &mut Vec<_>| {
                shard.end_turn(0);
                shard.take_dirty(dirty, usize::MAX);
                for k in dirty.iter() {
                    if let Some((_, out)) = shard.transmit(*k) {
                        let n = out.queued();
                        out.advance(n);
                    }
                }
            };
            drain(&mut shard, &mut dirty);
            b.iter(|| {
                // The room name is made per publish, as the ingest path does.
                let room = RoomName::new("hot").expect("a valid room name");
                let mail = Mail::Publish {
                    room,
                    kind: "gift".into(),
                    data: r#"{"n":1}"#.into(),
                    source: Source::Ingest,
                    reply: None,
                };
                shard.handle_mail(mail, 0);
                drain(&mut shard, &mut dirty);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode_for_members, decode_ops, wheel, history, publish_through_shard);
criterion_main!(benches);
