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
#                  figure is the median (default 5)
#   BENCH_RBD_CACHE (environment) librbd's cache on both sides, the same: on (default,
#                  librbd's default rbd_cache=true, policy writearound) or off. Both
#                  servers read one bench ceph.conf with `rbd cache` set so and `rbd cache
#                  writethrough until flush = false` (so neither side depends on whether
#                  a flush came yet); qemu-storage-daemon gets cache.direct=off for on and
#                  cache.direct=on for off, as QEMU sets rbd_cache from cache.direct
#   BENCH_TESTS    (environment) which of read, write, randread, randwrite to run
#                  (default all four)
#   BENCH_RBD_CEILING (environment) 1 (default) also runs each test with fio's own rbd
#                  engine on an unencrypted copy of the image (no NBD, no encryption, the
#                  same ceph.conf): what the cluster gives any client, the ceiling both
#                  sides are held to when the OSD is the bottleneck; 0 skips it
#   BUILD          (environment) 0 skips `cargo build --release -p vmcrypt` (default 1)
#   CEPH_DIR       (environment) the test cluster's state (default /tmp/vmcrypt-ceph); it
#                  is started with ../shared/ceph/start-ceph.sh if it is not running, and
#                  left running
# Needs: Ceph (see .ci/install-deps), fio, qemu-storage-daemon with its rbd module
# (Debian: qemu-block-extra from bookworm-backports), python3. Prints the CPU model, the
# kernel, the cache settings and the load average first; after the ratios, each side's
# CPU time per request (the server process's user+system time over the run, median),
# its context switches per request (voluntary and not, summed over its threads, median),
# the OSD's CPU time per request (ceph-osd user+system time over the run, median) and
# the load average again. Exits 0 whether or not the target is met.
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-256}
RUNTIME=${BENCH_RUNTIME:-5}
IODEPTH=${BENCH_IODEPTH:-16}
ROUNDS=${BENCH_ROUNDS:-5}
CACHE=${BENCH_RBD_CACHE:-on}
CEILING=${BENCH_RBD_CEILING:-1}
case $CACHE in
on) DIRECT=off RBD_CACHE=true ;;
off) DIRECT=on RBD_CACHE=false ;;
*) echo "BENCH_RBD_CACHE must be on or off" >&2; exit 1 ;;
esac
export CEPH_DIR=${CEPH_DIR:-/tmp/vmcrypt-ceph}

bench_require "see .ci/install-deps" fio qemu-storage-daemon python3 rbd
bench_vmcrypt
VMCRYPT=$VM
flock -o "$CEPH_DIR.lock" ../shared/ceph/start-ceph.sh >/dev/null
export CEPH_CONF=$CEPH_DIR/ceph.conf

echo "CPU: $(bench_cpu_model) ($(nproc) cores)"
echo "kernel: $(uname -r)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "librbd cache, both sides: rbd_cache=$RBD_CACHE, writethrough until flush off" \
    "(qemu-storage-daemon: cache.direct=$DIRECT)"
echo "image: ${SIZE_MIB} MiB LUKS2 (aes-256-xts, 4096-byte sectors) on a one-node memstore cluster"

WORK=$(mktemp -d)
# The one ceph.conf both servers read: the cluster's, plus the same cache settings.
CONF=$WORK/ceph.conf
cp "$CEPH_CONF" "$CONF"
printf '\n[client]\nrbd cache = %s\nrbd cache writethrough until flush = false\n' \
    "$RBD_CACHE" >>"$CONF"
IMG=bench-$$
SOCK=$WORK/nbd.sock
SERVER=
cleanup() {
    [ -z "$SERVER" ] || { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; }
    rbd rm --no-progress "rbd/$IMG" >/dev/null 2>&1 || true
    rbd rm --no-progress "rbd/$IMG-plain" >/dev/null 2>&1 || true
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
if [ "$CEILING" = 1 ]; then
    fio --enghelp 2>/dev/null | grep -qw rbd || { echo "fio has no rbd engine (BENCH_RBD_CEILING=0 skips the ceiling)" >&2; exit 2; }
    rbd import --no-progress "$WORK/fill" "rbd/$IMG-plain"
fi
rm -f "$WORK/fill"
OSD_PID=$(cat "$CEPH_DIR/run/osd.0.pid")

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

# One fio run (over NBD, or with fio's rbd engine on the unencrypted copy when no
# server runs); prints MiB/s (sequential) or IOPS (random), then the server's CPU time
# per request in microseconds, its context switches per request and the OSD's CPU time
# per request.
run_fio() {
    local rw=$1 bs=$2 depth=$3 what=$4 c0 c1 s0 s1 o0 o1 engine
    engine=(--ioengine=nbd --uri="nbd+unix:///?socket=$SOCK")
    [ -n "$SERVER" ] || engine=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname="$IMG-plain")
    c0=$(cpu_ticks)
    s0=$(ctx_switches)
    o0=$(osd_ticks)
    CEPH_CONF=$CONF fio --name=b "${engine[@]}" --rw="$rw" --bs="$bs" \
        --iodepth="$depth" --size="${SIZE_MIB}M" --time_based --runtime="$RUNTIME" \
        --ramp_time=1 --randrepeat=1 --randseed=13 --output-format=json >"$WORK/fio.json"
    c1=$(cpu_ticks)
    s1=$(ctx_switches)
    o1=$(osd_ticks)
    python3 -c '
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]  # the nbd engine prints a line first
side = j["read"] if j["read"]["io_bytes"] else j["write"]
# CPU over the ramp-up too: count the requests of the whole run.
n = side["total_ios"] * (1 + 1 / float(sys.argv[3]))
rate = side["bw_bytes"] / 1048576 if sys.argv[2] == "bw" else side["iops"]
ticks = (int(sys.argv[5]) - int(sys.argv[4])) * 1e6 / float(sys.argv[6])
switches = int(sys.argv[8]) - int(sys.argv[7])
osd = (int(sys.argv[10]) - int(sys.argv[9])) * 1e6 / float(sys.argv[6])
print("%.1f %.1f %.2f %.1f" % (rate, ticks / max(n, 1), switches / max(n, 1), osd / max(n, 1)))
' "$WORK/fio.json" "$what" "$RUNTIME" "$c0" "$c1" "$(getconf CLK_TCK)" "$s0" "$s1" "$o0" "$o1"
}

