package boot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/netns"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/ports"
)

// netnsStateDir holds the namespace address allocations: host numbers
// within network.subnet, kept by the port allocator under keys netns/<name>,
// so each service gets the same address after every reboot.
func netnsStateDir(stateDir string) string { return filepath.Join(stateDir, "netns") }

func netnsKey(name string) string { return "netns/" + name }

func addressOptions(stateDir string, g *config.Global) ports.Options {
	return ports.Options{StateDir: netnsStateDir(stateDir),
		Range: ports.Range{IP: g.Network.Subnet.Addr(), Low: 2, High: netns.Hosts(g.Network.Subnet) + 1},
		InUse: func(netip.Addr, int) bool { return false }}
}

// hostRoutes reads the host's routes (tests replace it).
var hostRoutes = netns.HostRoutes

// checkSubnet refuses a network.subnet that a route of the host overlaps,
// located in meshx.yaml. When the routes cannot be read because the sandbox
// hides /proc/net (meshx-init.service has ProcSubset=pid) and hidden is
// true, the check is left to `meshx-init netns up`, which makes the same
// one before it sets any namespace up.
func checkSubnet(g *config.Global, hidden bool) error {
	routes, err := hostRoutes()
	if hidden && errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the host's routes: %w", err)
	}
	if c := netns.Collisions(g.Network.Subnet, routes); len(c) > 0 {
		return g.Problem("network.subnet", "subnet %s collides with the host's route to %s (dev %s): choose a subnet no route of the host covers",
			g.Network.Subnet, c[0].Dst, c[0].Device)
	}
	return nil
}

// assignAddresses gives every plan with a namespace its address, and refuses
// a network.subnet that collides with a route of the host (located in
// meshx.yaml: it would break every namespaced service).
func assignAddresses(stateDir string, g *config.Global, plans []*plan.Plan) error {
	var reqs []ports.Request
	for _, pl := range plans {
		if pl.Netns != nil {
			reqs = append(reqs, ports.Request{Key: netnsKey(pl.Name)})
		}
	}
	if len(reqs) == 0 {
		return nil
	}
	if err := checkSubnet(g, true); err != nil {
		return err
	}
	got, err := ports.Allocate(addressOptions(stateDir, g), reqs)
	if err != nil {
		return fmt.Errorf("allocate namespace addresses in %s: %w", g.Network.Subnet, err)
	}
	for _, pl := range plans {
		if pl.Netns != nil {
			if pl.Netns.Address, err = netns.Addr(g.Network.Subnet, got[netnsKey(pl.Name)]); err != nil {
				return err
			}
		}
	}
	return nil
}

// releaseAddress forgets the namespace address of a service that is gone.
func releaseAddress(stateDir string, g *config.Global, name string) error {
	return ports.Release(addressOptions(stateDir, g), []string{netnsKey(name)})
}

func netnsManager(env Env, g *config.Global) *netns.Manager {
	return netns.New(netns.Options{CNIPath: g.Network.CNIPath, RunDir: filepath.Join(env.Dirs.Runtime, "cni"), Log: env.Log})
}

// NetnsUp is `meshx-init netns up <service>`, what meshx-netns@<service>
// runs: the service's namespace as its plan says, set up or left as it is.
func NetnsUp(ctx context.Context, env Env, name string) error {
	pl, err := env.Dirs.LoadPlan(name)
	if err != nil {
		return fmt.Errorf("%w %q: %v", ErrUnknownService, name, err)
	}
	if pl.Netns == nil {
		return fmt.Errorf("%w %q: it has no network namespace (network.namespace)", ErrUnknownService, name)
	}
	g, err := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
	if err != nil {
		return err
	}
	if !netns.Exists(name) {
		if err := checkSubnet(g, false); err != nil {
			return err
		}
	}
	res, err := netnsManager(env, g).Up(ctx, *pl.Netns)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s\t%s\t%s\t%s\n", name, netns.Name(name), pl.Netns.Address, res)
	return nil
}

// NetnsDown is `meshx-init netns down <service>` (meshx-netns@'s ExecStop):
// CNI DEL and the namespace removed, from what Up recorded (the plan may be
// gone already). Nothing there is fine.
func NetnsDown(ctx context.Context, env Env, name string) error {
	g, err := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
	if err != nil {
		return err
	}
	m := netnsManager(env, g)
	spec, ok := m.Spec(name)
	if !ok {
		pl, err := env.Dirs.LoadPlan(name)
		if err != nil || pl.Netns == nil || !netns.Exists(name) {
			fmt.Fprintf(env.Stdout, "%s\t%s\t-\tabsent\n", name, netns.Name(name))
			return nil
		}
		spec = *pl.Netns
	}
	if err := m.Down(ctx, spec); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s\t%s\t%s\tremoved\n", name, netns.Name(name), spec.Address)
	return nil
}

// NetnsView is how `meshx-init render` shows a service's namespace.
func NetnsView(s *netns.Spec) map[string]any {
	if s == nil {
		return nil
	}
	return map[string]any{"name": netns.Name(s.Service), "path": netns.Path(netns.Dir, s.Service),
		"address": s.Address, "subnet": s.Subnet, "gateway": netns.Gateway(s.Subnet),
		"host_address": s.HostAddress, "publish": s.Publish, "dns": s.DNS,
		"resolv_conf": netns.ResolvConf("/etc", s.Service)}
}
