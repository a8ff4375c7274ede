#!/usr/bin/env bash
# meshx's benchmarks (make bench). Each figure is set against a baseline measured
# in the same invocation, and reported as a ratio: these machines are noisy.
#   - startup: meshx-init run --foreground until N services pass and their proxies
#     (connect and native modes)
#     accept, against direct agent API calls + directly started proxies (N = 1, 20, 100);
#     and the resident memory of one meshx-proxy against its proxy child.
#   - transparent-proxy rules: meshx apply/remove against consul connect
#     redirect-traffic + the Vagrant cleanup script (root only).
#   - network namespaces (root only): one service's namespace set up (ip netns add
#     + CNI ADD) and removed (CNI DEL) against `ip netns add` + `delete` alone; then
#     a booted host (TestNamespacedServices, under the e2e lock) from boot to three
#     namespaced services passing, with each meshx-netns@ unit's share of that boot.
#   - port allocation, for the record.
#   - one meshx-proxy's memory with metrics on against off.
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
if [ "$(id -u)" = 0 ]; then
	echo "running network namespace benchmarks..." >&2
	go test -run '^$' -bench 'BenchmarkNamespace' -benchtime 20x ./internal/netns/ 2>&1 |
		grep -E '^(Benchmark|ok|FAIL)' | tee -a "$out" >&2
	echo "booting three namespaced services (TestNamespacedServices, about 2 minutes)..." >&2
	flock /tmp/meshx-e2e.lock go test -count=1 -run '^TestNamespacedServices$' -v -timeout 30m ./test/e2e/ 2>&1 |
		grep -oE 'bench: netns .*|^(ok|FAIL|--- FAIL).*' | tee -a "$out" >&2
fi
go test -run '^$' -bench 'BenchmarkAllocate' -benchmem ./internal/ports/ 2>&1 | grep -E '^(Benchmark|ok|FAIL)' | tee -a "$out" >&2
echo "running metrics memory (one meshx-proxy, metrics on against off)..." >&2
go test -run '^$' -bench 'BenchmarkMetricsMemory' -benchtime 3x ./test/integration/ 2>&1 | grep -E '^(Benchmark|ok|FAIL)' | tee -a "$out" >&2

echo "running data path benchmarks (plain TCP, built-in pair, native pair)..." >&2
go test -run '^$' -bench 'BenchmarkDataPath' -benchtime 2s -timeout 20m ./test/integration/ 2>&1 |
	grep -E '^(Benchmark|ok|FAIL)' | tee -a "$out" >&2
echo "running services-per-host (150 native services, default agent limits)..." >&2
go test -run '^$' -bench 'BenchmarkServicesPerHost' -benchtime 1x -timeout 20m ./test/integration/ 2>&1 |
	grep -E '^(Benchmark|ok|FAIL)' | tee -a "$out" >&2

# Summary: startup ratios against the baseline per N and mode, memory, data path.
awk '
/^BenchmarkStartup\/N=[0-9]+\/(baseline|meshx|native)/ {
	split($1, p, "/"); n = p[2]; sub(/-[0-9]+$/, "", p[3]); kind = p[3]
	t[n, kind] = $3 / 1e9; ns[n] = 1
	for (i = 4; i < NF; i++) {
		if ($(i+1) == "meshx-proxy-MB") mem[kind] = $i
		if ($(i+1) == "proxy-child-MB") child[kind] = $i
	}
}
/^BenchmarkDataPath\// {
	split($1, p, "/"); sub(/-[0-9]+$/, "", p[3]); kind = p[2] "/" p[3]
	for (i = 4; i < NF; i++) { if ($(i+1) == "MB/s") mbs[kind] = $i; if ($(i+1) == "p50-us") p50[kind] = $i; if ($(i+1) == "p99-us") p99[kind] = $i }
}
/^BenchmarkServicesPerHost/ { for (i = 4; i < NF; i++) if ($(i+1) == "ready-of-150") ready = $i }
END {
	print "| N | baseline (s) | meshx connect (s) | ratio | meshx native (s) | ratio |"
	print "|---|---|---|---|---|---|"
	split("N=1 N=20 N=100", order, " ")
	for (k = 1; k <= 3; k++) {
		n = order[k]; if (!(n in ns)) continue
		b = t[n, "baseline"]
		printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n", substr(n, 3), b, t[n, "meshx"], (b > 0 ? t[n, "meshx"] / b : 0), t[n, "native"], (b > 0 ? t[n, "native"] / b : 0)
	}
	if ("meshx" in mem) printf "\nmemory per service: connect mode %.1f MB (meshx-proxy) + %.1f MB (consul connect proxy); native mode %.1f MB in all; ratio %.2f\n", mem["meshx"], child["meshx"], mem["native"], mem["native"] / (mem["meshx"] + child["meshx"])
	if (length(mbs) > 0) {
		print "\n| data path | stream MB/s | 32 connections MB/s | request p50 (us) | p99 (us) |"
		print "|---|---|---|---|---|"
		split("plain builtin native", paths, " ")
		for (k = 1; k <= 3; k++) { q = paths[k]; printf "| %s | %s | %s | %s | %s |\n", q, mbs["stream/" q], mbs["parallel32/" q], p50["request/" q], p99["request/" q] }
	}
	if (ready != "") printf "\nnative services ready against an agent with default limits: %s of 150\n", ready
}' "$out"

# Summary: a namespace's cost against ip netns alone; boot with three namespaces.
awk '
/^BenchmarkNamespace\/(baseline|up|down|recheck)/ { split($1, p, "/"); k = p[2]; sub(/-[0-9]+$/, "", k); ms[k] = $3 / 1e6 }
/^bench: netns (boot|reboot)-to-passing [0-9.]+s/ { w = $3; v = $4; sub(/s$/, "", v); boot[w] = v }
/^bench: netns (boot|reboot)-to-passing-cni-add / { w = $3; sub(/-cni-add$/, "", w); v = $4; sub(/s$/, "", v); add[w] += v; n[w]++ }
END {
	if ("up" in ms) {
		printf "\n| namespace of one service | ms | / ip netns add+delete |\n|---|---|---|\n"
		printf "| ip netns add + delete (baseline) | %.1f | 1.00 |\n", ms["baseline"]
		printf "| set up: ip netns add + CNI ADD | %.1f | %.1f |\n", ms["up"], ms["up"] / ms["baseline"]
		printf "| remove: CNI DEL + ip netns delete | %.1f | %.1f |\n", ms["down"], ms["down"] / ms["baseline"]
		printf "| re-run on an intact namespace (CHECK) | %.1f | %.1f |\n", ms["recheck"], ms["recheck"] / ms["baseline"]
	}
	for (w in boot) printf "\n%s with three namespaced services: %.2f s to all passing; netns up %.3f s per service (mean of %d), %.0f%% of it\n", w, boot[w], add[w] / n[w], n[w], 100 * add[w] / boot[w]
}' "$out"
