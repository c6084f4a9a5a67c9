#!/usr/bin/env bash
# Offline LUKS2 reencryption (a new volume key): `vmcrypt luks reencrypt` against
# `cryptsetup reencrypt --force-offline-reencrypt` on the same image (aes-xts-plain64,
# 512-bit key, the same sector size) with the same resilience mode and hotzone size.
# Each round starts both tools from a byte-identical copy of one freshly formatted and
# filled image; the wall time of each run is measured and the medians and the ratio
# (cryptsetup / vmcrypt) printed per mode, with the median CPU time (user + system, as
# /usr/bin/time reports it: what is charged to the process, not kernel threads) of each
# tool: on a loaded machine wall times vary with the other load, CPU times much less.
# The load average is printed before and after. Every vmcrypt result is checked:
# cryptsetup must see no requirement left and the data must decrypt to the original
# plaintext. With journal among the modes, the journal's floor on this filesystem is
# printed too (`lib/write-floor.py`, python3): the time of its writes alone, which form
# one chain, and the best ratio against cryptsetup that floor allows.
#
# usage: scripts/bench-reencrypt.sh [SIZE_MIB [ROUNDS [MODES...]]]
#   SIZE_MIB  data size (default 1024); ROUNDS default 5; MODES default: checksum journal none
#   BENCH_DIR (environment) where the images go (default /dev/shm when it has room, else /tmp)
#   HOTZONE   (environment) hotzone size for both tools (default 64M)
#   SECTOR    (environment) encryption sector size (default 4096)
#   BUILD     (environment) 0 skips `cargo build --release -p vmcrypt`
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"
SIZE_MIB=${1:-1024}
ROUNDS=${2:-5}
shift 2 || shift $# || true
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(checksum journal none)
HOTZONE=${HOTZONE:-64M}
SECTOR=${SECTOR:-4096}
cd "$(dirname "$0")/.."
bench_require "install cryptsetup-bin" cryptsetup
[ -x /usr/bin/time ] || { echo "/usr/bin/time not found (install time)" >&2; exit 2; }
bench_vmcrypt
BENCH_DIR=$(bench_dir $(((SIZE_MIB + 16) * 3)) shm-or-tmp)
bench_banner
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cryptsetup: $(cryptsetup --version); vmcrypt: $(git rev-parse --short HEAD)"
echo "image: ${SIZE_MIB} MiB data, aes-xts-plain64 512-bit, ${SECTOR}-byte sectors, hotzone $HOTZONE, in $BENCH_DIR, $ROUNDS rounds"
DIR=$(mktemp -d "$BENCH_DIR/vmcrypt-reenc.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
printf 'reencrypt bench' > "$DIR/pw"
KDF=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)
truncate -s "$((SIZE_MIB + 16))M" "$DIR/base.img"
cryptsetup luksFormat --type luks2 -q "${KDF[@]}" --sector-size "$SECTOR" --key-file "$DIR/pw" "$DIR/base.img"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$DIR/plain"
SECRET="secret,id=s0,file=$DIR/pw"
"$VM" convert -q -n -f raw --object "$SECRET" "$DIR/plain" --target-image-opts \
    "driver=luks,key-secret=s0,file.filename=$DIR/base.img"
want=$(sha256sum < "$DIR/plain" | cut -d' ' -f1)
rm -f "$DIR/plain"

# The names the rounds below use. `timed CMD...` prints the wall time of CMD and its
# CPU time (user + system); `median N` the median of column N of its input.
timed() {
    local wall
    wall=$(bench_timed -q /usr/bin/time -f '%U %S' -o "$DIR/cpu" "$@")
    echo "$wall $(awk '{ printf "%.2f", $1 + $2 }' "$DIR/cpu")"
}
median() { awk -v c="$1" '{ print $c }' | bench_median; }
verify() {
    cryptsetup luksDump "$1" | grep -q Requirements && { echo "requirement left in $1" >&2; exit 1; }
    "$VM" convert -q -O raw --object "$SECRET" --image-opts \
        "driver=luks,key-secret=s0,file.filename=$1" "$DIR/out"
    got=$(sha256sum < "$DIR/out" | cut -d' ' -f1)
    rm -f "$DIR/out"
    [ "$got" = "$want" ] || { echo "plaintext differs after vmcrypt" >&2; exit 1; }
}

printf '%-9s %12s %12s %8s %12s %14s\n' mode "vmcrypt s" "cryptsetup s" ratio "vmcrypt cpu" "cryptsetup cpu"
for mode in "${MODES[@]}"; do
    : > "$DIR/vm.t"
    : > "$DIR/cs.t"
    for ((r = 0; r < ROUNDS; r++)); do
        cp --sparse=never "$DIR/base.img" "$DIR/a.img"
        timed "$VM" luks reencrypt --no-progress -q --key-file "$DIR/pw" "${KDF[@]}" \
            --resilience "$mode" --hotzone-size "$HOTZONE" "$DIR/a.img" >> "$DIR/vm.t"
        verify "$DIR/a.img"
        cp --sparse=never "$DIR/base.img" "$DIR/a.img"
        timed cryptsetup reencrypt --force-offline-reencrypt -q --key-file "$DIR/pw" "${KDF[@]}" \
            --resilience "$mode" --hotzone-size "$HOTZONE" "$DIR/a.img" >> "$DIR/cs.t"
    done
    cp "$DIR/cs.t" "$DIR/cs.$mode"
    vm=$(median 1 < "$DIR/vm.t")
    cs=$(median 1 < "$DIR/cs.t")
    printf '%-9s %12.3f %12.3f %7.2fx %12.2f %14.2f\n' "$mode" "$vm" "$cs" "$(echo "$cs / $vm" | bc -l)" \
        "$(median 2 < "$DIR/vm.t")" "$(median 2 < "$DIR/cs.t")"
done
# The journal's floor: its writes form one chain (journal, then data, hotzone after
# hotzone) that more cores cannot shorten; `lib/write-floor.py` times that chain alone,
# in pieces the size of the journal area (the keyslots area less two key slots: the
# old key's and the new one's), and the ratio it would give against cryptsetup.
if [[ " ${MODES[*]} " == *" journal "* ]] && command -v python3 > /dev/null; then
    area=$(cryptsetup luksDump --dump-json-metadata "$DIR/base.img" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(int(m["config"]["keyslots_size"]) - 2 * int(m["keyslots"]["0"]["area"]["size"]))')
    hz=$(numfmt --from=iec "$HOTZONE")
    piece=$((hz < area ? hz : area))
    floor=$(python3 scripts/lib/write-floor.py "$DIR/floor.img" "$SIZE_MIB" "$piece" "$ROUNDS")
    cs=$(median 1 < "$DIR/cs.journal")
    printf 'journal floor: %.3f s for its writes alone (%d-byte pieces, one chain): at most %.2fx cryptsetup here\n' \
        "$floor" "$piece" "$(echo "$cs / $floor" | bc -l)"
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
