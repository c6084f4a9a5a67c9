#!/usr/bin/env bash
# vmcrypt serve vs qemu-nbd, and vmcrypt convert vs qemu-img convert, in one run on one
# image on tmpfs.
#
# usage: scripts/bench-nbd.sh [SIZE_MIB]
#   SIZE_MIB      image size in MiB (default 1024; BENCH_SIZE_MIB in the environment too)
#   BENCH_ROUNDS  (environment) rounds (default 3); the order of the contenders is
#                 reversed every other round, and each figure is the median over rounds
#   BENCH_DIR     (environment) where the images go (default /dev/shm)
#   BUILD         (environment) 0 skips `cargo build --release -p vmcrypt` (default 1)
#   BENCH_WARM    (environment) 0: do not touch SIZE_MIB + 64 MiB of memory before each
#                 timed command (done where the hypervisor takes freed memory back; see
#                 bench_warm in scripts/lib/bench.sh)
#
# Cases, each timed by wall clock around one command (server start-up not included):
#   read    qemu-img convert -O raw from the NBD export to a file in BENCH_DIR, from
#           vmcrypt serve (LUKS1 aes-256-xts-plain64), qemu-nbd with QEMU's luks driver
#           (same image) and qemu-nbd serving the plaintext raw image
#   write   qemu-img convert -n of the plaintext into each of those exports
#   convert vmcrypt convert raw -> LUKS1 and raw -> LUKS2 (PBKDF2, 1000 iterations) vs
#           qemu-img convert raw -> LUKS1 (iter-time=10). qemu-img still spends ~2 s
#           calibrating PBKDF2 whatever iter-time says, so each tool's time to create an
#           empty 1 MiB image of that format is also measured, and the "data" ratios use
#           convert time minus that fixed cost (both end-to-end and data ratios printed).
#   convert -n  both tools' `convert -n` of the plaintext into one existing LUKS1 image
#           (made once by qemu-img, iter-time=10): no key derivation to speak of and no
#           new file, so neither side pays the filesystem for fresh pages, which on a
#           guest whose host reclaims freed memory varies from run to run even for `cp`
# Targets: read >= 2x qemu-nbd luks and >= 0.9x qemu-nbd raw; convert (each way) >= 5x
# qemu-img.
# MB/s = 10^6 bytes per second. Exits 0 whether or not targets are met (it measures);
# non-zero if a tool fails or is missing. tmpfs has no O_DIRECT, so every tool runs
# with its default cache mode. The machine may be shared: say so when quoting numbers.
set -euo pipefail
shopt -s inherit_errexit # a failing timed command fails the $(...) that times it
. "$(dirname "$0")/lib/bench.sh"

SIZE_MIB=${1:-${BENCH_SIZE_MIB:-1024}}
ROUNDS=${BENCH_ROUNDS:-3}
case "$SIZE_MIB$ROUNDS" in *[!0-9]*|"") echo "usage: $0 [SIZE_MIB] (BENCH_ROUNDS numeric)" >&2; exit 2 ;; esac
[ "$SIZE_MIB" -ge 16 ] && [ "$ROUNDS" -ge 1 ] || { echo "SIZE_MIB must be >= 16 and BENCH_ROUNDS >= 1" >&2; exit 2; }

cd "$(dirname "$0")/.."
bench_require "install qemu-utils" qemu-img qemu-nbd
# Peak use: plaintext, its raw copy, the LUKS1 image, the convert -n target, one output
# (+ LUKS2's 16 MiB header).
BASE=$(bench_dir $((SIZE_MIB * 5 + 256)))
bench_vmcrypt
BENCH_WARM_MIB=$((SIZE_MIB + 64))
bench_banner

bench_workdir "$BASE" bench

PW=$DIR/pw
printf 'bench passphrase' > "$PW"
SECRET="secret,id=s0,file=$PW"
PLAIN=$DIR/plain.raw
RAWIMG=$DIR/raw.img
LUKS=$DIR/img.luks
SOCK=$DIR/nbd.sock
OUT=$DIR/out
BYTES=$((SIZE_MIB * 1048576))

echo "preparing $SIZE_MIB MiB of random plaintext and a LUKS1 aes-256-xts-plain64 image in $DIR" >&2
head -c "$BYTES" /dev/urandom > "$PLAIN"
cp "$PLAIN" "$RAWIMG"
"$VM" convert -q --object "$SECRET" -f raw -O luks \
    -o key-secret=s0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iterations=1000 \
    "$PLAIN" "$LUKS"

