#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 20): the STOMP frame
# codec, the topic-pattern parser, the destination template engine and the rule-file
# loader. Longer runs and what to do with a crash: docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler (libFuzzer is
# built from source). On a stable toolchain it sets RUSTC_BOOTSTRAP=1 (cargo-fuzz passes
# -Z flags) and runs without a sanitizer (ASan needs nightly's -Zsanitizer; the code is
# `unsafe`-free, so the fuzzers look for panics, overflows and failed assertions).
# Each target starts from its seed corpus in fuzz/seeds/<target>; new inputs it finds go
# to fuzz/corpus/<target> (not committed). Exits non-zero on the first crash, which is
# saved under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(stomp_codec topic_pattern template config_load)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing; install it with: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
sanitizer=(--sanitizer none)
if rustc --version | grep -q nightly; then
    sanitizer=()
else
    export RUSTC_BOOTSTRAP=1
fi
# Build every target first, so the time budget below is spent fuzzing.
cargo fuzz build "${sanitizer[@]}" --release --debug-assertions
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== fuzz $t for ${seconds}s"
    if cargo fuzz run "${sanitizer[@]}" --release --debug-assertions "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )' "$log" || true
    else
        # The panic message and libFuzzer's summary, without the stack trace.
        grep -E -A2 "panicked at" "$log" >&2 || tail -n 40 "$log" >&2
        grep -E "^(SUMMARY|artifact_prefix|Base64)" "$log" >&2 || true
        echo "fuzz.sh: $t found a failing input (saved under fuzz/artifacts/$t/)." >&2
        echo "reproduce: cargo fuzz run ${sanitizer[*]} --release --debug-assertions $t fuzz/artifacts/$t/<file>" >&2
        exit 1
    fi
done
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crash"
