#!/usr/bin/env python3
"""Why threads stopped running: each `sched:sched_switch` away from a thread of the recorded
processes (the bridge, the brokers), classified by the call stack it left from, counted per
thread name.

    perf record -e sched:sched_switch --call-graph dwarf,8192 -p PID[,PID…] -o F -- sleep 2
    perf script -i F | scripts/offcpu-reasons.py [MESSAGES [THREADS]]

With MESSAGES (the messages routed while recorded), each count is also given per message.
THREADS is a file of "TID PROCESS" lines: each thread is then named "PROCESS/THREAD", so
threads of the same name in two processes (tokio's `tokio-rt-worker` in the bridge and in
Tansu) are counted apart. `scripts/profile-route.sh` runs this with OFFCPU=1.

Reasons, the first that matches:
- "glibc allocator lock": waiting for a glibc malloc arena's lock (`__lll_lock_wait_private`
  under malloc, calloc, realloc or free): another thread holds it, e.g. freeing blocks this
  thread's arena allocated;
- "glibc internal lock": `__lll_lock_wait_private` elsewhere;
- "preempted": runnable, switched out for another thread (no wait of its own);
- "std channel receive": blocked in a `std::sync::mpsc` receive;
- "epoll_wait": waiting for I/O (a tokio worker with nothing to run, an idle broker);
- "tokio worker parked": a tokio worker with nothing to run, parked on its condvar;
- "librdkafka socket poll": a librdkafka broker thread waiting for its socket;
- "mutex": blocked on a pthread or std mutex;
- "condition variable": blocked on a condition variable;
- otherwise the first frames outside the kernel.
"""
import collections
import re
import sys

from perf_samples import samples

# glibc's allocator entry points as perf names them (`__GI___libc_malloc`, `_int_free`, …).
ALLOCATOR = re.compile(r"(malloc|calloc|realloc|libc_free|_int_free|^free$)", re.MULTILINE)


def reason(state, user):
    text = "\n".join(user)
    if "__lll_lock_wait_private" in text:
        return "glibc allocator lock" if ALLOCATOR.search(text) else "glibc internal lock"
    if state.startswith("R"):
        return "preempted"
    if "mpmc::" in text and "recv" in text:
        return "std channel receive"
    if "epoll_wait" in text:
        return "epoll_wait"
    if "park" in text and "tokio" in text:
        return "tokio worker parked"
    if "rd_kafka_transport_poll" in text:
        return "librdkafka socket poll"
    if "mutex" in text.lower() and "lock" in text.lower():
        return "mutex"
    if "cond_wait" in text or "cond_timedwait" in text:
        return "condition variable"
    return "other: " + " <- ".join(user[:4])


def main():
    messages = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    process_of = {}
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            for line in f:
                tid, _, process = line.strip().partition(" ")
                process_of[tid] = process
    counts = collections.Counter()
    per_thread = collections.Counter()
    for header, frames in samples(sys.stdin):
        if "sched_switch" not in header:
            continue
        # The comm may contain spaces; the event's fields name it exactly.
        comm = re.search(r"prev_comm=(.*?) prev_pid=(\d+)", header)
        state = re.search(r"prev_state=(\S+)", header)
        if not comm or not state:
            continue
        name = comm.group(1)
        if comm.group(2) in process_of:
            name = f"{process_of[comm.group(2)]}/{name}"
        user = [symbol for symbol, dso in frames if "[kernel" not in dso]
        counts[(name, reason(state.group(1), user))] += 1
        per_thread[name] += 1
    for name, total in per_thread.most_common():
        per_msg = f", {total / messages:.4f}/msg" if messages else ""
        print(f"{name}: {total} switches out{per_msg}")
        for (thread, why), n in counts.most_common():
            if thread == name and n * 100 >= total:
                print(f"  {n * 100 / total:5.1f} %  {why}")


if __name__ == "__main__":
    main()
