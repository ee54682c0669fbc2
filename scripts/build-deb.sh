#!/usr/bin/env bash
# Builds the Debian package: man pages and completions generated from the clap definitions,
# release binaries, then cargo-deb. Prints the path of the .deb. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb is missing: cargo install --locked cargo-deb" >&2; exit 2; }
target=${CARGO_TARGET_DIR:-target}
cargo run --quiet --locked --example package_assets -- target/assets >&2
cargo deb --locked "$@" >&2
ls -t "$target"/debian/overcommit_*.deb | head -n 1
