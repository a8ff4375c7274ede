#!/usr/bin/env bash
# The meshx demo: builds Consul (cached) and meshx, starts a Consul dev agent on
# loopback, runs `meshx-init run --foreground` on examples/, sends a request
# through the mesh (client -> its sidecar -> mTLS -> web's sidecar -> web),
# prints `meshx-init status`, and cleans everything up on Ctrl-C.
# --once: exit after the request instead of waiting for Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
once=${1:-}
say() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" = 0 ]; then ./scripts/deps.sh demo; fi
say "building Consul (pinned in tools/consul, cached in ${MESHX_CACHE:-/var/cache/meshx})"
consul=$(./scripts/build-consul.sh)
work=$(mktemp -d /tmp/meshx-demo.XXXXXX)
say "building meshx into $work/bin"
go build -o "$work/bin/" ./cmd/meshx-init ./cmd/meshx-proxy ./examples/webapp

pids=()
cleanup() {
	trap - INT TERM EXIT
	say "cleaning up"
	if [ -n "${init_pid:-}" ] && kill -0 "$init_pid" 2>/dev/null; then
		kill -INT "$init_pid" 2>/dev/null || true
		wait "$init_pid" 2>/dev/null || true
	fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup INT TERM EXIT

for port in 8500 8080 9191; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "port $port on 127.0.0.1 is taken (a Consul agent or app already running?); stop it and try again" >&2
		exit 1
	fi
done

say "starting a Consul dev agent on 127.0.0.1:8500 (log: $work/consul.log)"
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -log-level warn >"$work/consul.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do
	leader=$(curl -sf http://127.0.0.1:8500/v1/status/leader 2>/dev/null || true)
	[ -n "$leader" ] && [ "$leader" != '""' ] && break
	sleep 0.5
done

say "starting the web app on 127.0.0.1:8080"
"$work/bin/webapp" -listen 127.0.0.1:8080 -name web &
pids+=($!)

mkdir -p "$work/etc/services.d"
cp examples/services.d/*.yaml "$work/etc/services.d/"
cat >"$work/etc/meshx.yaml" <<YAML
version: 1
consul: {address: "http://127.0.0.1:8500", binary: "$consul"}
YAML
m=("$work/bin/meshx-init" --config-dir "$work/etc" --state-dir "$work/state" --runtime-dir "$work/run")

say "meshx-init run --foreground (services: $(ls "$work/etc/services.d" | tr '\n' ' '))"
"${m[@]}" run --foreground 2>"$work/meshx.log" &
init_pid=$!

say "waiting until both services are passing"
for _ in $(seq 1 120); do
	n=$(curl -sf 'http://127.0.0.1:8500/v1/health/state/passing' | jq '[.[] | select(.CheckID | startswith("meshx-ttl:"))] | length' 2>/dev/null || echo 0)
	[ "$n" = 2 ] && break
	sleep 0.5
done

say "a request through the mesh: curl http://127.0.0.1:9191/hello (client's upstream 'web')"
ok=0
for _ in $(seq 1 60); do
	if out=$(curl -sf -m 3 http://127.0.0.1:9191/hello); then ok=1; break; fi
	sleep 0.5
done
if [ $ok = 1 ]; then echo "$out"; else echo "no answer through the mesh; see $work/meshx.log" >&2; tail -20 "$work/meshx.log" >&2; exit 1; fi

say "meshx-init status"
"${m[@]}" status

if [ "$once" = --once ]; then
	exit 0
fi
say "running; logs: $work/meshx.log. Try: ${m[*]} status   (Ctrl-C to stop and clean up)"
wait "$init_pid"
