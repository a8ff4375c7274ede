#!/usr/bin/env bash
# Benchmark of the three-host topology (docs/multihost.md): runs TestMultiHost
# RUNS times (default 3) and summarizes the two figures it observes:
#   boot-to-first-request        client hosts booted (cloud-init, Consul, meshx
#                                installed and started) to the first request
#                                answered by web through the mesh;
#   web-reboot-to-first-request  web host booted again to the first answer;
# and the requests sent and failed while one of two web hosts stops its
# meshx-proxy@web, starts it and reboots (default drain, and proxy.drain 0s).
# Needs root (booted containers). The test logs each figure as a line
# "bench: multihost <name> <seconds>s"; nothing in the test depends on them.
# usage: scripts/bench-multihost.sh [RUNS]   (MESHX_BENCH_LOG=FILE keeps go test's log)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
export GOTOOLCHAIN=local

MESHX_CONSUL_BIN=$(./scripts/build-consul.sh)
export MESHX_CONSUL_BIN
./scripts/rootfs-cloudinit.sh >/dev/null
# One package for every run (the test would otherwise build its own once).
deb=$(make --no-print-directory -f mk/package.mk package MESHX_VERSION=0.0.0~bench | tail -n 1)
export MESHX_DEB="$PWD/$deb"

if [ -n "${MESHX_BENCH_LOG:-}" ]; then
	log=$MESHX_BENCH_LOG
else
	log=$(mktemp)
	trap 'rm -f "$log"' EXIT
fi
echo "running TestMultiHost $runs times on $(nproc) cores..." >&2
if ! go test ./test/e2e/ -run '^TestMultiHost$' -count="$runs" -v -timeout 60m >"$log" 2>&1; then
	cat "$log" >&2
	exit 1
fi

printf '%-30s %4s %8s %8s %8s\n' figure runs min median max
for name in boot-to-first-request web-reboot-to-first-request; do
	grep -o "bench: multihost $name [0-9.]*s" "$log" | awk '{sub(/s$/, "", $4); print $4}' | sort -n |
		awk -v name="$name" '{v[NR] = $1} END {
			if (NR == 0) { printf "%-30s %4d\n", name, 0; exit }
			med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "%-30s %4d %7.2fs %7.2fs %7.2fs\n", name, NR, v[1], med, v[NR]
		}'
done
# Runs in which web's agent kept a stale intention decision (hashicorp/consul#23368).
echo "runs that hit the stale-intention bug of Consul 1.22.5: $(grep -c 'KNOWN CONSUL BUG' "$log" || true)"
# Requests through the mesh while a web host's meshx-proxy@web stops, starts and
# the host reboots, with the default drain and with proxy.drain 0s (baseline).
grep -o 'bench: multihost zero-loss drain default sent [0-9]* failed [0-9]*; baseline drain 0s sent [0-9]* failed [0-9]*' "$log" |
	awk '{s += $7; f += $9; bs += $14; bf += $16} END {
		printf "zero-loss, %d run(s): drain default %d sent %d failed; baseline drain 0s %d sent %d failed\n", NR, s, f, bs, bf
	}'
