package sidecar

import (
	"context"
	"net/netip"
	"time"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/metrics"
)

// newMetrics returns the families of a plan that serves metrics, else nil
// (every call on a nil *metrics.Metrics records nothing).
func newMetrics(address string) *metrics.Metrics {
	if address == "" {
		return nil
	}
	return metrics.New()
}

// serveMetrics serves the families where the plan says, merging Envoy's own
// in envoy mode, until the returned stop is called. A listener that cannot
// be opened is logged, not fatal: the service works without its metrics.
func (d *daemon) serveMetrics() (stop func()) {
	if d.m == nil {
		return func() {}
	}
	o := metrics.HandlerOptions{Logger: d.log.With("component", "metrics")}
	if d.pl.Proxy.Mode == config.ModeEnvoy && d.pl.Proxy.AdminPort != 0 {
		admin := netip.AddrPortFrom(d.o.Global.Ports.IP, uint16(d.pl.Proxy.AdminPort))
		o.Merge = "http://" + admin.String() + "/stats/prometheus"
	}
	srv, err := metrics.Listen(d.pl.MetricsAddress, d.m.Handler(o))
	if err != nil {
		d.log.Error("serve metrics", "address", d.pl.MetricsAddress, "err", err)
		return func() {}
	}
	d.log.Info("serving metrics", "url", "http://"+srv.Addr()+metrics.Path)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Close(ctx)
	}
}
