#!/usr/bin/env bash
# A reconnect storm while a room keeps publishing: STAYERS viewers (default 1,000 over 10
# rooms) receive RATE messages per second (default 100) for DURATION seconds (default 20);
# STORM_AT seconds in (default 5) STORM more viewers (default 18,000) connect all at once
# (`loadgen storm`: as fast as the machine lets them, 256 handshakes in flight per thread).
# Prints the stayers' delivery latency (the fanout report) and the storm's connect figures.
# Usage: benches/reconnect_storm.sh [SERVER_FLAGS...]
#   e.g. benches/reconnect_storm.sh --accept-rate 0      (no admission control)
#   STAYERS=, STORM=, RATE=, DURATION=, STORM_AT=, NO_BUILD=1, SERVER_BIN=, LOADGEN_BIN= as loadgen.sh
set -euo pipefail
cd "$(dirname "$0")/.."
stayers=${STAYERS:-1000}; storm=${STORM:-18000}; rate=${RATE:-100}; duration=${DURATION:-20}; at=${STORM_AT:-5}
# shellcheck source=benches/serve.sh
. benches/serve.sh
start_server "$@"
url="ws://$(field ws)/ws"
"$loadgen" fanout --url "$url" --ingest "$(field ingest)" --conns "$stayers" --rooms 10 --rate "$rate" \
    --duration "$duration" --server-pid "$pid" --json "$out/fanout.json" >/dev/null 2>&1 & fan=$!; also_kill+=("$fan")
# The stayers connect in well under a second; the storm starts once publishing has.
sleep "$at"
"$loadgen" storm --url "$url" --conns "$storm" --json "$out/storm.json" --connect-timeout 120 >/dev/null 2>&1 || true
wait "$fan" || true
python3 - "$out/fanout.json" "$out/storm.json" <<'PY'
import json, sys
f, s = (json.load(open(p)) for p in sys.argv[1:3])
l, u = f["latency"], s["upgrade_latency"]
print(f"stayers: delivered={f['delivered']} expected={f['expected']} lost={f['lost']} valid={f['valid']} "
      f"p50={l['p50_ms']:.2f} p99={l['p99_ms']:.2f} p99.9={l['p999_ms']:.2f} max={l['max_ms']:.2f} ms; "
      f"storm: connected={s.get('connected')} connects_per_sec={s.get('connects_per_sec'):.0f} "
      f"upgrade p50={u['p50_ms']:.1f} p99={u['p99_ms']:.1f} max={u['max_ms']:.1f} ms")
for why in f.get("invalid_reasons", []):
    print("  invalid:", why)
PY
