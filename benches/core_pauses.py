#!/usr/bin/env python3
"""How long a core stops running a busy thread, on an otherwise idle machine.

One spinning process per core (pinned) reads the monotonic clock in a loop and counts every
gap longer than THRESHOLD_MS between two readings: time the thread did not run (the guest's
scheduler, interrupts, or the hypervisor taking the virtual CPU away). A push engine's tail
latency cannot be below what such pauses add, so this is the floor next to the p99 figures.

Usage: benches/core_pauses.py [SECONDS=10] [THRESHOLD_MS=2]
"""

import os
import sys
import time


def spin(core: int, seconds: float, threshold_ns: int, out) -> None:
    os.sched_setaffinity(0, {core})
    clock = time.perf_counter_ns
    start = last = clock()
    end = start + int(seconds * 1e9)
    gaps = []
    while last < end:
        now = clock()
        if now - last > threshold_ns:
            gaps.append(((last - start) / 1e9, (now - last) / 1e6))
        last = now
    longest = max((g for _, g in gaps), default=0.0)
    paused = sum(g for _, g in gaps)
    times = " ".join(f"{at:.2f}s:{ms:.1f}" for at, ms in gaps[:12])
    out.write(
        f"core {core}: {len(gaps)} pauses over {threshold_ns / 1e6:g} ms in {seconds:g} s, "
        f"longest {longest:.1f} ms, {paused:.0f} ms in all ({times}{' ...' if len(gaps) > 12 else ''})\n"
    )


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    threshold_ns = int(float(sys.argv[2]) * 1e6) if len(sys.argv) > 2 else 2_000_000
    children = []
    for core in sorted(os.sched_getaffinity(0)):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            with os.fdopen(w, "w") as out:
                spin(core, seconds, threshold_ns, out)
            os._exit(0)
        os.close(w)
        children.append((pid, r))
    for pid, r in children:
        with os.fdopen(r) as inp:
            sys.stdout.write(inp.read())
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
