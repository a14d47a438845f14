#!/usr/bin/env bash
# Profiles the bridge process on one of the benchmark's routes and prints where its CPU
# goes, by component.
#
#   [ROUTE=redis-nats|kafka-redis|nats-kafka] scripts/profile-route.sh [BRIDGE_BINARY] [MESSAGES] [PAYLOAD_BYTES]
#
# Starts the two brokers as local processes on free loopback ports in a temporary
# directory (redis-server and nats-server -js for ROUTE=redis-nats, the default; Tansu and
# redis-server for ROUTE=kafka-redis, nats-server -js and Tansu for ROUTE=nats-kafka), fills
# the source (a Redis stream; a Kafka topic by kafka-python, or a JetStream stream by
# nats-py, both from /opt/polybridge-py, see scripts/install-brokers.sh) with MESSAGES
# messages (default 400000) of PAYLOAD_BYTES (default 256), runs `BRIDGE_BINARY run`
# (default target-fp/release/polybridge) with one route from the source to the sink, and
# while it works measures for 4 s: the rate (the route's acknowledged messages, from the
# bridge's /metrics), the CPU of the bridge process, of each broker and of the whole
# machine per message, the cores stolen by the hypervisor, the CPU of each of the bridge's
# threads (in cores) and their context switches per message, the route's mean batch size
# (`received / batches`), the route's in-flight gauge every 200 ms when PERF=0 (at the
# window: the route waits for its sink; near 0: for its source; SHOW_IN_FLIGHT=1 prints
# every sample), and a `perf record -g` call-graph profile of the bridge (cpu-clock),
# folded by scripts/profile-fold.py.
# Fill well over 4 s of the route's work (e.g. 1500000 at 256 B on kafka-redis): a backlog
# that runs out inside the measurement understates the rate.
#
# Call graphs need frame pointers; build the binary with them in a separate target dir:
#   CARGO_TARGET_DIR=target-fp RUSTFLAGS="-C force-frame-pointers=yes" \
#     CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
#     cargo build --release --locked -p polybridge-bridge --bin polybridge
# (librdkafka, built by its own C build, has none: its frames are counted by their leaf.)
# MAX_IN_FLIGHT and MAX_BATCH set the route's (defaults 256 and 64, the bridge's);
# SINK_URL=memory://x replaces the sink, to measure the source and the route alone.
# ALLOCS=1 counts heap allocation calls (malloc, calloc, realloc, posix_memalign,
# aligned_alloc; uprobes on glibc, added if missing) per routed message, per thread of the
# bridge, instead of the profile (needs root for the probes; each probed call traps, so the
# rate and CPU figures of such a run are not the route's); ALLOCS=sites also records 1 s of
# those calls with their call chains and prints, per thread, the sites that allocate (both
# printed by scripts/alloc-calls.py).
# OFFCPU=1 records, instead of the profile, why the bridge's threads and the brokers' stop
# running: 2 s of `sched:sched_switch` with call stacks, classified per process and thread
# name by scripts/offcpu-reasons.py (e.g. "glibc allocator lock", "std channel receive",
# "preempted"); each switch copies a stack, so the rate of such a run is not the route's.
# PERF=0 skips perf (rate and CPU only, e.g. to compare two binaries); PERF_OUT=FILE keeps
# the perf.data (e.g. for `perf script -i FILE` or `perf report -i FILE`).
# PERF_CALL_GRAPH=dwarf (with PERF_FREQ=500: the samples are large) unwinds through code
# without frame pointers (glibc's malloc, librdkafka), to find who calls them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "${1:-$here/../target-fp/release/polybridge}")
messages=${2:-400000}
size=${3:-256}
route=${ROUTE:-redis-nats}
work=$(mktemp -d)
pids=()
added_probes=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for e in "${added_probes[@]}"; do perf probe -q -d "$e" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits up to 10 s for a listener on loopback port $1.
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; }
start_redis() {
  redis_port=$(free_port)
  mkdir -p "$work/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --save '' --appendonly yes \
    --protected-mode no --daemonize no >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do rcli PING >/dev/null 2>&1 && break; sleep 0.05; done
}
rcli() { redis-cli -p "$redis_port" "$@"; }
start_nats() {
  nats_port=$(free_port)
  mkdir -p "$work/js"
  nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/js" >"$work/nats.log" 2>&1 &
  pids+=($!)
  wait_port "$nats_port"
}
start_tansu() {
  kafka_port=$(free_port)
  "${POLYBRIDGE_TANSU_BIN:-tansu}" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" --storage-engine memory://tansu/ \
    >"$work/tansu.log" 2>&1 &
  pids+=($!)
  wait_port "$kafka_port"
}
# The bridge's admin server, where the route's acknowledged messages are counted.
admin_port=$(free_port)
route_metric() {
  { curl -s "http://127.0.0.1:$admin_port/metrics" || true; } |
    awk -v name="$1" '$1 ~ "^" name "[{]" { print $NF; exit }'
}
done_count() { route_metric polybridge_route_acked_total; }

