//! Arbitrary bytes as an HTTP upgrade request, through the policy parser (viewer and echo
//! endpoints, an Origin allow-list) and the earlier `parse_upgrade`. Invariants: never panics;
//! an accepted request consumed no more than it was given, answers 101, carries a valid user,
//! a non-empty token and an allowed origin; a rejection is a complete HTTP response with its
//! status; an incomplete request is within the size limit; both parsers agree on the outcome.
use roomcast::wire::upgrade::{parse_upgrade, Handshake, Upgrade, UpgradePolicy, MAX_REQUEST_BYTES};

/// One input; panics when an invariant is broken.
pub(crate) fn run(data: &[u8]) {
    let policy = UpgradePolicy {
        path: "/ws".into(),
        echo_path: Some("/echo".into()),
        allowed_origins: vec!["https://good.example".into()],
    };
    let outcome = policy.parse(data);
    match &outcome {
        Handshake::Accepted(a) => {
            assert!(a.consumed <= data.len());
            assert!(a.response.starts_with(b"HTTP/1.1 101"));
            if let Some(user) = &a.user {
                assert!(!user.is_empty() && user.len() <= 128 && !user.chars().any(char::is_control));
            }
            if let Some(c) = &a.credential {
                assert!(!c.token.is_empty());
            }
            if let Some(o) = &a.origin {
                assert!(o.eq_ignore_ascii_case("https://good.example"));
            }
        }
        Handshake::Rejected(r) => {
            assert!(r.response.starts_with(format!("HTTP/1.1 {} ", r.status).as_bytes()));
            assert!(r.response.ends_with(b"\n"));
        }
        Handshake::Incomplete => assert!(data.len() <= MAX_REQUEST_BYTES),
    }
    // The earlier entry point has no echo endpoint and no Origin list; otherwise they agree.
    let legacy = parse_upgrade(data, "/ws");
    match (&outcome, &legacy) {
        (Handshake::Incomplete, Upgrade::Incomplete) => {}
        (Handshake::Accepted(a), Upgrade::Accepted { consumed, .. }) => assert_eq!(a.consumed, *consumed),
        (Handshake::Rejected(_), _) | (_, Upgrade::Rejected { .. }) => {}
        (a, b) => panic!("parsers disagree: {a:?} vs {b:?}"),
    }
}
