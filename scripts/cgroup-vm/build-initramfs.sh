#!/bin/bash
# Builds the guest's initramfs: static busybox, the kernel modules listed in
# KERNEL_DIR/modules.load (prepared by setup.sh) and guest-init.sh as /init.
# Uncompressed newc cpio: a few MB, and unpacking it costs nothing under TCG.
#   build-initramfs.sh KERNEL_DIR OUT.cpio
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 KERNEL_DIR OUT.cpio" >&2; exit 2; }
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
KDIR=$1 OUT=$2
BB=/bin/busybox
# The initramfs has no libraries: busybox must be the static build (busybox-static).
if ldd "$BB" >/dev/null 2>&1; then
  echo "$0: $BB is not statically linked (install busybox-static)" >&2; exit 1
fi
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/cgvm-initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,dev,proc,modules,newroot,cgvm}
cp "$BB" "$STAGE/bin/busybox"
for a in sh cat cp hostname insmod ip ln mkdir mount poweroff switch_root umount; do ln -s busybox "$STAGE/bin/$a"; done
cp "$KDIR"/modules/*.ko "$STAGE/modules/"
cp "$KDIR/modules.load" "$STAGE/modules.load"
install -m 755 "$HERE/guest-init.sh" "$STAGE/init"
# The kernel opens /dev/console for init before anything is mounted.
mknod -m 600 "$STAGE/dev/console" c 5 1
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0) > "$OUT.tmp" 2>/dev/null
mv -f "$OUT.tmp" "$OUT"
echo "initramfs: $OUT ($(du -k "$OUT" | cut -f1) KiB)"
