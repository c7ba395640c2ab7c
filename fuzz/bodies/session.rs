//! A stateful target: several viewer connections on two shards, driven by the input (open,
//! join, leave, comment, disconnect, publish, time passing, and raw bytes through the server's
//! own frame reader), with mail routed between the shards until quiet after every step. The
//! viewers' side decodes everything the server writes, with one client frame reader per
//! connection kept across steps. Invariants checked after every step, not just "no panic":
//!
//! - the server's bytes always decode as RFC 6455 server frames (a decode error fails);
//! - every `event` and `state` a connection gets is for a room it joined (a `joined` came and
//!   no `left` or close since) and carries the seq right after the last one it saw there,
//!   for every room: in order, no gap, no repeat;
//! - `joined.online` and each home's `online` equal the distinct users of the connections that
//!   hold that room (joined, not left, not closed, not disconnected), as the viewers saw it;
//! - raw bytes the server's frame reader must refuse (replayed through a reader of our own)
//!   close the connection in that same step with the code docs/protocol.md gives for the
//!   error (1002, 1007, 1009); every close code the server sends is a documented one (or the
//!   echo of the client's own close code, docs/protocol.md "Close codes"), nothing follows a
//!   close frame, and a connection goes only after its close frame.

use roomcast::config::Config;
use roomcast::ids::{ConnKey, RoomName, WorkerId};
use roomcast::metrics::Source;
use roomcast::shard::mail::Mail;
use roomcast::shard::{home_of, Shard, ShardConfig};
use roomcast::wire::frame::{FrameReader, Incoming, Role};
use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;

const ROOMS: [&str; 3] = ["a", "b", "c"];
const WORKERS: usize = 2;
/// docs/protocol.md "Close codes".
const DOCUMENTED_CLOSES: [u16; 13] = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 1012, 1013, 4001, 4008, 4009, 4010];
/// Longest run of raw bytes one step feeds a connection.
const MAX_RAW: u8 = 32;

/// One connection as its client sees it.
struct Viewer {
    worker: usize,
    key: ConnKey,
    user: String,
    /// Decodes what the server writes; kept across steps (a frame may straddle two).
    reader: FrameReader,
    /// The server's frame reader of this connection, replayed on the raw bytes fed to it.
    mirror: FrameReader,
    /// Joined rooms and the last seq seen in each.
    rooms: HashMap<String, u64>,
    /// The code of the server's close frame, once one came.
    closed_with: Option<u16>,
    /// The close code the server owes for raw bytes its reader had to refuse.
    owed_close: Option<u16>,
    /// The raw bytes held something the server acts on (a message, a close): an error after
    /// it may meet a connection already closing for another reason.
    spoke_raw: bool,
    /// The code of the client's own close frame, if its raw bytes held one: the server echoes it.
    client_close: Option<u16>,
}

/// Distinct users of the viewers that hold `room`.
fn holders(viewers: &[Viewer], room: &str) -> usize {
    viewers.iter().filter(|v| v.rooms.contains_key(room)).map(|v| v.user.as_str()).collect::<BTreeSet<_>>().len()
}

