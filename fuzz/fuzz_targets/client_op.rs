//! cargo-fuzz entry point of `client_op`; the body and its invariants are in `fuzz/bodies/client_op.rs`,
//! which the workspace's `tests/fuzz_corpus.rs` also compiles and replays the corpus through.
#![no_main]

#[path = "../bodies/client_op.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
