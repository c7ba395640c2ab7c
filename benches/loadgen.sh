#!/usr/bin/env bash
# Run one loadgen scenario RUNS times against a fresh release roomcast per run, and print the
# JSON reports' key figures (and each run's exit status: 2 = invalid, the reason is printed).
# Usage:
#   benches/loadgen.sh RUNS SCENARIO [loadgen flags...]     (plain ws)
#   TLS=1 benches/loadgen.sh RUNS SCENARIO [flags...]       (wss, self-signed cert)
#   SERVER_FLAGS="--batch-window-ms 25" benches/loadgen.sh ...
#   SERVER_BIN=/path/to/other/roomcast benches/loadgen.sh ...  (another build; see benches/ab.sh)
#   LOADGEN_BIN=/path/to/loadgen NO_BUILD=1 ...                 (fixed binaries, no rebuild)
#   ADMIN_LOAD=1 ...   (benches/admin_load.py meanwhile: /metrics scraped every second and
#                       /admin/stream held open, as Prometheus and an open dashboard would)
# Everything binds 127.0.0.1 ports chosen by the kernel, read from the server's ready line;
# the server is stopped after each run, and on any exit of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$1; scenario=$2; shift 2
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace -q
bin=${SERVER_BIN:-./target/release/roomcast}
loadgen=${LOADGEN_BIN:-./target/release/loadgen}
out=$(mktemp -d)
pid=
stop_server() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi
}
trap 'stop_server; rm -rf "$out"' EXIT
trap 'exit 130' INT TERM
"$bin" gen-cert --out "$out" >/dev/null
for i in $(seq 1 "$runs"); do
  tls_flags=()
  [ "${TLS:-0}" = 1 ] && tls_flags=(--wss-listen 127.0.0.1:0 --tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
  # shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
  sink_flags=()
  # The sinks' data goes to the run's scratch directory (older builds have no sinks).
  "$bin" serve --help | grep -q -- --sink-dir && sink_flags=(--sink-dir "$out/data$i")
  coproc SERVER { exec "$bin" serve --ws-listen 127.0.0.1:0 --ingest-listen 127.0.0.1:0 \
      --admin-listen 127.0.0.1:0 ${SERVER_FLAGS:-} "${tls_flags[@]}" "${sink_flags[@]}" 2>"$out/server.log"; }
  pid=$SERVER_PID
  # The server prints one line when every listener is bound.
  if ! read -r -t 30 ready <&"${SERVER[0]}"; then
    echo "roomcast did not print its ready line within 30 s; its log:" >&2; cat "$out/server.log" >&2; exit 1
  fi
  field() { grep -o "$1=[^ ]*" <<<"$ready" | cut -d= -f2; }
  url="ws://$(field ws)/ws"
  if [ "${TLS:-0}" = 1 ]; then wss=$(field wss); url="wss://localhost:${wss##*:}/ws"; fi
  ingest=()
  case "$scenario" in fanout|churn) ingest=(--ingest "$(field ingest)") ;; esac
  admin_pid=
  if [ "${ADMIN_LOAD:-0}" = 1 ]; then
    python3 benches/admin_load.py "$(field admin)" 2>"$out/admin$i" & admin_pid=$!
  fi
  status=0
  "$loadgen" "$scenario" --url "$url" --ca "$out/cert.pem" "${ingest[@]}" --server-pid "$pid" \
      --json "$out/r$i.json" "$@" >"$out/table$i" 2>/dev/null || status=$?
  if [ -n "$admin_pid" ]; then kill -TERM "$admin_pid"; wait "$admin_pid" || true; fi
  # Socket writes per delivery over the whole run (connects and joins included), from the
  # server's own counters (builds without an admin port print nothing).
  writes=$(python3 - "$(field admin)" <<'PY' 2>/dev/null || true
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
v = {l.split()[0]: float(l.split()[-1]) for l in text.splitlines() if l and not l.startswith("#")}
w, d = v.get("roomcast_socket_writes_total", 0), v.get("roomcast_deliveries_total", 0)
print(f"writes_per_delivery={w / d:.4f}" if d else "")
PY
)
  stop_server
  echo -n "run $i exit=$status ${writes:+$writes }"
  python3 - "$out/r$i.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
# storm and idle measure opening connections; the others, deliveries.
opens = r["scenario"] in ("storm", "idle")
l = r["upgrade_latency" if opens else "latency"]
keys = ["joined", "connects_per_sec", "published", "expected", "delivered", "lost", "duplicated", "reordered",
        "deliveries_per_sec", "server_cpu_seconds", "deliveries_per_server_cpu_sec", "loadgen_cpu_seconds",
        "server_rss_per_conn", "publisher_max_lag_ms", "late_messages", "reconnects", "recovered",
        "recovery_failed", "presence_per_member_per_sec", "valid"]
print(" ".join(f"{k}={r.get(k) if not isinstance(r.get(k), float) else round(r.get(k), 2)}" for k in keys),
      "upgrade" if opens else "delivery", f"p50={l['p50_ms']:.3f} p90={l['p90_ms']:.3f} p99={l['p99_ms']:.3f} p99.9={l['p999_ms']:.3f} max={l['max_ms']:.3f}")
s = r.get("message_spread")
if s:
    print(f"  per message: first_p50={s['first_p50_ms']:.2f} last_p50={s['last_p50_ms']:.2f} latest={s['last_max_ms']:.2f}"
          f" latest_due_s={s['last_max_at_s']:.2f} late_starts={s['late_starts']} of {s['messages']}")
a = r.get("ack_latency")
if a:
    print(f"  comment -> ack p50={a['p50_ms']:.3f} p90={a['p90_ms']:.3f} p99={a['p99_ms']:.3f} p99.9={a['p999_ms']:.3f} max={a['max_ms']:.3f}")
for why in r.get("invalid_reasons", []):
    print("  invalid:", why)
for w in r.get("warnings", []):
    print("  warning:", w)
PY
  if [ -n "$admin_pid" ]; then sed 's/^/  /' "$out/admin$i"; fi
done
