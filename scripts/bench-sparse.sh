#!/usr/bin/env bash
# Cost that grows with data, not with virtual size: a 1 TiB qcow2 + LUKS chain (a base
# and an overlay, each with its own key) holding DATA_MIB of data in 1 MiB pieces spread
# over the whole disk. vmcrypt vs qemu-img on the same images, in one run, on tmpfs.
#
# usage: scripts/bench-sparse.sh [DATA_MIB]
#   DATA_MIB       data in the chain (default 64; half in each layer)
#   BENCH_ROUNDS   (environment) rounds (default 3); each figure is the median
#   BENCH_SIZE     (environment) virtual size (default 1T)
#   BENCH_DIR      (environment) where the images go (default /dev/shm)
#   BUILD          (environment) 0 skips `cargo build --release -p vmcrypt` (default 1)
#
# Cases (wall clock around one command; keys derived with iter-time=10 for both tools):
#   convert   chain -> a new qcow2 + LUKS image under a third key (-O qcow2 -o encrypt.*)
#   compare   chain against that converted image
#   map       `map --output=json` of the chain
#   check     `check` of the overlay
# Correctness (exit non-zero on a failure): qemu-img compare of each side's converted
# image against the chain, and vmcrypt's map output equals qemu-img's.
# Ratios are qemu-img/vmcrypt: > 1 means vmcrypt is faster. The target is seconds for
# vmcrypt whatever the virtual size. The machine may be shared: say so when quoting.
set -euo pipefail
shopt -s inherit_errexit
. "$(dirname "$0")/lib/bench.sh"

DATA_MIB=${1:-64}
ROUNDS=${BENCH_ROUNDS:-3}
SIZE=${BENCH_SIZE:-1T}
BASE=$(bench_dir 0)
case "$DATA_MIB$ROUNDS" in *[!0-9]*|"") echo "usage: $0 [DATA_MIB]" >&2; exit 2 ;; esac
[ "$DATA_MIB" -ge 2 ] && [ "$ROUNDS" -ge 1 ] || { echo "DATA_MIB >= 2, BENCH_ROUNDS >= 1" >&2; exit 2; }

cd "$(dirname "$0")/.."
bench_require "install qemu-utils" qemu-img qemu-io
bench_vmcrypt

bench_banner
echo "vmcrypt: $("$VM" --version 2>/dev/null || echo '?'); $(qemu-img --version | head -1)"

bench_workdir "$BASE" sparse
for k in 0 1 2; do printf 'sparse bench key %s' "$k" > "$DIR/pw$k"; done
OBJS=(--object "secret,id=s0,file=$DIR/pw0" --object "secret,id=s1,file=$DIR/pw1" --object "secret,id=s2,file=$DIR/pw2")
LUKS="encrypt.format=luks,encrypt.cipher-alg=aes-256,encrypt.cipher-mode=xts,encrypt.ivgen-alg=plain64,encrypt.iter-time=10"
B=$DIR/base.qcow2
O=$DIR/overlay.qcow2
CHAIN="driver=qcow2,file.filename=$O,encrypt.key-secret=s1,backing.driver=qcow2,backing.file.filename=$B,backing.encrypt.key-secret=s0"
out_opts() { echo "driver=qcow2,file.filename=$1,encrypt.key-secret=s2"; }
fail() { echo "FAILED: $*" >&2; exit 5; }

echo "preparing a $SIZE chain with $DATA_MIB MiB of data in $DIR" >&2
qemu-img create -q -f qcow2 "${OBJS[@]}" -o "$LUKS,encrypt.key-secret=s0" "$B" "$SIZE"
qemu-img create -q -f qcow2 "${OBJS[@]}" -o "$LUKS,encrypt.key-secret=s1" -b "$B" -F qcow2 "$O"
VSIZE=$(qemu-img info --output=json "$B" | sed -n 's/^    "virtual-size": \([0-9]*\).*/\1/p')
HALF=$((DATA_MIB / 2))
# 1 MiB pieces at evenly spread offsets; the overlay's fall between the base's.
STRIDE=$((VSIZE / DATA_MIB / 1048576 * 1048576))
writes() { # $1 = first piece, then every other piece
    local i
    for ((i = $1; i < DATA_MIB; i += 2)); do echo "write -P $((i % 250 + 1)) $((i * STRIDE)) 1M"; done
}
writes 0 | qemu-io "${OBJS[@]}" --image-opts "driver=qcow2,file.filename=$B,encrypt.key-secret=s0" >/dev/null
writes 1 | qemu-io "${OBJS[@]}" --image-opts "$CHAIN" >/dev/null
echo "  base and overlay: $HALF MiB each, one 1 MiB piece every $((STRIDE >> 20)) MiB" >&2

declare -A T
run_case() { # $1 case, $2 side, rest: command
    local c=$1 s=$2; shift 2
    T[$c.$s]+="$(bench_timed "$@") "
}
convert() { # $1 = tool, $2 = output
    rm -f "$2"
    "$1" convert "${OBJS[@]}" --image-opts "$CHAIN" -O qcow2 -o "$LUKS,encrypt.key-secret=s2" "$2"
}
for ((r = 0; r < ROUNDS; r++)); do
    for side in vmcrypt qemu; do
        tool=$VM; [ "$side" = qemu ] && tool=qemu-img
        run_case convert $side convert "$tool" "$DIR/out-$side.qcow2"
        run_case compare $side "$tool" compare "${OBJS[@]}" --image-opts "$CHAIN" "$(out_opts "$DIR/out-$side.qcow2")"
        run_case map $side "$tool" map "${OBJS[@]}" --output=json --image-opts "$CHAIN"
        run_case check $side "$tool" check "${OBJS[@]}" --image-opts "$CHAIN"
    done
done

for side in vmcrypt qemu; do
    qemu-img compare "${OBJS[@]}" --image-opts "$CHAIN" "$(out_opts "$DIR/out-$side.qcow2")" >/dev/null \
        || fail "$side's converted image differs from the chain"
done
"$VM" map "${OBJS[@]}" --output=json --image-opts "$CHAIN" > "$DIR/map.vm"
qemu-img map "${OBJS[@]}" --output=json --image-opts "$CHAIN" > "$DIR/map.qemu"
cmp -s "$DIR/map.vm" "$DIR/map.qemu" || fail "vmcrypt map differs from qemu-img map"

printf '\n%-9s %12s %12s %9s   (%s rounds, medians, %s virtual, %s MiB data)\n' case vmcrypt/s qemu-img/s ratio "$ROUNDS" "$SIZE" "$DATA_MIB"
for c in convert compare map check; do
    v=$(bench_median <<<"${T[$c.vmcrypt]}")
    q=$(bench_median <<<"${T[$c.qemu]}")
    awk -v c="$c" -v v="$v" -v q="$q" 'BEGIN { printf "%-9s %12.3f %12.3f %8.2fx\n", c, v, q, q / v }'
done
