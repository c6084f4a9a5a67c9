#!/usr/bin/env bash
# Throughput of an encrypted RBD image: vmcrypt's rbd node (`encrypt.format=luks2`, the
# crypto done by vmcrypt, librbd moving the ciphertext) vs librbd's own encryption
# (QEMU's rbd driver with the same `encrypt.format=luks2`, librbd decrypting), on the
# same image of the same cluster, in one run. Both are exported over NBD on a unix socket
# (`vmcrypt serve` / `qemu-storage-daemon --export type=nbd`) and measured with the same
# fio jobs (nbd engine): sequential 1 MiB read and write, 4 KiB random read and write.
# Target (issue 13): >= 1.0x sequential, >= 1.5x random IOPS.
#
# usage: scripts/bench-rbd.sh [SIZE_MIB]
#   SIZE_MIB       image size in MiB (default 256; a memstore OSD keeps it in RAM)
#   BENCH_RUNTIME  (environment) seconds per fio run (default 5, plus 1 s ramp-up)
#   BENCH_IODEPTH  (environment) fio iodepth for the random runs (default 16)
#   BENCH_ROUNDS   (environment) rounds, the server order reversed every other one; each
#                  figure is the median (default 3)
#   BENCH_LIBRBD_CACHE (environment) on: qemu-storage-daemon with cache.direct=off, so
#                  librbd keeps its default cache (rbd_cache=true) as vmcrypt does;
#                  default off (cache.direct=on, for which QEMU sets rbd_cache=false)
#   BENCH_TESTS    (environment) which of read, write, randread, randwrite to run
#                  (default all four)
#   BUILD          (environment) 0 skips `cargo build --release -p vmcrypt` (default 1)
#   CEPH_DIR       (environment) the test cluster's state (default /tmp/vmcrypt-ceph); it
#                  is started with ../shared/ceph/start-ceph.sh if it is not running, and
#                  left running
# Needs: Ceph (see .ci/install-deps), fio, qemu-storage-daemon with its rbd module
# (Debian: qemu-block-extra from bookworm-backports), python3. Prints the CPU model, the
# kernel and the load average first. Exits 0 whether or not the target is met.
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-256}
RUNTIME=${BENCH_RUNTIME:-5}
IODEPTH=${BENCH_IODEPTH:-16}
ROUNDS=${BENCH_ROUNDS:-3}
DIRECT=on
[ "${BENCH_LIBRBD_CACHE:-off}" = on ] && DIRECT=off
export CEPH_DIR=${CEPH_DIR:-/tmp/vmcrypt-ceph}

bench_require "see .ci/install-deps" fio qemu-storage-daemon python3 rbd
bench_vmcrypt
VMCRYPT=$VM
../shared/ceph/start-ceph.sh >/dev/null
CONF=$CEPH_DIR/ceph.conf
export CEPH_CONF=$CONF

echo "CPU: $(bench_cpu_model) ($(nproc) cores)"
echo "kernel: $(uname -r)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "librbd side: qemu-storage-daemon, cache.direct=$DIRECT"
echo "image: ${SIZE_MIB} MiB LUKS2 (aes-256-xts, 4096-byte sectors) on a one-node memstore cluster"

WORK=$(mktemp -d)
IMG=bench-$$
SOCK=$WORK/nbd.sock
SERVER=
cleanup() {
    [ -z "$SERVER" ] || { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; }
    rbd rm --no-progress "rbd/$IMG" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
printf 'bench passphrase' >"$WORK/pw"

# The image: formatted by vmcrypt (librbd loads it), then written whole once so that
# every object exists and random reads decrypt real data.
rbd create --size "$((SIZE_MIB + 16))M" "rbd/$IMG"
"$VMCRYPT" rbd encryption format --iter-time 100 "rbd/$IMG" luks2 "$WORK/pw"
OPTS="driver=rbd,pool=rbd,image=$IMG,conf=$CONF,encrypt.format=luks2,encrypt.key-secret=s0"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/fill"
"$VMCRYPT" convert -n --object secret,id=s0,file="$WORK/pw" -f raw "$WORK/fill" \
    --target-image-opts "$OPTS"
rm -f "$WORK/fill"

start_server() {
    rm -f "$SOCK"
    case $1 in
    vmcrypt)
        "$VMCRYPT" serve -q -t --shared 8 --object secret,id=s0,file="$WORK/pw" \
            --image-opts "$OPTS" -k "$SOCK" 2>/dev/null &
        ;;
    librbd)
        qemu-storage-daemon --object secret,id=s0,file="$WORK/pw" \
            --blockdev "$OPTS,node-name=d0,cache.direct=$DIRECT" \
            --nbd-server addr.type=unix,addr.path="$SOCK" \
            --export type=nbd,id=e0,node-name=d0,name=,writable=on 2>/dev/null &
        ;;
    esac
    SERVER=$!
    for _ in $(seq 1 100); do [ -S "$SOCK" ] && return; sleep 0.1; done
    echo "$1 server did not start" >&2
    exit 1
}
stop_server() {
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}

# One fio run; prints MiB/s (sequential) or IOPS (random).
run_fio() {
    local rw=$1 bs=$2 depth=$3 what=$4
    fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" --rw="$rw" --bs="$bs" \
        --iodepth="$depth" --size="${SIZE_MIB}M" --time_based --runtime="$RUNTIME" \
        --ramp_time=1 --randrepeat=1 --randseed=13 --output-format=json |
        python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):])["jobs"][0]  # the nbd engine prints a line first
side = j["read"] if j["read"]["io_bytes"] else j["write"]
print("%.1f" % (side["bw_bytes"] / 1048576 if sys.argv[1] == "bw" else side["iops"]))
' "$what"
}

ALL=("read 1M 8 bw" "write 1M 8 bw" "randread 4k $IODEPTH iops" "randwrite 4k $IODEPTH iops")
TESTS=()
for t in "${ALL[@]}"; do
    case " ${BENCH_TESTS:-read write randread randwrite} " in *" ${t%% *} "*) TESTS+=("$t") ;; esac
done
declare -A R
for round in $(seq 1 "$ROUNDS"); do
    order=(vmcrypt librbd)
    [ $((round % 2)) = 0 ] && order=(librbd vmcrypt)
    for s in "${order[@]}"; do
        start_server "$s"
        for t in "${TESTS[@]}"; do
            set -- $t
            R[$s $1]+="$(run_fio "$1" "$2" "$3" "$4") "
        done
        stop_server
    done
done

median() { bench_median %.1f; }
printf '\n%-10s %14s %14s %8s\n' test vmcrypt librbd ratio
for t in "${TESTS[@]}"; do
    set -- $t
    v=$(echo "${R[vmcrypt $1]}" | median)
    l=$(echo "${R[librbd $1]}" | median)
    unit=$([ "$4" = bw ] && echo MiB/s || echo IOPS)
    printf '%-10s %8s %-5s %8s %-5s %7.2fx\n' "$1" "$v" "$unit" "$l" "$unit" \
        "$(awk -v a="$v" -v b="$l" 'BEGIN {print (b > 0 ? a / b : 0)}')"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(median of $ROUNDS rounds, ${RUNTIME} s each; target >= 1.0x sequential, >= 1.5x random)"
