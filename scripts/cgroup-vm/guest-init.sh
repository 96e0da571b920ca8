#!/bin/sh
# PID 1 of the QEMU guest started by run-in-vm.sh. build-initramfs.sh packs it as the
# initramfs's /init, run by static busybox. Doing all the mounting here, with busybox on
# the initramfs, matters under TCG: every program started from the host's root over 9p
# (dynamic loader, libc, ...) costs a few hundred milliseconds there.
#
# Phase 1 (no argument, initramfs): load the virtio/9p modules; mount the host's "/"
#   read-only on /newroot (9p tag cgvmroot) and in it fresh /proc /sys /dev /dev/pts
#   /dev/shm, cgroup2 on /sys/fs/cgroup, tmpfs on /tmp /run /var/tmp, then the run
#   folder and the CGVM_RW folders read-write at their host paths; then switch_root.
# Phase 2 ("run", PID 1 in the host's root): run the command, keep its exit code, sync,
#   power off.
# Paths never go on the kernel command line (spaces, length limit): run-in-vm.sh writes
# them to the run folder's "config" (9p tag cgvmrun).
P9=trans=virtio,version=9p2000.L,msize=512000
say() { echo "cgvm guest-init: $*" >&2; }

if [ "${1:-}" = run ]; then
  BB=/run/cgvm/busybox
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  HOME=/root
  export PATH HOME
  cd /
  # $CGVM_RUN/cmd: the host's exported environment, cd to its $PWD, exec the command.
  read -r up0 _ < /proc/uptime
  : > "$CGVM_RUN/started"   # for run-in-vm.sh's boot watchdog
  /bin/bash "$CGVM_RUN/cmd" </dev/null >"$CGVM_RUN/stdout" 2>"$CGVM_RUN/stderr"
  echo $? > "$CGVM_RUN/rc"
  # The guest's clock over the command, which run-in-vm.sh compares with the host's.
  read -r up1 _ < /proc/uptime
  echo "$up0 $up1" > "$CGVM_RUN/clock"
  $BB sync
  $BB poweroff -f
  exit 1   # not reached; a dying PID 1 panics, which also stops QEMU (panic=-1, -no-reboot)
fi

PATH=/bin; export PATH
fail() {
  say "$*"
  # No point in waiting for the host's timeout: stop now (run-in-vm.sh reports 125).
  poweroff -f; exit 1
}
mount -t proc proc /proc
# modules.load lists the module files with their dependencies first.
while read -r m; do
  insmod "/modules/$m" || fail "insmod $m failed"
done < /modules.load
mkdir -p /cgvm
mount -t 9p -o "$P9,ro" cgvmrun /cgvm || fail "cannot mount the run folder (9p tag cgvmrun)"
# Sets CGVM_RUN (host run folder) and CGVM_MOUNTS (lines "9p-tag host-path", parents
# first: the run folder and the CGVM_RW folders).
. /cgvm/config || fail "no config in the run folder"
umount /cgvm

N=/newroot
# cache=loose keeps binaries and libraries in the guest's page cache (the host's files are
# not expected to change while the command runs).
mount -t 9p -o "$P9,ro,cache=loose" cgvmroot $N || fail "cannot mount the host root (9p tag cgvmroot)"
mount -t proc -o nosuid,nodev,noexec proc $N/proc
mount -t sysfs -o nosuid,nodev,noexec sysfs $N/sys
mount -t devtmpfs -o nosuid,mode=755 devtmpfs $N/dev
mkdir -p $N/dev/pts $N/dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts $N/dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs $N/dev/shm
# What udev would create; bash's <(...) needs /dev/fd.
ln -s /proc/self/fd $N/dev/fd
ln -s /proc/self/fd/0 $N/dev/stdin
ln -s /proc/self/fd/1 $N/dev/stdout
ln -s /proc/self/fd/2 $N/dev/stderr
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 $N/sys/fs/cgroup ||
  fail "cannot mount cgroup2"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs $N/tmp
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs $N/run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs $N/var/tmp
# Read-write host folders at their host paths. A mount point under the read-only root
# exists already (the folder exists on the host); one under /tmp etc. is made in tmpfs.
# cache=mmap: writes go straight to the host, and shared writable mmap works.
printf '%s\n' "$CGVM_MOUNTS" > /mounts
while read -r tag dir; do
  [ -n "$tag" ] || continue
  mkdir -p "$N$dir" 2>/dev/null
  mount -t 9p -o "$P9,cache=mmap" "$tag" "$N$dir" || fail "cannot mount host folder $dir read-write"
done < /mounts
[ -f "$N$CGVM_RUN/cmd" ] || fail "run folder $CGVM_RUN missing"
# Phase 2 runs from the guest's own /run, not from the host's files.
mkdir -p $N/run/cgvm
cp /bin/busybox /init $N/run/cgvm/
hostname cgvm
ip link set lo up
umount /proc
export CGVM_RUN
exec switch_root $N /run/cgvm/busybox sh /run/cgvm/init run
