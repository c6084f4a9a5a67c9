#!/usr/bin/env bash
# Check that .ci/install-deps works on a fresh Debian 12: debootstrap a minimal bookworm
# into ROOT (unless it is already there), run install-deps inside it (chroot, CI=true,
# empty environment, no stdin) and show the QEMU it got. With --old-qemu, bookworm's
# own qemu-utils + qemu-system-common 7.2 are installed first, to show they get upgraded.
# Root only; needs debootstrap. Mounts /proc and /dev in ROOT and unmounts them on exit;
# ROOT itself is kept (remove it with rm -rf).
#
#   scripts/ci-fresh-check.sh [--old-qemu] [ROOT]      # ROOT defaults to /tmp/fresh-root
set -euo pipefail
cd "$(dirname "$0")/.."
old=0
[ "${1:-}" = --old-qemu ] && { old=1; shift; }
ROOT=${1:-/tmp/fresh-root}

[ -x "$ROOT/usr/bin/apt-get" ] ||
    debootstrap --variant=minbase bookworm "$ROOT" http://deb.debian.org/debian >/dev/null

cleanup() {
    for m in "$ROOT/dev/pts" "$ROOT/dev" "$ROOT/proc"; do
        mountpoint -q "$m" && umount "$m"
    done
    return 0
}
trap cleanup EXIT
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/ci"
cp .ci/install-deps "$ROOT/ci/install-deps"

in_root() {
    chroot "$ROOT" /usr/bin/env -i CI=true HOME=/root \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" </dev/null
}
if [ "$old" = 1 ]; then
    echo "== installing bookworm's own QEMU first"
    in_root sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends qemu-utils qemu-system-common >/dev/null'
    in_root qemu-img --version | head -1
fi
echo "== .ci/install-deps in $ROOT"
in_root /ci/install-deps
echo "== again (nothing to do: no apt call)"
in_root /ci/install-deps
echo "== result"
in_root sh -c 'qemu-img --version | head -1; command -v qemu-storage-daemon;
    dpkg-query -W -f="\${db:Status-Abbrev} \${Package} \${Version}\n" "qemu*";
    grep -rh bookworm-backports /etc/apt/sources.list.d/'
