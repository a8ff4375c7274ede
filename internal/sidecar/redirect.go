package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshx/meshx/internal/atomicfile"
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
func (r *Rules) Config(t *config.Transparent, inboundPort int, proxy Owner) iptables.Config {
	c := iptables.Config{InboundPort: inboundPort, OutboundPort: t.OutboundPort, ProxyUID: proxy.UID,
		ProxyMark:            proxy.Mark,
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
		if uid, err := strconv.Atoi(u.Uid); err == nil && uid != proxy.UID {
			c.ExcludeUIDs = append(c.ExcludeUIDs, uid)
		}
	}
	if t.DNS != nil {
		c.DNS = &iptables.DNS{Address: t.DNS.Address}
	}
	return c
}

// Apply installs the rule set for t, atomically.
func (r *Rules) Apply(ctx context.Context, t *config.Transparent, inboundPort int, proxy Owner) error {
	rs, err := iptables.Rules(r.Config(t, inboundPort, proxy))
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

// rulesMarker records that this service's rules are (or may be) installed,
// so that they are removed even when the plan no longer asks for them.
func rulesMarker(dirs state.Dirs, service string) string {
	return filepath.Join(dirs.Runtime, "proxies", service+".rules")
}

func (d *daemon) rules() (Redirector, error) {
	if d.redirector == nil {
		if d.o.NewRedirector == nil {
			return nil, fmt.Errorf("%w: no transparent-proxy rule backend", ErrConfig)
		}
		r, err := d.o.NewRedirector()
		if err != nil {
			return nil, err
		}
		d.redirector = r
	}
	return d.redirector, nil
}

// applyRules installs the plan's rules (atomically, replacing any) and marks them.
func (d *daemon) applyRules(ctx context.Context) error {
	r, err := d.rules()
	if err != nil {
		return err
	}
	// Marked before applying: a crash half-way still leads to a removal.
	if _, err := atomicfile.WriteVolatile(rulesMarker(d.o.Dirs, d.pl.Name), []byte("installed\n"), 0o644); err != nil {
		return err
	}
	port, err := d.publicPort(ctx)
	if err != nil {
		return err
	}
	if err := r.Apply(ctx, d.pl.Transparent, port, owner(d.pl)); err != nil {
		return err
	}
	d.rulesIn = true
	d.log.Info("transparent-proxy rules installed", "inbound_port", port)
	return nil
}

// removeRules removes this service's rules when it has or had any; the
// removal itself runs to the end even when ctx is cancelled (crash-only).
func (d *daemon) removeRules(ctx context.Context) error {
	if d.pl.Transparent == nil && !d.rulesIn && !fileExists(rulesMarker(d.o.Dirs, d.pl.Name)) {
		return nil
	}
	r, err := d.rules()
	if err != nil {
		return err
	}
	return removeMarked(ctx, r, d.o.Dirs, d.pl.Name, func() { d.rulesIn = false })
}

// removeMarked removes the rules even when ctx is cancelled, within ctx's
// deadline if it has one, else 30s.
func removeMarked(ctx context.Context, r Redirector, dirs state.Dirs, service string, done func()) error {
	budget := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		budget = time.Until(dl)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget)
	defer cancel()
	if err := r.Remove(rctx); err != nil {
		return err
	}
	done()
	if err := os.Remove(rulesMarker(dirs, service)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Cleanup is meshx-proxy --cleanup (ExecStopPost): it kills a proxy a killed
// meshx-proxy left, removes the service's transparent-proxy rules (when the
// plan asks for them or a run marked them installed) and its published
// status. Idempotent.
func Cleanup(ctx context.Context, dirs state.Dirs, service, netns string, log *slog.Logger) error {
	KillStaleProxy(ctx, dirs, service, log)
	dirs.RemoveStatus(service)
	pl, err := dirs.LoadPlan(service)
	planned := err == nil && pl.Transparent != nil
	if !planned && !fileExists(rulesMarker(dirs, service)) {
		return nil
	}
	r, err := NewRules(netns, log)
	if err != nil {
		return err
	}
	return removeMarked(ctx, r, dirs, service, func() {})
}
