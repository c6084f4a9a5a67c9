#!/usr/bin/env bash
# Encrypted qcow2 (qcow2 with embedded LUKS1, aes-256-xts-plain64): vmcrypt vs QEMU on the
# same image in one run, on tmpfs. Every figure is a ratio of two measurements taken in
# this run, each side working on its own copy of the image.
#
# usage: scripts/bench-qcow2.sh [SIZE_MIB]
#   SIZE_MIB       virtual size in MiB (default 256; BENCH_SIZE_MIB in the environment too)
#   BENCH_ROUNDS   (environment) rounds (default 3); the order of the two sides is reversed
#                  every other round, and each figure is the median over rounds
#   BENCH_RUNTIME  (environment) seconds per timed fio run (default 5, plus 1 s of ramp-up)
#   BENCH_IODEPTH  (environment) fio iodepth (default 16; one job, one connection)
#   BENCH_DIR      (environment) where the images go (default /dev/shm)
#   BUILD          (environment) 0 skips `cargo build --release -p vmcrypt` (default 1)
#   BENCH_WARM     (environment) 0: do not touch SIZE_MIB + 64 MiB of memory before each
#                  timed command (done where the hypervisor takes freed memory back; see
#                  bench_warm in scripts/lib/bench.sh)
#
# Cases (wall clock around one command unless fio measures):
#   write     convert -n -f raw PLAIN --target-image-opts driver=qcow2,... into an empty
#             image made beforehand by `qemu-img create -f qcow2 -o encrypt.format=luks,
#             encrypt.iter-time=10` (copied fresh for every run), vmcrypt vs qemu-img. Key
#             derivation at creation is thereby excluded; opening the image (one PBKDF2
#             unlock of the key slot) is included for both.
#   read      convert --image-opts driver=qcow2,... -O raw of the written image (both sides
#             read copies of the image qemu-img wrote in the write case)
#   randread / randwrite, in place
#             4 KiB random IOPS through NBD (fio nbd engine), `vmcrypt serve` vs `qemu-nbd`
#             --image-opts driver=qcow2,..., each serving its own copy of that fully
#             allocated image: time based, fixed randseed (same offsets for both)
#   randwrite, allocating
#             the same on a fresh empty image: one pass writing every 4 KiB block once in
#             random order (fio random map, no ramp-up, not time based), so the first write
#             to each 64 KiB cluster allocates it and the other 15 land in place
#   convert   raw -> qcow2 + LUKS end to end including creation (-O qcow2 -o encrypt.*,
#             iter-time=10 for both). qemu-img calibrates PBKDF2 for a fixed time whatever
#             iter-time says, so creating an empty 1 MiB image is timed too, and a "data
#             only" row subtracts that fixed cost. If this vmcrypt cannot create qcow2
#             images yet, those rows say n/a.
# Correctness, once per run (exit non-zero on a mismatch): `qemu-img compare` of the two
# written images (with the secret), both read outputs against the plaintext, `qemu-img
# check` of vmcrypt's image after its allocating random writes, and `qemu-img compare` of
# vmcrypt's converted image against the plaintext.
# Ratios: qemu/vmcrypt for times, vmcrypt/qemu for IOPS, so > 1 means vmcrypt is faster.
# Exits 0 whatever the ratios (it measures); non-zero if a tool fails, is missing or a
# correctness check fails. tmpfs has no O_DIRECT, so every tool runs with its default cache
# mode. The machine may be shared: say so when quoting numbers.
set -euo pipefail
shopt -s inherit_errexit # a failing timed command fails the $(...) that times it
. "$(dirname "$0")/lib/bench.sh"

SIZE_MIB=${1:-${BENCH_SIZE_MIB:-256}}
ROUNDS=${BENCH_ROUNDS:-3}
RUNTIME=${BENCH_RUNTIME:-5}
IODEPTH=${BENCH_IODEPTH:-16}
case "$SIZE_MIB$ROUNDS$RUNTIME$IODEPTH" in
    *[!0-9]*|"") echo "usage: $0 [SIZE_MIB] (BENCH_ROUNDS, BENCH_RUNTIME, BENCH_IODEPTH numeric)" >&2; exit 2 ;;
