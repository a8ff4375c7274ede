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
// or, for a service whose service-defaults say dialed_directly, one of its
// instances' own address and port. A match is carried over mTLS to that
// service (to exactly that instance, for an instance address); anything
// else passes through as plain TCP, unless the mesh config entry says mesh
// destinations only. Nothing is ever passed through to a virtual IP or to
// the plane itself.
type transparent struct {
	p *Plane

	meshOnly  atomic.Bool
	meshKnown chan struct{} // closed at the mesh config entry's first answer
	meshOnce  sync.Once

	mu       sync.Mutex
	implicit map[string]*upstream // by service name, started on first use
	known    meshMap
	scanned  time.Time

	scanMu sync.Mutex // one scan at a time; others wait for its result
}

// meshPoll is how often a missing mesh config entry is looked for again.
var meshPoll = 10 * time.Second

// meshMap maps destinations to the services they reach.
type meshMap struct {
	vips   map[netip.Addr]string
	addrs  map[netip.AddrPort]string // dialed_directly instances only
	direct map[string]bool           // services whose instances are dialed directly
}

func newMeshMap() meshMap {
	return meshMap{vips: map[netip.Addr]string{}, addrs: map[netip.AddrPort]string{}, direct: map[string]bool{}}
}

// remember records a target of svc: its virtual IP, and its own address if
// svc is dialed directly.
func (m meshMap) remember(svc string, tg target) {
	if tg.vip.IsValid() {
		m.vips[tg.vip] = svc
	}
	if tg.appPort != 0 && m.direct[svc] {
		m.addrs[netip.AddrPortFrom(tg.ip, uint16(tg.appPort))] = svc
	}
}

// scanEvery limits how often a miss triggers a scan of the catalog.
var scanEvery = 2 * time.Second

// vipRange is Consul's virtual IP range.
var vipRange = netip.MustParsePrefix("240.0.0.0/4")

func newTransparent(p *Plane) *transparent {
	return &transparent{p: p, meshKnown: make(chan struct{}), implicit: map[string]*upstream{}, known: newMeshMap()}
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
	// Without a mesh config entry the agent answers 404 at once, without
	// blocking: look again every meshPoll.
	watchEvery(ctx, t.p.log, "mesh config entry", meshPoll, func(ctx context.Context, index uint64) (uint64, error) {
		only, next, err := t.p.o.Source.MeshDestinationsOnly(ctx, index)
		if err != nil {
			return next, err
		}
		if t.meshOnly.Swap(only) != only {
			t.p.log.Info("mesh destinations only", "enabled", only)
		}
		t.meshOnce.Do(func() { close(t.meshKnown) })
		return next, nil
	})
}

// ready waits (bounded) until the plane has its identity and the mesh
// config entry is known: before that nothing can be carried, and passing
// through could break mesh destinations only.
func (t *transparent) ready() bool {
	timer := time.NewTimer(handshakeTimeout)
	defer timer.Stop()
	for _, ch := range []<-chan struct{}{t.p.ready, t.meshKnown} {
		select {
		case <-ch:
		case <-timer.C:
			return false
		case <-t.p.ctx.Done():
			return false
		}
	}
	return true
}

func (t *transparent) handle(c net.Conn) {
	dst, err := originalDst(c)
	if err != nil {
		t.p.log.Warn("redirected connection without an original destination", "err", err)
		c.Close()
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if dst.Addr().IsLoopback() || dst.Addr().IsUnspecified() {
		// The rules never redirect loopback: this is a connection made
		// straight to the outbound port, whose "original destination" is
		// the port itself. Passing it through would loop into the plane.
		t.p.log.Info("connection straight to the outbound port refused", "remote", c.RemoteAddr().String())
		c.Close()
		return
	}
	if !t.ready() {
		t.p.log.Warn("redirected connection refused: the plane is not ready", "destination", dst.String())
		c.Close()
		return
	}
	svc, direct := t.lookup(dst)
	if svc == "" {
		t.scan()
		svc, direct = t.lookup(dst)
	}
	switch {
	case svc != "":
		only := netip.AddrPort{}
		if direct {
			only = dst
		}
		t.p.carry(t.upstreamOf(svc), c, only)
	case vipRange.Contains(dst.Addr()):
		t.p.log.Info("outbound connection to an unknown virtual IP refused", "destination", dst.String())
		c.Close()
	case t.meshOnly.Load():
		t.p.obs.Refused(Passthrough)
		t.p.log.Info("outbound connection outside the mesh refused: mesh destinations only", "destination", dst.String())
		c.Close()
	default:
		t.passthrough(c, dst)
	}
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
	t.p.proxy(Passthrough, c, remote, nil, nil)
}

// lookup maps a destination to a service: its virtual IP, or a
// dialed-directly instance's address and port (direct).
func (t *transparent) lookup(dst netip.AddrPort) (svc string, direct bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.known.vips[dst.Addr()]; ok {
		return s, false
	}
	if s, ok := t.known.addrs[dst]; ok {
		return s, true
	}
	return "", false
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
	if t.p.ctx.Err() == nil {
		t.p.wg.Go(func() { u.run(t.p.ctx) })
	}
	return u
}

// learn records the virtual IP and (dialed directly) instance addresses of
// an upstream's targets.
func (t *transparent) learn(u *upstream) {
	p := u.targets.Load()
	if p == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tg := range *p {
		t.known.remember(u.cfg.Name, tg)
	}
}

// scan reads the catalog for every service's virtual IP and, for services
// dialed directly, their instances' addresses; it rebuilds the maps from
// what it read (plus the watched upstreams). At most once per scanEvery;
// a caller arriving during a scan waits for it.
func (t *transparent) scan() {
	t.scanMu.Lock()
	defer t.scanMu.Unlock()
	t.mu.Lock()
	recent := time.Since(t.scanned) < scanEvery
	t.mu.Unlock()
	if recent {
		return
	}
	ctx, cancel := context.WithTimeout(t.p.ctx, handshakeTimeout)
	defer cancel()
	names, err := t.p.o.Source.Services(ctx)
	if err != nil {
		t.p.log.Warn("scan of the catalog for the mesh's addresses failed", "err", err)
		return
	}
	m := newMeshMap()
	probe := t.p.newUpstream(Upstream{})
	for _, name := range names {
		es, _, err := t.p.o.Source.Instances(ctx, name, "", 0)
		if err != nil || len(es) == 0 {
			continue
		}
		m.direct[name], _ = t.p.o.Source.DialedDirectly(ctx, name)
		for _, e := range es {
			if tg, ok := probe.target(e); ok {
				m.remember(name, tg)
			}
		}
	}
	t.mu.Lock()
	t.known, t.scanned = m, time.Now()
	ups := make([]*upstream, 0, len(t.implicit))
	for _, u := range t.implicit {
		ups = append(ups, u)
	}
	t.mu.Unlock()
	for _, u := range ups {
		t.learn(u)
	}
}
