# Helpers shared by scripts/bench-*.sh; sourced, not run:
#     . "$(dirname "$0")/lib/bench.sh"
# A problem ends the script with a message on stderr naming it: status 2 for usage or
# the environment, 1 for a timed command that failed, 3 for a server that did not
# start, 4 for fio. Nothing here prints to stdout but what a function is asked for, so
# each script's output stays its own.
#   BENCH_ROOT          the checkout (absolute path)
#   bench_cpu_model     the CPU's model name from /proc/cpuinfo
#   bench_banner        "cpu: MODEL, N cores; kernel RELEASE"
#   bench_require HINT TOOL...   exit 2 naming the first TOOL not on PATH: "T not found (HINT)"
#   bench_dir NEED_MIB [DEFAULT] where the images go (see below)
#   bench_build         build the release vmcrypt (not with BUILD=0 or BENCH_VMCRYPT set)
#   bench_build_example PACKAGE NAME   build that release example (not with BUILD=0)
#   bench_vmcrypt       bench_build, then set VM to the binary to measure
#   bench_timed [-q] CMD...  run CMD (stdout discarded; -q: stderr too), print its
#                       wall time in seconds; first bench_warm (below)
#   bench_page_reporting  "on" when a virtio balloon reports free pages to the host
#   bench_warming       true when bench_warm does something: page reporting is on,
#                       BENCH_WARM_MIB > 0 and BENCH_WARM is not 0
#   bench_warm          touch and free BENCH_WARM_MIB of memory, when bench_warming
#   bench_median [FMT]  median of the numbers on stdin
#   bench_workdir BASE NAME   make DIR, removed (with a server still running) at exit
#   bench_await_nbd NAME SOCK LOG   wait until the server SERVER_PID answers on SOCK
#   bench_stop_server   stop the server SERVER_PID, if any
#   bench_fio PATTERN   one fio run against the NBD server on SOCK; prints IOPS
# Environment read here: BUILD (0 skips the build), BENCH_VMCRYPT (a vmcrypt binary to
# measure instead of target/release/vmcrypt; no build then), BENCH_DIR, BENCH_WARM_MIB
# (a script's default; BENCH_WARM=0 turns the warming off).

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

bench_cpu_model() {
    awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo
}

bench_banner() {
    echo "cpu: $(bench_cpu_model), $(nproc) cores; kernel $(uname -r)"
    [ "$BENCH_REPORTING" = on ] || return 0
    if bench_warming; then
        echo "free page reporting: on (virtio balloon); each timed command starts right" \
            "after $BENCH_WARM_MIB MiB of memory were touched and freed"
    else
        echo "free page reporting: on (virtio balloon)"
    fi
}

# A guest whose virtio balloon has free page reporting (feature bit 5) hands the pages it
# frees back to the host about 2 s later, and the next touch of each costs a fault in the
# host: on a Firecracker guest, writing 1 GiB to tmpfs took 0.55-0.74 s right after a
# free and 1.85-2.5 s after 5 s idle. A timed command that writes a new file pays that
# at random, whichever tool it runs; bench_warm touches and frees memory just before it,
# so that the kernel hands the command pages the host still backs (freed pages are used
# before reported ones), and each side of a ratio sees the same memory.
bench_page_reporting() {
    local f
    for f in /sys/bus/virtio/drivers/virtio_balloon/virtio*/features; do
        [ -r "$f" ] || continue
        [ "$(cut -c6 "$f")" = 1 ] && { echo on; return; }
    done
    echo off
}

BENCH_REPORTING=$(bench_page_reporting)

bench_warming() {
    [ "$BENCH_REPORTING" = on ] && [ "${BENCH_WARM_MIB:-0}" -gt 0 ] && [ "${BENCH_WARM:-1}" != 0 ]
}

bench_warm() {
    bench_warming || return 0
    local f
    f=$(mktemp /dev/shm/vmcrypt-warm.XXXXXX)
    # A full /dev/shm warms what fits; the file goes either way.
    dd if=/dev/zero of="$f" bs=1M count="$BENCH_WARM_MIB" status=none 2>/dev/null || true
    rm -f "$f"
}

bench_require() {
    local hint=$1 t
    shift
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "$t not found ($hint)" >&2; exit 2; }
    done
}

# Where the images go: $BENCH_DIR if set, else DEFAULT (/dev/shm unless given). With
# DEFAULT "shm-or-tmp", /dev/shm when it has more than NEED_MIB free, else /tmp, and no
# check. Otherwise the directory must have NEED_MIB free (0: not checked) or the script
# exits 2.
bench_dir() {
    local need=$1 default=${2:-/dev/shm} dir free
    dir=${BENCH_DIR:-$default}
    if [ "$default" = shm-or-tmp ]; then
        if [ -z "${BENCH_DIR:-}" ]; then
            dir=/tmp
            free=$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
            [ -n "$free" ] && [ "$free" -gt "$need" ] && dir=/dev/shm
        fi
    elif [ "$need" -gt 0 ]; then
        free=$(df -Pm "$dir" | awk 'NR == 2 { print $4 }')
        if [ "$free" -lt "$need" ]; then
            echo "$dir has $free MiB free, this run needs $need MiB: pass a smaller SIZE_MIB" >&2
            exit 2
        fi
    fi
    echo "$dir"
}

