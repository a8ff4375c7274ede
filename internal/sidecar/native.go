package sidecar

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/dataplane"
	"github.com/meshx/meshx/internal/metrics"
	"github.com/meshx/meshx/internal/plan"
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

func (d *daemon) native() bool { return d.pl.Proxy.Mode == config.ModeNative }

// startNative starts the in-process data plane: its listeners accept from
// here on, and serve once it has its identity and the intentions.
func (d *daemon) startNative(ctx context.Context) error {
	o, err := d.planeOptions(ctx)
	if err != nil {
		return err
	}
	p, err := dataplane.New(o)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := p.Start(ctx); err != nil {
		return fmt.Errorf("native data plane: %w", err)
	}
	d.plane = p
	d.status("native data plane started")
	d.mu.Lock()
	d.st.ProxyPID, d.st.ProxyState = os.Getpid(), string(supervisor.StateRunning)
	d.mu.Unlock()
	d.publish()
	return nil
}

func (d *daemon) stopNative() {
	if d.plane == nil {
		return
	}
	d.plane.Stop(nativeDrain)
	d.plane = nil
}

// planeOptions derives the data plane's settings from the plan: the
// sidecar's public port on every address, the app where the sidecar
// reaches it, the upstreams the registration lists, and in transparent
// mode the outbound port on loopback.
func (d *daemon) planeOptions(ctx context.Context) (dataplane.Options, error) {
	port, err := d.publicPort(ctx)
	if err != nil {
		return dataplane.Options{}, err
	}
	o := dataplane.Options{Source: &dataplane.AgentSource{Client: d.cl}, Service: d.pl.Name,
		Public: net.JoinHostPort("", strconv.Itoa(port)), App: appAddress(d.pl),
		Upstreams: planUpstreams(d.pl), Logger: d.log.With("component", "dataplane")}
	if t := d.pl.Transparent; t != nil {
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
