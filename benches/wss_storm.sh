#!/usr/bin/env bash
# What a wss connect (TLS 1.3 handshake + HTTP upgrade + hello) costs the server, full and
# resumed: `loadgen storm` against a fresh `roomcast serve --workers 1 --accept-rate 0` per run,
# the server pinned to one core and the loadgen to the other, so the server's CPU per connect
# is its own. Each run does a full storm (every connect a full handshake) and then a resumed
# one (`--tls-resume`: every connection opens, closes, and reopens with its session ticket;
# only the second round is measured) and prints connects per server CPU-second for both.
# Usage: benches/wss_storm.sh RUNS CONNS [SERVER_FLAGS...]
#   SERVER_CORE=0 LOADGEN_CORE=1 (defaults), PLAIN=1 adds a ws storm row per run,
#   NO_BUILD=1, SERVER_BIN=, LOADGEN_BIN= as in benches/loadgen.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$1; conns=$2; shift 2
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace -q
bin=${SERVER_BIN:-./target/release/roomcast}
loadgen=${LOADGEN_BIN:-./target/release/loadgen}
score=${SERVER_CORE:-0}; lcore=${LOADGEN_CORE:-1}
out=$(mktemp -d)
pid=
stop_server() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi
}
trap 'stop_server; rm -rf "$out"' EXIT
trap 'exit 130' INT TERM
"$bin" gen-cert --out "$out" >/dev/null
one() { # NAME SCHEME LOADGEN_FLAGS...
  local name=$1 scheme=$2; shift 2
  coproc SERVER { exec taskset -c "$score" "$bin" serve --workers 1 --accept-rate 0 --ws-listen 127.0.0.1:0 \
      --wss-listen 127.0.0.1:0 --ingest-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --sink-dir "$out/data" \
      --tls-cert "$out/cert.pem" --tls-key "$out/key.pem" "$@" 2>"$out/server.log"; }
  pid=$SERVER_PID
  if ! read -r -t 30 ready <&"${SERVER[0]}"; then
    echo "roomcast did not print its ready line within 30 s; its log:" >&2; cat "$out/server.log" >&2; exit 1
  fi
  local port
  port=$(grep -o "$scheme=[^ ]*" <<<"$ready" | cut -d= -f2); port=${port##*:}
  local status=0
  # shellcheck disable=SC2086 # LOADGEN_FLAGS is a list of flags
  taskset -c "$lcore" "$loadgen" storm --url "$scheme://localhost:$port/ws" --ca "$out/cert.pem" --conns "$conns" \
      --server-pid "$pid" --json "$out/r.json" ${LOADGEN_FLAGS:-} >/dev/null 2>&1 || status=$?
  stop_server
  echo -n "$name exit=$status "
  python3 - "$out/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
u = r["upgrade_latency"]
cpu = r.get("connect_server_cpu_seconds")
print(f"connected={r['connected']} tls_resumed={r['tls_resumed']} connects_per_sec={r['connects_per_sec']:.0f} "
      f"server_cpu_s={cpu if cpu is None else round(cpu, 2)} "
      f"connects_per_server_cpu_s={r.get('connects_per_server_cpu_sec') or 0:.0f} "
      f"server_us_per_connect={(1e6 * cpu / max(r['connected'], 1)) if cpu else 0:.1f} "
      f"upgrade_p50={u['p50_ms']:.2f} p99={u['p99_ms']:.2f} max={u['max_ms']:.2f} ms valid={r['valid']}")
for why in r.get("invalid_reasons", []):
    print("  invalid:", why)
PY
}
for i in $(seq 1 "$runs"); do
  [ "${PLAIN:-0}" = 1 ] && LOADGEN_FLAGS="" one "run $i ws     " ws "$@"
  LOADGEN_FLAGS="" one "run $i full   " wss "$@"
  LOADGEN_FLAGS="--tls-resume" one "run $i resumed" wss "$@"
done
