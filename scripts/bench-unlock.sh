#!/usr/bin/env bash
# Unlock speed, vmcrypt vs cryptsetup, on the same LUKS2 headers.
#
# Makes two LUKS2 images with cryptsetup luksFormat (argon2id at a fixed cost:
# 4 passes, 256 MiB, 2 lanes; and pbkdf2-sha256 with 500000 iterations), then times
#   cryptsetup open --test-passphrase --key-file K IMG
#   vmcrypt luks test-key --key-file K IMG
# RUNS times each (alternating, after one untimed warm-up of each), prints the medians
# and the ratio vmcrypt/cryptsetup, and exits 1 if vmcrypt's median is more than
# MAX_RATIO (default 1.10) times cryptsetup's for any header.
#
# If `vmcrypt luks test-key` cannot open LUKS2 in this build, the example
# crates/vmcrypt-block/examples/unlock.rs (LuksDriver::open) is timed instead and the
# output says so. Timing is wall clock, `date +%s.%N` around each run (hyperfine cannot
# alternate two commands).
#
# Environment: RUNS (5), MAX_RATIO (1.10), VMCRYPT (target/release/vmcrypt),
# BUILD=0 to skip `cargo build --release`.
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"

RUNS=${RUNS:-5}
MAX_RATIO=${MAX_RATIO:-1.10}
VMCRYPT=${VMCRYPT:-${BENCH_VMCRYPT:-$BENCH_ROOT/target/release/vmcrypt}}
EXAMPLE=$BENCH_ROOT/target/release/examples/unlock

bench_require "install cryptsetup-bin" cryptsetup
bench_build
bench_build_example vmcrypt-block unlock
bench_banner

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
KEY=$WORK/key
printf 'bench-unlock passphrase' >"$KEY"

# make_image NAME CRYPTSETUP-PBKDF-OPTIONS...
make_image() {
    local img=$WORK/$1.img
    shift
    truncate -s 20M "$img"
    cryptsetup luksFormat --type luks2 --batch-mode --key-file "$KEY" "$@" "$img"
}

median() { printf '%s\n' "$@" | bench_median; }
ms() { awk -v s="$1" 'BEGIN { printf "%.1f", s * 1000 }'; }

make_image argon2id --pbkdf argon2id --pbkdf-force-iterations 4 --pbkdf-memory 262144 --pbkdf-parallel 2
make_image pbkdf2 --pbkdf pbkdf2 --hash sha256 --pbkdf-force-iterations 500000

if "$VMCRYPT" luks test-key --key-file "$KEY" "$WORK/pbkdf2.img" >/dev/null 2>&1; then
    VM=("$VMCRYPT" luks test-key --key-file "$KEY")
    echo "vmcrypt side: vmcrypt luks test-key"
else
    VM=("$EXAMPLE" --key-file "$KEY")
    echo "vmcrypt side: examples/unlock (LuksDriver::open); 'vmcrypt luks test-key' does not open LUKS2 in this build"
fi
CS=(cryptsetup open --test-passphrase --key-file "$KEY")

status=0
for name in argon2id pbkdf2; do
    img=$WORK/$name.img
    bench_timed -q "${CS[@]}" "$img" >/dev/null
    bench_timed -q "${VM[@]}" "$img" >/dev/null
    cs=() vm=()
    for _ in $(seq "$RUNS"); do
        cs+=("$(bench_timed -q "${CS[@]}" "$img")")
        vm+=("$(bench_timed -q "${VM[@]}" "$img")")
    done
    mc=$(median "${cs[@]}")
    mv=$(median "${vm[@]}")
    ratio=$(awk -v a="$mv" -v b="$mc" 'BEGIN { printf "%.3f", a / b }')
    verdict=ok
    if awk -v r="$ratio" -v m="$MAX_RATIO" 'BEGIN { exit !(r > m) }'; then
        verdict="SLOWER than cryptsetup by more than $MAX_RATIO x"
        status=1
    fi
    printf '%-9s cryptsetup median %8s ms  vmcrypt median %8s ms  ratio vmcrypt/cryptsetup %s  %s\n' \
        "$name" "$(ms "$mc")" "$(ms "$mv")" "$ratio" "$verdict"
    printf '          runs (ms): cryptsetup %s | vmcrypt %s\n' \
        "$(for t in "${cs[@]}"; do printf '%s ' "$(ms "$t")"; done)" \
        "$(for t in "${vm[@]}"; do printf '%s ' "$(ms "$t")"; done)"
done
exit "$status"
