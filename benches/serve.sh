# Sourced by the single-server benchmark scripts (slow_consumers.sh, reconnect_storm.sh,
# heartbeat_cost.sh, scrape_cost.sh): the binaries, a scratch directory removed on exit, and
# one `roomcast serve` on kernel-chosen loopback ports that is stopped on exit with every
# process listed in `also_kill`.
#   NO_BUILD=1 (use the binaries as they are), SERVER_BIN=, LOADGEN_BIN= as benches/loadgen.sh
# After `start_server FLAGS...`: $pid is the server's, `field NAME` reads its ready line
# (`field ws`, `field ingest`, `field admin`).
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace -q
bin=${SERVER_BIN:-./target/release/roomcast}
loadgen=${LOADGEN_BIN:-./target/release/loadgen}
out=$(mktemp -d)
pid=
also_kill=()
cleanup() {
  for p in "${also_kill[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$out"
}
trap cleanup EXIT

start_server() {
  local sink_flags=()
  # The sinks' data goes to the scratch directory (older builds have no sinks).
  "$bin" serve --help | grep -q -- --sink-dir && sink_flags=(--sink-dir "$out/data")
  coproc SERVER { exec "$bin" serve --ws-listen 127.0.0.1:0 --ingest-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
      "${sink_flags[@]}" "$@" 2>"$out/server.log"; }
  pid=$SERVER_PID
  if ! read -r -t 30 ready <&"${SERVER[0]}"; then
    echo "roomcast did not print its ready line within 30 s; its log:" >&2; cat "$out/server.log" >&2; exit 1
  fi
}

field() { grep -o "$1=[^ ]*" <<<"$ready" | cut -d= -f2; }
