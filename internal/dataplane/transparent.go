package dataplane

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// transparent serves the outbound port that the redirection rules send the
// app's outbound TCP to. Each connection's original destination is matched
// against the mesh: a service's virtual IP (any port, as Envoy matches it),
// or an instance's address and port. A match is carried over mTLS to that
// service; anything else passes through as plain TCP, unless the mesh
// config entry says mesh destinations only.
type transparent struct {
	p *Plane

	meshOnly atomic.Bool

	mu       sync.Mutex
	implicit map[string]*upstream // by service name, started on first use
	vips     map[netip.Addr]string
	addrs    map[netip.AddrPort]string
	scanned  time.Time
}

// scanEvery limits how often a miss triggers a scan of the catalog.
var scanEvery = 2 * time.Second

func newTransparent(p *Plane) *transparent {
	return &transparent{p: p, implicit: map[string]*upstream{}, vips: map[netip.Addr]string{},
		addrs: map[netip.AddrPort]string{}}
}

// vipProbe is an address in Consul's virtual IP range (240.0.0.0/4).
const vipProbe = "240.0.0.1:9"

// checkVIPRoute warns when the host has no route to Consul's virtual IPs:
// an app's connect() to one then fails before the redirect rules see it.
func (t *transparent) checkVIPRoute() {
	c, err := net.Dial("udp4", vipProbe) // a route lookup; nothing is sent
	if err != nil {
		t.p.log.Warn("no route to Consul's virtual IPs (240.0.0.0/4): apps cannot dial <service>.virtual.consul; "+
			"give the host a default route, or add one with `ip route add 240.0.0.0/4 dev <interface>`", "err", err)
		return
	}
	c.Close()
}

func (t *transparent) run(ctx context.Context) {
	t.checkVIPRoute()
	watch(ctx, t.p.log, "mesh config entry", func(ctx context.Context, index uint64) (uint64, error) {
		only, next, err := t.p.o.Source.MeshDestinationsOnly(ctx, index)
		if err == nil && t.meshOnly.Swap(only) != only {
			t.p.log.Info("mesh destinations only", "enabled", only)
		}
		return next, err
	})
}

func (t *transparent) handle(c net.Conn) {
	dst, err := originalDst(c)
	if err != nil {
		t.p.log.Warn("redirected connection without an original destination", "err", err)
		c.Close()
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	svc := t.lookup(dst)
	if svc == "" && t.scan() {
		svc = t.lookup(dst)
	}
	if svc != "" {
		prefer := netip.Addr{}
		if _, isVIP := t.vipOf(dst.Addr()); !isVIP {
			prefer = dst.Addr()
		}
		t.p.carry(t.upstreamOf(svc), c, prefer)
		return
	}
	if t.meshOnly.Load() {
		t.p.obs.Refused(Passthrough)
		t.p.log.Info("outbound connection outside the mesh refused: mesh destinations only", "destination", dst.String())
		c.Close()
		return
	}
	t.passthrough(c, dst)
}

// passthrough connects to the original destination as plain TCP, with the
// plane's mark, so the rules do not redirect it back to us.
func (t *transparent) passthrough(c net.Conn, dst netip.AddrPort) {
	ctx, cancel := context.WithTimeout(t.p.ctx, handshakeTimeout)
	remote, err := t.p.dialer.DialContext(ctx, "tcp", dst.String())
	cancel()
	if err != nil {
		t.p.log.Info("passthrough dial failed", "destination", dst.String(), "err", err)
		c.Close()
		return
	}
	t.p.proxy(Passthrough, c, remote, nil)
}

func (t *transparent) vipOf(a netip.Addr) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.vips[a]
	return s, ok
}

func (t *transparent) lookup(dst netip.AddrPort) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.vips[dst.Addr()]; ok {
		return s
	}
	return t.addrs[dst]
}

// upstreamOf returns the implicit upstream of a service, starting its watch
// on first use.
func (t *transparent) upstreamOf(svc string) *upstream {
	t.mu.Lock()
	defer t.mu.Unlock()
	if u, ok := t.implicit[svc]; ok {
		return u
	}
	u := t.p.newUpstream(Upstream{Key: "transparent:" + svc, Name: svc})
	u.changed = func() { t.learn(u) }
	t.implicit[svc] = u
	t.p.wg.Go(func() { u.run(t.p.ctx) })
	return u
}

// learn records the virtual IP and instance addresses of an upstream's targets.
func (t *transparent) learn(u *upstream) {
	p := u.targets.Load()
	if p == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tg := range *p {
		t.remember(u.cfg.Name, tg)
	}
}

func (t *transparent) remember(svc string, tg target) {
	if tg.vip.IsValid() {
		t.vips[tg.vip] = svc
	}
	if tg.appPort != 0 {
		t.addrs[netip.AddrPortFrom(tg.ip, uint16(tg.appPort))] = svc
	}
}

// scan reads the catalog once for every service's virtual IP and instance
// addresses; at most once per scanEvery. It reports whether it ran.
func (t *transparent) scan() bool {
	t.mu.Lock()
	if time.Since(t.scanned) < scanEvery {
		t.mu.Unlock()
		return false
	}
	t.scanned = time.Now()
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(t.p.ctx, handshakeTimeout)
	defer cancel()
	names, err := t.p.o.Source.Services(ctx)
	if err != nil {
		t.p.log.Warn("scan of the catalog for the mesh's addresses failed", "err", err)
		return false
	}
	probe := t.p.newUpstream(Upstream{})
	for _, name := range names {
		es, _, err := t.p.o.Source.Instances(ctx, name, "", 0)
		if err != nil {
			continue
		}
		t.mu.Lock()
		for _, e := range es {
			tg, ok := probe.target(e)
			if !ok {
				continue
			}
			t.remember(tg.want.Service, tg)
		}
		t.mu.Unlock()
	}
	return true
}
