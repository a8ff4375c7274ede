#!/usr/bin/env bash
# Run every meshx test: unit, integration against a real Consul agent, and the
# system tests (booted systemd in containers, iptables in network namespaces).
# As root on Debian 12 this installs what it needs first; the Consul build and
# the container root filesystem are cached in $MESHX_CACHE (/var/cache/meshx).
# Under CI=true a test whose real part is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
start=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))" >&2; }

if [ "$(id -u)" = 0 ]; then
	step "Debian packages"
	./scripts/deps.sh test
fi
step "Consul (pinned, cached)"
MESHX_CONSUL_BIN=$(./scripts/build-consul.sh)
export MESHX_CONSUL_BIN
if [ "$(id -u)" = 0 ]; then
	step "container root filesystem (cached)"
	./scripts/rootfs.sh >/dev/null
	step "Debian package"
	make --no-print-directory package >/dev/null
	make --no-print-directory package-lint
	step "RPM (rpmlint)"
	make --no-print-directory rpm-lint
fi
step "go vet"
go vet ./...
step "lint: gofmt, go mod tidy, staticcheck"
./scripts/lint.sh
step "unit tests (race detector)"
go test -race -count=1 ./internal/...
step "fuzzing each decoder (bounded: \$MESHX_FUZZTIME each, default 10s)"
for target in internal/config:FuzzParse internal/config:FuzzParseGlobal internal/config:FuzzParseUpstream internal/plan:FuzzBuild; do
	go test -run '^$' -fuzz "^${target#*:}\$" -fuzztime "${MESHX_FUZZTIME:-10s}" "./${target%%:*}"
done
step "integration and system tests"
go test -count=1 -timeout 60m -p 1 ./test/...
step "done"
