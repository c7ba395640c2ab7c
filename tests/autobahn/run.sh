#!/usr/bin/env bash
# RFC 6455 conformance with the Autobahn TestSuite's fuzzing client, cases 1-10, plain (ws)
# and over TLS (wss); 12-13 (permessage-deflate) are not run: roomcast does not negotiate
# compression, so they would only report UNIMPLEMENTED.
#
# Usage: tests/autobahn/run.sh [SETUP_SCRIPT]
#   SETUP_SCRIPT (or $AUTOBAHN_SETUP): the script that installs wstest into $AUTOBAHN_DIR
#   (default /var/tmp/ab) when it is not there yet; in this workplace it is
#   ../shared/tools/autobahn/setup.sh (Python 2.7 from Debian packages, unpacked privately,
#   and autobahntestsuite from PyPI). CI has no such directory: pass the path explicitly.
#   AUTOBAHN_TARGET=roomcast (default) runs against `roomcast serve --testing-echo-path /echo`;
#   AUTOBAHN_TARGET=echo-example against `examples/echo.rs` (the frame decoder alone).
#   AUTOBAHN_CASES overrides the case list (default "1.*,2.*,...,10.*"), e.g. "1.*,5.*".
#
# Writes tests/autobahn/summary-ws.json and summary-wss.json (summary-echo-example-*.json for
# the example): counts per behaviour and the cases that were not OK. Exits 1 if any case FAILED.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${AUTOBAHN_DIR:-/var/tmp/ab}
target=${AUTOBAHN_TARGET:-roomcast}
setup=${1:-${AUTOBAHN_SETUP:-}}
cases=${AUTOBAHN_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*}

if [ ! -x "$dir/wstest" ]; then
    if [ -z "$setup" ]; then
        echo "wstest is not installed in $dir. Install it with the Autobahn setup script:" >&2
        echo "  tests/autobahn/run.sh /path/to/shared/tools/autobahn/setup.sh   (or AUTOBAHN_SETUP=...)" >&2
        exit 2
    fi
    sh "$setup" "$dir"
fi

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cd "$repo"
cargo build --release --bin roomcast --example echo
./target/release/roomcast gen-cert --out "$work" >/dev/null
if [ "$target" = echo-example ]; then
    ./target/release/examples/echo 127.0.0.1:0 --tls "$work/cert.pem" "$work/key.pem" 127.0.0.1:0 >"$work/out" 2>"$work/err" &
    prefix=summary-echo-example
else
    ./target/release/roomcast serve --workers 2 --ws-listen 127.0.0.1:0 --wss-listen 127.0.0.1:0 \
        --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --ingest-listen 127.0.0.1:0 \
        --testing-echo-path /echo --max-message 16777216 --outbound-budget 67108864 \
        --admin-listen 127.0.0.1:0 --sink-dir "$work/data" >"$work/out" 2>"$work/err" &
    prefix=summary
fi
pid=$!
for _ in $(seq 1 300); do
    grep -q ' ready ' "$work/out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; echo "the server exited before its ready line" >&2; exit 1; }
    sleep 0.1   # polling a file for the ready line: no event to wait on
done
ready=$(head -1 "$work/out")
ws=$(echo "$ready" | tr ' ' '\n' | sed -n 's/^ws=//p')
wss=$(echo "$ready" | tr ' ' '\n' | sed -n 's/^wss=//p')
[ -n "$ws" ] && [ -n "$wss" ] && [ "$wss" != off ] || { echo "bad ready line: $ready" >&2; exit 1; }
echo "target $target: $ready"

status=0
for scheme in ws wss; do
    addr=$ws; [ "$scheme" = wss ] && addr=$wss
    python3 - "$work/$scheme.json" "$scheme://$addr/echo" "$work/report-$scheme" "$cases" <<'PY'
import json, sys
path, url, outdir, cases = sys.argv[1:]
json.dump({"outdir": outdir, "servers": [{"agent": "roomcast", "url": url}],
           "cases": cases.split(","), "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {}},
          open(path, "w"))
PY
    (cd "$work" && "$dir/wstest" -m fuzzingclient -s "$work/$scheme.json") >"$work/wstest-$scheme.log" 2>&1 || true
    python3 - "$work/report-$scheme/index.json" "$here/$prefix-$scheme.json" "$scheme" "$dir/wstest -m fuzzingclient" <<'PY' || status=1
import collections, json, sys
index, out, scheme, command = sys.argv[1:]
results = json.load(open(index))["roomcast"]
counts = collections.Counter(r["behavior"] for r in results.values())
close = collections.Counter(r["behaviorClose"] for r in results.values())
key = lambda c: [int(p) for p in c.split(".")]
not_ok = {c: {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"]}
          for c, r in sorted(results.items(), key=lambda kv: key(kv[0])) if r["behavior"] != "OK" or r["behaviorClose"] != "OK"}
summary = {"scheme": scheme, "cases": len(results), "behavior": dict(counts), "behaviorClose": dict(close),
           "not_ok": not_ok, "excluded": ["12.*", "13.*"], "command": command}
json.dump(summary, open(out, "w"), indent=1, sort_keys=True)
open(out, "a").write("\n")
print(f"{scheme}: {len(results)} cases, behaviour {dict(counts)}, close {dict(close)}")
sys.exit(1 if counts.get("FAILED", 0) or close.get("FAILED", 0) or not results else 0)
PY
done
exit $status
