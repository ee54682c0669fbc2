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
# pyenv python3 first in PATH is not what other users can run).
if ! /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
    sudo_=; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -q
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-numpy
fi
# promtool (Debian package prometheus) checks `top --format prometheus` (tests/cli_top.rs).
if ! command -v promtool >/dev/null; then
    sudo_=; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -q
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
fi
cargo test --locked "$@"
scripts/fuzz.sh
