#!/usr/bin/env bash
# Install the Debian packages meshx needs, only those missing: `deps.sh demo`
# for the demo, `deps.sh test` (the default) for every test. Safe to run again:
# it does nothing when everything is there.
set -euo pipefail
case "${1:-test}" in
demo) pkgs="curl jq" ;;
test) pkgs="curl jq iptables iproute2 debootstrap systemd-container lintian cloud-init binutils man-db bash-completion containernetworking-plugins victoria-metrics rpm rpmlint" ;;
*) echo "usage: deps.sh [demo|test]" >&2; exit 2 ;;
esac
need=()
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "installing Debian packages: ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
