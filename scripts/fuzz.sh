#!/usr/bin/env bash
# Coverage-guided fuzzing of vmcrypt's parsers (see fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   scripts/fuzz.sh cmin [TARGET...]
#
# Runs each target (default: all of `cargo fuzz list`) for SECONDS (default 60) under
# `nice -n 19`, FUZZ_JOBS at a time (default 1), then prints per target the executions,
# coverage (cov/ft from libFuzzer's last line), corpus size and any crash.
# New inputs go to fuzz/work/TARGET (not committed); the committed seeds in
# fuzz/corpus/TARGET are read only. Crashes land in fuzz/artifacts/TARGET/: minimize
# one with `cargo +nightly fuzz tmin -s none TARGET FILE` and commit it under
# fuzz/regressions/TARGET/ so `cargo test` replays it. Logs: fuzz/logs/TARGET.log.
# `cmin` shrinks corpus/TARGET to inputs covering every edge of corpus/TARGET and
# work/TARGET (libFuzzer's -set_cover_merge, counters off); check the sizes it prints
# before committing. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
mode=run
if [ "${1:-}" = cmin ]; then
    mode=cmin
    shift
fi
secs=60
if [ "$mode" = run ] && [ $# -gt 0 ]; then
    secs=$1
    shift
fi
jobs=${FUZZ_JOBS:-1}
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

nice -n 19 cargo +nightly fuzz build -s none
mkdir -p logs

cmin() {
    local bin=target/x86_64-unknown-linux-gnu/release t out
    for t in "$@"; do
        out=$(mktemp -d)
        mkdir -p "work/$t"
        nice -n 19 "$bin/$t" -set_cover_merge=1 -use_counters=0 "$out" "corpus/$t" "work/$t" \
            >"logs/$t.cmin.log" 2>&1
        find "corpus/$t" -type f -delete
        mv "$out"/* "corpus/$t/"
        rmdir "$out"
        echo "$t: $(find "corpus/$t" -type f | wc -l) files, $(du -sh "corpus/$t" | cut -f1)"
    done
}
if [ "$mode" = cmin ]; then
    cmin "${targets[@]}"
    exit 0
fi

run_one() {
    local t=$1
    mkdir -p "work/$t" "artifacts/$t"
    nice -n 19 cargo +nightly fuzz run -s none "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"logs/$t.log" 2>&1 || true
}

running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

printf '%-18s %12s %8s %8s %10s %9s  %s\n' target execs cov ft corpus exec/s crashes
for t in "${targets[@]}"; do
    log="logs/$t.log"
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' || true)
    [ -n "$execs" ] || execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | awk '{print $2}' || true)
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | awk '{print $2}' || true)
    corp=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$last" | awk '{print $2}' || true)
    eps=$(grep -E '^stat::average_exec_per_sec:' "$log" | awk '{print $2}' || true)
    crashes=$(find "artifacts/$t" -type f | wc -l)
    printf '%-18s %12s %8s %8s %10s %9s  %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" \
        "${corp:-?}" "${eps:-?}" "$crashes"
done