case "$route" in
redis-nats)
  start_redis
  start_nats
  # XADD bs * payload <size bytes>, pipelined.
  python3 - "$messages" "$size" <<'PY' | rcli --pipe >/dev/null
import sys
n, size = int(sys.argv[1]), int(sys.argv[2])
def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
one = resp(b"XADD", b"bs", b"*", b"payload", b"x" * size)
w = sys.stdout.buffer
for _ in range(n):
    w.write(one)
PY
  source_url="redis://127.0.0.1:$redis_port"
  sink_url="nats://127.0.0.1:$nats_port?mode=jetstream&stream=PROFILE&create_stream=true&stream_subjects=profile.>"
  destination="profile.out"
  ;;
kafka-redis)
  start_redis
  start_tansu
  /opt/polybridge-py/bin/python - "$messages" "$size" "$kafka_port" <<'PY'
import sys
from kafka import KafkaProducer
n, size, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", acks=1, linger_ms=5,
                         batch_size=1 << 20, max_request_size=8 << 20)
body = b"x" * size
for _ in range(n):
    producer.send("bs", body)
producer.flush()
PY
  source_url="kafka://127.0.0.1:$kafka_port"
  sink_url="redis://127.0.0.1:$redis_port"
  destination="bd"
  ;;
nats-kafka)
  start_nats
  start_tansu
  # A file-stored stream on subject bs, filled by core publishes (flushed every 1000) and
  # then checked complete.
  /opt/polybridge-py/bin/python - "$messages" "$size" "$nats_port" <<'PY'
import asyncio, sys
import nats
n, size, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def main():
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    await js.add_stream(name="BS", subjects=["bs"])
    body = b"x" * size
    for i in range(n):
        await nc.publish("bs", body)
        if i % 1000 == 999:
            await nc.flush()
    await nc.flush()
    for _ in range(600):
        if (await js.stream_info("BS")).state.messages >= n:
            break
        await asyncio.sleep(0.1)
    else:
        sys.exit("the stream did not get every message")
    await nc.close()
asyncio.run(main())
PY
  source_url="nats://127.0.0.1:$nats_port?mode=jetstream&stream=BS"
  sink_url="kafka://127.0.0.1:$kafka_port"
  destination="bd"
  ;;
*)
  echo "ROUTE must be redis-nats, kafka-redis or nats-kafka" >&2
  exit 2
  ;;
esac
# SINK_URL=memory://x (for one) replaces the sink: the source's and the route's own limit.
sink_url=${SINK_URL:-$sink_url}
cat >"$work/bridge.yaml" <<YAML
brokers:
  src: { url: "$source_url" }
  dst: { url: "$sink_url" }
routes:
  - name: profile
    from: { broker: src, topic: "bs", group: "profile", start: earliest }
    max_in_flight: ${MAX_IN_FLIGHT:-256}
    max_batch: ${MAX_BATCH:-64}
    to:
      - { broker: dst, destination: "$destination" }
admin: { listen: "127.0.0.1:$admin_port" }
YAML
"$bin" run --config "$work/bridge.yaml" >"$work/bridge.log" 2>&1 &
bridge=$!
pids+=("$bridge")
# Measure from the first 1000 messages on (connecting and subscribing are not work).
for _ in $(seq 1 500); do
  r=$(done_count); [ "${r:-0}" -gt 1000 ] 2>/dev/null && break; sleep 0.02
