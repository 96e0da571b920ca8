#!/bin/bash
# Runs a command as root inside a small QEMU guest whose /sys/fs/cgroup is a pure cgroup
# v2 hierarchy with the cpu, io, memory and pids controllers (and cpuset, hugetlb, ...).
#
# The guest runs Debian's kernel (prepared by setup.sh) and sees the host's "/" read-only
# at the same paths (9p). The folders in $CGVM_RW and the run folder are mounted
# read-write at the same paths; /tmp /run /var/tmp /dev/shm are the guest's own tmpfs.
# A scratch virtio disk is given to the command as $CGVM_DISK (/dev/vda) for io.max
# tests. The command gets the host's exported environment and working directory; its
# stdout and stderr are printed after the guest exits, and this script exits with the
# command's exit code (125: the guest itself failed).
#
#   CGVM_MEM      guest memory (default 1G)
#   CGVM_CPUS     guest CPUs (default 2, at most the host's)
#   CGVM_RW       read-write host folders, colon-separated (default $PWD; empty: none)
#   CGVM_DISK_MB  size of the scratch disk in MiB (default 64; 0 for none)
#   CGVM_TIMEOUT  seconds before the guest is killed (default 900)
#   CGVM_WORK     scratch folder on the host (default /tmp/cgroup-vm)
#   CGVM_VERBOSE  set to show the guest console live on stderr (and the full kernel log)
#   CGVM_ACCEL    kvm or tcg to force one (default: KVM when it can boot this kernel)
#   CGVM_BOOT_TIMEOUT  seconds for the guest to reach the command before it is booted
#                 again (default 60; CGVM_BOOT_TRIES boots in all, default 2)
#   CGVM_APPEND   extra guest kernel arguments (e.g. loglevel=7 to log more to the console)
#   CGVM_CACHE    where setup.sh put the kernel and initramfs (default /var/cache/jobworker-vm)
#
# Use as a cargo test runner (cargo passes the test binary and its arguments):
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=/abs/path/run-in-vm.sh cargo test ...
set -u
[ $# -ge 1 ] || { echo "usage: $0 cmd [args...]" >&2; exit 2; }
[ "$1" = "--" ] && shift
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
SELF=$HERE/run-in-vm.sh
WORK=${CGVM_WORK:-/tmp/cgroup-vm}
CACHE=${CGVM_CACHE:-/var/cache/jobworker-vm}
K=$CACHE/kernel
INITRD=$CACHE/initramfs.cpio
die() { echo "cgroup-vm: $*" >&2; exit 125; }

if ! command -v qemu-system-x86_64 >/dev/null || ! [ -s "$K/vmlinuz" ] || ! [ -s "$INITRD" ] \
   || [ "$HERE/guest-init.sh" -nt "$INITRD" ]; then
  CGVM_SETUP_NO_TEST=1 bash "$HERE/setup.sh" >&2 || die "setup.sh failed"
fi

# KVM or TCG. /dev/kvm being openable is not enough: e.g. a PVM host (kvm_pvm, as on
# this project's machines) only runs specially built guest kernels and a stock kernel
# hangs. So the first run tries a KVM boot with a short timeout and the answer is kept
# in $CACHE/accel, keyed by host kernel and QEMU version.
pick_accel() {
  local key ans f
  key="$(uname -r) $(qemu-system-x86_64 --version | head -1 | awk '{print $4}')"
  for f in "$CACHE/accel" "$WORK/accel"; do
    if [ -r "$f" ] && [ "$(cut -d' ' -f2- "$f")" = "$key" ]; then cut -d' ' -f1 "$f"; return; fi
  done
  if ! (exec 3<>/dev/kvm) 2>/dev/null; then
    ans=tcg
  elif [ -d /sys/module/kvm_pvm ] && ! [ -d /sys/module/kvm_intel ] && ! [ -d /sys/module/kvm_amd ]; then
    ans=tcg
  elif (cd / && CGVM_ACCEL=kvm CGVM_RW='' CGVM_DISK_MB=0 CGVM_BOOT_TIMEOUT=20 CGVM_BOOT_TRIES=1 \
          CGVM_TIMEOUT=60 CGVM_VERBOSE='' \
          "$SELF" true) >/dev/null 2>&1; then
    ans=kvm
  else
    ans=tcg
  fi
  { echo "$ans $key" > "$CACHE/accel"; } 2>/dev/null ||
    { mkdir -p "$WORK" && echo "$ans $key" > "$WORK/accel"; } 2>/dev/null
  echo "$ans"
}
case ${CGVM_ACCEL:-} in
  kvm|tcg) ACCEL=$CGVM_ACCEL ;;
  "") ACCEL=$(pick_accel) ;;
  *) die "CGVM_ACCEL must be kvm or tcg" ;;
