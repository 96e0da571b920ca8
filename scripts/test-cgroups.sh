#!/usr/bin/env bash
# Runs the resource-control tests under a real cgroup v2 hierarchy with the cpu, io,
# memory and pids controllers: directly when this host has one and we are root, otherwise
# inside the small VM of scripts/cgroup-vm/. Three test binaries, one at a time (the
# worker's tests move their own process between cgroups):
#   worker/tests/cgroups.rs       the worker library on its own;
#   bench (jobworker-bench)       the benchmark's floor of a start into a cgroup (its only
#                                 ignored test);
#   jobc/tests/cgroups_stack.rs   the real jobd (--cgroups required) and jobc binaries.
#
# The run is bounded in time: every wait in the tests has a deadline, and should a test
# hang anyway, the whole run is killed after CGVM_TIMEOUT seconds (default 600; a full
# run takes about half a minute in the emulated guest here, plus up to a minute per boot
# retry), well within CI's 90 minutes. In the VM the guest is killed (exit 125, with the
# output so far: libtest has named the test that hung); directly, the test process is.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
export CGVM_TIMEOUT=${CGVM_TIMEOUT:-600}

host_has_cgroup_v2() {
  [ "$(id -u)" = 0 ] || return 1
  local mount
  mount=$(grep -m1 ' - cgroup2 ' /proc/self/mountinfo | awk '{print $5}') || return 1
  [ -n "$mount" ] || return 1
  local c
  for c in cpu io memory pids; do
    grep -qw "$c" "$mount/cgroup.controllers" 2>/dev/null || return 1
  done
}

# Build on the host first: the guest only runs the binaries (jobd and jobc too, which
# the stack tests start).
cargo test -p worker --test cgroups --no-run --locked
cargo build -p jobd -p jobc --locked
cargo test -p jobc --test cgroups_stack --no-run --locked
cargo test -p bench --bin jobworker-bench --no-run --locked

if host_has_cgroup_v2 && [ -z "${JOBWORKER_FORCE_VM:-}" ]; then
  echo "test-cgroups: this host has cgroup v2 with cpu, io, memory and pids; running directly" >&2
  if [ -z "${CGVM_DISK:-}" ]; then
    echo "test-cgroups: set CGVM_DISK to a scratch block device for the io.max tests (they overwrite its data)" >&2
  fi
  # timeout signals its process group: cargo and the test binary (a job of a killed
  # test runs in a session of its own and may be left; its cgroup is jobworker-test-*).
  timeout --kill-after=10 "$CGVM_TIMEOUT" \
    cargo test -p worker --test cgroups --locked -- --include-ignored --test-threads=1
  timeout --kill-after=10 "$CGVM_TIMEOUT" \
    cargo test -p bench --bin jobworker-bench --locked -- --ignored --test-threads=1
  exec timeout --kill-after=10 "$CGVM_TIMEOUT" \
    cargo test -p jobc --test cgroups_stack --locked -- --include-ignored --test-threads=1
fi

echo "test-cgroups: no usable cgroup v2 here; running the tests in the VM" >&2
export CGVM_RW="$here"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$here/scripts/cgroup-vm/run-in-vm.sh"
cargo test -p worker --test cgroups --locked -- --include-ignored --test-threads=1
cargo test -p bench --bin jobworker-bench --locked -- --ignored --test-threads=1
exec cargo test -p jobc --test cgroups_stack --locked -- --include-ignored --test-threads=1
