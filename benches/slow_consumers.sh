#!/usr/bin/env bash
# Slow consumers and kernel memory: READERS viewers (default 1,900) that read and STALLED
# (default 100) that join and then never read, in one room, while ~1 KB events are published
# at RATE per second (default 500) for DURATION seconds (default 20). Every 100 ms it samples
# the server's slow-consumer closes (/metrics), its RSS and the kernel's TCP memory
# (/proc/net/sockstat `mem`, pages of 4 KiB, the whole machine: the loadgen's sockets too);
# prints the time from the first publish until all stalled viewers were closed with 4009, and
# the peaks.
# Usage: benches/slow_consumers.sh [SERVER_FLAGS...]   e.g. --socket-unsent-bytes 0 (no cap)
#   READERS=, STALLED=, RATE=, DURATION=, NO_BUILD=1, SERVER_BIN=, LOADGEN_BIN= as loadgen.sh
set -euo pipefail
cd "$(dirname "$0")/.."
readers=${READERS:-1900}; stalled=${STALLED:-100}; rate=${RATE:-500}; duration=${DURATION:-20}
# shellcheck source=benches/serve.sh
. benches/serve.sh
start_server "$@"
python3 benches/stalled_viewers.py "$(field ws)" "$stalled" lg-0 "$out/stalled.ready" & stall=$!; also_kill+=("$stall")
# The stalled viewers are in before the readers start (the script makes the file then).
until [ -e "$out/stalled.ready" ]; do kill -0 "$stall" || exit 1; sleep 0.1; done
python3 - "$(field admin)" "$pid" "$stalled" "$out/samples" <<'PY' & sampler=$!; also_kill+=("$sampler")
import socket, sys, time
admin, pid, stalled, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
host, port = admin.rsplit(":", 1)
def closes():
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(1 << 16):
        data += chunk
    return next((float(l.split()[-1]) for l in data.decode().splitlines()
                 if l.startswith("roomcast_slow_consumer_closes_total ")), 0.0)
def rss_kib():
    return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
def tcp_mem_kib():
    line = next(l for l in open("/proc/net/sockstat") if l.startswith("TCP:"))
    f = line.split()
    return int(f[f.index("mem") + 1]) * 4
with open(path, "w") as out:
    while True:
        try:
            out.write(f"{time.time():.3f} {closes():.0f} {rss_kib()} {tcp_mem_kib()}\n"); out.flush()
        except (OSError, StopIteration):
            break
        time.sleep(0.1)
PY
start=$(date +%s.%N)
"$loadgen" fanout --url "ws://$(field ws)/ws" --ingest "$(field ingest)" --conns "$readers" --rooms 1 \
    --rate "$rate" --payload 1000 --duration "$duration" --server-pid "$pid" --json "$out/fanout.json" >/dev/null 2>&1 || true
kill "$sampler" "$stall" 2>/dev/null || true
python3 - "$out/samples" "$out/fanout.json" "$stalled" "$start" <<'PY'
import json, sys
samples = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
f, stalled, start = json.load(open(sys.argv[2])), int(sys.argv[3]), float(sys.argv[4])
first = next((t for t, c, *_ in samples if c >= 1), None)
last = next((t for t, c, *_ in samples if c >= stalled), None)
rss = max(s[2] for s in samples) / 1024
tcp = max(s[3] for s in samples) / 1024
base_tcp = samples[0][3] / 1024
l = f["latency"]
print(f"4009 closes: first {first - start:.1f} s, all {stalled} {last - start:.1f} s after the readers started" if last else
      f"4009 closes: {max(s[1] for s in samples):.0f} of {stalled} by the end")
print(f"peak server RSS {rss:.0f} MiB; peak kernel TCP memory {tcp:.0f} MiB (before the run {base_tcp:.0f} MiB); "
      f"readers: delivered={f['delivered']} lost={f['lost']} p99={l['p99_ms']:.2f} ms")
PY
