#!/usr/bin/env python3
"""Heap allocation calls of the bridge process per routed message: per thread, and with
SAMPLES per allocation site. Used by scripts/profile-route.sh (ALLOCS=1, ALLOCS=sites).

    alloc-calls.py COUNTS MESSAGES [SAMPLES]

COUNTS is `perf stat --per-thread -x,` of uprobes on glibc's malloc, calloc, realloc, …
over a span in which the route acknowledged MESSAGES messages. SAMPLES is
`perf script -F comm,event,ip,sym` of the same calls recorded with call chains; a site is
the first frame of a chain that is not the allocator's (inlined allocator frames, which perf
names by their bare function name, such as `alloc` or `grow`, count as the allocator's),
shown with the three frames that called it.
perf drops samples of call chains this frequent, so the samples only give each site's share
of its thread's calls, and COUNTS the thread's calls per message.
"""
import collections
import sys

from perf_samples import samples

# Frames that are the allocator itself, not the code that asked for memory.
ALLOCATOR = (
    "malloc", "calloc", "realloc", "memalign", "aligned_alloc", "__rust_alloc",
    "__rust_realloc", "__rdl_", "alloc::alloc::", "alloc::raw_vec::", "RawVec", "RawVecInner",
    "finish_grow", "do_reserve_and_handle", "grow_one", "grow_amortized", "rd_malloc",
    "rd_calloc", "rd_realloc", "rd_strdup", "strdup", "exchange_malloc", "GlobalAlloc",
)
# Inlined allocator frames that perf names by their bare function name.
ALLOCATOR_FRAMES = {
    "alloc", "alloc_impl", "alloc_impl_runtime", "grow", "grow_impl", "grow_impl_runtime",
    "allocate", "allocate_in", "try_allocate_in", "with_capacity_in", "realloc_impl",
}


def site(frames):
    for i, frame in enumerate(frames):
        if frame not in ALLOCATOR_FRAMES and not any(a in frame for a in ALLOCATOR):
            return tuple(f[:110] for f in frames[i:i + 4])
    return ("(the allocator only)",)


def counted(path):
    """Calls of each thread, by "name-tid" (rows "name-tid,count,unit,event,…")."""
    per_thread = collections.Counter()
    for row in open(path):
        fields = row.split(",")
        if len(fields) > 3 and fields[1].isdigit():
            per_thread[fields[0]] += int(fields[1])
    return per_thread


def main():
    messages = float(sys.argv[2])
    if messages <= 0:
        sys.exit("no messages were routed while the allocations were counted")
    per_tid = counted(sys.argv[1])
    print(f"heap allocation calls: {sum(per_tid.values()) / messages:.2f} per message")
    for thread, calls in per_tid.most_common():
        if calls / messages >= 0.01:
            print(f"  {calls / messages:.2f} per message  {thread}")
    if len(sys.argv) < 4:
        return
    # Samples name threads without their tid: same-named threads are summed.
    per_message = collections.Counter()
    for thread, calls in per_tid.items():
        per_message[thread.rsplit("-", 1)[0]] += calls / messages
    per_thread = collections.defaultdict(collections.Counter)
    with open(sys.argv[3]) as recorded:
        for header, frames in samples(recorded):
            # "<comm> <event>:": the thread name may itself contain spaces.
            thread = header.rsplit(" ", 1)[0].strip()
            per_thread[thread][site([symbol for symbol, _ in frames])] += 1
    print("heap allocation sites per message (per thread: counted calls, split by the recorded call chains; sites of 0.05 or more):")
    for thread in sorted(per_message, key=lambda t: -per_message[t]):
        sampled = sum(per_thread[thread].values())
        if per_message[thread] < 0.05 or sampled == 0:
            continue
        print(f"  {thread}: {per_message[thread]:.2f} per message ({sampled} samples)")
        for frames, calls in per_thread[thread].most_common():
            share = per_message[thread] * calls / sampled
            if share < 0.05:
                break
            print(f"    {share:5.2f}  {frames[0]}")
            for caller in frames[1:]:
                print(f"           ← {caller}")


if __name__ == "__main__":
    main()
