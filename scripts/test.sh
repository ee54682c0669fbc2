#!/usr/bin/env bash
# Runs every test suite: unit and property tests, the CLI and daemon process tests against
# fake proc roots, the real-kernel fixtures, and the VM suite (real kernels under qemu).
# Installs the VM suite's packages and guest kernel first if they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-vm.sh
cargo test --locked "$@"
