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
# output says so. Timing is bash `date +%s%N` (hyperfine cannot alternate two commands).
#
# Environment: RUNS (5), MAX_RATIO (1.10), VMCRYPT (target/release/vmcrypt),
# BUILD=0 to skip `cargo build --release`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
MAX_RATIO=${MAX_RATIO:-1.10}
VMCRYPT=${VMCRYPT:-$ROOT/target/release/vmcrypt}
EXAMPLE=$ROOT/target/release/examples/unlock

command -v cryptsetup >/dev/null || { echo "bench-unlock: cryptsetup is not installed" >&2; exit 2; }
if [ "${BUILD:-1}" != 0 ]; then
    (cd "$ROOT" && cargo build --release -q -p vmcrypt && \
        cargo build --release -q -p vmcrypt-block --example unlock)
fi

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

# ns CMD...: run CMD (it must succeed), print its wall time in nanoseconds.
ns() {
    local t0 t1
    t0=$(date +%s%N)
    if ! "$@" >/dev/null 2>&1; then
        echo "bench-unlock: failed: $*" >&2
        exit 2
    fi
    t1=$(date +%s%N)
    echo $((t1 - t0))
}

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ms() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1e6 }'; }

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
    ns "${CS[@]}" "$img" >/dev/null
    ns "${VM[@]}" "$img" >/dev/null
    cs=() vm=()
    for _ in $(seq "$RUNS"); do
        cs+=("$(ns "${CS[@]}" "$img")")
        vm+=("$(ns "${VM[@]}" "$img")")
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
