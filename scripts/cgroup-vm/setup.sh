#!/bin/bash
# Prepares what run-in-vm.sh needs on a Debian 12 host, as root. Safe to run again: each
# step is skipped when its result is already there, so a prepared machine needs no network.
#  1. apt: qemu-system-x86 (the VM) and busybox-static (the initramfs, the guest's poweroff).
#  2. The kernel of Debian's linux-image-amd64, fetched with `apt-get download` and unpacked
#     into $CGVM_CACHE/kernel (default /var/cache/jobworker-vm) with only the modules the
#     guest needs. Nothing is installed: the host's /boot, boot loader and cgroups are
#     left alone.
#  3. The initramfs ($CGVM_CACHE/initramfs.cpio, see build-initramfs.sh).
#  4. When anything above changed: a smoke test in the guest, which also finds out (once)
#     whether KVM works here.
set -euo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
CACHE=${CGVM_CACHE:-/var/cache/jobworker-vm}
# virtio-pci + 9p: the host's files; virtio_blk: the scratch disk; overlay and loop are
# small and handy for isolation tests (the guest cannot load modules later: the host has
# no /lib/modules for this kernel).
MODULES="virtio_pci virtio_blk 9pnet_virtio 9p overlay loop"
export DEBIAN_FRONTEND=noninteractive
log() { echo "cgroup-vm setup: $*" >&2; }

updated='' changed=''
apt_update() { [ -n "$updated" ] || { apt-get update -qq; updated=1; }; }
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

# 1. Packages.
need=()
installed qemu-system-x86 || need+=(qemu-system-x86)
installed busybox-static || need+=(busybox-static)
command -v xz >/dev/null || need+=(xz-utils)   # to unpack the kernel (see extract_vmlinux)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt_update
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  changed=1
fi

# Unpacks the ELF kernel inside a bzImage: the compressed payload starts at its format's
# magic number (like the kernel's scripts/extract-vmlinux). Succeeds only with an ELF
# that has the PVH note QEMU needs (CONFIG_PVH).
extract_vmlinux() {
  local magic tool off
  for magic in 'xz:\xFD7zXZ\x00' 'zstd:\x28\xB5\x2F\xFD' 'gzip:\x1F\x8B\x08'; do
    tool=${magic%%:*}
    command -v "$tool" >/dev/null || continue
    for off in $(LC_ALL=C grep -obUaP "${magic#*:}" "$1" | cut -d: -f1); do
      tail -c "+$((off + 1))" "$1" | "$tool" -dc > "$2.tmp" 2>/dev/null
      if [ "$(head -c 4 "$2.tmp" | od -An -c | tr -d ' ')" = '177ELF' ] &&
         LC_ALL=C grep -qaP 'Xen\x00' "$2.tmp"; then
        mv "$2.tmp" "$2"; return 0
      fi
    done
  done
  rm -f "$2.tmp"; return 1
}

