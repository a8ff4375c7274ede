package sidecar

import (
	"context"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/iptables"
	"github.com/meshx/meshx/internal/state"
)

// Rules is the Redirector backed by internal/iptables.
type Rules struct {
	M *iptables.Manager
	// AgentUser is the Consul agent's user, always excluded from outbound
	// redirection; "" = "consul" when such a user exists.
	AgentUser string
}

// NewRules returns iptables-backed rules for the namespace netns ("" = ours).
func NewRules(netns string, log *slog.Logger) (*Rules, error) {
	m, err := iptables.New(iptables.Options{NetNS: netns, Logger: log})
	if err != nil {
		return nil, err
	}
	return &Rules{M: m}, nil
}

// Config is the iptables configuration for a transparent-proxy service.
func (r *Rules) Config(t *config.Transparent, inboundPort, proxyUID int) iptables.Config {
	c := iptables.Config{InboundPort: inboundPort, OutboundPort: t.OutboundPort, ProxyUID: proxyUID,
		ExcludeUIDs:          append([]int{}, t.ExcludeUIDs...),
		ExcludeInboundPorts:  t.ExcludeInboundPorts,
		ExcludeOutboundPorts: t.ExcludeOutboundPorts,
		ExcludeOutboundCIDRs: t.ExcludeOutboundCIDRs,
		IPv6:                 hostHasIPv6(),
	}
	name := r.AgentUser
	if name == "" {
		name = "consul"
	}
	if u, err := user.Lookup(name); err == nil {
		if uid, err := strconv.Atoi(u.Uid); err == nil && uid != proxyUID {
			c.ExcludeUIDs = append(c.ExcludeUIDs, uid)
		}
	}
	if t.DNS != nil {
		c.DNS = &iptables.DNS{Address: t.DNS.Address}
	}
	return c
}

// Apply installs the rule set for t, atomically.
func (r *Rules) Apply(ctx context.Context, t *config.Transparent, inboundPort, proxyUID int) error {
	rs, err := iptables.Rules(r.Config(t, inboundPort, proxyUID))
	if err != nil {
		return err
	}
	return r.M.Apply(ctx, rs)
}

// Remove removes meshx's rules (none there is fine).
func (r *Rules) Remove(ctx context.Context) error { return r.M.Remove(ctx) }

// hostHasIPv6 reports whether the kernel has IPv6 enabled on some interface.
func hostHasIPv6() bool {
	b, err := os.ReadFile("/proc/net/if_inet6")
	return err == nil && strings.TrimSpace(string(b)) != ""
}

// Cleanup is meshx-proxy --cleanup (ExecStopPost): it kills a proxy a killed
// meshx-proxy left, removes the service's transparent-proxy rules and its
// published status. Idempotent.
func Cleanup(ctx context.Context, dirs state.Dirs, service, netns string, log *slog.Logger) error {
	KillStaleProxy(dirs, service, log)
	dirs.RemoveStatus(service)
	pl, err := dirs.LoadPlan(service)
	if err != nil || pl.Transparent == nil {
		return nil
	}
	r, err := NewRules(netns, log)
	if err != nil {
		return err
	}
	return r.Remove(ctx)
}
