package boot

import (
	"testing"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
)

func TestSharedConns(t *testing.T) {
	mk := func(mode string, ups int, tproxy bool) *plan.Plan {
		pl := &plan.Plan{Proxy: plan.Proxy{Mode: mode}, Upstreams: make([]plan.Upstream, ups)}
		if tproxy {
			pl.Transparent = &config.Transparent{}
		}
		return pl
	}
	plans := []*plan.Plan{mk(config.ModeConnect, 1, false), mk(config.ModeNative, 2, true), mk(config.ModeEnvoy, 0, true)}
	for _, tc := range []struct {
		agent string
		want  int
	}{
		// On loopback only the built-in proxy shares the host's address.
		{"http://127.0.0.1:8500", builtinProxyConns},
		{"127.0.0.1:8500", builtinProxyConns},
		// Elsewhere every meshx-proxy and native plane counts.
		{"unix:///run/consul/http.sock", builtinProxyConns + 3*meshxProxyConns + nativeConns + 2 + 1},
		{"https://10.0.0.5:8501", builtinProxyConns + 3*meshxProxyConns + nativeConns + 2 + 1},
	} {
		if got := sharedConns(plans, tc.agent); got != tc.want {
			t.Errorf("sharedConns(%s) = %d, want %d", tc.agent, got, tc.want)
		}
	}
}