done
machine_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# Ticks the hypervisor gave to other guests (steal): rates measured with it are the host's.
machine_steal() { awk '/^cpu / { print $9 }' /proc/stat; }
process_cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Each broker's CPU ticks, "name=ticks" per broker process.
brokers_cpu() {
  for p in "${pids[@]}"; do
    [ "$p" = "$bridge" ] && continue
    echo "$(cat "/proc/$p/comm")=$(process_cpu "$p")"
  done | paste -sd, -
}
# Each of the bridge's threads' CPU ticks, "name:tid ticks" per line.
threads_cpu() {
  for t in /proc/"$bridge"/task/*; do
    echo "$(cat "$t/comm" | tr ' ' _):${t##*/} $(process_cpu "${t#/proc/}")"
  done
}
# Each of the bridge's threads' context switches, "name:tid voluntary involuntary" per line.
threads_switches() {
  for t in /proc/"$bridge"/task/*; do
    echo "$(cat "$t/comm" | tr ' ' _):${t##*/} $(awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 } END { print v, n }' "$t/status")"
  done
}
g0=$(route_metric polybridge_route_received_total); n0=$(route_metric polybridge_route_batches_total)
r0=$(done_count); t0=$(date +%s.%N); p0=$(process_cpu "$bridge"); m0=$(machine_busy); s0=$(machine_steal); b0=$(brokers_cpu)
threads_cpu >"$work/threads0"
threads_switches >"$work/switches0"
if [ "${ALLOCS:-0}" != 0 ]; then
  # Heap allocation calls per thread: uprobes on glibc's allocation functions (the Rust
  # global allocator and librdkafka both call them), counted by `perf stat`.
  libc=$(ldd "$bin" | awk '$1 ~ /^libc[.]so/ { print $3 }')
  events=
  for f in malloc calloc realloc posix_memalign aligned_alloc; do
    # Defined here unless already defined (then left as found); deleted on exit.
    if perf probe -q -x "$libc" "$f" 2>/dev/null; then added_probes+=("probe_libc:$f"); fi
    events="$events${events:+,}probe_libc:$f"
  done
  # The messages are counted inside the counted span (attaching the probes takes seconds).
  export -f route_metric done_count
  export admin_port
  perf stat --per-thread -x, -e "$events" -p "$bridge" -o "$work/allocs" -- \
    bash -c "done_count >'$work/r0'; sleep 4; done_count >'$work/r1'" >/dev/null 2>&1
  if [ "$ALLOCS" = sites ]; then
    # The same calls with their call chains (DWARF: librdkafka and glibc have no frame
    # pointers), for 1 s: the samples are large.
    perf record -e "$events" --call-graph dwarf,16384 -p "$bridge" -o "$work/allocs.data" -- \
      sleep 1 >/dev/null 2>&1
  fi
elif [ "${OFFCPU:-0}" != 0 ]; then
  # Why the bridge's threads (and the brokers') stop running: every switch away from one,
  # with its call stack (DWARF: glibc and librdkafka have no frame pointers), for 2 s; the
  # messages are counted inside the recorded span.
  export -f route_metric done_count
  export admin_port
  perf record -e sched:sched_switch --call-graph dwarf,8192 -p "$(IFS=,; echo "${pids[*]}")" -o "$work/offcpu.data" -- \
    bash -c "done_count >'$work/r0'; sleep 2; done_count >'$work/r1'" >/dev/null 2>&1
  # Each thread's process, "TID PROCESS" per line: threads of one name in two processes
  # (tokio's workers in the bridge and in Tansu) are told apart.
  for p in "${pids[@]}"; do
    for t in /proc/"$p"/task/*; do echo "${t##*/} $(cat "/proc/$p/comm")"; done
  done >"$work/offcpu-threads" 2>/dev/null
elif [ "${PERF:-1}" = 1 ]; then
  perf record -F "${PERF_FREQ:-4000}" -e cpu-clock --call-graph "${PERF_CALL_GRAPH:-fp}" -p "$bridge" -o "$work/perf.data" -- sleep 4 >/dev/null 2>&1
else
  # The route's in-flight gauge every 200 ms: at the window (`max_in_flight`, 256) the
  # route waits for its sink; well below it, for its source.
  for _ in $(seq 1 20); do route_metric polybridge_route_in_flight; sleep 0.2; done >"$work/in_flight"
