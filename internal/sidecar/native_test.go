package sidecar

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/testutil"
)

// TestNativeProxy drives the in-process data plane through the Proxy steps
// against a real dev agent: it accepts once it has its certificate, takes a
// new plan in place, and stops.
func TestNativeProxy(t *testing.T) {
	c := testutil.StartConsul(t, "")
	app := listening(t)
	public := testutil.FreePort(t)
	pl := lifecyclePlan()
	pl.Proxy = plan.Proxy{Mode: config.ModeNative}
	pl.Address, pl.Port = "127.0.0.1", app
	var states []ProxyState
	o, err := Options{Dirs: testDirs(t), Global: &config.Global{}, Service: "web"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	p, err := o.NewProxy(ProxyParams{Plan: pl, Logger: testutil.Logger(t), Consul: config.Consul{Address: c.Address()},
		PublicPort: func(context.Context) (int, error) { return public, nil },
		OnState:    func(s ProxyState) { states = append(states, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.(Reloader); !ok {
		t.Fatal("the native plane does not take a new plan in place")
	}
	if err := p.Accepting(context.Background()); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("Accepting before Start = %v", err)
	}
	if p.Exited() != nil {
		t.Error("the native plane says it can give up by itself")
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if len(states) != 1 || states[0].State != "running" {
		t.Errorf("states %+v, want running", states)
	}
	testutil.Eventually(t, 30*time.Second, func() error { return p.Accepting(context.Background()) })
	conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(public)), time.Second)
	if err != nil {
		t.Fatalf("public listener: %v", err)
	}
	conn.Close()

	next := lifecyclePlan()
	next.Proxy, next.Address, next.Port = pl.Proxy, pl.Address, pl.Port
	if err := p.(Reloader).Reload(next); err != nil {
		t.Errorf("Reload = %v", err)
	}
	p.Stop()
	if err := p.Accepting(context.Background()); err == nil {
		t.Error("accepting after Stop")
	}
	if _, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(public)), time.Second); err == nil {
		t.Error("the public listener still accepts after Stop")
	}
}

func TestNativeProxyStartFails(t *testing.T) {
	o, _ := Options{Dirs: testDirs(t), Global: &config.Global{}, Service: "web"}.withDefaults()
	pl := lifecyclePlan()
	pl.Proxy = plan.Proxy{Mode: config.ModeNative}
	noPort := errors.New("sidecar web-h1-sidecar-proxy: agent unreachable")
	p, err := o.NewProxy(ProxyParams{Plan: pl, Logger: testutil.Logger(t),
		PublicPort: func(context.Context) (int, error) { return 0, noPort }})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); !errors.Is(err, noPort) {
		t.Errorf("Start = %v, want the public port's error", err)
	}
	if err := p.(Reloader).Reload(pl); err != nil { // not running: only remembered
		t.Errorf("Reload of a plane not running = %v", err)
	}
	p.Stop() // not running: nothing
}

func TestAppAddress(t *testing.T) {
	withProxy := func(addr string, port int) *api.AgentServiceRegistration {
		return &api.AgentServiceRegistration{Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{
			Proxy: &api.AgentServiceConnectProxyConfig{LocalServiceAddress: addr, LocalServicePort: port}}}}
	}
	for _, tc := range []struct {
		name    string
		address string
		port    int
		reg     *api.AgentServiceRegistration
		want    string
	}{
		{"the service's", "10.0.0.5", 8080, nil, "10.0.0.5:8080"},
		{"empty address is loopback", "", 8080, nil, "127.0.0.1:8080"},
		{"unspecified is loopback", "0.0.0.0", 8080, nil, "127.0.0.1:8080"},
		{"no port, no app", "10.0.0.5", 0, nil, ""},
		{"the registration's local service wins", "10.0.0.5", 8080, withProxy("127.0.0.2", 9000), "127.0.0.2:9000"},
		{"only its port", "10.0.0.5", 8080, withProxy("", 9000), "10.0.0.5:9000"},
		{"IPv6", "::1", 8080, nil, "[::1]:8080"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl := &plan.Plan{Address: tc.address, Port: tc.port, Registration: tc.reg}
			if got := appAddress(pl); got != tc.want {
				t.Errorf("appAddress = %q, want %q", got, tc.want)
			}
		})
	}
	if ups := planUpstreams(&plan.Plan{}); ups != nil {
		t.Errorf("upstreams of a plan without a registration: %+v", ups)
	}
}

// TestRulesConfig: the iptables settings come from the service's
// transparent_proxy section and the proxy's owner; the agent's user is
// always let through.
func TestRulesConfig(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(me.Uid)
	tp := &config.Transparent{OutboundPort: 15001, ExcludeUIDs: []int{1234}, ExcludeInboundPorts: []int{22},
		ExcludeOutboundPorts: []int{53}, ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32")},
		DNS: &config.DNS{Address: netip.MustParseAddrPort("127.0.0.1:8600")}}
	r := &Rules{AgentUser: me.Username}
	c := r.Config(tp, 21000, Owner{UID: uid + 1, Mark: NativeMark})
	if c.InboundPort != 21000 || c.OutboundPort != 15001 || c.ProxyUID != uid+1 || c.ProxyMark != NativeMark ||
		!slices.Equal(c.ExcludeUIDs, []int{1234, uid}) || !slices.Equal(c.ExcludeInboundPorts, []int{22}) ||
		!slices.Equal(c.ExcludeOutboundPorts, []int{53}) || !slices.Equal(c.ExcludeOutboundCIDRs, tp.ExcludeOutboundCIDRs) ||
		c.DNS == nil || c.DNS.Address != tp.DNS.Address || c.IPv6 != hostHasIPv6() {
		t.Errorf("Config = %+v", c)
	}
	if !slices.Equal(tp.ExcludeUIDs, []int{1234}) {
		t.Errorf("the service's exclude list was changed: %v", tp.ExcludeUIDs)
	}
	// The agent's user runs the proxy: not excluded twice over.
	if c := r.Config(tp, 21000, Owner{UID: uid}); !slices.Equal(c.ExcludeUIDs, []int{1234}) {
		t.Errorf("ExcludeUIDs %v, want only the service's", c.ExcludeUIDs)
	}
}
