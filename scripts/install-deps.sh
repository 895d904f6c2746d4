#!/usr/bin/env bash
# Installs the Debian packages the demo, the tests and the benchmarks use (needs root or sudo);
# debootstrap builds the Debian 13 chroot of the modern-store tests (tests/trixie/).
# Does nothing when they are all present. As root, also creates the user the rootless tests run
# as (scripts/rootless-user.sh).
set -euo pipefail
# libssl-dev and pkg-config: composefs-rs's crate (cstorage's `composefs` subcommands) hashes
# with OpenSSL; mount: the composefs mount test (erofs + overlay); containerd (and its ctr):
# the serve test pulling through a hosts.toml mirror runs a containerd of its own (on a host
# booted with systemd the package also enables the system's containerd service; the test does
# not use it); strace: a test holding a copy in mid-write (syscall delay injection) to
# interrupt it.
PKGS=(skopeo containers-storage tar-split umoci podman fuse-overlayfs uidmap attr python3 tar gzip bsdutils hyperfine time debootstrap util-linux zsh man-db bash-completion btrfs-progs e2fsprogs curl openssl apache2-utils docker-registry containerd systemd mount libssl-dev pkg-config strace)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    [ "$(id -u)" -eq 0 ] && "$(dirname "$0")/rootless-user.sh"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ "$(id -u)" -eq 0 ] && "$(dirname "$0")/rootless-user.sh"
exit 0