fi
r1=$(done_count); t1=$(date +%s.%N); p1=$(process_cpu "$bridge"); m1=$(machine_busy); s1=$(machine_steal); b1=$(brokers_cpu)
threads_cpu >"$work/threads1"
threads_switches >"$work/switches1"
g1=$(route_metric polybridge_route_received_total); n1=$(route_metric polybridge_route_batches_total)
tick=$(getconf CLK_TCK)
python3 - "$r0" "$r1" "$t0" "$t1" "$p0" "$p1" "$m0" "$m1" "$tick" "$s0" "$s1" "$b0" "$b1" "$messages" <<'PY'
import sys
r0, r1, t0, t1, p0, p1, m0, m1, tick, s0, s1 = map(float, sys.argv[1:12])
b0, b1 = (dict(kv.split("=") for kv in arg.split(",")) for arg in sys.argv[12:14])
messages = float(sys.argv[14])
n = r1 - r0
if n <= 0:
    sys.exit("the bridge moved nothing while measured: see its log")
print(f"rate {n / (t1 - t0):.0f} msg/s over {t1 - t0:.1f} s ({n:.0f} messages)")
if r1 >= messages:
    # The span is fixed (4 s of sampling or profiling): a route that finished inside it
    # idled for the rest, so the rate above is only a lower bound.
    print(f"warning: all {messages:.0f} messages were done before the measured span ended, "
          "so the rate is a lower bound; run with more MESSAGES")
print(f"bridge process CPU {(p1 - p0) / tick * 1e6 / n:.2f} us/msg; whole machine {(m1 - m0) / tick * 1e6 / n:.2f} us/msg; stolen {(s1 - s0) / tick / (t1 - t0):.2f} cores")
print("brokers' CPU: " + "; ".join(f"{name} {(float(b1[name]) - float(b0[name])) / tick * 1e6 / n:.2f} us/msg" for name in b0))
PY
awk -v g="$((g1 - g0))" -v n="$((${n1:-0} - ${n0:-0}))" \
  'BEGIN { if (n > 0) printf "route batches: %d deliveries in %d groups, %.1f per group\n", g, n, g / n }'
if [ -s "$work/in_flight" ]; then
  [ -n "${SHOW_IN_FLIGHT:-}" ] && paste -sd" " "$work/in_flight"
  sort -n "$work/in_flight" | awk '{ v[NR] = $1; sum += $1 } END { printf "route in flight (every 200 ms): mean %.0f, min %d, median %d, max %d\n", sum / NR, v[1], v[int((NR + 1) / 2)], v[NR] }'
fi
# The bridge's busiest threads, in cores: one near 1.0 is the route's serial limit.
join <(sort "$work/threads0") <(sort "$work/threads1") | awk -v tick="$tick" -v t0="$t0" -v t1="$t1" \
  '{ printf "%.2f cores %s\n", ($3 - $2) / tick / (t1 - t0), $1 }' | sort -rn | head -8 | sed 's/^/  thread: /'
# Context switches per routed message, by thread: each voluntary one is a sleep and a
# wake-up (a hand-off that may wait for a core), each involuntary one a preemption.
join <(sort "$work/switches0") <(sort "$work/switches1") | awk -v n="$((r1 - r0))" \
  '{ v = $4 - $2; i = $5 - $3; if (v + i > 0) printf "%.4f %s: %.4f voluntary + %.4f involuntary switches/msg\n", (v + i) / n, $1, v / n, i / n }' |
  sort -rn | head -8 | cut -d" " -f2- | sed 's/^/  switches: /'
if [ "${ALLOCS:-0}" != 0 ]; then
  sites=()
  if [ "$ALLOCS" = sites ]; then
    perf script -i "$work/allocs.data" -F comm,event,ip,sym >"$work/allocs.txt" 2>/dev/null
    sites=("$work/allocs.txt")
  fi
  python3 "$here/alloc-calls.py" "$work/allocs" "$(($(cat "$work/r1") - $(cat "$work/r0")))" "${sites[@]}"
elif [ "${OFFCPU:-0}" != 0 ]; then
  perf script -i "$work/offcpu.data" 2>/dev/null |
    python3 "$here/offcpu-reasons.py" "$(($(cat "$work/r1") - $(cat "$work/r0")))" "$work/offcpu-threads"
elif [ "${PERF:-1}" = 1 ]; then
  perf script -i "$work/perf.data" -F ip,sym 2>/dev/null | python3 "$here/profile-fold.py"
  if [ -n "${PERF_OUT:-}" ]; then cp "$work/perf.data" "$PERF_OUT"; fi
fi
