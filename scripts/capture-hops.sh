#!/usr/bin/env bash
# The latency the bridge process adds, read on the wire: runs the benchmark under a loopback
# packet capture and follows every stamped latency message through each connection
# (scripts/latency-hops.py), with the ports of the brokers the benchmark started.
#
#   scripts/capture-hops.sh OUT_DIR [polybridge-bench options…]
#
# e.g. scripts/capture-hops.sh /dev/shm/hops --rounds 1 --messages 2000 --min-run-secs 0 \
#        --latency-messages 5000 --latency-bridge process --broker-dir /dev/shm --out /dev/shm/hops
#
# Writes to OUT_DIR: capture.pcap (every TCP segment on lo while the benchmark ran: keep
# the throughput runs small with --messages and --min-run-secs 0), bench.log, hops.txt
# (every path hop by hop) and steps.txt (one line per bridged path: the bridge's step, from
# its read of the source broker to its write to the sink broker). The benchmark's memory
# runs are skipped. Needs tcpdump (Debian: apt-get install tcpdump) and root or
# CAP_NET_RAW; the benchmark binary is target/release/polybridge-bench unless BENCH says
# otherwise. Section "The latency the bridge adds, read three ways" of
# docs/benchmarks/README.md.
#
# With SCHED=1 the benchmark also runs under `perf sched record -a -k mono` (needs perf):
# OUT_DIR also gets sched.data, timehist.txt (`perf sched timehist`), clock-offset.txt (wall
# clock minus CLOCK_MONOTONIC) and waits.txt, per bridge process of the latency series: how
# long its threads waited for a core and who ran meanwhile (scripts/sched-delays.py), and
# how much of its step on the wire was such waiting (scripts/step-waits.py). Section
# "RabbitMQ→STOMP(ActiveMQ): the bridge's step waits behind ActiveMQ's JIT compiler".
set -euo pipefail

if [ $# -lt 1 ]; then
    sed -n '2,18p' "$0" >&2
    exit 2
fi
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
bench=${BENCH:-$here/../target/release/polybridge-bench}
command -v tcpdump >/dev/null || { echo "capture-hops: tcpdump is not installed" >&2; exit 1; }
[ -x "$bench" ] || { echo "capture-hops: no benchmark binary at $bench (cargo build --release -p polybridge-bench)" >&2; exit 1; }
mkdir -p "$out"

tcpdump -i lo -s 0 -B 65536 -w "$out/capture.pcap" tcp 2>"$out/tcpdump.log" &
tcpdump_pid=$!
trap 'kill "$tcpdump_pid" 2>/dev/null || true' EXIT
# tcpdump says "listening on lo" once it captures; wait for that, at most 10 s.
for _ in $(seq 100); do
    grep -q "listening on" "$out/tcpdump.log" && break
    kill -0 "$tcpdump_pid" 2>/dev/null || { cat "$out/tcpdump.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "listening on" "$out/tcpdump.log" || { echo "capture-hops: tcpdump did not start" >&2; exit 1; }

# The memory runs have no latency series; skip them unless the options already do.
skip=(--skip-memory)
for a in "$@"; do
    case $a in --skip-memory | --memory-only) skip=() ;; esac
done
run=("$bench")
if [ "${SCHED:-0}" = 1 ]; then
    command -v perf >/dev/null || { echo "capture-hops: SCHED=1 needs perf" >&2; exit 1; }
    run=(perf sched record -a -k mono -o "$out/sched.data" -- "$bench")
    # Joins the capture's wall-clock times to perf's CLOCK_MONOTONIC ones (scripts/step-waits.py).
    python3 -c 'import time; print(time.time() - time.monotonic())' >"$out/clock-offset.txt"
fi
status=0
"${run[@]}" "$@" "${skip[@]}" >"$out/bench.log" 2>&1 || status=$?
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" || true
trap - EXIT
if [ "$status" -ne 0 ]; then
    tail -20 "$out/bench.log" >&2
    echo "capture-hops: the benchmark failed (exit $status); the capture is kept" >&2
    exit "$status"
fi

# "<broker> at <scheme>://[user:***@]host:port…", one line per broker the benchmark started.
ports=$(sed -nE 's|^([a-z0-9_-]+) at [a-z+]+://([^@/]*@)?[^:/]+:([0-9]+).*|\3=\1|p' "$out/bench.log" | sort -u)
[ -n "$ports" ] || { echo "capture-hops: no broker ports in $out/bench.log" >&2; exit 1; }
# shellcheck disable=SC2086 # one PORT=NAME argument per line
python3 "$here/latency-hops.py" "$out/capture.pcap" $ports >"$out/hops.txt"
# shellcheck disable=SC2086
python3 "$here/latency-hops.py" --steps "$out/capture.pcap" $ports >"$out/steps.txt"
cat "$out/steps.txt"

if [ "${SCHED:-0}" = 1 ]; then
    perf sched timehist -i "$out/sched.data" >"$out/timehist.txt" 2>/dev/null
    # The bridge binary's main thread is named "polybridge" (the benchmark's "polybridge-benc").
    : >"$out/waits.txt"
    for pid in $(sed -nE 's/.* polybridge\[([0-9]+)\] .*/\1/p' "$out/timehist.txt" | sort -un); do
        {
            echo "== bridge process $pid"
            python3 "$here/sched-delays.py" "$out/timehist.txt" "$pid"
            echo
            # shellcheck disable=SC2086
            python3 "$here/step-waits.py" "$out/capture.pcap" "$out/timehist.txt" "$pid" \
                "$(cat "$out/clock-offset.txt")" $ports
            echo
        } >>"$out/waits.txt"
    done
    cat "$out/waits.txt"
fi