esac
if [ "$ACCEL" = kvm ]; then CPU=host; else CPU=max; fi
NCPU=${CGVM_CPUS:-2}; HOSTCPUS=$(nproc)
[ "$NCPU" -le "$HOSTCPUS" ] 2>/dev/null || NCPU=$HOSTCPUS

mkdir -p "$WORK/runs" || die "cannot create $WORK/runs"
RUN=$(mktemp -d "$WORK/runs/run.XXXXXX") || die "cannot create a run folder in $WORK/runs"
trap 'rm -rf "$RUN"' EXIT

# 9p shares: the host's "/" read-only, the run folder and each CGVM_RW folder read-write.
# security_model=none: files are created as the guest's user when QEMU runs as root
# (passthrough), and chown failures are ignored when it does not.
qarg() { printf '%s' "${1//,/,,}"; }   # QEMU doubles commas inside option values
SHARE_OPTS=security_model=none,multidevs=remap
ARGS=(-virtfs "local,path=/,mount_tag=cgvmroot,$SHARE_OPTS,readonly=on"
      -virtfs "local,path=$(qarg "$RUN"),mount_tag=cgvmrun,$SHARE_OPTS")
MOUNTS="cgvmrun $RUN"
i=0
IFS=: read -r -a RW <<< "${CGVM_RW-$PWD}"
for d in "${RW[@]}"; do
  [ -n "$d" ] || continue
  [ -d "$d" ] || die "CGVM_RW folder $d does not exist"
  d=$(cd "$d" && pwd -P)
  if [ "$d" = / ]; then echo "cgroup-vm: not mounting / read-write (CGVM_RW); the host root stays read-only" >&2; continue; fi
  case $d in *$'\n'*) die "CGVM_RW folder names cannot contain newlines" ;; esac
  ARGS+=(-virtfs "local,path=$(qarg "$d"),mount_tag=cgvmrw$i,$SHARE_OPTS")
  MOUNTS+=$'\n'"cgvmrw$i $d"
  i=$((i + 1))
done
# Parents before children: the guest mounts them in this order.
MOUNTS=$(printf '%s\n' "$MOUNTS" | LC_ALL=C sort -k2)

DISK_MB=${CGVM_DISK_MB:-64}
if [ "$DISK_MB" != 0 ]; then
  truncate -s "${DISK_MB}M" "$RUN/disk.img" || die "cannot create the scratch disk"
  # cache=unsafe: scratch data; io.max throttles inside the guest anyway.
  # shellcheck disable=SC2054  # commas belong to QEMU option values
  ARGS+=(-drive "if=none,id=scratch,format=raw,cache=unsafe,file=$(qarg "$RUN/disk.img")"
         -device virtio-blk-pci,drive=scratch)
fi

# Sourced by guest-init.sh (busybox sh): single-quoted values.
sq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{ echo "CGVM_RUN=$(sq "$RUN")"
  echo "CGVM_MOUNTS=$(sq "$MOUNTS")"; } > "$RUN/config"
# The command, run by the guest's bash: the host's exported environment, cwd, then argv.
{ export -p | grep -v -E '^declare -x (HOME|PWD|OLDPWD|SHLVL|_|TERM)(=|$)'
  echo "export CGVM_GUEST=1"
  [ "$DISK_MB" != 0 ] && echo "export CGVM_DISK=/dev/vda"
  printf 'cd %q || exit 125\n' "$PWD"
  printf 'exec'; printf ' %q' "$@"; echo; } > "$RUN/cmd"
: > "$RUN/stdout"; : > "$RUN/stderr"

# Console on ttyS0, always logged; shown live with CGVM_VERBOSE.
LOG=$RUN/console.log
if [ -n "${CGVM_VERBOSE:-}" ]; then
  CON=(-chardev "stdio,id=con,signal=off,logfile=$(qarg "$LOG")")
  KLOG="loglevel=7"
else
  CON=(-chardev "file,id=con,path=$(qarg "$LOG")")
  KLOG="quiet"
