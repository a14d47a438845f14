#!/usr/bin/env python3
"""Where the time of a latency series goes, hop by hop, from a loopback packet capture.

    tcpdump -i lo -w CAP.pcap -s 0 -B 65536 'port NATS_PORT or port KAFKA_PORT' &
    polybridge-bench --only ROUTE ... (with POLYBRIDGE_<BROKER>_URL on those ports)
    scripts/latency-hops.py CAP.pcap NATS_PORT=nats KAFKA_PORT=kafka [--first N] [--steps]

(`scripts/capture-hops.sh` does all three steps, with the ports of the brokers the benchmark
started.)

The benchmark's latency payloads start with an 8-byte little-endian send stamp followed by
'x' bytes (warm-up messages are stamped 0). Every TCP segment to or from a named broker
port is searched for such payloads; each stamp keeps the first time it was seen on each
connection, written to a broker ("->nats:CLIENT_PORT") or read from one
("nats->:CLIENT_PORT"). Messages that took the same connections form a path (a bridged
route: publisher -> source broker -> bridge -> sink broker -> subscriber; a raw series: two
connections), printed with the distribution of each hop's time and of the total, and the
total's p99 over the first N messages of the path against the rest (N = 200 unless
--first says otherwise): a series whose first messages queue behind something shows there.

Paths are printed in the order their first message was seen (the benchmark's order of
series), each with its payload size (the longest stamped payload seen in one segment).
Paths with fewer than 50 messages are left out.

A bridged path has four connections: publisher -> A, A -> bridge, bridge -> B, B ->
subscriber. Its third hop, from the bridge's read of A to its write to B, is **the
bridge's step**: everything the bridge process adds between the two brokers (its source
client, the route, its sink client with any batching the sink client does, and waiting for
a core). --steps prints one line per bridged path with that step alone.

Works on pcap files of Ethernet, Linux cooked or raw-IP link types; IPv4 and IPv6.
Standard library only.
"""
import re
import struct
import sys
from collections import defaultdict

# An 8-byte stamp followed by at least 32 'x' bytes.
STAMPED = re.compile(rb"(?s)(.{8})(x{32,})")
ALL_X = b"x" * 8


