package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// outbound serves one connection to an upstream's local listener.
func (p *Plane) outbound(key string, c net.Conn) {
	p.mu.Lock()
	r := p.upstreams[key]
	p.mu.Unlock()
	if r == nil {
		c.Close()
		return
	}
	p.carry(r.u, c, netip.AddrPort{})
}

// carry dials the upstream for the local connection c (exactly instance
// only, when valid) and proxies between them.
func (p *Plane) carry(u *upstream, c net.Conn, only netip.AddrPort) {
	ctx, cancel := context.WithTimeout(p.ctx, 2*handshakeTimeout)
	remote, err := u.dial(ctx, only)
	cancel()
	if err != nil {
		p.log.Warn("upstream unreachable; connection closed", "upstream", u.cfg.Name, "err", err)
		c.Close()
		return
	}
	p.proxy(u.cfg.Name, c, remote, nil, nil)
}

func (p *Plane) newUpstream(cfg Upstream) *upstream {
	return &upstream{cfg: cfg, id: p.id, src: p.o.Source, dialer: p.dialer, obs: p.obs,
		log: p.log.With("component", "upstream", "upstream", cfg.Name), known: make(chan struct{})}
}

// addUpstream starts watching an upstream and, if it has one, binds its listener.
func (p *Plane) addUpstream(cfg Upstream) error {
	if cfg.Key == "" {
		cfg.Key = cfg.key()
	}
	p.mu.Lock()
	_, dup := p.upstreams[cfg.Key]
	p.mu.Unlock()
	if dup {
		return fmt.Errorf("upstream %s listed twice", cfg.Key)
	}
	if cfg.Bind != "" {
		if err := p.listen(cfg.Key, cfg.Bind); err != nil {
			return fmt.Errorf("upstream %s: %w", cfg.Name, err)
		}
	}
	u := p.newUpstream(cfg)
	ctx, cancel := context.WithCancel(p.ctx)
	p.mu.Lock()
	p.upstreams[cfg.Key] = &upstreamRun{u: u, cancel: cancel}
	p.mu.Unlock()
	p.wg.Go(func() { u.run(ctx) })
	return nil
}

// removeUpstream closes an upstream's listener and stops its watch; its
// open connections run on until they end.
func (p *Plane) removeUpstream(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ln, ok := p.listeners[key]; ok {
		ln.Close()
		delete(p.listeners, key)
	}
	if r, ok := p.upstreams[key]; ok {
		r.cancel()
		delete(p.upstreams, key)
	}
}

// SetUpstreams makes the listed upstreams the plane's: new ones are opened,
// missing ones closed, the rest left untouched (their listeners and open
// connections carry on). A new listener that cannot bind is an error; the
// other changes are still made.
func (p *Plane) SetUpstreams(ups []Upstream) error {
	want := map[string]Upstream{}
	for _, u := range ups {
		if u.Key == "" {
			u.Key = u.key()
		}
		want[u.Key] = u
	}
	p.mu.Lock()
	var gone []string
	for key := range p.upstreams {
		if _, ok := want[key]; !ok {
			gone = append(gone, key)
		}
	}
	var added []Upstream
	for key, u := range want {
		if _, ok := p.upstreams[key]; !ok {
			added = append(added, u)
		}
	}
	p.mu.Unlock()
	for _, key := range gone {
		p.removeUpstream(key)
		p.log.Info("upstream listener closed", "upstream", key)
	}
	slices.SortFunc(added, func(a, b Upstream) int { return strings.Compare(a.Key, b.Key) })
	var errs []error
	for _, u := range added {
		if err := p.addUpstream(u); err != nil {
			errs = append(errs, err)
			continue
		}
		p.mu.Lock()
		ln := p.listeners[u.Key]
		p.mu.Unlock()
		if ln != nil {
			p.serve(u.Key, ln)
		}
		p.log.Info("upstream listener opened", "upstream", u.Key)
	}
	return errors.Join(errs...)
}
