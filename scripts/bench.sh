#!/usr/bin/env bash
# meshx's benchmarks (make bench). Each figure is set against a baseline measured
# in the same invocation, and reported as a ratio: these machines are noisy.
#   - startup: meshx-init run --foreground until N services pass and their proxies
#     accept, against direct agent API calls + directly started proxies (N = 1, 20, 100);
#     and the resident memory of one meshx-proxy against its proxy child.
#   - transparent-proxy rules: meshx apply/remove against consul connect
#     redirect-traffic + the Vagrant cleanup script (root only).
#   - port allocation, for the record.
# Raw `go test -bench` output goes to $out (default bench.out); a markdown
# summary to stdout. COUNT (default 3) sets -benchtime=COUNTx for startup.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
MESHX_CONSUL_BIN=$(./scripts/build-consul.sh)
export MESHX_CONSUL_BIN
out=${out:-bench.out}
count=${COUNT:-3}
: >"$out"
echo "running startup benchmarks (about $((count * 3)) minutes)..." >&2
go test -run '^$' -bench 'BenchmarkStartup' -benchtime "${count}x" -timeout 60m ./test/integration/ 2>&1 |
	grep -E '^(Benchmark|ok|FAIL|---)' | tee -a "$out" >&2
if [ "$(id -u)" = 0 ]; then
	echo "running iptables benchmarks..." >&2
	go test -run '^$' -bench 'ApplyRemove|ConsulRedirectTraffic' -benchtime 30x ./internal/iptables/ 2>&1 |
		grep -E '^(Benchmark|ok|FAIL)' | tee -a "$out" >&2
fi
go test -run '^$' -bench 'BenchmarkAllocate' -benchmem ./internal/ports/ 2>&1 | grep -E '^(Benchmark|ok|FAIL)' | tee -a "$out" >&2

# Summary: startup ratios meshx/baseline per N, memory.
awk '
/^BenchmarkStartup\/N=[0-9]+\/(baseline|meshx)/ {
	split($1, p, "/"); n = p[2]; sub(/-[0-9]+$/, "", p[3]); kind = p[3]
	t[n, kind] = $3 / 1e9; ns[n] = 1
	for (i = 5; i <= NF; i += 2) { if ($(i+1) == "meshx-proxy-MB") mem = $i; if ($(i+1) == "proxy-child-MB") child = $i }
}
END {
	print "| N | baseline (s) | meshx (s) | meshx / baseline |"
	print "|---|---|---|---|"
	split("N=1 N=20 N=100", order, " ")
	for (k = 1; k <= 3; k++) { n = order[k]; if (n in ns) printf "| %s | %.2f | %.2f | %.2f |\n", substr(n, 3), t[n, "baseline"], t[n, "meshx"], (t[n, "baseline"] > 0 ? t[n, "meshx"] / t[n, "baseline"] : 0) }
	if (mem != "") printf "\nmeshx-proxy resident memory: %.1f MB; its proxy child (consul connect proxy): %.1f MB; ratio %.2f\n", mem, child, mem / child
}' "$out"
