#!/usr/bin/env bash
# Build the root filesystem of the multi-host tests (test/e2e/multihost_test.go):
# scripts/rootfs.sh's cached Debian bookworm plus cloud-init from Debian's archive,
# cached as $MESHX_CACHE/rootfs-bookworm-cloudinit.tar (default /var/cache/meshx).
# Later runs print the cached path at once; it is rebuilt when the base tarball is
# newer, or with MESHX_ROOTFS_REBUILD=1 (which rebuilds the base too).
#
# What goes in is what a cloud image has before its first boot, nothing of meshx:
# - cloud-init and locales (with en_US.UTF-8 generated and set, so cloud-init's
#   locale module has nothing left to do on a minbase system);
# - /etc/cloud/cloud.cfg.d/90-meshx-nocloud.cfg: the NoCloud datasource only (the
#   tests seed /var/lib/cloud/seed/nocloud/), network configuration left to the
#   "hypervisor" (the test sets each container's address from the host, as
#   Vagrant configures its private network), so cloud-init never touches it, and
#   no SSH host keys (there is no SSH server in this image).
#
# Needs root and Debian's archive (apt-get in a chroot). Prints the tarball's path
# on stdout; progress on stderr.
set -euo pipefail

cd "$(dirname "$0")/.."
cache=${MESHX_CACHE:-/var/cache/meshx}
base=$(./scripts/rootfs.sh)
tarball="$cache/rootfs-bookworm-cloudinit.tar"

if [ -s "$tarball" ] && [ "$tarball" -nt "$base" ] && [ "${MESHX_ROOTFS_REBUILD:-0}" != 1 ]; then
	echo "$tarball"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "rootfs-cloudinit.sh: must run as root (chroot, apt-get)" >&2
	exit 1
fi

work=$(mktemp -d "$cache/rootfs-cloudinit-build.XXXXXX")
cleanup() {
	umount "$work/root/proc" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
root="$work/root"
mkdir "$root"
tar --numeric-owner --xattrs -xf "$base" -C "$root"

in_root() {
	chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
}

echo "installing cloud-init into a copy of $base (about 20 s)..." >&2
mount -t proc proc "$root/proc"
cp "$root/etc/resolv.conf" "$work/resolv.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# apt's chatter goes to a log, shown only when a step fails.
if ! { in_root apt-get update -qq &&
	in_root apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends cloud-init locales &&
	echo 'en_US.UTF-8 UTF-8' >"$root/etc/locale.gen" &&
	in_root locale-gen &&
	in_root update-locale LANG=en_US.UTF-8; } >"$work/apt.log" 2>&1; then
	cat "$work/apt.log" >&2
	exit 1
fi
cp "$work/resolv.conf" "$root/etc/resolv.conf"
umount "$root/proc"

cat >"$root/etc/cloud/cloud.cfg.d/90-meshx-nocloud.cfg" <<'EOF'
# meshx test image (scripts/rootfs-cloudinit.sh): user-data comes from the NoCloud
# seed in /var/lib/cloud/seed/nocloud/; the network is configured from outside.
datasource_list: [NoCloud, None]
network:
  config: disabled
# No SSH server in this image: no host keys to generate.
ssh_genkeytypes: []
EOF

rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar --numeric-owner --xattrs -C "$root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
echo "$tarball"
