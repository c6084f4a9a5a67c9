#!/usr/bin/env bash
# Server memory against the number of clients: `vmcrypt serve` and `qemu-nbd` export the
# same encrypted qcow2 image (qcow2 + LUKS, aes-256-xts) read-only, and N clients
# (nbdcopy to null:, each reading the whole image) run at once; the peak resident size
# of each server (VmHWM) is printed after each N. A flat column is the goal: memory
# bounded by `--max-inflight` plus a constant, whatever the number of clients.
#
# usage: scripts/bench-clients.sh [SIZE_MIB [CLIENTS...]]
#   SIZE_MIB  image size (default 256); CLIENTS default: 1 8 64
#   BENCH_DIR (environment) where the image goes (default /dev/shm)
#   BUILD     (environment) 0 skips `cargo build --release -p vmcrypt`
#   EXTRA     (environment) extra `vmcrypt serve` options, e.g. "--max-inflight 64M"
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
SIZE_MIB=${1:-256}
shift || true
CLIENTS=("$@")
[ ${#CLIENTS[@]} -gt 0 ] || CLIENTS=(1 8 64)
BASE=$(bench_dir 0)
cd "$(dirname "$0")/.."
bench_require "install qemu-utils, libnbd-bin" qemu-img qemu-nbd nbdcopy
bench_vmcrypt
bench_banner
bench_workdir "$BASE" clients
printf 'clients bench' > "$DIR/pw"
SECRET="secret,id=s0,file=$DIR/pw"
IMG=$DIR/e.qcow2
OPTS="driver=qcow2,file.filename=$IMG,encrypt.key-secret=s0"
qemu-img create -q -f qcow2 --object "$SECRET" -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 "$IMG" "${SIZE_MIB}M"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$DIR/plain"
qemu-img convert -n --object "$SECRET" -f raw "$DIR/plain" --target-image-opts "$OPTS"
rm -f "$DIR/plain"

hwm() { awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$1/status"; }
# $1 = side; prints "N:MiB" for each client count.
measure() {
    local sock=$DIR/$1.sock n i pids out=""
    rm -f "$sock"
    case "$1" in
        vmcrypt) # shellcheck disable=SC2086
            "$VM" serve --persistent --read-only --shared 0 ${EXTRA:-} --socket "$sock" \
                --object "$SECRET" --image-opts "$OPTS" 2>"$DIR/server.log" & ;;
        qemu) qemu-nbd --persistent --read-only --shared 0 -k "$sock" --object "$SECRET" \
                --image-opts "$OPTS" 2>"$DIR/server.log" & ;;
    esac
    SERVER_PID=$!
    for ((i = 0; i < 200; i++)); do
        [ -S "$sock" ] && nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1 && break
        sleep 0.05
    done
    for n in "${CLIENTS[@]}"; do
        pids=()
        for ((i = 0; i < n; i++)); do
            nbdcopy "nbd+unix:///?socket=$sock" null: & pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p" || { echo "a client of $1 failed" >&2; cat "$DIR/server.log" >&2; exit 3; }; done
        out+="$n:$(hwm "$SERVER_PID") "
    done
    bench_stop_server
    echo "$out"
}
V=$(measure vmcrypt)
Q=$(measure qemu)
printf '\n%8s %14s %14s   (peak resident MiB after N concurrent clients, %s MiB image)\n' clients vmcrypt qemu-nbd "$SIZE_MIB"
i=0
for n in "${CLIENTS[@]}"; do
    v=$(tr ' ' '\n' <<<"$V" | grep "^$n:" | cut -d: -f2)
    q=$(tr ' ' '\n' <<<"$Q" | grep "^$n:" | cut -d: -f2)
    printf '%8s %14s %14s\n' "$n" "$v" "$q"
    i=$((i + 1))
done
