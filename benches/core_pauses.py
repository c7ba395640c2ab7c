#!/usr/bin/env python3
"""How long a core stops running a busy thread, on an otherwise idle machine.

One spinning process per core (pinned) reads the monotonic clock in a loop and counts every
gap longer than THRESHOLD_MS between two readings, with how much of it the thread's own CPU
clock advanced: a gap it did not run in (its CPU clock stood still) is time the core was taken
from it (the guest's scheduler, interrupts, or the hypervisor taking the virtual CPU away). A
push engine's tail latency cannot be below what such pauses add, so this is the floor next to
the p99 figures.

Usage: benches/core_pauses.py [SECONDS=10] [THRESHOLD_MS=2]
"""

import os
import sys
import time


def spin(core: int, seconds: float, threshold_ns: int, out) -> None:
    os.sched_setaffinity(0, {core})
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    start = last = clock()
    last_cpu = cpu()
    end = start + int(seconds * 1e9)
    gaps = []
    while last < end:
        now, now_cpu = clock(), cpu()
        if now - last > threshold_ns:
            gaps.append(((last - start) / 1e9, (now - last) / 1e6, (now_cpu - last_cpu) / 1e6))
        last, last_cpu = now, now_cpu
    longest = max((g for _, g, _ in gaps), default=0.0)
    paused = sum(g for _, g, _ in gaps)
    ran = sum(r for _, _, r in gaps)
    times = " ".join(f"{at:.2f}s:{ms:.1f}" for at, ms, _ in gaps[:12])
    out.write(
        f"core {core}: {len(gaps)} pauses over {threshold_ns / 1e6:g} ms in {seconds:g} s, "
        f"longest {longest:.1f} ms, {paused:.0f} ms in all, of which the thread ran {ran:.0f} ms "
        f"({times}{' ...' if len(gaps) > 12 else ''})\n"
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