# The image both tools convert -n into.
INTO=$DIR/into.luks
qemu-img create -q --object "$SECRET" -f luks -o key-secret=s0,iter-time=10 "$INTO" "${SIZE_MIB}M"
INTO_OPTS="driver=luks,key-secret=s0,file.filename=$INTO"

# Start the server named $1 on $SOCK and wait until it answers.
start_server() {
    rm -f "$SOCK"
    case "$1" in
        vmcrypt) "$VM" serve --persistent --socket "$SOCK" --object "$SECRET" \
                     --image-opts "driver=luks,key-secret=s0,file.filename=$LUKS" 2>"$DIR/server.log" & ;;
        qemu-luks) qemu-nbd --persistent -k "$SOCK" --object "$SECRET" \
                     --image-opts "driver=luks,key-secret=s0,file.filename=$LUKS" 2>"$DIR/server.log" & ;;
        qemu-raw) qemu-nbd --persistent -k "$SOCK" -f raw "$RAWIMG" 2>"$DIR/server.log" & ;;
    esac
    SERVER_PID=$!
    bench_await_nbd "$1" "$SOCK" "$DIR/server.log"
}

# MB/s for BYTES in $1 seconds (minus $2 seconds of fixed cost).
mbs() { awk -v s="$1" -v f="${2:-0}" -v n="$BYTES" 'BEGIN { printf "%.1f\n", n / (s - f) / 1e6 }'; }

# One measurement of case $1; prints seconds.
measure() {
    local s uri="nbd+unix:///?socket=$SOCK"
    case "$1" in
        read-*)
            start_server "${1#read-}"
            s=$(bench_timed qemu-img convert -f raw -O raw "$uri" "$OUT")
            bench_stop_server; rm -f "$OUT" ;;
        write-*)
            start_server "${1#write-}"
            s=$(bench_timed qemu-img convert -n -f raw -O raw "$PLAIN" "$uri")
            bench_stop_server ;;
        convert-vmcrypt-luks1)
            s=$(bench_timed "$VM" convert -q --object "$SECRET" -f raw -O luks \
                -o key-secret=s0,iterations=1000 "$PLAIN" "$OUT"); rm -f "$OUT" ;;
        convert-vmcrypt-luks2)
            s=$(bench_timed "$VM" convert -q --object "$SECRET" -f raw -O luks2 \
                -o key-secret=s0,pbkdf=pbkdf2,iterations=1000 "$PLAIN" "$OUT"); rm -f "$OUT" ;;
        convert-qemu-luks1)
            s=$(bench_timed qemu-img convert -q --object "$SECRET" -f raw -O luks \
                -o key-secret=s0,iter-time=10 "$PLAIN" "$OUT"); rm -f "$OUT" ;;
        into-vmcrypt-luks1)
            s=$(bench_timed "$VM" convert -q -n --object "$SECRET" -f raw "$PLAIN" \
                --target-image-opts "$INTO_OPTS") ;;
        into-qemu-luks1)
            s=$(bench_timed qemu-img convert -q -n --object "$SECRET" -f raw "$PLAIN" \
                --target-image-opts "$INTO_OPTS") ;;
        empty-vmcrypt-luks1)
            s=$(bench_timed "$VM" create -q --object "$SECRET" -f luks \
                -o key-secret=s0,iterations=1000 "$OUT" 1M); rm -f "$OUT" ;;
        empty-vmcrypt-luks2)
            s=$(bench_timed "$VM" create -q --object "$SECRET" -f luks2 \
                -o key-secret=s0,pbkdf=pbkdf2,iterations=1000 "$OUT" 1M); rm -f "$OUT" ;;
        empty-qemu-luks1)
            s=$(bench_timed qemu-img create -q --object "$SECRET" -f luks \
                -o key-secret=s0,iter-time=10 "$OUT" 1M); rm -f "$OUT" ;;
    esac
    echo "$s"
}

CASES=(read-vmcrypt read-qemu-luks read-qemu-raw
       write-vmcrypt write-qemu-luks write-qemu-raw
       convert-vmcrypt-luks1 convert-vmcrypt-luks2 convert-qemu-luks1
       into-vmcrypt-luks1 into-qemu-luks1
       empty-vmcrypt-luks1 empty-vmcrypt-luks2 empty-qemu-luks1)
