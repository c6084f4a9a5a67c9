#!/usr/bin/env bash
# 4 KiB random read and write IOPS through the NBD export: vmcrypt serve vs qemu-nbd with
# QEMU's luks driver, same LUKS1 aes-256-xts-plain64 image on tmpfs, measured with fio's
# nbd engine (libnbd). Target (issues 5 and 11): >= 1.5x qemu-nbd for both, on a quiet
# machine and with one core busy.
#
# usage: scripts/bench-iops.sh [SIZE_MIB]
#   SIZE_MIB       image size in MiB (default 256; BENCH_SIZE_MIB in the environment too)
#   BENCH_ROUNDS   (environment) rounds (default 3); the order of the servers is reversed
#                  every other round, and each figure is the median over rounds
#   BENCH_RUNTIME  (environment) seconds per fio run (default 5, plus 1 s of ramp-up)
#   BENCH_IODEPTH  (environment) fio iodepth (default 16; one job, one connection)
#   BENCH_DIR      (environment) where the images go (default /dev/shm)
#   BUILD          (environment) 0 skips `cargo build --release -p vmcrypt` (default 1)
#   BENCH_VMCRYPT  (environment) the vmcrypt binary to measure (default
#                  target/release/vmcrypt, built first unless BUILD=0)
#   BENCH_QEMU_BATCH (environment) 1 runs qemu-nbd under SCHED_BATCH (`chrt -b 0`) as
#                  `vmcrypt serve` runs by default, to see what the policy alone gives it
#   BENCH_BUSY     (environment) 1 keeps one core busy (`sha256sum /dev/zero`) while each
#                  server runs; 0 (default) does not; "both" measures both ways, each with
#                  its own rounds. The busy process runs in a session of its own, like
#                  another program on the machine (with the kernel's autogroups each
#                  session gets its fair share of the CPU, whatever its thread count).
#   BENCH_ISOLATE  (environment) 1 runs servers, fio and the busy process in sessions at
#                  autogroup nice -20, so load from other sessions on a shared machine
#                  disturbs the measurement less (needs root); 0 (default) does not
#
# Each server gets its own copy of the image (the write runs change it) and serves it for
# one randread run then one randwrite run, and is stopped after them; only one server runs
# at a time. fio uses a fixed randseed, so both servers see the same offsets.
# Besides IOPS it prints, per server, the context switches and the CPU time (user and
# system, all threads) per request, read from /proc over each fio run: the profile that
# shows where a server spends its time. It starts with the CPU model, the kernel and the
# load average, and ends with the load average again.
# Exits 0 whether or not the target is met (it measures); non-zero if a tool fails or is
# missing. The machine may be shared: say so when quoting numbers.
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"

SIZE_MIB=${1:-${BENCH_SIZE_MIB:-256}}
ROUNDS=${BENCH_ROUNDS:-3}
RUNTIME=${BENCH_RUNTIME:-5}
IODEPTH=${BENCH_IODEPTH:-16}
QEMU_BATCH=${BENCH_QEMU_BATCH:-0}
BUSY=${BENCH_BUSY:-0}
ISOLATE=${BENCH_ISOLATE:-0}
case "$BUSY" in 0) MODES=(quiet) ;; 1) MODES=(busy) ;; both) MODES=(quiet busy) ;;
    *) echo "BENCH_BUSY must be 0, 1 or both" >&2; exit 2 ;; esac
case "$ISOLATE" in 0|1) ;; *) echo "BENCH_ISOLATE must be 0 or 1" >&2; exit 2 ;; esac
case "$SIZE_MIB$ROUNDS$RUNTIME$IODEPTH" in
    *[!0-9]*|"") echo "usage: $0 [SIZE_MIB] (BENCH_ROUNDS, BENCH_RUNTIME, BENCH_IODEPTH numeric)" >&2; exit 2 ;;
esac
[ "$SIZE_MIB" -ge 16 ] && [ "$ROUNDS" -ge 1 ] && [ "$RUNTIME" -ge 1 ] && [ "$IODEPTH" -ge 1 ] || {
    echo "SIZE_MIB must be >= 16, BENCH_ROUNDS, BENCH_RUNTIME and BENCH_IODEPTH >= 1" >&2; exit 2; }

cd "$(dirname "$0")/.."
bench_require "install qemu-utils and fio" qemu-img qemu-nbd fio sha256sum setsid
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine (needs fio >= 3.20 built with libnbd)" >&2; exit 2; }

# Peak use: plaintext, the LUKS1 image and one copy per server.
BASE=$(bench_dir $((SIZE_MIB * 4 + 64)))

if [ "$ISOLATE" = 1 ] && [ "${BENCH_ISOLATED:-}" != 1 ]; then
    # Again in a session of its own (so an autogroup of its own) at nice -20.
    bench_build
    BUILD=0 BENCH_ISOLATED=1 exec setsid --wait bash -c \
        'echo -20 > /proc/self/autogroup && exec "$@"' isolate "$0" "$SIZE_MIB"
fi
bench_vmcrypt
QEMU_NBD=(qemu-nbd)
[ "$QEMU_BATCH" = 1 ] && QEMU_NBD=(chrt -b 0 qemu-nbd)

