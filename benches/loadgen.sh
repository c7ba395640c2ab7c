#!/usr/bin/env bash
# Run one loadgen scenario RUNS times against a fresh release roomcast per run, and print the
# JSON reports' key figures. Usage:
#   benches/loadgen.sh RUNS SCENARIO [loadgen flags...]     (plain ws)
#   TLS=1 benches/loadgen.sh RUNS SCENARIO [flags...]       (wss, self-signed cert)
# Everything binds 127.0.0.1 ports chosen by the kernel; the server is stopped after each run.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$1; scenario=$2; shift 2
cargo build --release --workspace -q
out=$(mktemp -d)
trap 'pkill -f "$out/roomcast-marker" 2>/dev/null || true; rm -rf "$out"' EXIT
./target/release/roomcast gen-cert --out "$out" >/dev/null
for i in $(seq 1 "$runs"); do
  tls_flags=()
  [ "${TLS:-0}" = 1 ] && tls_flags=(--wss-listen 127.0.0.1:0 --tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
  ./target/release/roomcast serve --ws-listen 127.0.0.1:0 --ingest-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
      ${SERVER_FLAGS:-} "${tls_flags[@]}" >"$out/ready" 2>"$out/server.log" &
  pid=$!
  for _ in $(seq 1 100); do [ -s "$out/ready" ] && break; sleep 0.05; done
  ws=$(sed -E 's/.*ws=([0-9.:]+).*/\1/' "$out/ready"); ingest=$(sed -E 's/.*ingest=([0-9.:]+).*/\1/' "$out/ready")
  url="ws://$ws/ws"
  if [ "${TLS:-0}" = 1 ]; then wss=$(sed -E 's/.*wss=([0-9.:]+).*/\1/' "$out/ready"); url="wss://localhost:${wss##*:}/ws"; fi
  ./target/release/loadgen "$scenario" --url "$url" --ca "$out/cert.pem" --ingest "$ingest" --server-pid "$pid" \
      --json "$out/r$i.json" "$@" >"$out/table$i" 2>/dev/null || true
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$out/r$i.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency"]
keys = ["joined", "connects_per_sec", "published", "expected", "delivered", "lost", "duplicated", "reordered",
        "deliveries_per_sec", "server_cpu_seconds", "deliveries_per_server_cpu_sec", "loadgen_cpu_seconds",
        "server_rss_per_conn", "publisher_max_lag_ms", "reconnects", "recovered", "recovery_failed",
        "presence_per_member_per_sec", "valid"]
print(" ".join(f"{k}={r.get(k) if not isinstance(r.get(k), float) else round(r.get(k), 2)}" for k in keys),
      f"p50={l['p50_ms']:.3f} p90={l['p90_ms']:.3f} p99={l['p99_ms']:.3f} p99.9={l['p999_ms']:.3f} max={l['max_ms']:.3f}")
PY
done
