//! Arbitrary bytes as a client message: decoding never panics, and an accepted room name is
//! always a valid one.
use roomcast::wire::{decode_client_op, validate_room, ClientOp};

/// One input; panics when an invariant is broken.
pub(crate) fn run(data: &[u8]) {
    let mut buf = data.to_vec();
    if let Ok(ClientOp::Join { room, .. } | ClientOp::Leave { room, .. } | ClientOp::Comment { room, .. }) =
        decode_client_op(&mut buf)
    {
        assert!(validate_room(&room).is_ok());
    }
}
