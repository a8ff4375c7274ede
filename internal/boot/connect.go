package boot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/register"
)

// Connect adds upstreams to a running service's sidecar, as MeshxConsul's
// connect/3 does: one line per item, in order, with the local address to dial
// or an error. An upstream already present answers with its address. The
// upstreams persist in the state dir until disconnected.
func Connect(ctx context.Context, env Env, name string, specs []string) error {
	pl, extra, err := planAndExtra(env, name)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, u := range pl.Upstreams {
		have[u.Key] = true
	}
	var errs []error
	for _, spec := range specs {
		u, err := parseSpec(spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", spec, err))
			continue
		}
		if !have[u.Key()] {
			extra = append(extra, u)
			have[u.Key()] = true
		}
	}
	if err := env.Dirs.SetExtra(name, extra); err != nil {
		return err
	}
	pl, err = apply(ctx, env, name)
	if err != nil {
		return err
	}
	for _, spec := range specs {
		u, err := parseSpec(spec)
		if err != nil {
			fmt.Fprintf(env.Stdout, "%s\terror: %v\n", spec, err)
			continue
		}
		for _, pu := range pl.Upstreams {
			if pu.Key == u.Key() {
				fmt.Fprintf(env.Stdout, "%s\t%s\n", spec, net.JoinHostPort(pu.Address, strconv.Itoa(pu.Port)))
			}
		}
	}
	return errors.Join(errs...)
}

// Disconnect removes upstreams added with Connect. Open connections through
// them end when the proxy drops the listener.
func Disconnect(ctx context.Context, env Env, name string, specs []string) error {
	pl, extra, err := planAndExtra(env, name)
	if err != nil {
		return err
	}
	var errs []error
	var released []string
	for _, spec := range specs {
		u, err := parseSpec(spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", spec, err))
			continue
		}
		found := false
		for i, e := range extra {
			if e.Key() == u.Key() {
				extra = append(extra[:i], extra[i+1:]...)
				released = append(released, plan.UpstreamPortKey(pl.ID, u.Key()))
				found = true
				break
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("%s: not connected at run time (upstreams from the service-config are changed by editing it)", spec))
			continue
		}
		fmt.Fprintf(env.Stdout, "%s\tdisconnected\n", spec)
	}
	if err := env.Dirs.SetExtra(name, extra); err != nil {
		return err
	}
	if _, err := apply(ctx, env, name); err != nil {
		return err
	}
	if len(released) > 0 {
		g, err := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
		if err != nil {
			return err
		}
		if err := ports.Release(ports.Options{StateDir: env.Dirs.State, Range: g.Ports}, released); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// planAndExtra loads a service's plan and its run-time upstreams.
func planAndExtra(env Env, name string) (*plan.Plan, []config.Upstream, error) {
	pl, err := env.Dirs.LoadPlan(name)
	if err != nil {
		return nil, nil, fmt.Errorf("%w %q: %v", ErrUnknownService, name, err)
	}
	extra, err := env.Dirs.Extra(name)
	return pl, extra, err
}

// parseSpec reads name[:port[:datacenter]] (port omitted: allocated).
func parseSpec(spec string) (config.Upstream, error) {
	u, err := config.ParseUpstream(spec)
	if err != nil && !strings.Contains(spec, ":") {
		u, err = config.Upstream{Name: spec}, nil
	}
	if err != nil {
		return u, err
	}
	if u.Type == "" {
		u.Type = "service"
	}
	if !config.ValidName(u.Name) {
		return u, fmt.Errorf("invalid upstream name %q", u.Name)
	}
	return u, nil
}

// apply re-renders a service with its run-time upstreams, registers the
// result and tells its meshx-proxy to reload.
func apply(ctx context.Context, env Env, name string) (*plan.Plan, error) {
	l, err := Load(env, false)
	if err != nil {
		return nil, err
	}
	var pl *plan.Plan
	for _, p := range l.Plans {
		if p.Name == name {
			pl = p
		}
	}
	if pl == nil {
		return nil, fmt.Errorf("service %s: its service-config is broken or gone:\n%v", name, l.Set.Err())
	}
	cl, logout, err := agentClient(ctx, env, l.Global.Consul, 0)
	if err != nil {
		return nil, err
	}
	defer logout()
	r := &register.Registrar{Agent: cl, Hostname: l.Hostname}
	if _, err := r.Ensure(ctx, pl, "", false); err != nil {
		return nil, err
	}
	if _, err := env.Dirs.SavePlan(pl); err != nil {
		return nil, err
	}
	signalReload(env, name)
	return pl, nil
}