/// Read what the server queued for viewer `i`, check it, and let the shard go on.
fn receive(shards: &mut [Shard<()>], viewers: &mut [Viewer], i: usize, now: u64) -> bool {
    let (w, key) = (viewers[i].worker, viewers[i].key);
    let Some((_, out)) = shards[w].transmit(key) else { return false };
    let mut bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    out.advance(bytes.len());
    shards[w].handle_written(key, true, now);
    if bytes.is_empty() {
        return false;
    }
    let mut reader = std::mem::replace(&mut viewers[i].reader, FrameReader::new(Role::Client));
    let result = reader.feed(&mut bytes, 1 << 20, |msg| {
        let v = &viewers[i];
        if let Some(code) = v.closed_with {
            panic!("the server sent more after its close frame ({code})");
        }
        match msg {
            Incoming::Text(t) => on_message(viewers, i, serde_json::from_slice(t).expect("the server sends JSON")),
            Incoming::Close(code, _) => {
                let code = code.expect("the server's close frame carries a code");
                let echo = viewers[i].client_close == Some(code);
                assert!(
                    DOCUMENTED_CLOSES.contains(&code) || echo,
                    "close code {code} is neither documented nor an echo"
                );
                if let Some(owed) = viewers[i].owed_close {
                    assert_eq!(code, owed, "a refused frame closes with the code of its error");
                }
                let v = &mut viewers[i];
                v.closed_with = Some(code);
                v.rooms.clear();
            }
            Incoming::Binary(_) => panic!("the server sent a binary message"),
            Incoming::Ping(_) | Incoming::Pong(_) => {}
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = result {
        panic!("the server wrote bytes a client cannot decode: {e}");
    }
    viewers[i].reader = reader;
    true
}

fn on_message(viewers: &mut [Viewer], i: usize, m: serde_json::Value) {
    let room = m["room"].as_str().unwrap_or_default().to_owned();
    match m["op"].as_str() {
        Some("joined") => {
            assert!(!viewers[i].rooms.contains_key(&room), "joined {room} twice without leaving");
            let seq = m["seq"].as_u64().expect("joined.seq");
            viewers[i].rooms.insert(room.clone(), seq);
            let online = m["online"].as_u64().expect("joined.online");
            assert_eq!(online, holders(viewers, &room) as u64, "joined.online in {room}: {m}");
        }
        Some("left") => {
            assert!(viewers[i].rooms.remove(&room).is_some(), "left {room}, which it did not hold: {m}");
        }
        Some("event" | "state") => {
            let seq = m["seq"].as_u64().expect("seq");
            let Some(last) = viewers[i].rooms.get_mut(&room) else {
                panic!("{m} for a room the connection does not hold");
            };
            assert_eq!(seq, *last + 1, "gap or reorder in {room}");
            *last = seq;
        }
        _ => {}
    }
}

/// One input; panics when an invariant is broken.
pub(crate) fn run(data: &[u8]) {
    let cfg = ShardConfig::new(&Config::default(), WORKERS, 7);
    let max_message = cfg.max_message;
    let mut shards: Vec<Shard<()>> = (0..WORKERS).map(|w| Shard::new(WorkerId(w as u16), cfg.clone())).collect();
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut now = 1_000u64;
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        let (x, y, rest) = match rest {
            [x, y, rest @ ..] => (*x, *y, rest),
            [x] => (*x, 0, &[][..]),
            [] => (0, 0, &[][..]),
        };
        input = rest;
        let room = ROOMS[usize::from(x) % ROOMS.len()];
        let pick = (!viewers.is_empty()).then(|| usize::from(y) % viewers.len());
        match (op % 8, pick) {
            (0, _) => {
                let worker = usize::from(x) % WORKERS;
                let user = format!("u{}", y % 5);
                let key = shards[worker].open((), Some(&user), now);
                viewers.push(Viewer {
                    worker,
                    key,
                    user,
                    reader: FrameReader::new(Role::Client),
                    mirror: FrameReader::new(Role::Server),
                    rooms: HashMap::new(),
                    closed_with: None,
                    owed_close: None,
                    spoke_raw: false,
                    client_close: None,
                });
            }
            (1 | 2 | 6, Some(i)) => {
                let msg = match op % 8 {
                    1 => format!(r#"{{"op":"join","room":"{room}"}}"#),
                    2 => format!(r#"{{"op":"comment","room":"{room}","text":"t"}}"#),
                    _ => format!(r#"{{"op":"leave","room":"{room}"}}"#),
                };
                let mut buf = msg.into_bytes();
                shards[viewers[i].worker].handle_incoming(viewers[i].key, Incoming::Text(&mut buf), now);
            }
            (3, Some(i)) => {
                let v = viewers.remove(i);
                shards[v.worker].remove(v.key, now);
            }
            (4, _) => {
                let home = usize::from(home_of(room, WORKERS).0);
                let room = RoomName::new(room).expect("a valid room name");
                let mail =
                    Mail::Publish { room, kind: "e".into(), data: "1".into(), source: Source::Ingest, reply: None };
                shards[home].handle_mail(mail, now);
            }
            (5, _) => now += u64::from(x) * 10,
            (7, Some(i)) => {
                let n = usize::from(x % MAX_RAW).min(input.len());
                let (raw, rest) = input.split_at(n);
                input = rest;
                let v = &mut viewers[i];
                let mut copy = raw.to_vec();
                let mut spoke = false;
                let client_close = &mut v.client_close;
                let result = v.mirror.feed(&mut copy, max_message, |msg| {
                    spoke = true;
                    if let Incoming::Close(code, _) = msg {
                        *client_close = client_close.or(code);
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                });
                if let Err(e) = result {
                    if !spoke && !v.spoke_raw && v.closed_with.is_none() && v.owed_close.is_none() {
                        v.owed_close = Some(e.close_code());
                    }
                }
                v.spoke_raw |= spoke;
                let mut bytes = raw.to_vec();
                shards[v.worker].handle_bytes(v.key, &mut bytes, now);
            }
            _ => {}
        }
        // One turn for every shard, mail routed until quiet, then every viewer reads.
        loop {
            let mut moved = false;
            for s in &mut shards {
                s.handle_timeout(now);
            }
            for from in 0..WORKERS {
                for to in 0..WORKERS {
                    let mail = shards[from].take_outbox(WorkerId(to as u16));
                    moved |= !mail.is_empty();
                    for m in mail {
                        shards[to].handle_mail(m, now);
                    }
                }
            }
            for i in 0..viewers.len() {
                moved |= receive(&mut shards, &mut viewers, i, now);
            }
            if !moved {
                break;
            }
        }
        for v in &viewers {
            if let Some(owed) = v.owed_close {
                assert!(v.closed_with.is_some(), "raw bytes the reader refuses were not closed with {owed}");
            }
        }
        // Connections the server is done with; their keys may serve new connections.
        for (w, s) in shards.iter_mut().enumerate() {
            while s.poll_shutdown().is_some() {}
            while let Some((key, ())) = s.poll_gone() {
                if let Some(i) = viewers.iter().position(|v| v.worker == w && v.key == key) {
                    let v = viewers.remove(i);
                    assert!(v.closed_with.is_some(), "a connection went without its close frame");
                }
            }
        }
        for room in ROOMS {
            let home = shards[usize::from(home_of(room, WORKERS).0)].home(room);
            let online = home.map_or(0, |h| h.online());
            assert_eq!(online, holders(&viewers, room) as u64, "online in {room}");
        }
    }
}
