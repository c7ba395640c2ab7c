#!/usr/bin/env bash
# A/B of two roomcast builds on one loadgen scenario, run by run: A, B, A, B, ... so that both
# see the same machine drift; each run gets a fresh server. Prints benches/loadgen.sh's line
# per run, labelled.
# Usage: benches/ab.sh RUNS A_BIN B_BIN SCENARIO [loadgen flags...]
#   e.g. benches/ab.sh 3 /tmp/old/roomcast target/release/roomcast fanout --conns 2000 --rooms 20 --rate 1000 --duration 10
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$1; a=$2; b=$3; shift 3
for i in $(seq 1 "$runs"); do
  for side in A B; do
    if [ "$side" = A ]; then bin=$a; else bin=$b; fi
    echo -n "$side $i: "
    SERVER_BIN=$bin benches/loadgen.sh 1 "$@" | sed 's/^run 1 //'
  done
done
