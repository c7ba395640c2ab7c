//! The fuzz targets' bodies, one file each, compiled twice: by the cargo-fuzz crate in `fuzz/`
//! (each `fuzz_targets/<name>.rs` is three lines: `#[path]`-includes its body and hands it to
//! `fuzz_target!`) and by the workspace test `tests/fuzz_corpus.rs`, which includes this module
//! and replays every file of `fuzz/corpus/<name>/` through the same body on stable Rust,
//! without libFuzzer. So `cargo test --workspace` (CI) fails when a target stops compiling
//! against the crate or a committed input breaks an invariant, although the fuzz crate stays
//! outside the workspace (it needs libfuzzer-sys and its own profiles).
//!
//! `#[path]` modules rather than a shared crate: a crate both workspaces build would have to
//! belong to one of them, and each body is a function of `roomcast`'s public API and the
//! crates it already depends on (serde_json, ring), nothing else. A body is `run(data)`,
//! panicking on a broken invariant; it must never read a clock, a file or the environment, so
//! a replay is the fuzzer's run of that input.

pub(crate) mod client_op;
pub(crate) mod frame_reader;
pub(crate) mod ingest_line;
pub(crate) mod jwt;
pub(crate) mod session;
pub(crate) mod upgrade;

/// A target's body: one input, a panic when an invariant breaks.
pub(crate) type Body = fn(&[u8]);

/// Every target by name (its `fuzz_targets/<name>.rs`, `[[bin]]` and `corpus/<name>/`) and body.
pub(crate) const TARGETS: [(&str, Body); 6] = [
    ("client_op", client_op::run),
    ("frame_reader", frame_reader::run),
    ("ingest_line", ingest_line::run),
    ("jwt", jwt::run),
    ("session", session::run),
    ("upgrade", upgrade::run),
];
