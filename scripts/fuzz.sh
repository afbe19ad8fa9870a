#!/usr/bin/env bash
# Runs every fuzz target for a number of executions and prints one line per
# target (runs, seconds, crashes): the figures in docs/SECURITY.md.
#
#   bash scripts/fuzz.sh [RUNS]          # default 1000000 per target
#   TARGETS="pickle gallery" bash scripts/fuzz.sh 100000
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
# not part of CI (a million runs of each target takes minutes, and nightly
# is not the project's toolchain). A crash stops with libFuzzer's report and
# the input under fuzz/artifacts/<target>/: make it a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-1000000}"
TARGETS="${TARGETS:-request gallery pickle ota_bundle}"
# shellcheck source=/dev/null
[ -f scripts/env.sh ] && source scripts/env.sh
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }
python3 fuzz/seeds.py fuzz/seeds
cargo +nightly fuzz build
summary=()
for t in $TARGETS; do
    mkdir -p "fuzz/corpus/$t"
    log="fuzz/artifacts/$t.log"
    mkdir -p fuzz/artifacts
    echo "fuzz: $t, $RUNS runs" >&2
    start=$(date +%s)
    # max_len: requests and states are small JSON; bundles a manifest and a few entries.
    if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -runs="$RUNS" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz: $t crashed; the input is under fuzz/artifacts/$t/" >&2
        exit 1
    fi
    secs=$(( $(date +%s) - start ))
    done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -1)
    cov=$(grep -E 'stat::number_of_executed_units|cov: [0-9]+' "$log" | grep -oE 'cov: [0-9]+' | tail -1)
    summary+=("$t: $done_line ($secs s wall, $cov, corpus $(ls "fuzz/corpus/$t" | wc -l) inputs), no crash")
done
printf '%s\n' "${summary[@]}"
