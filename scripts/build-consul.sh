#!/usr/bin/env bash
# Build the pinned Consul binary (tools/consul/go.mod) into the cache, once per
# version. Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk '$1 == "require" && $2 == "github.com/hashicorp/consul" {print $3}' "$here/tools/consul/go.mod")
cache=${MESHX_CACHE:-/var/cache/meshx}
bin="$cache/consul-$version/consul"
if [ ! -x "$bin" ]; then
	echo "building consul $version into $bin (first time only: about 5-8 minutes on 2 cores)" >&2
	mkdir -p "$(dirname "$bin")"
	cd "$here/tools/consul"
	export GOTOOLCHAIN=local GOFLAGS=-mod=mod
	echo "  downloading modules..." >&2
	go mod download
	# -v names each package as it is compiled: count them as progress.
	go build -v -o "$bin.tmp" github.com/hashicorp/consul 2>&1 |
		awk '/^#|error|cannot/ {print > "/dev/stderr"; next} {n++; if (n % 100 == 0) printf "  %d packages compiled...\n", n > "/dev/stderr"}'
	[ -x "$bin.tmp" ] || { echo "consul build failed" >&2; exit 1; }
	mv "$bin.tmp" "$bin"
	echo "  consul $version ready" >&2
fi
echo "$bin"
