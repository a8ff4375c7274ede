package boot

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/netns"
)

func fakeRoutes(t *testing.T, routes ...string) {
	t.Helper()
	old := hostRoutes
	t.Cleanup(func() { hostRoutes = old })
	hostRoutes = func() ([]netns.Route, error) {
		var out []netns.Route
		for _, r := range routes {
			out = append(out, netns.Route{Dst: netip.MustParsePrefix(r), Device: "eth0"})
		}
		return out, nil
	}
}

// TestLoadNamespaceAddresses: each namespaced service gets an address of its
// own in network.subnet, the same in every later run and after the others
// change; a dry run allocates none; a service that is gone gives its back.
func TestLoadNamespaceAddresses(t *testing.T) {
	fakeRoutes(t, "0.0.0.0/0", "10.0.2.0/24", "198.19.240.2/32")
	env, _ := testEnv(t, "")
	service(t, env, "a.yaml", "version: 1\nservice: {name: a}\nnetwork: {namespace: true}\n")
	service(t, env, "b.yaml", "version: 1\nservice: {name: b}\nnetwork: {namespace: true}\n")
	service(t, env, "c.yaml", "version: 1\nservice: {name: c}\n")
	addrs := func(dry bool) map[string]string {
		t.Helper()
		l, err := Load(env, dry)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, pl := range l.Plans {
			if pl.Netns != nil {
				out[pl.Name] = pl.Netns.Address.String()
			}
		}
		return out
	}
	if got := addrs(true); got["a"] != "198.19.240.2" || got["b"] != "198.19.240.3" || len(got) != 2 {
		t.Errorf("dry: %v", got)
	}
	if _, err := os.Stat(netnsStateDir(env.Dirs.State)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dry Load allocated addresses: %v", err)
	}
	first := addrs(false)
	if first["a"] != "198.19.240.2" || first["b"] != "198.19.240.3" {
		t.Errorf("first run: %v", first)
	}
	if err := os.Remove(filepath.Join(config.ServicesDir(env.Dirs.Config), "a.yaml")); err != nil {
		t.Fatal(err)
	}
	service(t, env, "d.yaml", "version: 1\nservice: {name: d}\nnetwork: {namespace: true}\n")
	if got := addrs(false); got["b"] != "198.19.240.3" || got["d"] == "198.19.240.3" || got["d"] == "" {
		t.Errorf("after a change: %v (b must keep its address)", got)
	}
	g, _ := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
	if err := releaseAddress(env.Dirs.State, g, "a"); err != nil {
		t.Fatal(err)
	}
	service(t, env, "e.yaml", "version: 1\nservice: {name: e}\nnetwork: {namespace: true}\n")
	if got := addrs(false); got["e"] != "198.19.240.2" {
		t.Errorf("a's released address is not reused: %v", got)
	}
}

// TestLoadSubnetCollides: a network.subnet that a host route covers is a
// located error of meshx.yaml, found only when a service uses namespaces.
func TestLoadSubnetCollides(t *testing.T) {
	fakeRoutes(t, "0.0.0.0/0", "10.99.0.0/16")
	env, _ := testEnv(t, "network:\n  subnet: 10.99.4.0/24\n")
	service(t, env, "a.yaml", "version: 1\nservice: {name: a}\n")
	if _, err := Load(env, true); err != nil {
		t.Fatalf("no namespaced service, yet: %v", err)
	}
	service(t, env, "b.yaml", "version: 1\nservice: {name: b}\nnetwork: {namespace: true}\n")
	_, err := Load(env, true)
	want := config.ConfigPath(env.Dirs.Config) + ":5: network.subnet: subnet 10.99.4.0/24 collides with the host's route to 10.99.0.0/16 (dev eth0): choose a subnet no route of the host covers"
	if err == nil || err.Error() != want {
		t.Fatalf("got  %v\nwant %s", err, want)
	}
	if !errors.Is(err, config.ErrInvalid) {
		t.Errorf("not ErrInvalid (exit 2): %v", err)
	}
}

// TestCheckSubnetHiddenRoutes: where the sandbox hides /proc/net (the
// meshx-init unit), Load leaves the check to `netns up`, which insists.
func TestCheckSubnetHiddenRoutes(t *testing.T) {
	old := hostRoutes
	t.Cleanup(func() { hostRoutes = old })
	hostRoutes = func() ([]netns.Route, error) {
		return nil, &os.PathError{Op: "open", Path: netns.RouteFile, Err: os.ErrNotExist}
	}
	env, _ := testEnv(t, "")
	service(t, env, "b.yaml", "version: 1\nservice: {name: b}\nnetwork: {namespace: true}\n")
	if _, err := Load(env, true); err != nil {
		t.Fatalf("Load with /proc/net hidden: %v", err)
	}
	g, _ := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
	if err := checkSubnet(g, false); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns up's check with /proc/net hidden: %v", err)
	}
}
