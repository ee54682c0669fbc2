#!/usr/bin/env bash
# Builds the RPM for EL8/EL9 (rpm/overcommit.spec): release binaries and the preload library,
# man pages and completions generated from the clap definitions, then rpmbuild. Prints the
# path of the .rpm. Needs rpmbuild (EL: rpm-build; Debian: rpm).
#
# Build it on the release it is for, with cargo there: the binaries link against the build
# machine's glibc, so an RPM built on a newer distribution asks for a newer glibc (`rpm -qpR`
# lists it) and dnf refuses it on an older one. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rpmbuild >/dev/null || { echo "build-rpm: rpmbuild is missing (EL: dnf install rpm-build; Debian: apt-get install rpm)" >&2; exit 2; }
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
cargo build --release --locked --workspace >&2
cargo run --quiet --release --locked --example package_assets -- target/assets >&2
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
rm -rf "$target/rpmbuild"
rpmbuild -bb --quiet \
    --define "_topdir $target/rpmbuild" \
    --define "_sourcedir $PWD" \
    --define "release_path $target/release" \
    --define "pkg_version $version" \
    rpm/overcommit.spec >&2
ls "$target"/rpmbuild/RPMS/x86_64/overcommit-"$version"-*.rpm
