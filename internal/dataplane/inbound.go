package dataplane

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// handshakeTimeout bounds a TLS handshake and the authorization after it.
var handshakeTimeout = 10 * time.Second

// inbound serves one connection to the public listener: mTLS with a
// verified client certificate from our trust domain, intentions, then the app.
func (p *Plane) inbound(raw net.Conn) {
	ctx, cancel := context.WithTimeout(p.ctx, handshakeTimeout)
	defer cancel()
	select {
	case <-p.ready:
	case <-ctx.Done(): // stopped, or no identity within the handshake timeout
		raw.Close()
		return
	}
	c := tls.Server(raw, p.id.ServerConfig())
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		if errors.Is(err, io.EOF) {
			// Closed before a word was said: a port check, not a peer.
			p.log.Debug("inbound connection closed before its handshake", "remote", raw.RemoteAddr().String())
			return
		}
		p.obs.TLSFailed(Inbound)
		p.log.Info("inbound handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	src, err := PeerID(c.ConnectionState())
	if err != nil {
		p.log.Info("inbound connection without an identity", "remote", raw.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	// A change of the intentions from here until the connection is tracked
	// would escape reauthorize: proxy checks again if one came.
	changed := p.authz.Changed()
	allow, reason, err := p.authz.Allow(ctx, src)
	if err != nil || !allow {
		p.obs.Refused(Inbound)
		p.log.Info("inbound connection refused", "source", src.Service, "uri", src.URI(), "reason", reason, "err", err)
		c.Close()
		return
	}
	if p.o.App == "" {
		c.Close()
		return
	}
	app, err := p.dialer.DialContext(ctx, "tcp", p.o.App)
	if err != nil {
		p.log.Warn("the app does not accept", "app", p.o.App, "err", err)
		c.Close()
		return
	}
	p.proxy(Inbound, c, app, &src, changed)
}

// stillAllowed checks an inbound source again after the intentions changed;
// a denied connection is logged and counted here.
func (p *Plane) stillAllowed(src ServiceID) bool {
	ctx, cancel := context.WithTimeout(p.ctx, handshakeTimeout)
	defer cancel()
	allow, reason, err := p.authz.Allow(ctx, src)
	if err == nil && !allow {
		p.log.Info("closing an open connection the intentions now deny", "source", src.Service, "reason", reason)
		p.obs.Refused(Inbound)
		return false
	}
	return true
}

// reauthorize closes open inbound connections whose source the intentions
// no longer allow, at every change of the intentions. Consul's built-in
// proxy and Envoy keep such connections open until they end.
func (p *Plane) reauthorize() {
	for {
		ch := p.authz.Changed()
		select {
		case <-p.ctx.Done():
			return
		case <-ch:
		}
		for _, t := range p.conns.snapshot() {
			if t.source != nil && !p.stillAllowed(*t.source) {
				t.close()
			}
		}
	}
}
