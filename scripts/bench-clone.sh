#!/usr/bin/env bash
# A copy of an encrypted qcow2 image under a new volume key: `vmcrypt clone` vs
# `qemu-img convert` to a new key (plain and with -W, out-of-order writes), and the
# in-place `vmcrypt rekey` of the same image, in one run on tmpfs.
#
# usage: scripts/bench-clone.sh [SIZE_MIB]
#   SIZE_MIB      virtual size in MiB, fully allocated with random data (default 512;
#                 BENCH_SIZE_MIB in the environment too)
#   BENCH_ROUNDS  (environment) rounds (default 3); each figure is the median
#   BENCH_DIR     (environment) where the images go (default /dev/shm)
#   BUILD         (environment) 0 skips `cargo build --release -p vmcrypt` (default 1)
#
# The source is qcow2 + LUKS (aes-256-xts-plain64) made by qemu-img; every new header
# uses iter-time=10. Both tools spend a fixed time creating a LUKS header whatever
# iter-time says (qemu-img about 4 s here), so creating an empty 1 MiB image is timed as
# well and "data only" subtracts it. Correctness (exit 5 on a mismatch): qemu-img
# compare of each copy and of the re-keyed image against the source, with their secrets.
# Ratios are qemu/vmcrypt times: > 1 means vmcrypt is faster. The machine may be shared:
# say so when quoting numbers.
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"

SIZE_MIB=${1:-${BENCH_SIZE_MIB:-512}}
ROUNDS=${BENCH_ROUNDS:-3}
BASE=$(bench_dir 0)
case "$SIZE_MIB$ROUNDS" in
    *[!0-9]*|"") echo "usage: $0 [SIZE_MIB] (BENCH_ROUNDS numeric)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
bench_require "install qemu-utils" qemu-img
bench_vmcrypt
bench_banner

bench_workdir "$BASE" clone
printf 'old passphrase' > "$DIR/old"
printf 'new passphrase' > "$DIR/new"
OBJ=(--object "secret,id=s0,file=$DIR/old" --object "secret,id=s1,file=$DIR/new")
SRC="driver=qcow2,file.filename=$DIR/src.qcow2,encrypt.key-secret=s0"
NEWKEY=encrypt.format=luks,encrypt.key-secret=s1,encrypt.iter-time=10
fail() { echo "FAILED: $*" >&2; exit 5; }

echo "preparing $SIZE_MIB MiB of random data in a qcow2 + LUKS image in $DIR" >&2
head -c "$((SIZE_MIB * 1048576))" /dev/urandom > "$DIR/plain.raw"
qemu-img convert "${OBJ[@]}" -f raw -O qcow2 -o "${NEWKEY/s1/s0}" "$DIR/plain.raw" "$DIR/src.qcow2"
rm "$DIR/plain.raw"

declare -A T
for r in $(seq "$ROUNDS"); do
    rm -f "$DIR"/out*
    T[vm]+="$(bench_timed "$VM" clone -q "${OBJ[@]}" --image-opts "$SRC" -o "$NEWKEY" "$DIR/out.vm") "
    T[qi]+="$(bench_timed qemu-img convert "${OBJ[@]}" --image-opts "$SRC" -O qcow2 -o "$NEWKEY" "$DIR/out.qi") "
    T[qw]+="$(bench_timed qemu-img convert -W "${OBJ[@]}" --image-opts "$SRC" -O qcow2 -o "$NEWKEY" "$DIR/out.qw") "
    T[vm0]+="$(bench_timed "$VM" create -q "${OBJ[@]}" -f qcow2 -o "$NEWKEY" "$DIR/out.e1" 1M) "
    T[qi0]+="$(bench_timed qemu-img create -q "${OBJ[@]}" -f qcow2 -o "$NEWKEY" "$DIR/out.e2" 1M) "
    cp "$DIR/src.qcow2" "$DIR/out.rk"
    T[rk]+="$(bench_timed "$VM" rekey -q "${OBJ[@]}" --image-opts "driver=qcow2,file.filename=$DIR/out.rk,encrypt.key-secret=s0" -o "${NEWKEY#encrypt.format=luks,}") "
    if [ "$r" = 1 ]; then
        for o in vm qi qw rk; do
            qemu-img compare -q "${OBJ[@]}" --image-opts "$SRC" "driver=qcow2,file.filename=$DIR/out.$o,encrypt.key-secret=s1" \
                || fail "out.$o differs from the source"
        done
    fi
done
m() { bench_median <<<"${T[$1]}"; }
VMT=$(m vm); QIT=$(m qi); QWT=$(m qw); VM0=$(m vm0); QI0=$(m qi0); RKT=$(m rk)
mibs() { echo "scale=0; $SIZE_MIB / ($1)" | bc; }
ratio() { echo "scale=2; ($1) / ($2)" | bc; }
printf '%-44s %8s %10s\n' "case ($SIZE_MIB MiB, median of $ROUNDS)" seconds "MiB/s"
printf '%-44s %8.2f %10s\n' "vmcrypt clone" "$VMT" "$(mibs "$VMT")"
printf '%-44s %8.2f %10s\n' "qemu-img convert to a new key" "$QIT" "$(mibs "$QIT")"
printf '%-44s %8.2f %10s\n' "qemu-img convert -W to a new key" "$QWT" "$(mibs "$QWT")"
printf '%-44s %8.2f %10s\n' "vmcrypt rekey (in place)" "$RKT" "$(mibs "$RKT")"
printf '%-44s %8.2f\n' "vmcrypt create (empty, header cost)" "$VM0"
printf '%-44s %8.2f\n' "qemu-img create (empty, header cost)" "$QI0"
DV=$(echo "$VMT - $VM0" | bc); DQ=$(echo "$QIT - $QI0" | bc); DW=$(echo "$QWT - $QI0" | bc)
echo "ratio qemu-img convert / vmcrypt clone: $(ratio "$QIT" "$VMT") (data only: $(ratio "$DQ" "$DV"); -W: $(ratio "$QWT" "$VMT"), data only $(ratio "$DW" "$DV"))"
