#!/usr/bin/env bash
# Online LUKS2 reencryption latency: `vmcrypt serve --control` of a LUKS2 image in
# reencryption state while qemu-io writes through the export (64 KiB writes at random
# offsets, one qemu-io process after another). Per hotzone size, on a fresh copy of one
# image: the writer runs 3 s before the reencryption (baseline), then throughout it.
# Printed from the server's own measurements (`luks reencrypt --online --status`): the
# longest request of the LUKS driver (admission wait on the hotzone lock + its I/O)
# before and during the run, the longest hotzone (marked, in-flight requests drained,
# protection + header + data written and flushed, header moved on), and the run's time.
# The result is checked: no requirement left (cryptsetup luksDump).
#
# usage: scripts/bench-online-reencrypt.sh [SIZE_MIB [HOTZONES...]]
#   SIZE_MIB  data size (default 256); HOTZONES default: 64K 256K 1M 4M
#   BENCH_DIR (environment) where the images go (default /tmp)
#   BUILD     (environment) 0 skips `cargo build --release -p vmcrypt`
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
SIZE_MIB=${1:-256}
shift || true
ZONES=("$@")
[ ${#ZONES[@]} -gt 0 ] || ZONES=(64K 256K 1M 4M)
cd "$(dirname "$0")/.."
bench_require "install cryptsetup-bin, qemu-utils" cryptsetup qemu-io
bench_vmcrypt
BASE=$(bench_dir 0 /tmp)
DIR=$(mktemp -d "$BASE/vmcrypt-online.XXXXXX")
SERVER=
WRITER=
cleanup() {
    [ -z "$WRITER" ] || kill "$WRITER" 2>/dev/null || true
    [ -z "$SERVER" ] || kill "$SERVER" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
echo "cpu: $(bench_cpu_model), $(nproc) cores; vmcrypt $(git rev-parse --short HEAD)"
echo "image: ${SIZE_MIB} MiB data, aes-xts-plain64 512-bit, 4096-byte sectors, checksum resilience, in $BASE"
printf 'online bench' > "$DIR/pw"
KDF=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)
truncate -s $((SIZE_MIB + 16))M "$DIR/base.img"
cryptsetup luksFormat --type luks2 -q "${KDF[@]}" --sector-size 4096 --key-file "$DIR/pw" "$DIR/base.img"
head -c ${SIZE_MIB}M /dev/urandom > "$DIR/plain"
"$VM" convert -q -n -f raw --target-image-opts --object "secret,id=s0,file=$DIR/pw" \
    "$DIR/plain" "driver=luks,key-secret=s0,file.filename=$DIR/base.img"
rm "$DIR/plain"

writer() {
    local url="nbd+unix:///?socket=$DIR/nbd.sock"
    while :; do
        local args=()
        for _ in $(seq 32); do
            args+=(-c "write -P 7 $(( (RANDOM * 32768 + RANDOM) % (SIZE_MIB * 16) * 65536 )) 64k")
        done
        qemu-io -f raw "$url" "${args[@]}" >/dev/null || return 1
    done
}

field() { sed -n "s/.*$1 \([0-9.]*\) ms.*/\1/p"; }

printf '%-8s %10s %12s %12s %12s %9s\n' hotzone hotzones "req base ms" "req run ms" "hotzone ms" "run s"
for zone in "${ZONES[@]}"; do
    cp "$DIR/base.img" "$DIR/d.img"
    "$VM" luks reencrypt --init-only --no-progress --key-file "$DIR/pw" "${KDF[@]}" "$DIR/d.img"
    rm -f "$DIR/nbd.sock" "$DIR/ctl.sock"
    "$VM" serve --persistent --socket "$DIR/nbd.sock" --control "$DIR/ctl.sock" \
        --object "secret,id=s0,file=$DIR/pw" \
        --image-opts "driver=luks,key-secret=s0,file.filename=$DIR/d.img" 2>/dev/null &
    SERVER=$!
    for _ in $(seq 200); do [ -S "$DIR/ctl.sock" ] && break; sleep 0.05; done
    writer & WRITER=$!
    sleep 3
    base=$("$VM" luks reencrypt --online --status "$DIR/ctl.sock" 2>&1 | field "longest request")
    t0=$(date +%s.%N)
    out=$("$VM" luks reencrypt --online --no-progress --hotzone-size "$zone" "$DIR/ctl.sock" 2>&1)
    t1=$(date +%s.%N)
    kill "$WRITER"; wait "$WRITER" 2>/dev/null || true; WRITER=
    kill "$SERVER"; wait "$SERVER" || { echo "server failed" >&2; exit 1; }; SERVER=
    case $out in *"Reencryption finished"*) ;; *) echo "run failed: $out" >&2; exit 1 ;; esac
    if cryptsetup luksDump "$DIR/d.img" | grep -q Requirements; then
        echo "requirement left after the run" >&2; exit 1
    fi
    n=$(sed -n 's/.* bytes, \([0-9]*\) hotzones.*/\1/p' <<<"$out")
    printf '%-8s %10s %12s %12s %12s %9.2f\n' "$zone" "$n" "$base" \
        "$(field "longest request" <<<"$out")" "$(field "longest hotzone" <<<"$out")" \
        "$(echo "$t1 - $t0" | bc -l)"
done