esac
if [ "$SIZE_MIB" -lt 16 ] || [ "$ROUNDS" -lt 1 ] || [ "$RUNTIME" -lt 1 ] || [ "$IODEPTH" -lt 1 ]; then
    echo "SIZE_MIB must be >= 16, BENCH_ROUNDS, BENCH_RUNTIME and BENCH_IODEPTH >= 1" >&2; exit 2
fi

cd "$(dirname "$0")/.."
bench_require "install qemu-utils and fio" qemu-img qemu-nbd fio
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine (needs fio >= 3.20 built with libnbd)" >&2; exit 2; }

# Peak use: plaintext, one image per side, one read output or allocating image per side,
# each up to SIZE_MIB plus qcow2 metadata and the 2 MiB LUKS area.
BASE=$(bench_dir $((SIZE_MIB * 5 + SIZE_MIB / 64 + 64)))
bench_vmcrypt
BENCH_WARM_MIB=$((SIZE_MIB + 64))
bench_banner

bench_workdir "$BASE" qcow2

PW=$DIR/pw
printf 'bench passphrase' > "$PW"
SECRET="secret,id=s0,file=$PW"
LUKSOPTS=encrypt.format=luks,encrypt.key-secret=s0,encrypt.cipher-alg=aes-256,encrypt.cipher-mode=xts,encrypt.ivgen-alg=plain64,encrypt.iter-time=10
PLAIN=$DIR/plain.raw
EMPTY=$DIR/empty.qcow2
SOCK=$DIR/nbd.sock
OUT=$DIR/out
BYTES=$((SIZE_MIB * 1048576))
NA="n/a (vmcrypt cannot create qcow2 yet)"

# Image options of qcow2 file $1 with the secret.
opts() { echo "driver=qcow2,file.filename=$1,encrypt.key-secret=s0"; }
fail() { echo "FAILED: $*" >&2; exit 5; }

echo "preparing $SIZE_MIB MiB of random plaintext and an empty qcow2 + LUKS image in $DIR" >&2
head -c "$BYTES" /dev/urandom > "$PLAIN"
qemu-img create -q -f qcow2 --object "$SECRET" -o "$LUKSOPTS" "$EMPTY" "${SIZE_MIB}M"

# Can this vmcrypt create encrypted qcow2 images? (Another branch adds it.)
CAN_CREATE=1
head -c 1048576 "$PLAIN" > "$DIR/probe.raw"
if ! "$VM" convert -q --object "$SECRET" -f raw -O qcow2 -o "$LUKSOPTS" "$DIR/probe.raw" "$DIR/probe.qcow2" 2>"$DIR/probe.err"; then
    CAN_CREATE=0
    echo "vmcrypt convert -O qcow2 failed, convert rows will say n/a: $(head -c 300 "$DIR/probe.err")" >&2
fi
rm -f "$DIR/probe.raw" "$DIR/probe.qcow2"

# Start server $1 (vmcrypt or qemu) on qcow2 file $2 and wait until it answers.
start_server() {
    rm -f "$SOCK"
    case "$1" in
        vmcrypt) "$VM" serve --persistent --socket "$SOCK" --object "$SECRET" \
                     --image-opts "$(opts "$2")" 2>"$DIR/server.log" & ;;
        qemu) qemu-nbd --persistent -k "$SOCK" --object "$SECRET" \
                     --image-opts "$(opts "$2")" 2>"$DIR/server.log" & ;;
    esac
    SERVER_PID=$!
    bench_await_nbd "$1" "$SOCK" "$DIR/server.log"
}

declare -A RES
note() { # CASE SIDE ROUND VALUE UNIT
    RES[$1-$2]="${RES[$1-$2]:-} $4"
    local f=%12.3f
    [ "$5" = IOPS ] && f=%12.0f
    printf "round %d  %-10s %-8s $f %s\n" "$3" "$1" "$2" "$4" "$5" >&2
}

