#!/usr/bin/env bash
# What keeping idle viewers alive costs the server: N viewers (default 19,000) over 100 rooms
# held by `loadgen idle`, and the server's CPU (its /proc utime+stime) over HOLD seconds
# (default 60) once every connection is open and the join phase is over. Compare a server
# that pings silent connections itself (the default, `presence.heartbeat_ms`) with clients
# that ping the server (LOADGEN_FLAGS="--app-ping-every 25"), or another heartbeat interval
# (--heartbeat-ms ...).
# Usage: benches/heartbeat_cost.sh [SERVER_FLAGS...]
#   N=, HOLD=, LOADGEN_FLAGS=, NO_BUILD=1, SERVER_BIN=, LOADGEN_BIN= as loadgen.sh
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${N:-19000}; hold=${HOLD:-60}
# shellcheck source=benches/serve.sh
. benches/serve.sh
start_server "$@"
# shellcheck disable=SC2086 # LOADGEN_FLAGS is a list of flags
"$loadgen" idle --url "ws://$(field ws)/ws" --conns "$conns" --rooms 100 --duration $((hold + 120)) \
    ${LOADGEN_FLAGS:-} >"$out/idle.out" 2>&1 & lg=$!; also_kill+=("$lg")
# utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat; after the ")" of the name
# they are the 12th and 13th).
cpu() { python3 -c "f = open('/proc/$1/stat').read().rsplit(')', 1)[1].split(); print(int(f[11]) + int(f[12]))"; }
# Open when the server's socket count stops growing at N (its /proc fd count, less listeners).
deadline=$((SECONDS + 180))
until [ "$(ls "/proc/$pid/fd" | wc -l)" -ge "$conns" ]; do
  [ $SECONDS -lt $deadline ] || { echo "connections did not open: $(cat "$out/idle.out")"; exit 1; }
  sleep 0.5
done
sleep 5   # the join phase's presence announcements pass
c0=$(cpu "$pid"); sleep "$hold"; c1=$(cpu "$pid")
python3 -c "
import sys; t = 100; d = ($c1 - $c0) / t
print(f'{$conns} idle viewers, {$hold} s: server CPU {d:.2f} s = {d / $hold * 100:.2f}% of a core; '
      f'{d / $hold * 60 / $conns * 1e6:.1f} us per viewer per minute')"
kill -0 "$lg" 2>/dev/null || { echo "the loadgen stopped early: $(cat "$out/idle.out")"; exit 1; }