def segments(path):
    """Yields (time in s, source port, destination port, TCP payload) of each TCP segment."""
    with open(path, "rb") as f:
        header = f.read(24)
        magic = struct.unpack("<I", header[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"{path}: not a little-endian pcap file (pcapng? use tcpdump -w)")
        nanos = magic == 0xA1B23C4D
        linktype = struct.unpack("<I", header[20:24])[0]
        link_header = {1: 14, 113: 16, 101: 0, 228: 0}.get(linktype)
        if link_header is None:
            sys.exit(f"{path}: link type {linktype} not supported")
        while True:
            record = f.read(16)
            if len(record) < 16:
                return
            sec, frac, captured, _ = struct.unpack("<IIII", record)
            data = f.read(captured)
            t = sec + frac / (1e9 if nanos else 1e6)
            ip = data[link_header:]
            if not ip:
                continue
            if ip[0] >> 4 == 4:
                protocol, l4 = ip[9], ip[(ip[0] & 15) * 4 :]
            elif ip[0] >> 4 == 6:
                protocol, l4 = ip[6], ip[40:]
            else:
                continue
            if protocol != 6 or len(l4) < 20:
                continue
            source, destination = struct.unpack(">HH", l4[:4])
            payload = l4[(l4[12] >> 4) * 4 :]
            if payload:
                yield t, source, destination, payload


def quantile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def quantiles(values_us, qs=(0.5, 0.99, 0.999)):
    """The values at quantiles `qs`, then the largest."""
    v = sorted(values_us)
    return [quantile(v, q) for q in qs] + [v[-1]]


def distribution(values_us):
    return "p50 {:.0f}  p90 {:.0f}  p99 {:.0f}  p99.9 {:.0f}  max {:.0f} µs".format(
        *quantiles(values_us, (0.5, 0.9, 0.99, 0.999))
    )


def broker_ports(args):
    """{port: name} from PORT=NAME arguments (a bare PORT names itself)."""
    brokers = {}
    for a in args:
        port, _, name = a.partition("=")
        brokers[int(port)] = name or port
    return brokers


def stamped_connections(capture, brokers):
    """Where each stamped message was seen: ({stamp: {connection: first time}}, {stamp: the
    longest stamped payload seen in one segment, bytes}, the capture's first time).
    `brokers` maps a port to a name; a connection is "->name:client port" towards a broker,
    "name->:client port" from it."""
    seen = defaultdict(dict)
    size = {}
    start = None
    for t, source, destination, payload in segments(capture):
        start = t if start is None else start
        if destination in brokers:
            connection = f"->{brokers[destination]}:{source}"
        elif source in brokers:
            connection = f"{brokers[source]}->:{destination}"
        else:
            continue
        for m in STAMPED.finditer(payload):
            raw = m.group(1)
            if raw == ALL_X:
                continue
            stamp = struct.unpack("<Q", raw)[0]
            if stamp and connection not in seen[stamp]:
                seen[stamp][connection] = t
                size[stamp] = max(size.get(stamp, 0), 8 + len(m.group(2)))
    return seen, size, start


def main():
    args = sys.argv[1:]
    first_n = 200
    if "--first" in args:
        i = args.index("--first")
        first_n = int(args[i + 1])
        del args[i : i + 2]
    steps_only = "--steps" in args
    if steps_only:
        args.remove("--steps")
    if len(args) < 2:
        sys.exit(__doc__)
    capture, brokers = args[0], broker_ports(args[1:])
    seen, size, start = stamped_connections(capture, brokers)
    paths = defaultdict(list)  # connections in time order -> [(stamp, [times])]
    for stamp, times in seen.items():
        ordered = sorted(times.items(), key=lambda kv: kv[1])
        paths[tuple(c for c, _ in ordered)].append((stamp, [t for _, t in ordered]))
    listed = [(path, rows) for path, rows in paths.items() if len(rows) >= 50]
    listed.sort(key=lambda kv: min(r[0] for _, r in kv[1]))
    if steps_only:
        print("bridged path | payload B | messages | the bridge's step p50 / p99 / p99.9 / max µs"
              " | publisher -> subscriber on the wire p50 / p99 / p99.9 / max µs")
    for path, rows in listed:
        rows.sort()  # by send stamp: the order the series published them
        payload = max(size[stamp] for stamp, _ in rows)
        if steps_only:
            if len(path) != 4:
                continue
            source, sink = path[1].split("->")[0], path[2][2:].split(":")[0]
            step = quantiles([(r[2] - r[1]) * 1e6 for _, r in rows])
            total = quantiles([(r[3] - r[0]) * 1e6 for _, r in rows])
            fmt = lambda q: " / ".join(f"{x:.0f}" for x in q)
            print(f"{source} -> {sink} | {payload} | {len(rows)} | {fmt(step)} | {fmt(total)}")
            continue
        at = min(r[0] for _, r in rows) - start
        print(f"{len(rows)} messages of {payload} B, from {at:.1f} s: {' | '.join(path)}")
        for i in range(1, len(path)):
            hop = [(r[i] - r[i - 1]) * 1e6 for _, r in rows]
            print(f"  {path[i - 1]} -> {path[i]}: {distribution(hop)}")
        total = [(r[-1] - r[0]) * 1e6 for _, r in rows]
        print(f"  total: {distribution(total)}")
        if len(rows) > 2 * first_n:
            head, rest = sorted(total[:first_n]), sorted(total[first_n:])
            print(
                f"  total p99: first {first_n} messages {quantile(head, 0.99):.0f} µs,"
                f" the rest {quantile(rest, 0.99):.0f} µs"
            )


if __name__ == "__main__":
    main()
