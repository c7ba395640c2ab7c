//! The ingest protocol without sockets: lines in, mail and reply lines out.

use super::*;
use crate::ids::Seq;
use serde_json::Value;

fn settings(tokens: &[&str]) -> UpstreamSettings {
    UpstreamSettings { max_line: 1024, tokens: tokens.iter().map(|t| t.to_string()).collect(), workers: 3 }
}

/// One upstream with its settings and the mail it produced so far.
struct Peer {
    up: Upstream,
    settings: UpstreamSettings,
    outgoing: Vec<Vec<Mail>>,
}

impl Peer {
    fn new(tokens: &[&str]) -> Self {
        let settings = settings(tokens);
        let up = Upstream::new(7, 1, &settings);
        Self { up, outgoing: (0..settings.workers).map(|_| Vec::new()).collect(), settings }
    }

    fn send(&mut self, text: &str) {
        self.up.handle_bytes(text.as_bytes(), &self.settings, &mut self.outgoing);
    }

    /// Every reply line written so far, parsed, and the output consumed.
    fn replies(&mut self) -> Vec<Value> {
        let text = String::from_utf8_lossy(self.up.output()).into_owned();
        let n = self.up.output().len();
        self.up.advance_output(n);
        text.lines().map(|l| serde_json::from_str(l).expect("reply lines are JSON")).collect()
    }

    fn mail(&mut self) -> Vec<Mail> {
        self.outgoing.iter_mut().flat_map(std::mem::take).collect()
    }

    /// Answer every publish mail with seq = 100 + its place, as homes would.
    fn answer_publishes(&mut self) {
        for (i, mail) in self.mail().into_iter().enumerate() {
            if let Mail::Publish { reply: Some(to), .. } = mail {
                self.up.handle_reply(&IngestReply::Published { to, seq: Seq(100 + i as u64) });
            }
        }
    }
}

#[test]
fn with_tokens_the_first_command_must_be_a_valid_auth_and_a_bad_one_closes() {
    let mut p = Peer::new(&["s3cret"]);
    p.send("{\"op\":\"publish\",\"room\":\"r\",\"type\":\"t\"}\n{\"op\":\"auth\",\"token\":\"s3cret\"}\n");
    let replies = p.replies();
    assert_eq!(replies.len(), 1, "nothing is read after the refusal");
    assert_eq!(replies[0]["error"], "unauthorized");
    assert!(p.up.is_closing() && p.up.is_done() && !p.up.wants_read());
    assert!(p.mail().is_empty(), "nothing reached a home");

    let mut p = Peer::new(&["s3cret"]);
    p.send("{\"op\":\"auth\",\"token\":\"s3cret\"}\n{\"op\":\"publish\",\"room\":\"r\",\"type\":\"t\"}\n");
    assert_eq!(p.replies(), [serde_json::json!({"ok": true})]);
    p.answer_publishes();
    assert_eq!(p.replies()[0]["seq"], 100);
}

#[test]
fn replies_keep_command_order_and_bad_lines_are_answered_in_place() {
    let mut p = Peer::new(&[]);
    p.send("{\"op\":\"publish\",\"room\":\"a\",\"type\":\"t\"}\nnot json\n");
    p.send("{\"op\":\"publish\",\"rooms\":[\"a\",\"b\"],\"type\":\"t\",\"data\":{\"x\":1}}\n{\"op\":\"fly\"}\n");
    assert!(p.replies().is_empty(), "the first publish is not answered yet, so nothing after it is written");
    p.answer_publishes();
    let replies = p.replies();
    let codes: Vec<_> = replies.iter().map(|r| r.get("error").cloned().unwrap_or(r["ok"].clone())).collect();
    assert_eq!(codes, [Value::from(true), "bad_request".into(), true.into(), "unknown_op".into()]);
    assert_eq!(replies[0]["seq"], 100);
    assert_eq!(replies[2]["seqs"], serde_json::json!([101, 102]));
}