fi
# mitigations=off etc.: a throwaway test VM; they cut boot and syscall time noticeably under TCG.
APPEND="console=ttyS0 $KLOG panic=-1 rdinit=/init mitigations=off random.trust_cpu=on \
i8042.noaux i8042.nokbd i8042.nopnp no_timer_check tsc=reliable cryptomgr.notests ${CGVM_APPEND:-}"

# setup.sh's uncompressed vmlinux boots much faster than the bzImage (PVH, no decompression).
KERNEL=$K/vmlinux; [ -s "$KERNEL" ] || KERNEL=$K/vmlinuz
QEMU=(qemu-system-x86_64
  -name cgvm -machine q35 -accel "$ACCEL" -cpu "$CPU" -smp "$NCPU" -m "${CGVM_MEM:-1G}"
  -nodefaults -no-user-config -display none -no-reboot
  "${CON[@]}" -serial chardev:con
  -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND"
  "${ARGS[@]}")

# Boot watchdog: guest-init.sh creates $RUN/started just before the command. A guest that
# has not got there within CGVM_BOOT_TIMEOUT seconds is stuck (a rare TCG boot hang was
# seen once in ~100 boots; a stock kernel under a PVM "KVM" never boots): kill it and
# boot again, so that one bad boot does not cost the whole CGVM_TIMEOUT.
BOOT_TIMEOUT=${CGVM_BOOT_TIMEOUT:-60}
QPID=
trap '[ -n "$QPID" ] && kill "$QPID" 2>/dev/null; exit 130' INT TERM HUP
boot() {   # -> VMRC, or 200 when the boot watchdog fired
  local t0=$SECONDS
  rm -f "$RUN/started" "$RUN/rc" "$RUN/clock"; : > "$RUN/stdout"; : > "$RUN/stderr"; T0=""
  timeout -k 5 "${CGVM_TIMEOUT:-900}" "${QEMU[@]}" </dev/null >&2 &
  QPID=$!
  while ! [ -e "$RUN/started" ]; do
    if ! kill -0 "$QPID" 2>/dev/null; then break; fi
    if [ $((SECONDS - t0)) -ge "$BOOT_TIMEOUT" ]; then
      kill "$QPID" 2>/dev/null; wait "$QPID"; QPID=; VMRC=200; return
    fi
    sleep 0.1
  done
  [ -e "$RUN/started" ] && T0=$EPOCHREALTIME
  wait "$QPID"; VMRC=$?; QPID=
  T1=$EPOCHREALTIME
}
tries=${CGVM_BOOT_TRIES:-2}
for ((try = 1; try <= tries; try++)); do
  boot
  [ "$VMRC" = 200 ] || break
  echo "cgroup-vm: the guest did not boot within $BOOT_TIMEOUT s ($ACCEL, try $try of $tries); console tail:" >&2
  [ -z "${CGVM_VERBOSE:-}" ] && [ -f "$LOG" ] && tail -5 "$LOG" >&2
done
cat "$RUN/stdout"; cat "$RUN/stderr" >&2
# A guest clock that runs fast (seen once under TCG on a loaded host: 227 s in the guest
# for 34 s here) makes time-based tests (cpu.max, io.max, timeouts) fail or pass wrongly.
if [ -s "$RUN/clock" ] && [ -n "$T0" ]; then
  read -r g0 g1 < "$RUN/clock"
  awk -v g0="$g0" -v g1="$g1" -v h0="$T0" -v h1="$T1" 'BEGIN {
    g = g1 - g0; h = h1 - h0
    if (g > 1.5 * h + 2)
      printf "cgroup-vm: warning: the guest clock ran %.1f times as fast as this host'"'"'s " \
             "(%.0f s in the guest, %.0f s here): its time-based results are not to be trusted\n", g / h, g, h
  }' >&2
fi
if [ -s "$RUN/rc" ]; then exit "$(cat "$RUN/rc")"; fi
case $VMRC in
  124) why="timed out after ${CGVM_TIMEOUT:-900} s" ;;
  200) why="no boot within $BOOT_TIMEOUT s, $tries tries" ;;
  *) why="qemu exit $VMRC" ;;
esac
echo "cgroup-vm: the guest gave no exit code ($why, $ACCEL); its console:" >&2
[ -z "${CGVM_VERBOSE:-}" ] && [ -f "$LOG" ] && tail -40 "$LOG" >&2
exit 125
