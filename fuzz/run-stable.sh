#!/usr/bin/env bash
# Run one fuzz target on stable Rust, coverage-guided (libFuzzer with SanitizerCoverage, the
# flags cargo-fuzz passes, minus the address sanitizer, which needs nightly). Usage:
#   fuzz/run-stable.sh TARGET [SECONDS]      e.g. fuzz/run-stable.sh session 180
# The corpus is kept in fuzz/corpus/TARGET; a crash is written to fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
target=$1; seconds=${2:-60}
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --target "$triple" --bin "$target"
mkdir -p "corpus/$target" "artifacts/$target"
"target/$triple/release/$target" -max_total_time="$seconds" -artifact_prefix="artifacts/$target/" "corpus/$target"
