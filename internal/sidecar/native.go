package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/dataplane"
	"github.com/meshx/meshx/internal/metrics"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/supervisor"
)

// NativeMark is the socket mark of the native data plane's own connections:
// the transparent-proxy rules let them pass whatever user meshx-proxy runs
// as ("MX" in ASCII).
const NativeMark = 0x4d58

// The native plane reports to meshx-proxy's Prometheus families.
var _ dataplane.Observer = (*metrics.Observer)(nil)

// nativeDrain is how long the native plane lets open connections finish at stop.
var nativeDrain = 5 * time.Second

// nativeProxy is the Proxy that runs the Connect data plane in process
// (mode native).
type nativeProxy struct {
	p      ProxyParams
	plane  *dataplane.Plane
	source *dataplane.AgentSource // the plane's agent; follows token rotations
}

func newNativeProxy(_ Options, p ProxyParams) (Proxy, error) {
	return &nativeProxy{p: p}, nil
}

// Start starts the in-process data plane: its listeners accept from here
// on, and serve once it has its identity and the intentions.
func (n *nativeProxy) Start(ctx context.Context) error {
	o, err := n.options(ctx)
	if err != nil {
		return err
	}
	pl, err := dataplane.New(o)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := pl.Start(ctx); err != nil {
		return fmt.Errorf("native data plane: %w", err)
	}
	n.plane = pl
	n.p.Logger.Info("native data plane started")
	if n.p.OnState != nil {
		n.p.OnState(ProxyState{State: string(supervisor.StateRunning), PID: os.Getpid()})
	}
	return nil
}

// Exited never yields: the plane does not give up by itself.
func (n *nativeProxy) Exited() <-chan error { return nil }

func (n *nativeProxy) Stop() {
	if n.plane != nil {
		n.plane.Stop(nativeDrain)
		n.plane = nil
	}
}

func (n *nativeProxy) Accepting(ctx context.Context) error {
	if n.plane == nil {
		return errors.New("native data plane not running")
	}
	select {
	case <-n.plane.Ready():
	default:
		return errors.New("native data plane waiting for its certificate, the CA roots and the intentions")
	}
	return n.plane.Serving()
}

// TokenChanged gives the running plane a client with the new token: its
// next queries carry it, and no connection is dropped.
func (n *nativeProxy) TokenChanged(c config.Consul) error {
	n.p.Consul = c
	if n.source == nil {
		return nil // not started: Start uses c
	}
	cl, err := register.NewClient(c)
	if err != nil {
		return err
	}
	n.source.SetClient(cl)
	return nil
}

// Reload opens and closes upstream listeners in place: the others, and
// every open connection, carry on.
func (n *nativeProxy) Reload(pl *plan.Plan) error {
	n.p.Plan = pl
	if n.plane == nil {
		return nil
	}
	return n.plane.SetUpstreams(planUpstreams(pl))
}

// options derives the data plane's settings from the plan: the sidecar's
// public port on every address, the app where the sidecar reaches it, the
// upstreams the registration lists, and in transparent mode the outbound
// port on loopback.
func (n *nativeProxy) options(ctx context.Context) (dataplane.Options, error) {
	pl := n.p.Plan
	port, err := n.p.PublicPort(ctx)
	if err != nil {
		return dataplane.Options{}, err
	}
	cl, err := register.NewClient(n.p.Consul)
	if err != nil {
		return dataplane.Options{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	n.source = dataplane.NewAgentSource(cl)
	o := dataplane.Options{Source: n.source, Service: pl.Name,
		Public: net.JoinHostPort("", strconv.Itoa(port)), App: appAddress(pl),
		Upstreams: planUpstreams(pl), Logger: n.p.Logger.With("component", "dataplane")}
	if n.p.Metrics != nil {
		o.Observer = n.p.Metrics.DataPlane.Observer()
	}
	if t := pl.Transparent; t != nil {
		// REDIRECT sends to the loopback address of the connection's family.
		o.Outbound = []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(t.OutboundPort))}
		if hostHasIPv6() {
			o.Outbound = append(o.Outbound, net.JoinHostPort("::1", strconv.Itoa(t.OutboundPort)))
		}
		o.Mark = NativeMark
	}
	return o, nil
}

// appAddress is where the sidecar reaches the app: the registration's
// local service address and port when it sets them, else the service's.
func appAddress(pl *plan.Plan) string {
	host, port := pl.Address, pl.Port
	if r := pl.Registration; r != nil && r.Connect != nil && r.Connect.SidecarService != nil &&
		r.Connect.SidecarService.Proxy != nil {
		px := r.Connect.SidecarService.Proxy
		if px.LocalServiceAddress != "" {
			host = px.LocalServiceAddress
		}
		if px.LocalServicePort != 0 {
			port = px.LocalServicePort
		}
	}
	if port == 0 {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func planUpstreams(pl *plan.Plan) []dataplane.Upstream {
	r := pl.Registration
	if r == nil || r.Connect == nil || r.Connect.SidecarService == nil || r.Connect.SidecarService.Proxy == nil {
		return nil
	}
	return dataplane.FromRegistration(r.Connect.SidecarService.Proxy.Upstreams)
}
