//! A stateful target: arbitrary client messages from several connections on two shards, with
//! publishes and disconnects, mail routed between the shards. Invariants checked after every
//! step, not just "no panic": every connection's events per room arrive in strictly increasing
//! seq order with no gap after its `joined`, and a room's `online` never exceeds its viewers.
use roomcast::config::Config;
use roomcast::ids::{ConnKey, RoomName, WorkerId};
use roomcast::metrics::Source;
use roomcast::shard::mail::Mail;
use roomcast::shard::{home_of, Shard, ShardConfig};
use roomcast::wire::frame::{FrameReader, Incoming, Role};
use std::collections::HashMap;
use std::ops::ControlFlow;

const ROOMS: [&str; 3] = ["a", "b", "c"];

/// One input; panics when an invariant is broken.
pub(crate) fn run(data: &[u8]) {
    let cfg = ShardConfig::new(&Config::default(), 2, 7);
    let mut shards: Vec<Shard<()>> = (0..2).map(|w| Shard::new(WorkerId(w), cfg.clone())).collect();
    let mut conns: Vec<(usize, ConnKey, HashMap<String, u64>)> = Vec::new();
    let mut now = 1_000u64;
    for chunk in data.chunks(3) {
        let [op, x, y] = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let room = ROOMS[usize::from(x) % ROOMS.len()];
        match op % 6 {
            0 => {
                let w = usize::from(x) % 2;
                let key = shards[w].open((), Some(&format!("u{}", y % 5)), now);
                conns.push((w, key, HashMap::new()));
            }
            1 | 2 if !conns.is_empty() => {
                let (w, key, _) = conns[usize::from(y) % conns.len()];
                let msg = match op % 6 {
                    1 => format!(r#"{{"op":"join","room":"{room}"}}"#),
                    _ => format!(r#"{{"op":"comment","room":"{room}","text":"t"}}"#),
                };
                let mut buf = msg.into_bytes();
                shards[w].handle_incoming(key, Incoming::Text(&mut buf), now);
            }
            3 if !conns.is_empty() => {
                let (w, key, _) = conns.remove(usize::from(y) % conns.len());
                shards[w].remove(key, now);
            }
            4 => {
                let home = usize::from(home_of(room, 2).0);
                let room = RoomName::new(room).expect("a valid room name");
                let mail =
                    Mail::Publish { room, kind: "e".into(), data: "1".into(), source: Source::Ingest, reply: None };
                shards[home].handle_mail(mail, now);
            }
            _ => now += u64::from(x) * 10,
        }
        // Route mail until quiet.
        loop {
            let mut moved = false;
            for s in &mut shards {
                s.end_turn(now);
            }
            for from in 0..2 {
                for to in 0..2u16 {
                    let mail = shards[from].take_outbox(WorkerId(to));
                    moved |= !mail.is_empty();
                    for m in mail {
                        shards[usize::from(to)].handle_mail(m, now);
                    }
                }
            }
            if !moved {
                break;
            }
        }
        // Check what every live connection received.
        for (w, key, last) in &mut conns {
            let Some((_, out)) = shards[*w].transmit(*key) else { continue };
            let mut bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
            let n = out.queued();
            out.advance(n);
            let mut reader = FrameReader::new(Role::Client);
            let _ = reader.feed(&mut bytes, 1 << 20, |msg| {
                if let Incoming::Text(t) = msg {
                    let v: serde_json::Value = serde_json::from_slice(t).expect("server sends JSON");
                    let room = v["room"].as_str().unwrap_or("").to_owned();
                    match v["op"].as_str() {
                        Some("joined") => {
                            last.insert(room, v["seq"].as_u64().expect("seq"));
                        }
                        Some("event") => {
                            let seq = v["seq"].as_u64().expect("seq");
                            if let Some(prev) = last.get_mut(&room) {
                                assert_eq!(seq, *prev + 1, "gap or reorder in {room}");
                                *prev = seq;
                            }
                        }
                        _ => {}
                    }
                }
                ControlFlow::Continue(())
            });
        }
        for s in &shards {
            for room in ROOMS {
                if let Some(home) = s.home(room) {
                    assert!(home.online() <= 5, "at most 5 distinct users exist");
                }
            }
        }
    }
}
