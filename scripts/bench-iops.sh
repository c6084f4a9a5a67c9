#!/usr/bin/env bash
# 4 KiB random read and write IOPS through the NBD export: vmcrypt serve vs qemu-nbd with
# QEMU's luks driver, same LUKS1 aes-256-xts-plain64 image on tmpfs, measured with fio's
# nbd engine (libnbd). Issue 5's target: >= 1.5x qemu-nbd for both.
#
# usage: scripts/bench-iops.sh [SIZE_MIB]
#   SIZE_MIB       image size in MiB (default 256; BENCH_SIZE_MIB in the environment too)
#   BENCH_ROUNDS   (environment) rounds (default 3); the order of the servers is reversed
#                  every other round, and each figure is the median over rounds
#   BENCH_RUNTIME  (environment) seconds per fio run (default 5, plus 1 s of ramp-up)
#   BENCH_IODEPTH  (environment) fio iodepth (default 16; one job, one connection)
#   BENCH_DIR      (environment) where the images go (default /dev/shm)
#   BUILD          (environment) 0 skips `cargo build --release -p vmcrypt` (default 1)
#
# Each server gets its own copy of the image (the write runs change it) and serves it for
# one randread run then one randwrite run, and is stopped after them; only one server runs
# at a time. fio uses a fixed randseed, so both servers see the same offsets.
# Exits 0 whether or not the target is met (it measures); non-zero if a tool fails or is
# missing. The machine may be shared: say so when quoting numbers.
set -euo pipefail

SIZE_MIB=${1:-${BENCH_SIZE_MIB:-256}}
ROUNDS=${BENCH_ROUNDS:-3}
RUNTIME=${BENCH_RUNTIME:-5}
IODEPTH=${BENCH_IODEPTH:-16}
BASE=${BENCH_DIR:-/dev/shm}
BUILD=${BUILD:-1}
case "$SIZE_MIB$ROUNDS$RUNTIME$IODEPTH" in
    *[!0-9]*|"") echo "usage: $0 [SIZE_MIB] (BENCH_ROUNDS, BENCH_RUNTIME, BENCH_IODEPTH numeric)" >&2; exit 2 ;;
esac
[ "$SIZE_MIB" -ge 16 ] && [ "$ROUNDS" -ge 1 ] && [ "$RUNTIME" -ge 1 ] && [ "$IODEPTH" -ge 1 ] || {
    echo "SIZE_MIB must be >= 16, BENCH_ROUNDS, BENCH_RUNTIME and BENCH_IODEPTH >= 1" >&2; exit 2; }

cd "$(dirname "$0")/.."
for t in qemu-img qemu-nbd fio; do
    command -v "$t" >/dev/null || { echo "$t not found (install qemu-utils and fio)" >&2; exit 2; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine (needs fio >= 3.20 built with libnbd)" >&2; exit 2; }

# Peak use: plaintext, the LUKS1 image and one copy per server.
NEED_MIB=$((SIZE_MIB * 4 + 64))
FREE_MIB=$(df -Pm "$BASE" | awk 'NR == 2 { print $4 }')
if [ "$FREE_MIB" -lt "$NEED_MIB" ]; then
    echo "$BASE has $FREE_MIB MiB free, this run needs $NEED_MIB MiB: pass a smaller SIZE_MIB" >&2
    exit 2
fi

[ "$BUILD" = 0 ] || cargo build --quiet --release -p vmcrypt
VM=$PWD/target/release/vmcrypt
[ -x "$VM" ] || { echo "$VM not found (run with BUILD=1)" >&2; exit 2; }

DIR=$(mktemp -d "$BASE/vmcrypt-iops.XXXXXX")
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$DIR"
}
trap cleanup EXIT

PW=$DIR/pw
printf 'bench passphrase' > "$PW"
SECRET="secret,id=s0,file=$PW"
PLAIN=$DIR/plain.raw
LUKS=$DIR/img.luks
SOCK=$DIR/nbd.sock
BYTES=$((SIZE_MIB * 1048576))

echo "preparing $SIZE_MIB MiB of random plaintext and a LUKS1 aes-256-xts-plain64 image in $DIR" >&2
head -c "$BYTES" /dev/urandom > "$PLAIN"
"$VM" convert -q --object "$SECRET" -f raw -O luks \
    -o key-secret=s0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iterations=1000 \
    "$PLAIN" "$LUKS"
rm -f "$PLAIN"
cp "$LUKS" "$DIR/vmcrypt.luks"
cp "$LUKS" "$DIR/qemu.luks"

