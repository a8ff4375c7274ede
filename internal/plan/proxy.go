package plan

import (
	"strconv"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/template"
)

// DefaultCommand is the proxy argv template of a mode (nil for ModeNone and
// ModeNative).
func DefaultCommand(mode string) []string {
	switch mode {
	case config.ModeConnect:
		return []string{"{{consul}}", "connect", "proxy", "-sidecar-for", "{{id}}"}
	case config.ModeEnvoy:
		return []string{"{{consul}}", "connect", "envoy", "-sidecar-for", "{{id}}", "-admin-bind", "{{admin_address}}"}
	}
	return nil
}

func (pl *Plan) buildProxy(s *config.Service, h Host, p Ports, vars template.Vars) error {
	pl.Proxy = Proxy{Mode: s.Proxy.Mode, MaxRestarts: s.Proxy.MaxRestarts, User: s.Proxy.User,
		Drain: Duration(s.Proxy.Drain)}
	if s.Proxy.Mode == config.ModeNative {
		return nil // meshx-proxy is the proxy: no argv, no user of its own
	}
	if pl.Proxy.User == "" {
		pl.Proxy.User = h.Global.ProxyUser
	}
	if s.Proxy.Mode == config.ModeEnvoy {
		pl.Proxy.AdminPort = p.Admin
	}
	if s.Proxy.PrometheusScrapePath != "" {
		pl.Proxy.MetricsPort = p.Metrics
	}
	cmd := s.Proxy.Command
	if len(cmd) == 0 {
		cmd = DefaultCommand(s.Proxy.Mode)
	}
	for i, a := range cmd {
		r, err := template.RenderString(a, vars, "proxy.command["+strconv.Itoa(i)+"]")
		if err != nil {
			return fieldError(err)
		}
		pl.Proxy.Argv = append(pl.Proxy.Argv, r)
	}
	if s.Proxy.Mode == config.ModeEnvoy && len(s.Proxy.Command) == 0 {
		if s.Proxy.PrometheusScrapePath != "" {
			pl.Proxy.Argv = append(pl.Proxy.Argv, "-prometheus-scrape-path", s.Proxy.PrometheusScrapePath)
		}
		if len(s.Proxy.ExtraArgs) > 0 {
			pl.Proxy.Argv = append(append(pl.Proxy.Argv, "--"), s.Proxy.ExtraArgs...)
		}
	}
	return nil
}