# Sequential write into a fresh empty image of side $1 ($DIR/$1.qcow2); prints seconds.
seq_write() {
    local img=$DIR/$1.qcow2
    cp "$EMPTY" "$img"
    case "$1" in
        vmcrypt) bench_timed "$VM" convert -q -n --object "$SECRET" -f raw "$PLAIN" --target-image-opts "$(opts "$img")" ;;
        qemu) bench_timed qemu-img convert -q -n --object "$SECRET" -f raw "$PLAIN" --target-image-opts "$(opts "$img")" ;;
    esac
}

# Sequential read of side $1's image to $OUT; prints seconds.
seq_read() {
    local img=$DIR/$1.qcow2
    case "$1" in
        vmcrypt) bench_timed "$VM" convert -q --object "$SECRET" --image-opts "$(opts "$img")" -O raw "$OUT" ;;
        qemu) bench_timed qemu-img convert -q --object "$SECRET" --image-opts "$(opts "$img")" -O raw "$OUT" ;;
    esac
}

# Raw -> encrypted qcow2 end to end (convert) or an empty 1 MiB image (create) by side $2.
make_image() {
    local tool=qemu-img
    [ "$2" = vmcrypt ] && tool=$VM
    case "$1" in
        convert) bench_timed "$tool" convert -q --object "$SECRET" -f raw -O qcow2 -o "$LUKSOPTS" "$PLAIN" "$OUT" ;;
        create) bench_timed "$tool" create -q --object "$SECRET" -f qcow2 -o "$LUKSOPTS" "$OUT" 1M ;;
    esac
}

SIDES=(vmcrypt qemu)
for ((r = 1; r <= ROUNDS; r++)); do
    order=("${SIDES[@]}")
    ((r % 2 == 0)) && order=(qemu vmcrypt)

    for s in "${order[@]}"; do v=$(seq_write "$s"); note write "$s" "$r" "$v" s; done
    if ((r == 1)); then
        qemu-img compare -q --object "$SECRET" --image-opts "$(opts "$DIR/vmcrypt.qcow2")" "$(opts "$DIR/qemu.qcow2")" ||
            fail "qemu-img compare: the images vmcrypt and qemu-img wrote differ"
        echo "check: qemu-img compare: the images vmcrypt and qemu-img wrote are identical" >&2
    fi
    # Both sides read (and then serve) copies of the image qemu-img wrote.
    cp "$DIR/qemu.qcow2" "$DIR/vmcrypt.qcow2"

    for s in "${order[@]}"; do
        v=$(seq_read "$s"); note read "$s" "$r" "$v" s
        if ((r == 1)); then cmp -s "$OUT" "$PLAIN" || fail "$s read back something other than the plaintext"; fi
        rm -f "$OUT"
    done
    ((r == 1)) && echo "check: both sides read back the plaintext" >&2

    for s in "${order[@]}"; do
        start_server "$s" "$DIR/$s.qcow2"
        for p in randread randwrite; do v=$(bench_fio "$p"); note "$p" "$s" "$r" "$v" IOPS; done
        bench_stop_server
    done

    for s in "${order[@]}"; do
        cp "$EMPTY" "$DIR/$s-alloc.qcow2"
        start_server "$s" "$DIR/$s-alloc.qcow2"
        v=$(bench_fio alloc); note alloc "$s" "$r" "$v" IOPS
        bench_stop_server
        if ((r == 1)) && [ "$s" = vmcrypt ]; then
            qemu-img check -q --object "$SECRET" --image-opts "$(opts "$DIR/$s-alloc.qcow2")" ||
                fail "qemu-img check of vmcrypt's image after allocating random writes"
            echo "check: qemu-img check is clean after vmcrypt's allocating random writes" >&2
        fi
        rm -f "$DIR/$s-alloc.qcow2"
    done

    for s in "${order[@]}"; do
        [ "$s" = vmcrypt ] && [ "$CAN_CREATE" = 0 ] && continue
        for c in convert create; do
            v=$(make_image "$c" "$s"); note "$c" "$s" "$r" "$v" s
            if ((r == 1)) && [ "$s" = vmcrypt ] && [ "$c" = convert ]; then
                qemu-img compare -q --object "$SECRET" --image-opts \
                    "driver=raw,file.filename=$PLAIN" "$(opts "$OUT")" ||
                    fail "qemu-img compare: vmcrypt's converted qcow2 differs from the plaintext"
                echo "check: vmcrypt's converted qcow2 holds the plaintext (qemu-img compare)" >&2
            fi
            rm -f "$OUT"
        done
    done
