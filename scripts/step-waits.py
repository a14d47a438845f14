#!/usr/bin/env python3
"""How much of the bridge's step on the wire was spent waiting for a core: joins a loopback
capture of a latency series (the bridge's step per message, as `scripts/latency-hops.py
--steps` reads it) with `perf sched timehist` of the same time (when each thread of the
bridge process waited for a core after a wake-up).

    scripts/step-waits.py CAP.pcap TIMEHIST PID OFFSET PORT=NAME...

PID is the bridge process; OFFSET is wall-clock time minus CLOCK_MONOTONIC in seconds when
the capture ran (perf must record with `-k mono`); PORT=NAME as for latency-hops.py.
`SCHED=1 scripts/capture-hops.sh` records all of it and runs this script. Prints how many
reads a thread of the bridge ran right after (the two clocks agree if nearly all), then,
for the fastest half, the 90th-99th percentile and the slowest 1 % of the steps: the mean
step and the mean time the bridge's threads waited for a core inside it (thread time: two
threads waiting at once count twice), by thread. Section "RabbitMQ→STOMP(ActiveMQ): the
bridge's step waits behind ActiveMQ's JIT compiler" of docs/benchmarks/README.md.
"""
import bisect
import importlib.util
import os
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("latency_hops", os.path.join(HERE, "latency-hops.py"))
hops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hops)
_spec = importlib.util.spec_from_file_location("sched_delays", os.path.join(HERE, "sched-delays.py"))
sched = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sched)


def bridge_steps(capture, brokers, offset):
    """(read, write) of each bridged message, in CLOCK_MONOTONIC seconds."""
    seen, _, _ = hops.stamped_connections(capture, brokers)
    steps = []
    for times in seen.values():
        ordered = sorted(times.values())
        if len(ordered) == 4:  # publisher -> A -> bridge -> B -> subscriber
            steps.append((ordered[1] - offset, ordered[2] - offset))
    return steps


def bridge_threads(timehist, pid):
    """The waits for a core [(start, end, thread)] and the run starts of process `pid`."""
    waits, starts = [], []
    for line in open(timehist, errors="replace"):
        m = sched.ROW.match(line)
        if not m:
            continue
        t, _cpu, comm, tid, p, _wait, sch, run = m.groups()
        if (p or tid) != pid:
            continue
        began = float(t) - float(run) / 1e3
        starts.append(began)
        if float(sch) > 0:
            waits.append((began - float(sch) / 1e3, began, comm.strip()))
    waits.sort()
    starts.sort()
    return waits, starts


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    capture, timehist, pid, offset = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    brokers = hops.broker_ports(sys.argv[5:])
    waits, starts = bridge_threads(timehist, pid)
    # Only the messages of the series this bridge process ran (the capture may hold others).
    steps = [
        (read, write)
        for read, write in bridge_steps(capture, brokers, offset)
        if starts and starts[0] <= read <= starts[-1]
    ]
    if not steps or not starts:
        sys.exit(f"no bridged messages in {capture} or no thread of process {pid} in {timehist}")
    wait_starts = [w[0] for w in waits]
    # A wait that overlaps a step started at most the longest wait before the step's read.
    longest = max((end - start for start, end, _ in waits), default=0.0)

    def ran_after(t):
        i = bisect.bisect_left(starts, t)
        return i < len(starts) and starts[i] - t < 0.0003

    aligned = sum(1 for read, _ in steps if ran_after(read))
    print(
        f"{len(steps)} bridged messages; a thread of process {pid} started running within"
        f" 300 µs after the read for {aligned} of them"
    )
    rows = []  # (step µs, waited µs, {thread: waited µs})
    for read, write in steps:
        i = bisect.bisect_left(wait_starts, read - longest)
        total, by_thread = 0.0, defaultdict(float)
        while i < len(waits) and waits[i][0] < write:
            start, end, thread = waits[i]
            overlap = min(end, write) - max(start, read)
            if overlap > 0:
                total += overlap * 1e6
                by_thread[thread] += overlap * 1e6
            i += 1
        rows.append(((write - read) * 1e6, total, by_thread))
    rows.sort(key=lambda r: r[0])
    n = len(rows)
    print("steps | messages | mean step µs | mean wait for a core inside it µs | by thread µs")
    for label, lo, hi in (
        ("fastest half", 0, n // 2),
        ("90th-99th percentile", int(n * 0.9), int(n * 0.99)),
        ("slowest 1 %", int(n * 0.99), n),
    ):
        part = rows[lo:hi]
        if not part:
            continue
        by_thread = defaultdict(float)
        for _, _, threads in part:
            for thread, us in threads.items():
                by_thread[thread] += us / len(part)
        top = sorted(by_thread.items(), key=lambda kv: -kv[1])[:4]
        print(
            f"{label} | {len(part)} | {sum(r[0] for r in part) / len(part):.0f} |"
            f" {sum(r[1] for r in part) / len(part):.0f} | "
            + ", ".join(f"{thread} {us:.0f}" for thread, us in top)
        )


if __name__ == "__main__":
    main()
