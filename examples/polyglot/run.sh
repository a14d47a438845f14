#!/usr/bin/env bash
# The polyglot seed example, end to end: given running brokers, start the bridge with
# bridge.yaml, start the three seed subscribers (pika, paho-mqtt, stomp.py), run the three
# seed publishers, and check that every subscriber received every seed message.
# Exit status 0 when they all did; 1 otherwise (the logs are printed).
#
# Environment (all optional):
#   AMQP_URL        amqp://guest:guest@127.0.0.1:5672/%2f   RabbitMQ
#   MQTT_URL        mqtt://127.0.0.1:1883                  Mosquitto
#   STOMP_URL       stomp://user:password@127.0.0.1:61613   ActiveMQ (or RabbitMQ's STOMP plugin)
#   POLYGLOT_ADMIN  127.0.0.1:9464                         the bridge's admin server
#   POLYBRIDGE      polybridge                             the bridge binary
#   PYTHON          python3                                a Python with pika, paho-mqtt, stomp.py
#   POLYGLOT_TIMEOUT 60                                    seconds allowed for each step
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POLYBRIDGE=${POLYBRIDGE:-polybridge}
PYTHON=${PYTHON:-python3}
TIMEOUT=${POLYGLOT_TIMEOUT:-60}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export MQTT_URL=${MQTT_URL:-mqtt://127.0.0.1:1883}
export STOMP_URL=${STOMP_URL:-stomp://user:password@127.0.0.1:61613}
export POLYGLOT_ADMIN=${POLYGLOT_ADMIN:-127.0.0.1:9464}
export PYTHONDONTWRITEBYTECODE=1  # keep __pycache__ out of the example directory

work=$(mktemp -d "${TMPDIR:-/tmp}/polyglot.XXXXXX")
bridge_pid=""
receiver_pids=()
receivers=(pika paho stomp)

log() { printf 'polyglot: %s\n' "$*" >&2; }

show_logs() {
    for f in "$work"/*.log; do
        [ -e "$f" ] || continue
        printf '\n----- %s -----\n' "$(basename "$f")" >&2
        tail -n 60 "$f" >&2
    done
}

cleanup() {
    local status=$?
    for pid in "${receiver_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "$bridge_pid" ] && kill -0 "$bridge_pid" 2>/dev/null; then
        kill -TERM "$bridge_pid" 2>/dev/null || true
        wait "$bridge_pid" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        show_logs
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

# Waits until `$2` (a command) succeeds, giving up after TIMEOUT seconds: $1 says what for.
# $3, if given, is a pid that must stay alive meanwhile.
wait_for() {
    local what=$1 check=$2 pid=${3:-}
    local end=$((SECONDS + TIMEOUT))
    until eval "$check"; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            log "gave up waiting for $what: process $pid exited"
            return 1
        fi
        if [ "$SECONDS" -ge "$end" ]; then
            log "gave up waiting for $what after ${TIMEOUT}s"
            return 1
        fi
        sleep 0.2
    done
}

admin_get() {
    "$PYTHON" - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen("http://" + __import__("os").environ["POLYGLOT_ADMIN"] + sys.argv[1], timeout=2) as r:
        sys.stdout.write(r.read().decode())
except Exception:
    sys.exit(1)
PY
}

# 1. The rule file is valid.
"$POLYBRIDGE" validate "$here/bridge.yaml" >&2

# 2. The bridge, until /ready says every route is subscribed.
"$POLYBRIDGE" run -c "$here/bridge.yaml" --drain-timeout 5s >"$work/bridge.log" 2>&1 &
bridge_pid=$!
wait_for "the bridge's /ready" "admin_get /ready >/dev/null" "$bridge_pid"
log "bridge ready (pid $bridge_pid)"

# 3. The subscribers, until each says it is subscribed.
cd "$here"
for r in "${receivers[@]}"; do
    "$PYTHON" -u "$here/${r}_client.py" receive --timeout "$TIMEOUT" >"$work/$r.log" 2>&1 &
    receiver_pids+=($!)
done
for i in "${!receivers[@]}"; do
    r=${receivers[$i]}
    wait_for "the $r subscriber" "grep -q '^ready' '$work/$r.log'" "${receiver_pids[$i]}"
done
log "subscribers ready"
# The route counters now, so the loop check below counts only this run's messages (a
# bridge restarted on brokers that kept messages of an aborted run may have routed those).
admin_get /api/routes >"$work/baseline.json"

# 4. The publishers, each exiting once its broker confirmed the message.
for s in pika paho stomp; do
    timeout "$TIMEOUT" "$PYTHON" -u "$here/${s}_client.py" send --timeout "$TIMEOUT" >"$work/send-$s.log" 2>&1 \
        || { log "the $s publisher failed"; exit 1; }
done
log "published: 'Hello, World!' (pika), 'Hello MQTT' (paho), 'Hello STOMP' (stomp.py)"

# 5. Every subscriber got every message (each exits 0 once it has, 1 at its deadline).
failed=0
for i in "${!receivers[@]}"; do
    r=${receivers[$i]}
    if wait "${receiver_pids[$i]}"; then
        status=ok
    else
        status=FAILED
        failed=1
    fi
    sed -n "s/^received: /$r received: /p" "$work/$r.log"
    echo "$r subscriber: $status"
done
receiver_pids=()
[ "$failed" -eq 0 ] || exit 1

# 6. No loops: each route took exactly what the publishers sent. from-paho sees three
# messages on test/topic (paho's, and the two the bridge put there, which it filters out).
cat >"$work/counts.py" <<'PY'
import json, sys
expected = {"from-pika": (1, 0), "from-paho": (3, 2), "from-stomp": (1, 0)}
fields = ("received", "filtered", "acked", "dead_lettered")
with open(sys.argv[2]) as f:
    before = {r["name"]: r for r in json.load(f)["routes"]}
now = {r["name"]: r for r in json.load(sys.stdin)["routes"]}
delta = {n: {k: now[n][k] - before[n][k] for k in fields} for n in expected}
if sys.argv[1] == "settled":
    # Every message taken from the source has been settled.
    sys.exit(0 if all(
        d["received"] >= expected[n][0] and d["acked"] + d["filtered"] + d["dead_lettered"] >= d["received"]
        for n, d in delta.items()) else 1)
bad = False
for name, (received, filtered) in expected.items():
    d = delta[name]
    line = "%s: received %d, filtered %d, acked %d, dead-lettered %d" % (
        name, d["received"], d["filtered"], d["acked"], d["dead_lettered"])
    if (d["received"], d["filtered"], d["dead_lettered"]) != (received, filtered, 0):
        line += "  (expected received %d, filtered %d, none dead-lettered)" % (received, filtered)
        bad = True
    print("route " + line)
sys.exit(1 if bad else 0)
PY
counts() { admin_get /api/routes | "$PYTHON" "$work/counts.py" "$1" "$work/baseline.json"; }
wait_for "the routes to settle every message" "counts settled" "$bridge_pid"
counts report || { log "a route saw more or fewer messages than were published: a loop or a lost message"; exit 1; }

echo "polyglot: every subscriber received every seed message"