bench_build() {
    [ "${BUILD:-1}" != 0 ] && [ -z "${BENCH_VMCRYPT:-}" ] || return 0
    (cd "$BENCH_ROOT" && cargo build --quiet --release -p vmcrypt)
}

bench_build_example() {
    [ "${BUILD:-1}" != 0 ] || return 0
    (cd "$BENCH_ROOT" && cargo build --quiet --release -p "$1" --example "$2")
}

bench_vmcrypt() {
    bench_build
    VM=${BENCH_VMCRYPT:-$BENCH_ROOT/target/release/vmcrypt}
    [ -x "$VM" ] || { echo "$VM not found (run with BUILD=1)" >&2; exit 2; }
}

# A failing CMD ends the script (exit 1, naming it) instead of being timed.
bench_timed() {
    local t0 t1 quiet=
    if [ "$1" = -q ]; then quiet=1; shift; fi
    bench_warm
    t0=$(date +%s.%N)
    if [ -n "$quiet" ]; then
        "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
    else
        "$@" >/dev/null || { echo "failed: $*" >&2; exit 1; }
    fi
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'
}

# Numbers separated by blanks or newlines. An odd count prints the middle one as given;
# an even count the mean of the middle two, formatted by FMT (default %.6f).
bench_median() {
    awk '{ for (i = 1; i <= NF; i++) print $i }' | sort -g |
        awk -v f="${1:-%.6f}" '{ v[NR] = $1 }
            END { if (NR % 2) print v[(NR + 1) / 2]; else printf f "\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The NBD server a script started and waits for; empty when none runs.
SERVER_PID=

# Make DIR, a new directory BASE/vmcrypt-NAME.XXXXXX for the run's files. When the script
# exits, its function `on_exit` runs (if it defines one), then the server SERVER_PID is
# stopped and DIR removed. Not from a subshell: it sets DIR and the EXIT trap.
bench_workdir() {
    DIR=$(mktemp -d "$1/vmcrypt-$2.XXXXXX")
    trap bench_exit EXIT
}

bench_exit() {
    if declare -F on_exit >/dev/null; then on_exit; fi
    bench_stop_server
    rm -rf "$DIR"
}

# Wait (at most 20 s) until the server SERVER_PID, called NAME, answers on SOCK; exit 3
# with its log (the file LOG) if it exits or does not start.
bench_await_nbd() {
    local name=$1 sock=$2 log=$3 i
    for ((i = 0; i < 400; i++)); do
        if [ -S "$sock" ] && qemu-img info "nbd+unix:///?socket=$sock" >/dev/null 2>&1; then return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "server $name exited:" >&2; cat "$log" >&2; exit 3; }
        sleep 0.05
    done
    echo "server $name did not start" >&2; cat "$log" >&2; exit 3
}

bench_stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}

# One fio run (nbd engine, 4 KiB blocks, one job, fixed seed) of PATTERN: randread or
# randwrite, time based (RUNTIME s after 1 s of ramp-up), or alloc, one pass writing every
# block once in random order; over SIZE_MIB MiB at IODEPTH against the server on SOCK
# (the script's variables; fio's stderr goes to DIR/fio.err). Prints IOPS; exits 4 if
# fio fails. Terse format v3: field 8 is read IOPS, 49 write IOPS, 5 the error code.
bench_fio() {
    local out field mode=(--time_based --ramp_time=1 --runtime="$RUNTIME" --norandommap) rw=$1
    if [ "$1" = alloc ]; then mode=(); rw=randwrite; fi
    out=$(fio --minimal --terse-version=3 --name="$1" --ioengine=nbd \
        --uri="nbd+unix:///?socket=$SOCK" --rw="$rw" --bs=4k --iodepth="$IODEPTH" --numjobs=1 \
        --size="${SIZE_MIB}M" "${mode[@]}" --randrepeat=0 --randseed=12345 2>"$DIR/fio.err") || {
        echo "fio $1 failed:" >&2; cat "$DIR/fio.err" >&2; exit 4; }
    case "$rw" in randread) field=8 ;; randwrite) field=49 ;; esac
    echo "$out" | awk -F';' -v f="$field" '
        $1 == 3 { if ($5 != 0) { print "fio error " $5 > "/dev/stderr"; exit 1 }
                  print $f; found = 1 }
        END { exit !found }' || { echo "fio $1: no result:" >&2; echo "$out" >&2; cat "$DIR/fio.err" >&2; exit 4; }
}
