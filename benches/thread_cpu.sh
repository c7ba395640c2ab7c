#!/usr/bin/env bash
# Server CPU per thread (workers vs the ingest thread) during a fan-out run:
#   benches/thread_cpu.sh WINDOW_MS RATE
# 2,000 viewers in 20 rooms; CPU is read from /proc/PID/task/*/stat over 3 s in the middle of
# 5 s of publishing. Needs release binaries (cargo build --release --workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
w=$1; rate=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
./target/release/roomcast serve --ws-listen 127.0.0.1:0 --ingest-listen 127.0.0.1:0 --batch-window-ms $w > $out/ready 2>/dev/null &
PID=$!
sleep 0.5
WS=$(grep -o 'ws=[^ ]*' $out/ready | cut -d= -f2); IN=$(grep -o 'ingest=[^ ]*' $out/ready | cut -d= -f2)
snap() { for t in /proc/$PID/task/*; do echo "$(cat $t/comm) $(awk '{print $14+$15}' $t/stat)"; done; }
./target/release/loadgen fanout --url ws://$WS/ws --ingest $IN --conns 2000 --rooms 20 --rate $rate --duration 5 --json $out/r.json > /dev/null 2>&1 &
LG=$!
sleep 2.5; snap > $out/snap1; sleep 3; snap > $out/snap2
wait $LG || true; kill $PID; wait $PID 2>/dev/null || true
join $out/snap1 $out/snap2 | awk '{printf "%s %.2fs  ", $1, ($3-$2)/100} END {print ""}'
python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print('delivered', r['delivered'], 'lost', r['lost'], 'deliveries/s', round(r['deliveries_per_sec']))" "$out/r.json"
