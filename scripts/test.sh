#!/usr/bin/env bash
# Runs every test suite: unit and property tests, the CLI and daemon process tests against
# fake proc roots (with the daemon's chaos, fault-injection and hostile-client suites), the
# integrations against the real tools (a one-node Slurm, ansible-playbook and ansible-lint,
# promtool, lintian, rpmbuild and rpmlint, systemd-analyze), the real-kernel fixtures, the VM
# suite (real kernels under qemu, and the package under real systemd), and a bounded fuzzing
# run of every parser of untrusted input (scripts/fuzz.sh).
#
# It first installs whatever a suite needs and this machine lacks (root, or sudo, for apt):
#   apt    the VM suite's packages and guest kernel (scripts/setup-vm.sh), python3-numpy,
#          python3-venv, slurmd slurmctld slurm-client munge, prometheus (promtool), lintian,
#          rpm (rpmbuild), rpmlint, man-db
#   cargo  cargo-deb (here), cargo-fuzz (scripts/fuzz.sh)
#   pip    ansible-core and ansible-lint, into the virtualenv target/tools/venv
#          (scripts/requirements-ansible.txt), never into the system
#
# No suite passes by skipping: a test that cannot run records why in $OVERCOMMIT_SKIP_LOG.
# At the end every skip is listed and the command exits 1, unless OVERCOMMIT_ALLOW_SKIPS=1.
# With CI=true a skip fails its test at once.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

scripts/setup-vm.sh

# Debian's numpy (/usr/bin/python3 with python3-numpy): tests/cli_input.rs compares our NumPy
# dtype sizes with it, and the job scope's tests run the seed with it (a pyenv python3 first in
# PATH is not what other users can run). Slurm and munge: tests/slurm_*.rs. promtool: the
# Prometheus output and alerts. lintian, rpm, rpmlint: tests/packages.rs. man: the man pages.
missing=
/usr/bin/python3 -c 'import numpy' 2>/dev/null || missing="$missing python3-numpy"
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"
for tool in slurmctld:slurmctld slurmd:slurmd srun:slurm-client munged:munge \
    promtool:prometheus lintian:lintian rpmbuild:rpm rpmlint:rpmlint man:man-db; do
    command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
    as_root apt-get update -q
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# cargo-deb builds the package the systemd guest installs and lintian checks.
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb

# ansible-core and ansible-lint, pinned, in a virtualenv of their own.
venv=$repo/target/tools/venv
if ! "$venv/bin/python" - <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
want = dict(line.split("==") for line in open("scripts/requirements-ansible.txt")
            if "==" in line and not line.startswith("#"))
sys.exit(any(version(name) != v.strip() for name, v in want.items()))
PY
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-ansible.txt
fi
export OVERCOMMIT_TOOLS_VENV=$venv

export OVERCOMMIT_SKIP_LOG=$repo/target/test-skips.log
mkdir -p target
rm -f "$OVERCOMMIT_SKIP_LOG"
finish() {
    local status=$?
    if [ -s "$OVERCOMMIT_SKIP_LOG" ]; then
        echo
        echo "================================================================"
        echo "NOT EVERYTHING RAN: $(sort -u "$OVERCOMMIT_SKIP_LOG" | wc -l) test(s) skipped"
        sort -u "$OVERCOMMIT_SKIP_LOG" | sed 's/^/  - /'
        if [ "${OVERCOMMIT_ALLOW_SKIPS:-}" = 1 ]; then
            echo "OVERCOMMIT_ALLOW_SKIPS=1: not a failure"
        else
            echo "Install what is missing, or set OVERCOMMIT_ALLOW_SKIPS=1 to accept the skips."
            [ "$status" != 0 ] || status=1
        fi
        echo "================================================================"
    fi
    exit "$status"
}
trap finish EXIT

cargo test --locked "$@"
scripts/fuzz.sh
