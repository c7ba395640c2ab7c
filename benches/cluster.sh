#!/usr/bin/env bash
# A fan-out run spread over a roomcast cluster on this machine (issue 12): a fresh
# `redis-server` (Debian package; temp dir, no persistence) on a free loopback port and NODES
# `roomcast serve --cluster-redis-url` nodes per run, then `loadgen fanout` with every node's
# URL (each room's members round-robin over the nodes, over `--procs` children too), every node's pid and Redis's
# (`--server-pid`), publishing through node 1's ingest. Prints loadgen.sh's key figures per run,
# then the cluster's: deliveries/s and latency on each node (nodes 2.. are cross-node: the
# publisher is on node 1), the nodes' and Redis's CPU, and Redis commands per published message
# from `INFO commandstats` (commands inside the sequencing script count): in the publishing
# window (sampled every 0.1 s; from the first sample inside loadgen's `window_unix_ms` to the
# last, per message sequenced between them: each is one XADD to its room's history) and over
# the whole run per published message (joins and leaves included: presence and per-user
# channels cost per connection).
# Give loadgen `--settle 2` or so, so the joins' presence traffic is over before the window.
# Usage:
#   benches/cluster.sh RUNS [loadgen fanout flags...]
#   e.g. benches/cluster.sh 3 --conns 3000 --rooms 30 --rate 200 --duration 10 --procs 2
#   NODES=3 (default) | NODES=1 (one cluster node, same Redis path) | NODES=0 (one plain node,
#   no Redis: today's single node, for comparison)
#   SERVER_FLAGS="--workers 1" (to every node), NO_BUILD=1, SERVER_BIN=, LOADGEN_BIN= as loadgen.sh,
#   KEEP=1 (keep the scratch directory)
# Everything binds 127.0.0.1; roomcast's ports come from the kernel (read from each node's
# ready line), Redis's is a free port the kernel gave a probe socket. Every process this script
# started is stopped after each run and on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$1; shift
nodes=${NODES:-3}
[[ $nodes =~ ^[0-9]+$ ]] || { echo "NODES must be a number (0: a plain node without Redis)" >&2; exit 1; }
if [ "$nodes" -gt 0 ]; then
  command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install -y redis-server" >&2; exit 1; }
fi
[ -n "${NO_BUILD:-}" ] || nice -n 10 cargo build --release --workspace -q
bin=${SERVER_BIN:-./target/release/roomcast}
loadgen=${LOADGEN_BIN:-./target/release/loadgen}
out=$(mktemp -d)
pids=()
redis_pid=
sampler_pid=
stop_all() {
  if [ -n "$sampler_pid" ]; then kill -TERM "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; fi
  sampler_pid=
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then kill -TERM "$redis_pid" 2>/dev/null || true; fi
  for p in "${pids[@]}" $redis_pid; do wait "$p" 2>/dev/null || true; done
  pids=(); redis_pid=
}
# KEEP=1 keeps the scratch directory (reports, logs, Redis samples) and prints where it is.
trap 'stop_all; if [ -n "${KEEP:-}" ]; then echo "kept $out" >&2; else rm -rf "$out"; fi' EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Start one node (stdout to $out/node$k.out) and wait for its ready line.
start_node() {
  local k=$1; shift
  local sink_flags=()
  "$bin" serve --help | grep -q -- --sink-dir && sink_flags=(--sink-dir "$out/data$k")
  # shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
  "$bin" serve --ws-listen 127.0.0.1:0 --ingest-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
      "$@" ${SERVER_FLAGS:-} "${sink_flags[@]}" >"$out/node$k.out" 2>"$out/node$k.log" &
  pids+=($!)
  local waited=0
  until [ -s "$out/node$k.out" ]; do
    if ! kill -0 "${pids[-1]}" 2>/dev/null || [ "$waited" -ge 300 ]; then
      echo "node $k did not print its ready line within 30 s; its log:" >&2; cat "$out/node$k.log" >&2; exit 1
    fi
    sleep 0.1; waited=$((waited + 1))
  done
  head -n1 "$out/node$k.out" >"$out/ready$k"
}
field() { grep -o "$2=[^ ]*" "$out/ready$1" | cut -d= -f2; }
commandstats() { redis-cli -p "$port" info commandstats | tr -d '\r' | grep '^cmdstat_' || true; }
# One line per sample: ms since the epoch, then every command's calls (each sample is one INFO).
sample_commandstats() {
  while :; do
    echo "$(date +%s%3N) $(redis-cli -p "$port" info commandstats | tr -d '\r' | grep '^cmdstat_' | tr '\n' ' ')"
    sleep 0.1
  done
}