#[test]
fn acks_off_leaves_only_the_errors() {
    let mut p = Peer::new(&[]);
    p.send("{\"op\":\"hello\",\"acks\":false}\n{\"op\":\"publish\",\"room\":\"a\",\"type\":\"t\"}\n");
    p.send("{\"op\":\"state\",\"room\":\"\",\"state\":{}}\n{\"op\":\"publish\",\"room\":\"a\",\"type\":\"t\",\"ack\":true}\n");
    let mail = p.mail();
    assert_eq!(mail.len(), 2);
    assert!(mail.iter().all(|m| matches!(m, Mail::Publish { reply: None, .. })), "no reply slot when acks are off");
    let replies = p.replies();
    assert_eq!(replies.len(), 2, "hello is answered, the bad room too, the publishes not");
    assert_eq!(replies[1]["error"], "bad_request");
    assert!(replies[1]["message"].as_str().is_some_and(|m| m.contains("room")));
}

#[test]
fn a_kick_goes_to_every_worker_and_is_answered_with_the_sum() {
    let mut p = Peer::new(&[]);
    p.send("{\"op\":\"kick\",\"user\":\"troll\",\"room\":\"r\"}\n");
    let kicks: Vec<ReplyTo> =
        p.mail().into_iter().filter_map(|m| if let Mail::Kick { reply, .. } = m { reply } else { None }).collect();
    assert_eq!(kicks.len(), 3, "one per worker");
    for (n, to) in kicks.into_iter().enumerate() {
        p.up.handle_reply(&IngestReply::Kicked { to, closed: n as u64 });
    }
    assert_eq!(p.replies(), [serde_json::json!({"ok": true, "closed": 3})]);
}

#[test]
fn a_line_over_the_limit_is_refused_and_closes_even_before_its_newline() {
    let mut p = Peer::new(&[]);
    p.send(&"x".repeat(1025));
    let replies = p.replies();
    assert_eq!(replies[0]["error"], "too_large");
    assert!(p.up.is_closing() && p.up.is_done());
    p.send("{\"op\":\"publish\",\"room\":\"a\",\"type\":\"t\"}\n");
    assert!(p.mail().is_empty(), "nothing after the close");
}

#[test]
fn a_connection_whose_replies_pile_up_pauses_and_resumes_once_they_drain() {
    let mut p = Peer::new(&[]);
    let line = "{\"op\":\"publish\",\"room\":\"a\",\"type\":\"t\"}\n";
    let burst = line.repeat(MAX_IN_FLIGHT + 10);
    p.send(&burst);
    assert_eq!(p.up.in_flight(), MAX_IN_FLIGHT, "no more commands in flight than the bound");
    assert!(!p.up.wants_read(), "paused: the shell stops reading");
    let mail = p.mail();
    assert_eq!(mail.len(), MAX_IN_FLIGHT);
    assert!(!p.up.poll_resume(&p.settings, &mut p.outgoing), "nothing drained yet");
    // The homes answer half and a little more: the connection goes on with its buffered lines.
    for mail in mail.into_iter().take(MAX_IN_FLIGHT / 2 + 1) {
        if let Mail::Publish { reply: Some(to), .. } = mail {
            p.up.handle_reply(&IngestReply::Published { to, seq: Seq(1) });
        }
    }
    assert!(p.up.poll_resume(&p.settings, &mut p.outgoing), "resumed: read the socket again");
    assert_eq!(p.mail().len(), 10, "the buffered lines were handled");
    assert!(p.up.wants_read());
    assert!(!p.up.is_closing(), "lines waiting behind a pause are not one over-long line");
}

