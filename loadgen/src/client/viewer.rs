//! One loadgen viewer's protocol state, apart from its socket: where it is in its life
//! (connecting, upgrading, joining, ready), what it has queued to send, and the check of its
//! room's stream. It turns each decoded server message into counts and latencies in the
//! thread's [`Tally`].
//!
//! It never touches a socket or the poller, so the decisions it makes (what a `joined` means for
//! a churn rejoin, which timestamp an event's latency is measured from, the pong that answers a
//! ping) are plain data changes. Unasked, it sends nothing but pongs: a scenario's own traffic
//! (joins, comments, optional application pings) is queued by the scenario.

use super::tally::Tally;
use crate::accounting::SeqCheck;
use roomcast::wire::frame::{encode_client_frame, Incoming};
use serde::Deserialize;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The mask of every frame a viewer sends (RFC 6455 5.3 asks for unpredictable masks against
/// proxy cache poisoning; a load generator talking to its own server on loopback does not need
/// them, and a fixed mask costs nothing per frame).
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// Where a viewer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The TCP connect is in progress.
    Connecting,
    /// The upgrade request is out; waiting for `101`.
    Upgrading,
    /// The `join` is out; waiting for `joined`.
    Joining,
    /// Joined (or, without a room, upgraded): receiving.
    Ready,
}

/// A viewer's protocol state. See the module doc.
pub(super) struct Viewer {
    /// Where it is.
    pub(super) phase: Phase,
    /// Index of its [`super::ConnPlan`] in the thread's plans.
    pub(super) plan: usize,
    /// Index of its server in [`super::Target::endpoints`].
    pub(super) endpoint: usize,
    /// Bytes to send, in order.
    pub(super) out: Vec<u8>,
    /// Its room's stream check.
    pub(super) check: SeqCheck,
    /// Rejoining after a churn disconnect: the `since` and `epoch` to send.
    pub(super) resume: Option<(u64, String)>,
    /// The room's epoch from `joined`.
    pub(super) epoch: Option<String>,
    /// Churn: when to drop this connection.
    pub(super) leave_at: Option<Instant>,
    /// When its connect started (connect and upgrade latency count from here).
    pub(super) opened_at: Instant,
}

#[derive(Deserialize)]
struct ServerMsg<'a> {
    op: &'a str,
    seq: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    data: Option<Stamp<'a>>,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    epoch: Option<&'a str>,
    recovered: Option<bool>,
}

/// The parts of an event's `data` that carry its intended send time: `t` (published events) or
/// the comment text (comments are sent with their intended time as text).
#[derive(Deserialize)]
struct Stamp<'a> {
    t: Option<u64>,
    text: Option<&'a str>,
}

impl Viewer {
    /// A viewer for plan `plan`, connecting to endpoint `endpoint`; `resume` continues a
    /// churned connection's stream.
    pub(super) fn new(plan: usize, endpoint: usize, resume: Option<(u64, String, SeqCheck)>) -> Self {
        let (check, resume) = match resume {
            Some((since, epoch, check)) => (check, Some((since, epoch))),
            None => (SeqCheck::default(), None),
        };
        let opened_at = Instant::now();
        Self {
            phase: Phase::Connecting,
            plan,
            endpoint,
            out: Vec::new(),
            check,
            resume,
            epoch: None,
            leave_at: None,
            opened_at,
        }
    }

    /// Queue a text frame.
    pub(super) fn send_text(&mut self, payload: &[u8]) {
        encode_client_frame(0x1, payload, MASK, &mut self.out);
    }

    /// The request went out for a connection that just connected.
    pub(super) fn on_connected(&mut self, request: Vec<u8>) {
        self.out.extend(request);
        self.phase = Phase::Upgrading;
    }

    /// The server answered `101`: join `room` (with `since` when resuming), or, without a room,
    /// be ready at once.
    pub(super) fn on_upgraded(&mut self, room: Option<&str>) {
        let Some(room) = room else {
            self.phase = Phase::Ready;
            return;
        };
        let op = match &self.resume {
            Some((since, epoch)) => serde_json::json!({"op": "join", "room": room, "since": since, "epoch": epoch}),
            None => serde_json::json!({"op": "join", "room": room}),
        };
        self.send_text(op.to_string().as_bytes());
        self.phase = Phase::Joining;
    }

    /// Account for one message from the server. `Break` when the server closed the connection.
    pub(super) fn on_message(&mut self, msg: Incoming<'_>, tally: &mut Tally<'_>) -> ControlFlow<()> {
        match msg {
            Incoming::Text(text) => {
                if let Ok(m) = serde_json::from_slice::<ServerMsg<'_>>(text) {
                    self.on_server_msg(&m, tally);
                }
            }
            // RFC 6455 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
            // response [...]". 5.5.3: "A Pong frame sent in response to a Ping frame must have
            // identical "Application data" as found in the message body of the Ping frame".
            // 5.3: a client masks every frame it sends.
            Incoming::Ping(payload) => encode_client_frame(0xA, payload, MASK, &mut self.out),
            Incoming::Close(code, _) => {
                tally.closed_with(code);
                return ControlFlow::Break(());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn on_server_msg(&mut self, m: &ServerMsg<'_>, tally: &mut Tally<'_>) {
        let shared = tally.shared;
        match m.op {
            "event" => self.on_event(m, tally),
            "joined" => self.on_joined(m, tally),
            "ack" => tally.acked(m.reference),
            "error" => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            "presence" => {
                shared.presence.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn on_event(&mut self, m: &ServerMsg<'_>, tally: &mut Tally<'_>) {
        if !self.check.observe(m.seq.unwrap_or(0)) {
            return;
        }
        let stamp = m.data.as_ref().and_then(|d| {
            d.t.or_else(|| (m.kind == Some("comment")).then(|| d.text.and_then(|t| t.parse().ok())).flatten())
        });
        tally.delivered(stamp, self.endpoint);
    }

    fn on_joined(&mut self, m: &ServerMsg<'_>, tally: &mut Tally<'_>) {
        let shared = tally.shared;
        // A churn rejoin keeps its stream check: replayed events arrived before this `joined`
        // and continued it. Without recovery the stream restarts at the room's current seq.
        match (self.resume.is_some(), m.recovered) {
            (true, Some(true)) => {
                shared.recovered.fetch_add(1, Ordering::Relaxed);
            }
            (true, _) => {
                shared.recovery_failed.fetch_add(1, Ordering::Relaxed);
                self.check = SeqCheck::starting_after(m.seq.unwrap_or(0));
            }
            (false, _) => self.check = SeqCheck::starting_after(m.seq.unwrap_or(0)),
        }
        self.epoch = m.epoch.map(str::to_owned);
        if self.phase == Phase::Joining {
            self.phase = Phase::Ready;
            shared.joined.fetch_add(1, Ordering::Relaxed);
        }
    }
}
