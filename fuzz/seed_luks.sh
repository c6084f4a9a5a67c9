#!/usr/bin/env bash
# Builds the luks_driver fuzz target's template images (fuzz/seeds/luks_driver/*.img.gz)
# and its seed corpus (fuzz/corpus/luks_driver/): per template, its selector byte
# followed by the template's metadata (the LUKS2 JSON text, or the LUKS1 binary
# header), and for LUKS2 also a no-op edit (the edit form of the input). The selector order is TEMPLATES in fuzz/src/luks_driver.rs.
# Needs cryptsetup (cryptsetup-bin). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/seeds/luks_driver
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out" fuzz/corpus/luks_driver

# vmcrypt's engine: plain LUKS1/LUKS2, and reencryptions interrupted in each mode.
cargo run -q -p vmcrypt-block --example luks_fuzz_seeds -- "$tmp"

# cryptsetup: a 16-byte-key LUKS2 image with 16 KiB header copies, then a
# reencryption initialised (not run) in each crash-safe resilience mode.
printf pw >"$tmp/pw"
cs() { cryptsetup -q --key-file "$tmp/pw" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "$@"; }
for res in checksum journal; do
    img=$tmp/cs-init-$res.img
    truncate -s 352K "$img"
    cs luksFormat --type luks2 --cipher aes-cbc-essiv:sha256 --key-size 128 \
        --luks2-metadata-size 16k --luks2-keyslots-size 256k --offset 576 "$img"
    cs reencrypt --init-only --resilience "$res" --hotzone-size 8k "$img"
    # cryptsetup fills the whole keyslots area with random bytes: zero what no key
    # slot uses (nor the reencryption area, unused before the first hotzone), so the
    # template compresses.
    python3 - "$img" <<'PY'
import json, struct, sys
f = open(sys.argv[1], "r+b")
img = bytearray(f.read())
hdr = struct.unpack(">Q", img[8:16])[0]
meta = json.loads(img[4096:hdr].rstrip(b"\0"))
used = sorted((int(k["area"]["offset"]), int(k["area"]["size"])) for k in meta["keyslots"].values()
              if k["area"]["type"] == "raw")
at = 2 * hdr
for off, size in used + [(int(meta["config"]["keyslots_size"]) + 2 * hdr, 0)]:
    img[at:off] = bytes(max(0, off - at))
    at = max(at, off + size)
f.seek(0)
f.write(img)
PY
done

names=(luks1 luks2 reenc-checksum reenc-journal reenc-checksum-to4096 reenc-none-paused
    cs-init-checksum cs-init-journal)
for i in "${!names[@]}"; do
    n=${names[$i]}
    gzip -9 -n -c "$tmp/$n.img" >"$out/$n.img.gz"
    python3 - "$tmp/$n.img" "$i" "fuzz/corpus/luks_driver/$n" <<'PY'
import struct, sys
img, pick, dst = open(sys.argv[1], "rb").read(), int(sys.argv[2]), sys.argv[3]
if struct.unpack(">H", img[6:8])[0] == 1:
    meta = img[:592]
else:
    hdr = struct.unpack(">Q", img[8:16])[0]
    meta = img[4096:hdr].rstrip(b"\0")
open(dst, "wb").write(bytes([pick]) + meta)
if meta.startswith(b"{"):
    # The edit form: one edit that adds 0 to the first scalar (a no-op).
    open(dst + "-edit", "wb").write(bytes([pick, 0, 1]) + bytes(8))
PY
done
ls -l "$out" fuzz/corpus/luks_driver