#[test]
fn a_peer_that_stops_reading_pauses_on_its_reply_backlog() {
    let mut p = Peer::new(&[]);
    // Errors are answered at once: their lines pile up in the output the peer never reads.
    let bad = format!("{{\"op\":\"{}\"}}\n", "x".repeat(20));
    p.send(&bad);
    let reply_len = p.up.output().len();
    p.up.advance_output(reply_len);
    let lines = MAX_REPLY_BACKLOG * 6 / 5 / reply_len;
    p.send(&bad.repeat(lines));
    let backlog = p.up.output().len();
    assert!((MAX_REPLY_BACKLOG..=MAX_REPLY_BACKLOG + reply_len).contains(&backlog), "{backlog} {reply_len}");
    assert!(!p.up.is_closing(), "lines waiting behind a pause are not one over-long line");
    assert!(!p.up.wants_read(), "paused: the shell stops reading");
    p.up.advance_output(backlog / 4);
    assert!(!p.up.poll_resume(&p.settings, &mut p.outgoing), "still more than half the bound waits");
    let rest = p.up.output().len();
    p.up.advance_output(rest);
    assert!(p.up.poll_resume(&p.settings, &mut p.outgoing), "drained: the rest of the lines are handled");
    assert_eq!(p.up.output().len(), (lines - MAX_REPLY_BACKLOG.div_ceil(reply_len)) * reply_len);
}

#[test]
fn end_of_stream_finishes_once_every_reply_is_written() {
    let mut p = Peer::new(&[]);
    p.send("{\"op\":\"close_room\",\"room\":\"r\"}\n");
    p.up.handle_eof();
    assert!(!p.up.is_done(), "a reply is still owed");
    let to = p.mail().into_iter().find_map(|m| if let Mail::CloseRoom { reply, .. } = m { reply } else { None });
    p.up.handle_reply(&IngestReply::Done { to: to.expect("a reply slot") });
    assert!(!p.up.is_done(), "written first");
    assert_eq!(p.replies(), [serde_json::json!({"ok": true})]);
    assert!(p.up.is_done());
}

#[test]
fn an_http_request_is_one_command_whose_reply_is_always_written() {
    let settings = settings(&["s3cret"]);
    let mut outgoing: Vec<Vec<Mail>> = (0..settings.workers).map(|_| Vec::new()).collect();
    let body = b"{\n  \"room\": \"live\",\n  \"type\": \"gift\", \"ack\": false\n}";
    let mut up = Upstream::request(9, 2, &settings, ("publish", body), (Some("s3cret"), false), &mut outgoing);
    let mail: Vec<Mail> = outgoing.iter_mut().flat_map(std::mem::take).collect();
    let [Mail::Publish { source, reply: Some(to), .. }] = &mail[..] else { panic!("one publish: {mail:?}") };
    assert_eq!(*source, Source::Http, "counted as published over HTTP");
    assert!(!up.is_done(), "waits for its reply even with ack:false");
    up.handle_reply(&IngestReply::Published { to: *to, seq: Seq(5) });
    assert_eq!(up.output(), b"{\"ok\":true,\"seq\":5}\n");
    let n = up.output().len();
    up.advance_output(n);
    assert!(up.is_done());

    let refused = Upstream::request(9, 3, &settings, ("publish", b"{}"), (Some("nope"), false), &mut outgoing);
    assert!(String::from_utf8_lossy(refused.output()).contains("unauthorized"));
    assert!(outgoing.iter().all(Vec::is_empty));
    let operator = Upstream::request(9, 4, &settings, ("close_room", b"{\"room\":\"r\"}"), (None, true), &mut outgoing);
    let mail: Vec<Mail> = outgoing.iter_mut().flat_map(std::mem::take).collect();
    assert!(matches!(mail[..], [Mail::CloseRoom { .. }]), "the operator's command goes through: {mail:?}");
    assert!(!operator.is_done());
}

#[test]
fn an_op_is_added_to_a_body_that_has_none() {
    assert_eq!(request_line("kick", b"{\"user\":\"u\"}"), b"{\"op\":\"kick\",\"user\":\"u\"}\n");
    assert_eq!(request_line("kick", b" { } "), b" {\"op\":\"kick\" } \n");
    assert_eq!(request_line("kick", b"{\"op\":\"kick\",\"user\":\"u\"}"), b"{\"op\":\"kick\",\"user\":\"u\"}\n");
}
