#!/usr/bin/env bash
# Installs what the real-kernel (VM) suite needs and fetches the guest kernel into a cache.
#
#   scripts/setup-vm.sh            # apt packages + guest kernel
#   scripts/setup-vm.sh --kernel   # only the guest kernel (no root needed)
#
# The cache lives in $OVERCOMMIT_VM_CACHE (default: target/vm-cache under the repository).
# No registry host name is written here: apt sources are taken from the machine's own.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${OVERCOMMIT_VM_CACHE:-$repo/target/vm-cache}
mkdir -p "$cache"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

add_backports() {
    # Derive a bookworm-backports source from the machine's existing Debian source.
    local src=/etc/apt/sources.list.d/debian.sources
    [ -f "$src" ] || return 0
    grep -q 'backports' /etc/apt/sources.list.d/*.sources 2>/dev/null && return 0
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' "$src")
    [ -n "$uri" ] || return 0
    as_root tee /etc/apt/sources.list.d/overcommit-backports.sources >/dev/null <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

have_packages() {
    command -v qemu-system-x86_64 >/dev/null && command -v debootstrap >/dev/null \
        && command -v mkfs.ext4 >/dev/null && command -v socat >/dev/null \
        && dpkg -s busybox-static >/dev/null 2>&1
}

install_packages() {
    if have_packages; then
        echo "setup-vm: packages already installed"
        return 0
    fi
    add_backports
    as_root apt-get update -q
    # qemu-system-x86 from backports matches the preinstalled qemu-utils 10.x;
    # fall back to the release's own qemu if backports is not reachable.
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -t bookworm-backports qemu-system-x86; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        busybox-static debootstrap e2fsprogs socat
}

fetch_kernel() {
    local pkg
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "setup-vm: cannot resolve the cloud kernel package" >&2; exit 1; }
    if [ -f "$cache/kernel/$pkg/vmlinuz" ]; then
        echo "setup-vm: kernel $pkg already cached"
    else
        local tmp
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download "$pkg")
        rm -rf "$cache/kernel/$pkg.tmp"
        mkdir -p "$cache/kernel/$pkg.tmp"
        dpkg -x "$tmp"/*.deb "$cache/kernel/$pkg.tmp/root"
        cp "$cache/kernel/$pkg.tmp"/root/boot/vmlinuz-* "$cache/kernel/$pkg.tmp/vmlinuz"
        rm -rf "$cache/kernel/$pkg"
        mv "$cache/kernel/$pkg.tmp" "$cache/kernel/$pkg"
        rm -rf "$tmp"
    fi
    ln -sfn "$pkg" "$cache/kernel/current"
    echo "setup-vm: guest kernel in $cache/kernel/current"
}

case "${1:-all}" in
    --kernel) fetch_kernel ;;
    all) install_packages; fetch_kernel ;;
    *) echo "usage: $0 [--kernel]" >&2; exit 2 ;;
esac
