#!/usr/bin/env python3
"""Summarises the latency traces of `polybridge-bench --trace-dir DIR` (one CSV per series:
sent_us, arrival_us, latency_us of every recorded message).

    scripts/latency-trace.py [--over US] [--episode-gap MS] DIR_OR_FILES...

For each series: the messages, p50 / p99 / p99.9 / max latency, the longest time between
two arrivals, and the *episodes* of its tail: messages slower than `--over` µs (default
1000), grouped while their send times are less than `--episode-gap` ms apart (default 50).
An episode is printed with its start (ms after the series' first send), its length, how
many messages it holds and its worst latency. One episode whose messages' latencies fall
by about one send interval per message is a stall (nothing arrived, then the backlog);
many short ones spread over the series are a slower path, not a stall.
"""
import argparse
import csv
import os
import sys


def quantile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [(float(r["sent_us"]), float(r["arrival_us"]), float(r["latency_us"])) for r in rows]


def episodes(rows, over_us, gap_us):
    slow = sorted((s, lat) for s, _, lat in rows if lat > over_us)
    found = []
    for sent, lat in slow:
        if found and sent - found[-1]["last"] < gap_us:
            e = found[-1]
            e["last"] = sent
            e["count"] += 1
            e["worst"] = max(e["worst"], lat)
        else:
            found.append({"first": sent, "last": sent, "count": 1, "worst": lat})
    return found


def summarise(path, over_us, gap_us):
    rows = read(path)
    if not rows:
        print(f"{os.path.basename(path)}: empty")
        return
    lat = sorted(r[2] for r in rows)
    first_sent = min(r[0] for r in rows)
    arrivals = sorted(r[1] for r in rows)
    gap, gap_at = 0.0, 0.0
    for a, b in zip(arrivals, arrivals[1:]):
        if b - a > gap:
            gap, gap_at = b - a, a
    print(
        f"{os.path.basename(path)}: {len(rows)} messages; latency µs p50 {quantile(lat, 0.5):.0f}"
        f" p99 {quantile(lat, 0.99):.0f} p99.9 {quantile(lat, 0.999):.0f} max {lat[-1]:.0f};"
        f" longest time between arrivals {gap / 1000:.1f} ms at {(gap_at - first_sent) / 1000:.0f} ms"
    )
    found = episodes(rows, over_us, gap_us)
    slow = sum(e["count"] for e in found)
    if not found:
        print(f"  no message over {over_us:.0f} µs")
        return
    print(f"  {slow} messages over {over_us:.0f} µs in {len(found)} episode(s):")
    for e in sorted(found, key=lambda e: -e["count"])[:5]:
        print(
            f"    at {(e['first'] - first_sent) / 1000:.0f} ms for {(e['last'] - e['first']) / 1000:.1f} ms:"
            f" {e['count']} messages, worst {e['worst'] / 1000:.2f} ms"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--over", type=float, default=1000.0, help="slow message threshold, µs")
    p.add_argument("--episode-gap", type=float, default=50.0, help="ms between slow messages of one episode")
    a = p.parse_args()
    files = []
    for path in a.paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".csv"))
        else:
            files.append(path)
    if not files:
        sys.exit("no trace files")
    for f in files:
        summarise(f, a.over, a.episode_gap * 1000)


if __name__ == "__main__":
    main()
