#!/usr/bin/env bash
# Build the pinned Consul binary from tools/consul into the cache, once per version.
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk '/github.com\/hashicorp\/consul v/ {print $2}' "$here/tools/consul/go.mod")
cache=${MESHX_CACHE:-/var/cache/meshx}
bin="$cache/consul-$version/consul"
if [ ! -x "$bin" ]; then
	echo "building consul $version into $bin (first time only, about 5 minutes on 2 cores)..." >&2
	mkdir -p "$(dirname "$bin")"
	(cd "$here/tools/consul" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -o "$bin.tmp" github.com/hashicorp/consul)
	mv "$bin.tmp" "$bin"
fi
echo "$bin"
