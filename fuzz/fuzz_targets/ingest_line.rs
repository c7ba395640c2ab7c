//! cargo-fuzz entry point of `ingest_line`; the body and its invariants are in `fuzz/bodies/ingest_line.rs`,
//! which the workspace's `tests/fuzz_corpus.rs` also compiles and replays the corpus through.
#![no_main]

#[path = "../bodies/ingest_line.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
