#!/usr/bin/env bash
# The checks scripts/test.sh (and so CI) fails on besides the tests: every Go
# file gofmt-formatted, go.mod and go.sum tidy (every direct dependency listed
# as direct), and staticcheck, pinned in tools/staticcheck and built once into
# the cache through the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
fail=0
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	printf 'not gofmt-formatted (run gofmt -w):\n%s\n' "$unformatted" >&2
	fail=1
fi
if ! go mod tidy -diff; then
	echo "go.mod/go.sum are not tidy: the diff above is what go mod tidy would change" >&2
	fail=1
fi
staticcheck=$(./scripts/build-tool.sh staticcheck honnef.co/go/tools honnef.co/go/tools/cmd/staticcheck)
if ! "$staticcheck" ./...; then
	fail=1
fi
exit $fail
