#!/usr/bin/env bash
# Build the Debian root filesystem the booted-container tests (test/e2e) start from,
# once, and cache it as a tarball: $MESHX_CACHE/rootfs-bookworm.tar (default
# /var/cache/meshx). Later runs print the cached path at once.
#
# The tarball holds a debootstrapped minbase bookworm with systemd as init, D-Bus,
# iproute2, iptables and python3 (the tests' tiny HTTP app), plus curl and procps for
# looking around. Nothing meshx-specific goes in: each test unpacks a fresh copy and
# installs the .deb, Consul and its configs itself.
#
# Needs root, debootstrap and (for the tests) systemd-nspawn; installs the two with
# apt-get when they are missing. Prints the tarball's path on stdout; progress on stderr.
# MESHX_ROOTFS_REBUILD=1 forces a rebuild.
set -euo pipefail

suite=bookworm
cache=${MESHX_CACHE:-/var/cache/meshx}
tarball="$cache/rootfs-$suite.tar"
packages=systemd,systemd-sysv,dbus,iproute2,iptables,ca-certificates,python3,curl,procps

if [ -s "$tarball" ] && [ "${MESHX_ROOTFS_REBUILD:-0}" != 1 ]; then
	echo "$tarball"
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "rootfs.sh: must run as root (debootstrap)" >&2
	exit 1
fi

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing ${missing[*]}..." >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# The host's own Debian mirror (deb822 or one-line sources), else the default.
mirror=""
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
	mirror=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
	mirror=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$cache"
work=$(mktemp -d "$cache/rootfs-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "debootstrap $suite from $mirror into $root (first time only, about 75 s)..." >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >&2

# A fixed hostname so service ids (<name>-<hostname>) are predictable. The
# machine-id debootstrap wrote stays, so a reboot of a copy is not a "first boot".
# No apt caches in the tarball.
echo meshx-vm >"$root/etc/hostname"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar --numeric-owner --xattrs -C "$root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
echo "$tarball"
