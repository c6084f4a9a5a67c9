#!/usr/bin/env bash
# Every speed target in one go, for a new machine (say a CPU no session has measured):
# runs the benchmark scripts that carry a target one after another, keeps each one's
# whole output, and ends with one table of every target, what was measured and whether
# it was met. Each script already measures both sides in the same run and prints its
# own ratios; this only runs them in a fixed order and collects the verdicts.
#
# usage: scripts/bench-targets.sh [OUT_DIR]
#   OUT_DIR  where the logs go (default bench-targets-DATE-HOST under /tmp)
#   SMALL    (environment) 1 runs every script on small sizes and one round: a check
#            that the scripts and the summary work, not a measurement
#   BUILD    (environment) 0 skips the release build (done once here otherwise)
#
# Run it on an idle machine: the scripts time wall clock. Takes about 25 minutes at the
# full sizes. Exits 0 when every target was met, 1 when one was missed, 2 when a script
# failed (its log says why; its targets count as not measured).
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/bench-targets-$(date -u +%Y%m%dT%H%M)-$(hostname -s)}
mkdir -p "$OUT"
SMALL=${SMALL:-0}
bench_build
bench_build_example vmcrypt-crypto xts_speed
export BUILD=0

if [ "$SMALL" = 1 ]; then
    XTS=(1 1) NBD=64 IOPS=32 SPARSE=8 REENC=(64 1)
    export BENCH_ROUNDS=1 BENCH_RUNTIME=2
else
    XTS=(3 2) NBD=1024 IOPS=128 SPARSE=64 REENC=(1024 5)
fi

{
    bench_banner
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); vmcrypt $(git rev-parse --short HEAD)"
} | tee "$OUT/summary.txt"

FAILED=()
# run NAME CMD...: the script's output to OUT/NAME.log (and the terminal).
run() {
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    if "$@" 2>&1 | tee "$OUT/$name.log"; then :; else
        local rc=${PIPESTATUS[0]}
        # bench-xts exits 1 for a missed target (its table says which); others measure.
        if [ "$name" != "${name#xts}" ] && [ "$rc" = 1 ]; then return 0; fi
        FAILED+=("$name (exit $rc)")
    fi
}

run xts-aes256 scripts/bench-xts.sh "${XTS[@]}"
BENCH_AES_BITS=128 run xts-aes128 scripts/bench-xts.sh "${XTS[@]}"
# Five rounds: convert and read times on a shared guest vary more than the CPU-bound sides.
BENCH_ROUNDS=$((SMALL == 1 ? 1 : 5)) run nbd scripts/bench-nbd.sh "$NBD"
BENCH_BUSY=both run iops scripts/bench-iops.sh "$IOPS"
run sparse scripts/bench-sparse.sh "$SPARSE"
run reencrypt scripts/bench-reencrypt.sh "${REENC[@]}"

# Each verdict row: SOURCE TARGET MEASURED MET.
{
    echo
    printf '%-11s %-52s %10s %s\n' source target measured met
    for f in xts-aes256 xts-aes128; do
        [ -f "$OUT/$f.log" ] || continue
        awk -v f="$f" '$NF == "yes" || $NF == "NO" {
            printf "%-11s %-52s %10s %s\n", f, $1 " " $2 "-byte " $3 " >= " $(NF - 1), $(NF - 2) "x", $NF }' "$OUT/$f.log"
    done
    for f in nbd iops; do
        [ -f "$OUT/$f.log" ] || continue
        awk -v f="$f" '($NF == "yes" || $NF == "NO") && $(NF - 3) ~ /x$/ {
            t = $0; sub(/ +[0-9.]+x +>= .*$/, "", t); gsub(/  +/, " ", t)
            printf "%-11s %-52s %10s %s\n", f, t " " $(NF - 2) " " $(NF - 1), $(NF - 3), $NF }' "$OUT/$f.log"
    done
    [ -f "$OUT/sparse.log" ] && awk '$1 == "convert" || $1 == "compare" {
        if (NF == 4 && $2 + 0 == $2) printf "%-11s %-52s %10s %s\n", "sparse", $1 " of the 1 TiB chain <= 10 s", $2 " s", ($2 <= 10 ? "yes" : "NO") }' "$OUT/sparse.log"
    [ -f "$OUT/reencrypt.log" ] && awk '$1 == "checksum" || $1 == "journal" || $1 == "none" {
        if (NF == 6) { r = $4; sub(/x$/, "", r); printf "%-11s %-52s %10s %s\n", "reencrypt", $1 " vmcrypt / cryptsetup >= 3x", $4, (r >= 3 ? "yes" : "NO") } }' "$OUT/reencrypt.log"
    for f in "${FAILED[@]}"; do printf '%-11s %-52s %10s %s\n' "${f%% *}" "script failed: ${f#* }" - NO; done
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); logs in $OUT"
} | tee -a "$OUT/summary.txt"

[ ${#FAILED[@]} -eq 0 ] || exit 2
if grep -q ' NO$' "$OUT/summary.txt"; then exit 1; fi