# Start server $1 (vmcrypt or qemu) on its own copy of the image and wait until it answers.
start_server() {
    local img="$DIR/$1.luks"
    rm -f "$SOCK"
    case "$1" in
        vmcrypt) "$VM" serve --persistent --socket "$SOCK" --object "$SECRET" \
                     --image-opts "driver=luks,key-secret=s0,file.filename=$img" 2>"$DIR/server.log" & ;;
        qemu) qemu-nbd --persistent -k "$SOCK" --object "$SECRET" \
                     --image-opts "driver=luks,key-secret=s0,file.filename=$img" 2>"$DIR/server.log" & ;;
    esac
    SERVER_PID=$!
    local i
    for ((i = 0; i < 400; i++)); do
        if [ -S "$SOCK" ] && qemu-img info "nbd+unix:///?socket=$SOCK" >/dev/null 2>&1; then return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "server $1 exited:" >&2; cat "$DIR/server.log" >&2; exit 3; }
        sleep 0.05
    done
    echo "server $1 did not start" >&2; cat "$DIR/server.log" >&2; exit 3
}

stop_server() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# One fio run of pattern $1 (randread or randwrite) against the running server; prints IOPS.
# Terse format v3: field 8 is read IOPS, field 49 write IOPS, field 5 the error code.
run_fio() {
    local out field
    out=$(fio --minimal --terse-version=3 --name="$1" --ioengine=nbd \
        --uri="nbd+unix:///?socket=$SOCK" --rw="$1" --bs=4k --iodepth="$IODEPTH" --numjobs=1 \
        --size="${SIZE_MIB}M" --time_based --ramp_time=1 --runtime="$RUNTIME" \
        --randrepeat=0 --randseed=12345 --norandommap 2>"$DIR/fio.err") || {
        echo "fio $1 failed:" >&2; cat "$DIR/fio.err" >&2; exit 4; }
    case "$1" in randread) field=8 ;; randwrite) field=49 ;; esac
    echo "$out" | awk -F';' -v f="$field" '
        $1 == 3 { if ($5 != 0) { print "fio error " $5 > "/dev/stderr"; exit 1 }
                  print $f; found = 1 }
        END { exit !found }' || { echo "fio $1: no result:" >&2; echo "$out" >&2; cat "$DIR/fio.err" >&2; exit 4; }
}

SERVERS=(vmcrypt qemu)
PATTERNS=(randread randwrite)
declare -A RES
for ((r = 1; r <= ROUNDS; r++)); do
    order=("${SERVERS[@]}")
    ((r % 2 == 0)) && order=(qemu vmcrypt)
    for s in "${order[@]}"; do
        start_server "$s"
        for p in "${PATTERNS[@]}"; do
            v=$(run_fio "$p")
            RES[$p-$s]="${RES[$p-$s]:-} $v"
            printf 'round %d  %-9s  %-8s %10.0f IOPS\n' "$r" "$p" "$s" "$v" >&2
        done
        stop_server
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A MED
for p in "${PATTERNS[@]}"; do
    for s in "${SERVERS[@]}"; do MED[$p-$s]=$(echo "${RES[$p-$s]}" | median); done
done

echo
echo "$SIZE_MIB MiB LUKS1 image on $BASE, fio nbd engine, bs=4k iodepth=$IODEPTH numjobs=1," \
    "${RUNTIME} s per run, median of $ROUNDS rounds"
printf '%-44s %10s\n' "case" "IOPS"
for p in "${PATTERNS[@]}"; do
    printf '%-9s  %-33s %10.0f\n' "$p" "vmcrypt serve (LUKS1)" "${MED[$p-vmcrypt]}"
    printf '%-9s  %-33s %10.0f\n' "$p" "qemu-nbd driver=luks" "${MED[$p-qemu]}"
done

echo
printf '%-44s %9s %9s %5s\n' "ratio" "measured" "target" "met"
for p in "${PATTERNS[@]}"; do
    ratio=$(awk -v a="${MED[$p-vmcrypt]}" -v b="${MED[$p-qemu]}" 'BEGIN { printf "%.2f", a / b }')
    met=$(awk -v r="$ratio" 'BEGIN { print (r >= 1.5) ? "yes" : "NO" }')
    printf '%-9s  %-33s %8sx %9s %5s\n' "$p" "vmcrypt serve / qemu-nbd luks" "$ratio" ">= 1.5x" "$met"
done