declare -A RES
for ((r = 1; r <= ROUNDS; r++)); do
    order=("${CASES[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#CASES[@]} - 1; i >= 0; i--)); do order+=("${CASES[i]}"); done
    fi
    for c in "${order[@]}"; do
        v=$(measure "$c")
        RES[$c]="${RES[$c]:-} $v"
        printf 'round %d  %-24s %9.3f s\n' "$r" "$c" "$v" >&2
    done
done

declare -A SEC MED
for c in "${CASES[@]}"; do
    SEC[$c]=$(echo "${RES[$c]}" | bench_median)
    MED[$c]=$(mbs "${SEC[$c]}")
done
# Data-only convert speeds: the fixed cost of making an empty image subtracted.
for t in vmcrypt-luks1 vmcrypt-luks2 qemu-luks1; do
    MED[data-$t]=$(mbs "${SEC[convert-$t]}" "${SEC[empty-$t]}")
done

echo
echo "$SIZE_MIB MiB image on $BASE, median of $ROUNDS rounds, MB/s = 10^6 bytes/s"
printf '%-58s %10s\n' "case" "MB/s"
row() { printf '%-58s %10s\n' "$1" "${MED[$2]}"; }
row "read   qemu-img convert <- vmcrypt serve (LUKS1)" read-vmcrypt
row "read   qemu-img convert <- qemu-nbd driver=luks" read-qemu-luks
row "read   qemu-img convert <- qemu-nbd raw" read-qemu-raw
row "write  qemu-img convert -n -> vmcrypt serve (LUKS1)" write-vmcrypt
row "write  qemu-img convert -n -> qemu-nbd driver=luks" write-qemu-luks
row "write  qemu-img convert -n -> qemu-nbd raw" write-qemu-raw
row "convert vmcrypt raw -> LUKS1" convert-vmcrypt-luks1
row "convert vmcrypt raw -> LUKS2" convert-vmcrypt-luks2
row "convert qemu-img raw -> LUKS1" convert-qemu-luks1
row "convert vmcrypt raw -> LUKS1, data only" data-vmcrypt-luks1
row "convert vmcrypt raw -> LUKS2, data only" data-vmcrypt-luks2
row "convert qemu-img raw -> LUKS1, data only" data-qemu-luks1
row "convert -n vmcrypt raw -> existing LUKS1" into-vmcrypt-luks1
row "convert -n qemu-img raw -> existing LUKS1" into-qemu-luks1
printf '%s %s s\n' "fixed cost (create empty image) vmcrypt LUKS1 / LUKS2 / qemu-img LUKS1:" \
    "$(printf '%.3f / %.3f / %.3f' "${SEC[empty-vmcrypt-luks1]}" "${SEC[empty-vmcrypt-luks2]}" "${SEC[empty-qemu-luks1]}")"

echo
printf '%-44s %9s %9s %5s\n' "ratio" "measured" "target" "met"
ratio() { # LABEL A B TARGET(or -)
    local r met tgt
    r=$(awk -v a="${MED[$2]}" -v b="${MED[$3]}" 'BEGIN { printf "%.2f", a / b }')
    if [ "$4" = - ]; then met=- tgt=none; else
        tgt=">= ${4}x"
        met=$(awk -v r="$r" -v t="$4" 'BEGIN { print (r >= t) ? "yes" : "NO" }'); fi
    printf '%-44s %8sx %9s %5s\n' "$1" "$r" "$tgt" "$met"
}
ratio "read    vmcrypt serve / qemu-nbd luks" read-vmcrypt read-qemu-luks 2
ratio "read    vmcrypt serve / qemu-nbd raw" read-vmcrypt read-qemu-raw 0.9
ratio "write   vmcrypt serve / qemu-nbd luks" write-vmcrypt write-qemu-luks -
ratio "write   vmcrypt serve / qemu-nbd raw" write-vmcrypt write-qemu-raw -
ratio "convert vmcrypt LUKS1 / qemu-img LUKS1" convert-vmcrypt-luks1 convert-qemu-luks1 5
ratio "convert vmcrypt LUKS2 / qemu-img LUKS1" convert-vmcrypt-luks2 convert-qemu-luks1 5
ratio "convert, data only: vmcrypt LUKS1 / qemu-img" data-vmcrypt-luks1 data-qemu-luks1 5
ratio "convert, data only: vmcrypt LUKS2 / qemu-img" data-vmcrypt-luks2 data-qemu-luks1 5
ratio "convert -n into LUKS1: vmcrypt / qemu-img" into-vmcrypt-luks1 into-qemu-luks1 5
