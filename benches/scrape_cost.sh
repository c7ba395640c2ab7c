#!/usr/bin/env bash
# The cost of one admin scrape with a full server: N idle viewers (default 19,000) over R rooms
# (default 10,000) held by `loadgen idle`, then K (default 200) back-to-back requests of each
# path below; per path: the wall time per request (median, max) and the server's CPU per
# request (its /proc utime+stime over the K requests, less what the same wall time cost with
# no requests, measured just before).
# Usage: benches/scrape_cost.sh [N] [R] [K]    (NO_BUILD=1, SERVER_BIN=, LOADGEN_BIN= as loadgen.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-19000}; rooms=${2:-10000}; k=${3:-200}
# shellcheck source=benches/serve.sh
. benches/serve.sh
start_server --accept-rate 0
admin=$(field admin)
"$loadgen" idle --url "ws://$(field ws)/ws" --conns "$conns" --rooms "$rooms" --duration 600 >/dev/null 2>&1 & lg=$!; also_kill+=("$lg")
python3 - "$admin" "$conns" "$k" "$pid" <<'PY'
import socket, statistics, sys, time
admin, conns, k, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
host, port = admin.rsplit(":", 1)
tick = 100  # clock ticks per second (getconf CLK_TCK)
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def get(path):
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(1 << 20):
        data += chunk
    s.close()
    return data
deadline = time.time() + 300
while True:
    text = get("/metrics").decode()
    open_now = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("roomcast_connections_open{"))
    rooms_now = next((float(l.split()[-1]) for l in text.splitlines() if l.startswith("roomcast_rooms ")), 0)
    if open_now >= conns:
        break
    assert time.time() < deadline, f"only {open_now} connections open"
    time.sleep(0.5)
time.sleep(3)  # the join phase's presence traffic passes
print(f"{int(open_now)} connections open, {int(rooms_now)} rooms")
for path in ["/metrics", "/api/rooms?limit=100", "/api/rooms?sort=online&limit=10", "/api/rooms/lg-0", "/api/rooms/lg-0/presence?limit=100"]:
    walls = []
    c0, t0 = cpu(), time.monotonic()
    for _ in range(k):
        w = time.monotonic(); body = get(path); walls.append(time.monotonic() - w)
    busy_cpu, span = cpu() - c0, time.monotonic() - t0
    c1 = cpu(); time.sleep(max(span, 1.0)); idle_cpu = (cpu() - c1) * span / max(span, 1.0)
    per = max(busy_cpu - idle_cpu, 0) / k
    print(f"{path}: {len(body)} bytes; wall per request median {statistics.median(walls)*1e3:.2f} ms, "
          f"max {max(walls)*1e3:.2f} ms; server CPU per request {per*1e3:.2f} ms "
          f"({busy_cpu:.2f} s over {k} requests in {span:.2f} s, {idle_cpu:.2f} s idle in the same time)")
PY