HOG_PID=
on_exit() { stop_hog; }
bench_workdir "$BASE" iops

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
        qemu) "${QEMU_NBD[@]}" --persistent -k "$SOCK" --object "$SECRET" \
                     --image-opts "driver=luks,key-secret=s0,file.filename=$img" 2>"$DIR/server.log" & ;;
    esac
    SERVER_PID=$!
    bench_await_nbd "$1" "$SOCK" "$DIR/server.log"
}

# Keep one core busy in a session of its own (at the bench's autogroup nice).
start_hog() {
    local nice
    nice=$(awk '{ print $NF }' /proc/self/autogroup 2>/dev/null || echo 0)
    setsid bash -c 'echo "$1" > /proc/self/autogroup 2>/dev/null; exec sha256sum /dev/zero' hog "$nice" &
    HOG_PID=$!
}

stop_hog() {
    if [ -n "$HOG_PID" ]; then kill "$HOG_PID" 2>/dev/null || true; wait "$HOG_PID" 2>/dev/null || true; fi
    HOG_PID=
}

# "context switches, CPU ticks" of the server, all threads, so far.
server_usage() {
    local cs=0 ticks=0 t v
    for t in /proc/"$SERVER_PID"/task/*; do
        v=$(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$t/status" 2>/dev/null) || continue
        cs=$((cs + v))
        v=$(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null) || continue
        ticks=$((ticks + v))
    done
    echo "$cs $ticks"
}

SERVERS=(vmcrypt qemu)
PATTERNS=(randread randwrite)
TICK=$(getconf CLK_TCK)
declare -A RES CS CPU
echo "CPU: $(bench_cpu_model), $(nproc) cores;" \
    "kernel $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg) at the start"
for mode in "${MODES[@]}"; do
    for ((r = 1; r <= ROUNDS; r++)); do
        order=("${SERVERS[@]}")
        ((r % 2 == 0)) && order=(qemu vmcrypt)
        for s in "${order[@]}"; do
            start_server "$s"
            [ "$mode" = busy ] && start_hog
            for p in "${PATTERNS[@]}"; do
                read -r cs0 t0 < <(server_usage)
                v=$(bench_fio "$p")
                read -r cs1 t1 < <(server_usage)
                reqs=$(awk -v v="$v" -v t="$RUNTIME" 'BEGIN { print v * t }')
                k=$mode-$p-$s
                RES[$k]="${RES[$k]:-} $v"
                CS[$k]="${CS[$k]:-} $(awk -v c=$((cs1 - cs0)) -v n="$reqs" 'BEGIN { printf "%.3f", c / n }')"
                CPU[$k]="${CPU[$k]:-} $(awk -v c=$((t1 - t0)) -v n="$reqs" -v hz="$TICK" 'BEGIN { printf "%.2f", c * 1e6 / hz / n }')"
                printf 'round %d  %-5s %-9s  %-8s %10.0f IOPS\n' "$r" "$mode" "$p" "$s" "$v" >&2
            done
            stop_hog
            bench_stop_server
        done
    done
done

echo
echo "$SIZE_MIB MiB LUKS1 image on $BASE, fio nbd engine, bs=4k iodepth=$IODEPTH numjobs=1," \
    "${RUNTIME} s per run, median of $ROUNDS rounds; busy: sha256sum /dev/zero beside the server" \
    "(own session)$([ "$ISOLATE" = 1 ] && echo "; isolated: autogroup nice -20")$(
    [ "$QEMU_BATCH" = 1 ] && echo "; qemu-nbd under SCHED_BATCH")"
printf '%-5s %-9s  %-30s %10s %8s %8s\n' "load" "pattern" "server" "IOPS" "cs/req" "CPU us/req"
for mode in "${MODES[@]}"; do
    for p in "${PATTERNS[@]}"; do
        for s in "${SERVERS[@]}"; do
            k=$mode-$p-$s
            case $s in vmcrypt) name="vmcrypt serve (LUKS1)" ;; qemu) name="qemu-nbd driver=luks" ;; esac
            printf '%-5s %-9s  %-30s %10.0f %8.2f %8.2f\n' "$mode" "$p" "$name" \
                "$(echo "${RES[$k]}" | bench_median)" "$(echo "${CS[$k]}" | bench_median)" "$(echo "${CPU[$k]}" | bench_median)"
        done
    done
done

echo
printf '%-5s %-9s  %-30s %9s %9s %5s\n' "load" "pattern" "ratio" "measured" "target" "met"
for mode in "${MODES[@]}"; do
    for p in "${PATTERNS[@]}"; do
        a=$(echo "${RES[$mode-$p-vmcrypt]}" | bench_median)
        b=$(echo "${RES[$mode-$p-qemu]}" | bench_median)
        ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')
        met=$(awk -v r="$ratio" 'BEGIN { print (r >= 1.5) ? "yes" : "NO" }')
        printf '%-5s %-9s  %-30s %8sx %9s %5s\n' "$mode" "$p" "vmcrypt serve / qemu-nbd luks" "$ratio" ">= 1.5x" "$met"
    done
done
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
