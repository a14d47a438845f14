#!/usr/bin/env python3
"""Folds `perf script -F ip,sym` call graphs of the bridge process (stdin) into where its
CPU goes: by component, the leaf functions of
each, and the share spent in the allocator and in memory copies. Used by
scripts/profile-route.sh."""
import collections
import sys

from perf_samples import samples

# Component, and substrings of the frames that belong to it. A sample belongs to the first
# component in this list with a frame anywhere in its stack (the route's frames sit above
# the clients' when the route calls into them; tokio is under everything, so it is last).
COMPONENTS = [
    ("route: process (match, map, publish call, settle)", ("Route::process",)),
    ("route: loop (take deliveries, poll slots)", ("Route::run",)),
    ("redis adapter: pump (hand out, XACK)", ("streams::Pump",)),
    ("redis adapter: reader (XREADGROUP, parse)", ("streams::read_loop",)),
    ("kafka adapter: consumer thread (poll, hand over)", ("polybridge_kafka::",)),
    ("nats adapter: JetStream consumer (fetch, hand out, ack)", ("polybridge_nats::",)),
    ("redis client: connection task (RESP parse, socket)", ("redis::",)),
    ("nats client: connection task (socket, PubAck dispatch)", ("async_nats::",)),
    ("kafka client: rdkafka, librdkafka threads", ("rdkafka::", "rd_kafka")),
    ("tokio: scheduler, park, timers", ("tokio::runtime",)),
]
ALLOCATOR = ("malloc", "_int_free", "cfree", "unlink_chunk", "realloc", "__libc_free")
COPY = ("memmove", "memcpy")


def main():
    total = 0
    by_component = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    allocator = copies = 0
    for _, frames in samples(sys.stdin):
        stack = [symbol for symbol, _ in frames]
        if not stack:
            continue
        total += 1
        leaf = stack[0]
        if any(a in leaf for a in ALLOCATOR):
            allocator += 1
        elif any(c in leaf for c in COPY):
            copies += 1
        component = "other (allocator and libc frames without a call chain, kernel)"
        for name, patterns in COMPONENTS:
            if any(p in frame for frame in stack for p in patterns):
                component = name
                break
        by_component[component] += 1
        leaves[component][leaf] += 1
    if total == 0:
        sys.exit("no samples")
    print(f"\n{total} samples of the bridge process")
    print(f"allocator (malloc/free) {100 * allocator / total:.1f} %, memory copies {100 * copies / total:.1f} %")
    for component, n in by_component.most_common():
        print(f"{100 * n / total:5.1f} %  {component}")
        for leaf, m in leaves[component].most_common(5):
            print(f"          {100 * m / total:4.1f} %  {leaf[:100]}")


if __name__ == "__main__":
    main()
