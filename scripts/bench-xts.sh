#!/usr/bin/env bash
# Compare vmcrypt's AES-XTS kernel with `openssl speed -evp aes-256-xts` on one core,
# and its AES-CBC decryption (aes-cbc-essiv:sha256 through SectorCipher, IVs included)
# with `openssl speed -evp aes-256-cbc -decrypt`.
#
# usage: scripts/bench-xts.sh [ROUNDS [SECONDS]]
#   ROUNDS  measurement rounds (default 3); each round runs openssl and ours once per
#           block size and direction, alternating which goes first
#   SECONDS seconds per measurement (default 2)
#   BENCH_CPU (environment) the CPU to pin both to with taskset (default 0)
#   BENCH_AES_BITS (environment) 256 (default) or 128: AES-256 or AES-128 on both sides
#   VMCRYPT_AES_KERNEL (environment) force our kernel: vaes-avx512, vaes-avx2, aesni, soft
#   BUILD     (environment) 0 skips building the xts_speed example
#
# Both are timed by wall-clock time (openssl speed -elapsed), so run it on an idle
# machine or choose a quiet CPU with BENCH_CPU. Prints the median MB/s (10^6 bytes/s)
# of both and the median over rounds of the per-round ratio ours/openssl (paired, so
# load changes between rounds cancel out) per block size and direction; exits 1 if a
# ratio misses its target (1.5x at 512 bytes, 1.8x at 4096 bytes), 2 on usage or tool
# errors. The CBC rows are informational (no target). Ours encrypts a 16 KiB buffer of
# 512- or 4096-byte sectors per call; openssl speed makes one EVP call per block. The
# first line names the CPU model and the kernels used.
set -euo pipefail
. "$(dirname "$0")/lib/bench.sh"

ROUNDS=${1:-3}
SECS=${2:-2}
case "$ROUNDS$SECS" in *[!0-9]*|"") echo "usage: $0 [ROUNDS [SECONDS]]" >&2; exit 2 ;; esac
[ "$ROUNDS" -ge 1 ] && [ "$SECS" -ge 1 ] || { echo "ROUNDS and SECONDS must be >= 1" >&2; exit 2; }
BITS=${BENCH_AES_BITS:-256}
case "$BITS" in 128|256) ;; *) echo "BENCH_AES_BITS must be 128 or 256" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
bench_require "install openssl" openssl
bench_build_example vmcrypt-crypto xts_speed
BIN=target/release/examples/xts_speed

CPU=${BENCH_CPU:-0}
PIN=()
if command -v taskset >/dev/null && taskset -c "$CPU" true 2>/dev/null; then
    PIN=(taskset -c "$CPU")
fi

# Wall-clock time for both: without -elapsed openssl speed counts its process's CPU
# time, which is coarse and counts differently from our wall clock on a loaded VM.
OSSL_CLOCK=(-elapsed)

# openssl speed in machine-readable mode: "+F:<n>:AES-256-XTS:<bytes per second>".
openssl_mbs() { # MODE SIZE DIRECTION
    local flag=()
    [ "$3" = decrypt ] && flag=(-decrypt)
    "${PIN[@]}" openssl speed -mr "${OSSL_CLOCK[@]}" -evp "aes-$BITS-$1" -bytes "$2" -seconds "$SECS" "${flag[@]}" 2>/dev/null |
        awk -F: '/^\+F:/ { printf "%.1f\n", $4 / 1e6; found = 1 } END { exit !found }'
}

ours_mbs() { # MODE SIZE DIRECTION
    # Five runs of SECS/5 seconds each; the example prints their median.
    "${PIN[@]}" "$BIN" --raw "$BITS" "$3" "$2" $((SECS * 200)) 5 "$1"
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
CASES=("xts 512 encrypt" "xts 512 decrypt" "xts 4096 encrypt" "xts 4096 decrypt"
    "cbc 512 decrypt" "cbc 4096 decrypt")

INFO=$("$BIN" --info) || exit 2
echo "$INFO, AES-$BITS, pinned: ${PIN[*]:-no}, $ROUNDS rounds x ${SECS}s"
for ((r = 1; r <= ROUNDS; r++)); do
    for c in "${CASES[@]}"; do
        set -- $c
        key="$1-$2-$3"
        if ((r % 2)); then
            openssl_mbs "$1" "$2" "$3" >>"$TMP/openssl-$key"
            ours_mbs "$1" "$2" "$3" >>"$TMP/ours-$key"
        else
            ours_mbs "$1" "$2" "$3" >>"$TMP/ours-$key"
            openssl_mbs "$1" "$2" "$3" >>"$TMP/openssl-$key"
        fi
        o=$(tail -n1 "$TMP/openssl-$key")
        v=$(tail -n1 "$TMP/ours-$key")
        awk -v o="$o" -v v="$v" 'BEGIN { printf "%.3f\n", v / o }' >>"$TMP/ratio-$key"
        echo "round $r $key: openssl $o MB/s, ours $v MB/s" >&2
    done
done

fail=0
printf '%-5s %-6s %-8s %14s %14s %7s %7s %s\n' mode bytes dir "openssl MB/s" "vmcrypt MB/s" ratio target ok
for c in "${CASES[@]}"; do
    set -- $c
    key="$1-$2-$3"
    o=$(bench_median %.1f <"$TMP/openssl-$key")
    v=$(bench_median %.1f <"$TMP/ours-$key")
    ratio=$(bench_median %.3f <"$TMP/ratio-$key")
    if [ "$1" = cbc ]; then
        printf '%-5s %-6s %-8s %14s %14s %7.2f %7s %s\n' "$1" "$2" "$3" "$o" "$v" "$ratio" - -
        continue
    fi
    target=1.5
    [ "$2" = 4096 ] && target=1.8
    line=$(awk -v r="$ratio" -v t="$target" 'BEGIN { printf "%.2f %s\n", r, (r >= t ? "yes" : "NO") }')
    set -- $1 $2 $3 $line
    printf '%-5s %-6s %-8s %14s %14s %7s %7s %s\n' "$1" "$2" "$3" "$o" "$v" "$4" "${target}x" "$5"
    [ "$5" = yes ] || fail=1
done
exit $fail
