//! Arbitrary bytes as an HTTP upgrade request: never panics; an accepted request consumed no
//! more than it was given and answers 101; a rejection is a complete HTTP response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::wire::upgrade::{parse_upgrade, Upgrade};

fuzz_target!(|data: &[u8]| match parse_upgrade(data, "/ws") {
    Upgrade::Accepted { consumed, response, .. } => {
        assert!(consumed <= data.len());
        assert!(response.starts_with(b"HTTP/1.1 101"));
    }
    Upgrade::Rejected { response, .. } => assert!(response.ends_with(b"\n")),
    Upgrade::Incomplete => assert!(data.len() <= roomcast::wire::upgrade::MAX_REQUEST_BYTES),
});
