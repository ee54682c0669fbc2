#!/usr/bin/env bash
# Runs every test suite: unit and property tests, the CLI and daemon process tests against
# fake proc roots (with the daemon's chaos, fault-injection and hostile-client suites), the
# real-kernel fixtures, the VM suite (real kernels under qemu), and a bounded fuzzing run of
# every parser of untrusted input (scripts/fuzz.sh; installs cargo-fuzz if missing).
# Installs the VM suite's packages and guest kernel first if they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-vm.sh
# Debian's numpy (/usr/bin/python3 with python3-numpy): tests/cli_input.rs compares our NumPy
# dtype sizes with it, and the job scope's tests (tests/preload.rs) run the seed with it (a
# pyenv python3 first in PATH is not what other users can run). Slurm and munge: the job
# scope's TaskProlog under a real one-node Slurm (tests/slurm_job_scope.rs). promtool (Debian
# package prometheus) checks `top --format prometheus` (tests/cli_top.rs).
missing=
/usr/bin/python3 -c 'import numpy' 2>/dev/null || missing="$missing python3-numpy"
for tool in slurmctld:slurmctld slurmd:slurmd srun:slurm-client munged:munge promtool:prometheus; do
    command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
    sudo_=; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -q
    # shellcheck disable=SC2086
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
cargo test --locked "$@"
scripts/fuzz.sh
