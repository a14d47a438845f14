#!/usr/bin/env python3
"""What kept a process's threads from a core: reads `perf sched timehist` output and, for
the threads of process PID, prints how long each waited for a core after it was woken (the
"sch delay" column), then which tasks ran on the cores while those threads waited longer
than --over ms.

    perf sched record -a -o sched.data -- <command that runs the bridge>
    perf sched timehist -i sched.data > timehist.txt
    scripts/sched-delays.py timehist.txt PID [--over MS] [--name PID=NAME ...]

PID is the process to follow (the bridge's, e.g. from `pgrep -x polybridge` while it runs).
--over (default 1) is the wait in ms that counts as long. --name labels other processes in
the second table (e.g. the brokers' PIDs). Section "RabbitMQ→STOMP(ActiveMQ): the bridge's
step waits behind ActiveMQ's JIT compiler" of docs/benchmarks/README.md.
"""
import argparse
import bisect
import re
from collections import defaultdict

# "  3506.934105 [0001]  tokio-rt-worker[20729/20727]   0.012   0.008   0.040"
ROW = re.compile(
    r"\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
)


def quantile(sorted_values, q):
    i = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("timehist")
    parser.add_argument("pid")
    parser.add_argument("--over", type=float, default=1.0, help="long wait, ms (default 1)")
    parser.add_argument("--name", action="append", default=[], help="PID=NAME, repeatable")
    args = parser.parse_args()
    names = dict(n.split("=", 1) for n in args.name)
    names[args.pid] = "followed"

    runs = defaultdict(list)  # cpu -> [(start s, end s, pid, comm)], from each switch-out
    waits = defaultdict(list)  # (comm, tid) of the followed process -> [sch delay ms]
    long_waits = []  # (start s, end s) of each long wait
    for line in open(args.timehist, errors="replace"):
        m = ROW.match(line)
        if not m:
            continue
        t, cpu, comm, tid, pid, _wait, sch, run = m.groups()
        t, sch_ms, run_s = float(t), float(sch), float(run) / 1e3
        pid = pid or tid
        runs[int(cpu)].append((t - run_s, t, pid, comm.strip()))
        if pid == args.pid:
            waits[(comm.strip(), tid)].append(sch_ms)
            if sch_ms > args.over:
                long_waits.append((t - run_s - sch_ms / 1e3, t - run_s))
    if not waits:
        raise SystemExit(f"no thread of process {args.pid} in {args.timehist}")

    print(f"threads of process {args.pid}: wait for a core after each wake-up, ms")
    print("thread | runs | p50 | p99 | p99.9 | max | waits over", args.over, "ms")
    for (comm, tid), w in sorted(waits.items(), key=lambda kv: -len(kv[1])):
        w.sort()
        over = sum(1 for x in w if x > args.over)
        print(
            f"{comm}[{tid}] | {len(w)} | {quantile(w, 0.5):.3f} | {quantile(w, 0.99):.3f} |"
            f" {quantile(w, 0.999):.3f} | {w[-1]:.3f} | {over}"
        )

    total = sum(b - a for a, b in long_waits)
    print(
        f"\n{len(long_waits)} waits over {args.over} ms, {total * 1e3:.1f} ms in all; what ran on"
        " the cores meanwhile (both cores' time, so up to twice the waits' sum):"
    )
    held = defaultdict(float)
    for cpu, rows in runs.items():
        rows.sort()
        starts = [r[0] for r in rows]
        for a, b in long_waits:
            i = max(0, bisect.bisect_left(starts, a) - 1)
            while i < len(rows) and rows[i][0] < b:
                start, end, pid, comm = rows[i]
                overlap = min(end, b) - max(start, a)
                if overlap > 0:
                    who = "idle" if pid == "0" else f"{names.get(pid, pid)} {comm}"
                    held[who] += overlap
                i += 1
    all_held = sum(held.values()) or 1
    print("process thread | ms | share")
    for who, s in sorted(held.items(), key=lambda kv: -kv[1])[:15]:
        print(f"{who} | {s * 1e3:.1f} | {s / all_held * 100:.1f} %")


if __name__ == "__main__":
    main()