for i in $(seq 1 "$runs"); do
  rm -rf "${out:?}"/node* "${out:?}"/ready* "${out:?}"/data*
  cluster_flags=()
  if [ "$nodes" -gt 0 ]; then
    port=$(free_port)
    mkdir -p "$out/redis"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$out/redis" --save '' --appendonly no \
        --logfile "$out/redis.log" & redis_pid=$!
    until redis-cli -p "$port" ping >/dev/null 2>&1; do kill -0 "$redis_pid" || exit 1; sleep 0.1; done
    cluster_flags=(--cluster-redis-url "redis://127.0.0.1:$port/")
  fi
  count=$(( nodes > 0 ? nodes : 1 ))
  urls=(); pid_flags=()
  for k in $(seq 1 "$count"); do
    start_node "$k" "${cluster_flags[@]}"
    urls+=(--url "ws://$(field "$k" ws)/ws")
    pid_flags+=(--server-pid "${pids[-1]}")
  done
  : >"$out/stats_before"; : >"$out/stats_after"
  : >"$out/samples"
  if [ -n "$redis_pid" ]; then
    pid_flags+=(--server-pid "$redis_pid")
    commandstats >"$out/stats_before"
    sample_commandstats >"$out/samples" & sampler_pid=$!
  fi
  status=0
  "$loadgen" fanout "${urls[@]}" --ingest "$(field 1 ingest)" "${pid_flags[@]}" --json "$out/r$i.json" "$@" \
      >"$out/table$i" 2>"$out/loadgen$i.log" || status=$?
  # The nodes let go of loadgen's viewers (presence leaves, per-user channels) after it exits.
  if [ -n "$redis_pid" ]; then sleep 2; commandstats >"$out/stats_after"; fi
  # Each cluster node's broker counters (a reconnect to Redis during the run shows here).
  : >"$out/brokers"
  if [ "$nodes" -gt 0 ]; then
    for k in $(seq 1 "$count"); do
      python3 - "$(field "$k" admin)" "$k" >>"$out/brokers" <<'PY' || true
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
v = {}
for l in text.splitlines():
    if l.startswith("roomcast_broker_"):
        name, value = l.rsplit(" ", 1)
        v[name.removeprefix("roomcast_broker_").removesuffix("_total")] = value
print(f"  node {sys.argv[2]} broker: " + " ".join(f"{k}={v[k]}" for k in sorted(v)))
PY
    done
  fi
  stop_all
  echo -n "run $i nodes=$nodes exit=$status "
  python3 - "$out/r$i.json" "$nodes" "$out/stats_before" "$out/stats_after" "$out/samples" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
nodes = int(sys.argv[2])
l = r["latency"]
keys = ["joined", "published", "expected", "delivered", "lost", "duplicated", "reordered", "deliveries_per_sec",
        "server_cpu_seconds", "deliveries_per_server_cpu_sec", "loadgen_cpu_seconds", "publisher_max_lag_ms",
        "late_messages", "valid"]
fmt = lambda v: round(v, 2) if isinstance(v, float) else v
print(" ".join(f"{k}={fmt(r.get(k))}" for k in keys),
      f"delivery p50={l['p50_ms']:.3f} p90={l['p90_ms']:.3f} p99={l['p99_ms']:.3f} p99.9={l['p999_ms']:.3f} max={l['max_ms']:.3f}")
each = r.get("server_cpu_seconds_each", [])
node_cpu = each[:max(nodes, 1)]
if node_cpu and all(c is not None for c in node_cpu):
    total = sum(node_cpu)
    line = f"  cpu: nodes {total:.2f} s ({', '.join(f'{c:.2f}' for c in node_cpu)})"
    if nodes > 0 and len(each) > nodes and each[nodes] is not None:
        line += f", redis {each[nodes]:.2f} s"
    line += f"; deliveries per node CPU-second {r['delivered'] / max(total, 0.01):.0f}"
    print(line)
per_url = r.get("per_url", [])
for k, u in enumerate(per_url):
    ul = u["latency"]
    where = "same node as the publisher" if k == 0 else "cross-node"
    print(f"  node {k + 1} ({where}): conns={u['conns']} delivered={u['delivered']} lost={u['lost']} "
          f"deliveries_per_sec={u['deliveries_per_sec']:.0f} p50={ul['p50_ms']:.3f} p99={ul['p99_ms']:.3f} max={ul['max_ms']:.3f}")
if len(per_url) > 1:
    cross = per_url[1:]
    print(f"  cross-node: deliveries_per_sec={sum(u['deliveries_per_sec'] for u in cross):.0f} "
          f"delivered={sum(u['delivered'] for u in cross)} of {r['delivered']}")
def calls_of(text):
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_([^:]+):calls=(\d+)", text)}
def per_message(before, after, messages, what, unit):
    # INFO itself (this script's samples) is not the cluster's work.
    delta = {c: after[c] - before.get(c, 0) for c in after if c != "info"}
    delta = {c: n for c, n in delta.items() if n > 0}
    top = sorted(delta.items(), key=lambda kv: -kv[1])
    total = sum(delta.values())
    print(f"  redis {what}: {total} commands, {total / max(messages, 1):.2f} per {unit} "
          f"({' '.join(f'{c}={n / max(messages, 1):.2f}' for c, n in top)})")
before, after = calls_of(open(sys.argv[3]).read()), calls_of(open(sys.argv[4]).read())
samples = []
for line in open(sys.argv[5]):
    t, _, rest = line.partition(" ")
    if t.isdigit() and "cmdstat_" in rest:
        samples.append((int(t), calls_of(rest)))
window = r.get("window_unix_ms")
inside = [s for s in samples if window and window[0] <= s[0] <= window[1]]
if len(inside) >= 2:
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    sequenced = c1.get("xadd", 0) - c0.get("xadd", 0)
    print(f"  redis in the window: {t1 - t0} ms of its {window[1] - window[0]}, {sequenced} messages sequenced (XADD)")
    per_message(c0, c1, sequenced, "in the window", "message sequenced")
if after:
    per_message(before, after, r["published"], "over the whole run", "published message")
for why in r.get("invalid_reasons", []):
    print("  invalid:", why)
for w in r.get("warnings", []):
    print("  warning:", w)
PY
  cat "$out/brokers"
  if [ "$status" -ne 0 ] && [ "$status" -ne 2 ]; then sed 's/^/  loadgen: /' "$out/loadgen$i.log" | tail -5; fi
done
