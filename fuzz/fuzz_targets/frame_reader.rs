//! cargo-fuzz entry point of `frame_reader`; the body and its invariants are in `fuzz/bodies/frame_reader.rs`,
//! which the workspace's `tests/fuzz_corpus.rs` also compiles and replays the corpus through.
#![no_main]

#[path = "../bodies/frame_reader.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