# 2. Kernel and modules.
mkdir -p "$CACHE"
K=$CACHE/kernel
if ! [ -s "$K/vmlinuz" ] || [ "$(cat "$K/modlist" 2>/dev/null)" != "$MODULES" ]; then
  pkg_of_meta() { apt-cache depends linux-image-amd64 2>/dev/null |
                    awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
  pkg=$(pkg_of_meta)
  [ -n "$pkg" ] || { apt_update; pkg=$(pkg_of_meta); }
  [ -n "$pkg" ] || { log "cannot resolve linux-image-amd64"; exit 1; }
  log "fetching the guest kernel ($pkg)"
  TMP=$(mktemp -d "$CACHE/tmp.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  chmod 755 "$TMP"   # apt-get download drops privileges to _apt where it can
  (cd "$TMP" && apt-get download -qq "$pkg" 2>&1 | grep -v 'unsandboxed' >&2 || true)
  deb=$(ls "$TMP"/*.deb 2>/dev/null | head -1)
  if [ -z "$deb" ]; then
    apt_update
    (cd "$TMP" && apt-get download -qq "$pkg")
    deb=$(ls "$TMP"/*.deb | head -1)
  fi
  dpkg-deb -x "$deb" "$TMP/x"
  ver=$(ls "$TMP/x/lib/modules")
  # The package has no modules.dep (depmod runs at install time): make one.
  busybox depmod -b "$TMP/x" "$ver"
  # Wanted modules and their dependencies, dependencies first (insmod order).
  awk -v want="$MODULES" '
    function name(p) { sub(".*/", "", p); sub("\\.ko(\\..*)?$", "", p); gsub("-", "_", p); return p }
    FILENAME ~ /modules\.builtin$/ { builtin[name($1)] = 1; next }
    { p = $1; sub(":$", "", p); n = name(p); path[n] = p; deps[n] = ""
      for (i = 2; i <= NF; i++) deps[n] = deps[n] " " name($i) }
    function visit(n,   k, a, i) {
      if (n in seen || n in builtin) return
      if (!(n in path)) { print "missing module " n > "/dev/stderr"; bad = 1; return }
      seen[n] = 1; k = split(deps[n], a, " ")
      for (i = k; i >= 1; i--) visit(a[i])
      print path[n]
    }
    END { k = split(want, w, " "); for (i = 1; i <= k; i++) visit(w[i]); exit bad }
  ' "$TMP/x/lib/modules/$ver/modules.builtin" "$TMP/x/lib/modules/$ver/modules.dep" > "$TMP/order"
  rm -rf "$K.new"; mkdir -p "$K.new/modules"
  cp "$TMP/x/boot/vmlinuz-$ver" "$K.new/vmlinuz"
  cp "$TMP/x/boot/config-$ver" "$K.new/config"
  while read -r p; do
    cp "$TMP/x/lib/modules/$ver/$p" "$K.new/modules/"
    echo "${p##*/}"
  done < "$TMP/order" > "$K.new/modules.load"
  echo "$ver" > "$K.new/version"
  echo "$MODULES" > "$K.new/modlist"
  rm -rf "$K"; mv "$K.new" "$K"
  rm -rf "$TMP"; trap - EXIT
  changed=1
  log "kernel $ver with $(wc -l < "$K/modules.load") modules in $K"
fi

# Also the uncompressed ELF kernel: QEMU boots it directly (PVH entry point), skipping the
# firmware's real-mode boot and the in-guest decompression, which take ~5 s under TCG.
if ! [ -s "$K/vmlinux" ] && ! [ -e "$K/vmlinux.none" ]; then
  extract_vmlinux "$K/vmlinuz" "$K/vmlinux" ||
    { touch "$K/vmlinux.none"; log "no PVH vmlinux in $K/vmlinuz: booting the bzImage (slower)"; }
fi

# 3. Initramfs, rebuilt when its inputs changed.
I=$CACHE/initramfs.cpio
if ! [ -s "$I" ] || [ "$HERE/guest-init.sh" -nt "$I" ] || [ "$HERE/build-initramfs.sh" -nt "$I" ] \
   || [ "$K/modules.load" -nt "$I" ] || [ /bin/busybox -nt "$I" ]; then
  bash "$HERE/build-initramfs.sh" "$K" "$I" >&2
  changed=1
fi

# 4. Smoke test (the first run also decides between KVM and TCG and remembers it).
if [ -z "${CGVM_SETUP_NO_TEST:-}" ] && { [ -n "$changed" ] || ! [ -s "$CACHE/accel" ]; }; then
  out=$(cd / && CGVM_RW='' CGVM_DISK_MB=0 CGVM_TIMEOUT=120 "$HERE/run-in-vm.sh" cat /sys/fs/cgroup/cgroup.controllers) || {
    log "the guest does not work (see above)"; exit 1; }
  log "guest ok ($(cat "$CACHE/accel" 2>/dev/null | cut -d' ' -f1)): controllers: $out"
fi