# User + system CPU ticks of the running server (0 without one).
cpu_ticks() { [ -z "$SERVER" ] && echo 0 || awk '{print $14 + $15}' "/proc/$SERVER/stat"; }

# User + system CPU ticks of the OSD (all its threads).
osd_ticks() { awk '{print $14 + $15}' "/proc/$OSD_PID/stat"; }

# Context switches of the running server's threads so far (threads that ended between
# two readings are not counted: tokio's idle blocking threads live 10 s, longer than a
# run's gaps).
ctx_switches() {
    [ -n "$SERVER" ] || { echo 0; return; }
    cat /proc/"$SERVER"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'
}

ALL=("read 1M 8 bw" "write 1M 8 bw" "randread 4k $IODEPTH iops" "randwrite 4k $IODEPTH iops")
TESTS=()
for t in "${ALL[@]}"; do
    case " ${BENCH_TESTS:-read write randread randwrite} " in *" ${t%% *} "*) TESTS+=("$t") ;; esac
done
declare -A R C S O
for round in $(seq 1 "$ROUNDS"); do
    order=(vmcrypt librbd)
    [ $((round % 2)) = 0 ] && order=(librbd vmcrypt)
    for s in "${order[@]}"; do
        start_server "$s"
        for t in "${TESTS[@]}"; do
            set -- $t
            read -r rate us cs osd < <(run_fio "$1" "$2" "$3" "$4")
            R[$s $1]+="$rate "
            C[$s $1]+="$us "
            S[$s $1]+="$cs "
            O[$s $1]+="$osd "
        done
        stop_server
    done
    [ "$CEILING" = 1 ] || continue
    for t in "${TESTS[@]}"; do
        set -- $t
        read -r rate _ _ osd < <(run_fio "$1" "$2" "$3" "$4")
        R[ceiling $1]+="$rate "
        O[ceiling $1]+="$osd "
    done
done

median() { bench_median %.1f; }
printf '\n%-10s %14s %14s %8s   %s\n' test vmcrypt librbd ratio "server CPU per request (vmcrypt / librbd)"
for t in "${TESTS[@]}"; do
    set -- $t
    v=$(echo "${R[vmcrypt $1]}" | median)
    l=$(echo "${R[librbd $1]}" | median)
    unit=$([ "$4" = bw ] && echo MiB/s || echo IOPS)
    printf '%-10s %8s %-5s %8s %-5s %7.2fx   %s / %s us\n' "$1" "$v" "$unit" "$l" "$unit" \
        "$(awk -v a="$v" -v b="$l" 'BEGIN {print (b > 0 ? a / b : 0)}')" \
        "$(echo "${C[vmcrypt $1]}" | median)" "$(echo "${C[librbd $1]}" | median)"
    echo "    rounds: vmcrypt ${R[vmcrypt $1]}/ librbd ${R[librbd $1]}"
    echo "    context switches per request: $(echo "${S[vmcrypt $1]}" | bench_median %.2f)" \
        "/ $(echo "${S[librbd $1]}" | bench_median %.2f)"
    osd="$(echo "${O[vmcrypt $1]}" | median) / $(echo "${O[librbd $1]}" | median)"
    if [ "$CEILING" = 1 ]; then
        c=$(echo "${R[ceiling $1]}" | median)
        echo "    ceiling (fio rbd engine, unencrypted copy, no NBD): $c $unit" \
            "(vmcrypt $(awk -v a="$v" -v b="$c" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')x of it);" \
            "rounds: ${R[ceiling $1]}"
        osd+=" / $(echo "${O[ceiling $1]}" | median)"
    fi
    echo "    OSD CPU per request (vmcrypt / librbd$([ "$CEILING" = 1 ] && echo " / ceiling")): $osd us"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(median of $ROUNDS rounds, ${RUNTIME} s each; target >= 1.0x sequential, >= 1.5x random)"
