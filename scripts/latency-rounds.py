#!/usr/bin/env python3
"""Round by round, from a benchmark's --trace-dir: the p99 of the bridged series, of its
two-hop baseline (the source hop and the sink hop of the same round, summed: each sample of
the one with each of the other), and their difference (the round's added p99), then how far
the baseline alone moves between rounds (two-hop p99 of each round minus that of each later
round): the rounds' own noise, the smallest added p99 they can tell from zero.

    scripts/latency-rounds.py TRACE_DIR [QUANTILE, default 0.99]

Latencies are put in buckets 1 % wide, so figures can differ from the benchmark's HDR
histograms by about 1 %. The benchmark itself writes the same per-round figures to
results.json since 2026-12-05 (`spread.added_to_two_hops_p99_us`, `spread.two_hops_p99_us`).
Standard library only.
"""
import csv
import math
import os
import re
import sys
from collections import Counter, defaultdict

BUCKET = 1.01
TRACE = re.compile(r"(.*)-(\d+)B-r(\d+)-(bridged|source-hop|sink-hop)\.csv$")


def bucket(us):
    return int(math.log(max(us, 1.0)) / math.log(BUCKET))


def value(b):
    return BUCKET ** (b + 0.5)


def histogram(path):
    with open(path) as f:
        return Counter(bucket(float(row["latency_us"])) for row in csv.DictReader(f))


def quantile(h, q):
    wanted, seen = q * sum(h.values()), 0
    for b in sorted(h):
        seen += h[b]
        if seen >= wanted:
            return value(b)
    return float("nan")


def two_hops(first, second):
    total = Counter()
    for a, count_a in first.items():
        for b, count_b in second.items():
            total[bucket(value(a) + value(b))] += count_a * count_b
    return total


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    directory, q = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.99
    rows = defaultdict(dict)
    for name in os.listdir(directory):
        m = TRACE.match(name)
        if m:
            rows[(m[1], int(m[2]))][(int(m[3]), m[4])] = os.path.join(directory, name)
    print(f"q = {q}; µs | row | bridged per round | two hops per round | added per round"
          " | two hops, round i minus round j (i < j)")
    for (route, size), files in sorted(rows.items()):
        rounds = sorted({r for r, which in files if which == "bridged"})
        bridged, baseline = [], []
        for r in rounds:
            bridged.append(quantile(histogram(files[(r, "bridged")]), q))
            hops = two_hops(histogram(files[(r, "source-hop")]), histogram(files[(r, "sink-hop")]))
            baseline.append(quantile(hops, q))
        added = [b - t for b, t in zip(bridged, baseline)]
        moves = [baseline[i] - baseline[j] for i in range(len(rounds)) for j in range(i + 1, len(rounds))]
        show = lambda v: ", ".join(f"{x:.0f}" for x in v)
        print(f"{route} {size} B | {show(bridged)} | {show(baseline)} | {show(added)} | {show(moves)}")


if __name__ == "__main__":
    main()