done

declare -A MED
for k in "${!RES[@]}"; do MED[$k]=$(echo "${RES[$k]}" | bench_median); done
for s in "${SIDES[@]}"; do
    [ -n "${MED[convert-$s]:-}" ] || continue
    MED[data-$s]=$(awk -v a="${MED[convert-$s]}" -v b="${MED[create-$s]}" 'BEGIN { printf "%.6f\n", a - b }')
done

echo
echo "$SIZE_MIB MiB qcow2 + LUKS1 aes-256-xts-plain64 on $BASE, median of $ROUNDS rounds;" \
    "fio nbd engine bs=4k iodepth=$IODEPTH numjobs=1, ${RUNTIME} s per timed run"
echo "ratio: qemu/vmcrypt for times, vmcrypt/qemu for IOPS (> 1: vmcrypt faster)"
printf '%-50s %12s %12s %6s %8s\n' "case" "vmcrypt" "qemu" "unit" "ratio"
num() { awk -v x="$1" -v u="$2" 'BEGIN { f = (u == "IOPS") ? "%.0f" : "%.3f"; printf f, x }'; }
row() { # LABEL CASE UNIT(s or IOPS)
    local v=${MED[$2-vmcrypt]:-} q=${MED[$2-qemu]} ratio
    if [ -z "$v" ]; then
        printf '%-50s %12s %12s %6s  %s\n' "$1" n/a "$(num "$q" "$3")" "$3" "$NA"
        return
    fi
    if awk -v v="$v" -v q="$q" 'BEGIN { exit !(v <= 0 || q <= 0) }'; then
        printf '%-50s %12s %12s %6s  %s\n' "$1" "$(num "$v" "$3")" "$(num "$q" "$3")" "$3" \
            "n/a (noise exceeds the data time: use a larger SIZE_MIB)"
        return
    fi
    ratio=$(awk -v v="$v" -v q="$q" -v u="$3" 'BEGIN { printf "%.2fx", (u == "IOPS") ? v / q : q / v }')
    printf '%-50s %12s %12s %6s %8s\n' "$1" "$(num "$v" "$3")" "$(num "$q" "$3")" "$3" "$ratio"
}
row "seq write   convert -n raw -> existing qcow2" write s
row "seq read    convert qcow2 -> raw" read s
row "randread    NBD, allocated image" randread IOPS
row "randwrite   NBD, allocated image (in place)" randwrite IOPS
row "randwrite   NBD, fresh image (allocating pass)" alloc IOPS
row "convert     raw -> qcow2 + LUKS, end to end" convert s
row "create      empty 1 MiB qcow2 + LUKS (fixed cost)" create s
row "convert     data only (convert - create)" data s
echo "(seq write and read: $(awk -v n="$BYTES" -v v="${MED[write-vmcrypt]}" -v q="${MED[write-qemu]}" \
    'BEGIN { printf "write %.0f / %.0f MB/s", n / v / 1e6, n / q / 1e6 }'), $(awk -v n="$BYTES" \
    -v v="${MED[read-vmcrypt]}" -v q="${MED[read-qemu]}" \
    'BEGIN { printf "read %.0f / %.0f MB/s", n / v / 1e6, n / q / 1e6 }') vmcrypt / qemu, MB/s = 10^6 bytes/s)"
