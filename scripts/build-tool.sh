#!/usr/bin/env bash
# Build a Go tool pinned in tools/<name>/go.mod into the cache, once per
# version, and print the binary's path on stdout.
#   scripts/build-tool.sh staticcheck honnef.co/go/tools honnef.co/go/tools/cmd/staticcheck
# <module> is the module whose version (in tools/<name>/go.mod) keys the
# cache; <package> is the main package to build. Progress goes to stderr.
set -euo pipefail
[ $# = 3 ] || { echo "usage: $0 <name> <module> <package>" >&2; exit 2; }
name=$1 module=$2 pkg=$3
here=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk -v m="$module" '($1 == "require" && $2 == m) {print $3} ($1 == m) {print $2}' "$here/tools/$name/go.mod" | head -1)
[ -n "$version" ] || { echo "$module is not required in tools/$name/go.mod" >&2; exit 1; }
cache=${MESHX_CACHE:-/var/cache/meshx}
bin="$cache/$name-$version/$(basename "$pkg")"
if [ ! -x "$bin" ]; then
	echo "building $name $version into $bin (first time only)" >&2
	mkdir -p "$(dirname "$bin")"
	cd "$here/tools/$name"
	GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -o "$bin.tmp" "$pkg"
	mv "$bin.tmp" "$bin"
fi
echo "$bin"
