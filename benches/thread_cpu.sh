#!/usr/bin/env bash
# Server CPU per thread (workers vs the ingest thread) during a fan-out run:
#   benches/thread_cpu.sh WINDOW_MS RATE
# 2,000 viewers in 20 rooms; CPU is read from /proc/PID/task/*/stat over 3 s of the 5 s of
# publishing, starting once the first deliveries arrive. Needs release binaries
# (cargo build --release --workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
w=$1; rate=$2
out=$(mktemp -d)
pid=; lg=
cleanup() {
  for p in $lg $pid; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
coproc SERVER { exec ./target/release/roomcast serve --ws-listen 127.0.0.1:0 --ingest-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --batch-window-ms "$w" 2>/dev/null; }
pid=$SERVER_PID
# The server prints one line when every listener is bound.
read -r -t 30 ready <&"${SERVER[0]}" || { echo "roomcast did not print its ready line within 30 s" >&2; exit 1; }
ws=$(grep -o 'ws=[^ ]*' <<<"$ready" | cut -d= -f2); in=$(grep -o 'ingest=[^ ]*' <<<"$ready" | cut -d= -f2)
snap() { for t in /proc/"$pid"/task/*; do echo "$(cat "$t"/comm) $(awk '{print $14+$15}' "$t"/stat)"; done; }
: >"$out/progress"
./target/release/loadgen fanout --url "ws://$ws/ws" --ingest "$in" --conns 2000 --rooms 20 --rate "$rate" \
    --duration 5 --json "$out/r.json" >/dev/null 2>"$out/progress" &
lg=$!
# Publishing has started when a progress line shows deliveries.
timeout 120 grep -q -m1 'deliveries [1-9]' <(tail -F --pid="$lg" "$out/progress" 2>/dev/null) \
  || { echo "no deliveries within 120 s; loadgen said:" >&2; cat "$out/progress" >&2; exit 1; }
snap >"$out/snap1"; sleep 3; snap >"$out/snap2"
wait "$lg" || true; lg=
join "$out/snap1" "$out/snap2" | awk '{printf "%s %.2fs  ", $1, ($3-$2)/100} END {print ""}'
python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print('delivered', r['delivered'], 'lost', r['lost'], 'deliveries/s', round(r['deliveries_per_sec']), 'valid', r['valid'], r.get('invalid_reason') or '')" "$out/r.json"
