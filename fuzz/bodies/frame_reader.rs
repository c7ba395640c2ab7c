//! Arbitrary bytes, split at an arbitrary point, through the frame decoder in both roles.
//! Invariants: it never panics, never buffers more than one message plus a header, and every
//! text message it hands out is valid UTF-8.
use roomcast::wire::frame::{FrameReader, Incoming, Role};
use std::ops::ControlFlow;

const MAX: usize = 4096;

/// One input; panics when an invariant is broken.
pub(crate) fn run(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else { return };
    let split = usize::from(split).min(rest.len());
    for role in [Role::Server, Role::Client] {
        let mut reader = FrameReader::new(role);
        for part in [&rest[..split], &rest[split..]] {
            let mut buf = part.to_vec();
            let result = reader.feed(&mut buf, MAX, |msg| {
                if let Incoming::Text(t) = msg {
                    assert!(std::str::from_utf8(t).is_ok());
                    assert!(t.len() <= MAX);
                }
                ControlFlow::Continue(())
            });
            if result.is_err() {
                break;
            }
            assert!(reader.buffered() <= MAX + 14, "buffered {}", reader.buffered());
        }
    }
}
