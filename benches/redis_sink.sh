#!/usr/bin/env bash
# Durable comments into the Redis Streams sink: starts a real `redis-server` (Debian package)
# on a free loopback port with an append-only file (`appendfsync everysec`), makes it the one
# durable sink (the file sink off), and runs `benches/loadgen.sh RUNS comments ...` against it.
# Prints loadgen.sh's line per run and, after each, the records the streams hold.
# Usage: benches/redis_sink.sh RUNS [loadgen comments flags...]
#   e.g. benches/redis_sink.sh 3 --conns 1000 --rooms 1000 --rate 50000 --duration 10
#   NO_BUILD=1, SERVER_BIN=, LOADGEN_BIN= as loadgen.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install -y redis-server" >&2; exit 1; }
runs=$1; shift
dir=$(mktemp -d)
redis_pid=
cleanup() { [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for i in $(seq 1 "$runs"); do
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync everysec \
      --save '' --logfile "$dir/redis.log" & redis_pid=$!
  until redis-cli -p "$port" ping >/dev/null 2>&1; do kill -0 "$redis_pid" || exit 1; sleep 0.1; done
  redis-cli -p "$port" flushall >/dev/null
  cat >"$dir/roomcast.toml" <<EOF
[sink.file]
enabled = false
[sink.redis]
url = "redis://127.0.0.1:$port"
durable = true
EOF
  echo -n "redis $i: "
  SERVER_FLAGS="--config $dir/roomcast.toml --comment-rate 0 --message-rate 0" benches/loadgen.sh 1 comments "$@" | sed 's/^run 1 //'
  python3 - "$port" <<'PY'
import subprocess, sys
port = sys.argv[1]
cli = lambda *a: subprocess.run(["redis-cli", "-p", port, *a], capture_output=True, text=True).stdout
keys = [k for k in cli("--scan", "--pattern", "roomcast:comments*").split() if k]
print(f"  streams: {len(keys)} holding {sum(int(cli('xlen', k) or 0) for k in keys)} records")
PY
  kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=
  rm -f "$dir"/*.aof "$dir"/appendonlydir/* 2>/dev/null || true
done
