// Package dataplane is meshx's native Connect data plane: an L4 proxy inside
// meshx-proxy that speaks the protocol Consul's built-in proxy and Envoy
// speak (mTLS with SPIFFE identities from the cluster's CA, authorization by
// intentions), so a native service and a built-in-proxy or Envoy service
// talk to each other unchanged.
//
// A Plane serves the service's public listener (inbound: mTLS, intentions,
// then the app), one local listener per upstream (outbound: the healthy
// instances, spread and retried), and in transparent mode the outbound port
// that redirected connections arrive at.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configure a Plane.
type Options struct {
	// Source answers identity, discovery and authorization. Required.
	Source Source
	// Service is the service's name (its identity and the target of
	// intentions). Required.
	Service string
	// Public is the mTLS listener's address (host:port). Required.
	Public string
	// App is where the app listens (host:port); "" refuses inbound
	// connections after authorization (a service with no listener).
	App string
	// Upstreams each get a local listener (those with a Bind).
	Upstreams []Upstream
	// Outbound are the transparent-proxy outbound listeners (host:port),
	// one per address family the redirection rules send to; none = no
	// transparent proxy.
	Outbound []string
	// Mark is set (SO_MARK) on every connection the plane opens, so the
	// redirection rules can let them pass whatever user meshx-proxy runs
	// as; 0 = none.
	Mark int
	// Logger: nil discards.
	Logger *slog.Logger
	// Observer: nil observes nothing.
	Observer Observer
}

// outboundKey prefixes the keys of the transparent outbound listeners.
const outboundKey = "outbound:"

// ErrMissingOption is returned by New for a required option left empty.
var ErrMissingOption = errors.New("missing required option")

// Plane is a running native data plane.
type Plane struct {
	o      Options
	log    *slog.Logger
	id     *Identity
	authz  *Authorizer
	dialer *net.Dialer
	obs    Observer
	conns  *connSet

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup // watches
	acceptors sync.WaitGroup // accept loops: the only ones that start handlers
	handlers  sync.WaitGroup // one per accepted connection

	mu        sync.Mutex
	listeners map[string]net.Listener // by upstream key; "" = public; outboundKey+address
	failing   map[string]bool         // listeners being bound again after a failure
	upstreams map[string]*upstreamRun // by key
	tp        *transparent
	ready     chan struct{}
}

type upstreamRun struct {
	u      *upstream
	cancel context.CancelFunc
}

// New checks the options and makes a plane; Start runs it.
func New(o Options) (*Plane, error) {
	switch {
	case o.Source == nil:
		return nil, fmt.Errorf("%w: Source", ErrMissingOption)
	case o.Service == "":
		return nil, fmt.Errorf("%w: Service", ErrMissingOption)
	case o.Public == "":
		return nil, fmt.Errorf("%w: Public", ErrMissingOption)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	p := &Plane{o: o, log: o.Logger, obs: o.Observer, conns: newConnSet(),
		listeners: map[string]net.Listener{}, failing: map[string]bool{}, upstreams: map[string]*upstreamRun{}, ready: make(chan struct{})}
	p.dialer = &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Control: p.markControl}
	p.id = NewIdentity(o.Source, o.Service, o.Logger.With("component", "identity"))
	p.authz = NewAuthorizer(o.Source, o.Service, o.Logger.With("component", "intentions"))
	return p, nil
}

// markControl sets SO_MARK on the plane's own sockets.
func (p *Plane) markControl(_, _ string, c syscall.RawConn) error {
	if p.o.Mark == 0 {
		return nil
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, p.o.Mark)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set SO_MARK: %w", serr)
	}
	return nil
}

// Start binds every listener (an address in use is an error, before
// anything runs) and starts the watches. The plane runs until Stop.
func (p *Plane) Start(ctx context.Context) error {
	p.ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := p.listen("", p.o.Public); err != nil {
		p.cancel()
		return err
	}
	for _, addr := range p.o.Outbound {
		if err := p.listen(outboundKey+addr, addr); err != nil {
			p.closeListeners()
			p.cancel()
			return err
		}
		p.tp = newTransparent(p)
	}
	for _, u := range p.o.Upstreams {
		if err := p.addUpstream(u); err != nil {
			p.closeListeners()
			p.cancel()
			return err
		}
	}
	p.wg.Go(func() { p.id.Run(p.ctx) })
	p.wg.Go(func() { p.authz.Run(p.ctx) })
	p.wg.Go(p.reauthorize)
	p.wg.Go(p.leafExpiry)
	if p.tp != nil {
		p.wg.Go(func() { p.tp.run(p.ctx) })
	}
	p.mu.Lock()
	for key, ln := range p.listeners {
		p.serve(key, ln)
	}
	p.mu.Unlock()
	p.wg.Go(func() {
		for _, ch := range []<-chan struct{}{p.id.Ready(), p.authz.Ready()} {
			select {
			case <-ch:
			case <-p.ctx.Done():
				return
			}
		}
		close(p.ready)
		p.log.Info("native data plane ready", "public", p.o.Public, "upstreams", len(p.o.Upstreams))
	})
	return nil
}

// Ready is closed once the plane has its identity and the intentions: its
// listeners accept from Start on, and from Ready on they serve.
func (p *Plane) Ready() <-chan struct{} { return p.ready }

// Open is the number of proxied connections open now.
func (p *Plane) Open() int { return p.conns.len() }

// Stop closes the listeners (no new connection is accepted), gives open
// connections up to drain to finish, closes what is left, and stops every
// watch. It returns when all is done.
func (p *Plane) Stop(drain time.Duration) {
	p.closeListeners()
	if n := p.conns.len(); n > 0 && drain > 0 {
		p.log.Info("draining open connections", "open", n, "drain", drain)
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		p.conns.wait(ctx)
		cancel()
	}
	if n := p.conns.len(); n > 0 {
		p.log.Info("closing connections still open after the drain", "open", n)
	}
	p.cancel()
	p.conns.closeAll() // and refuses what a handler still adds
	p.acceptors.Wait()
	p.handlers.Wait()
	p.wg.Wait()
}

func (p *Plane) closeListeners() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, ln := range p.listeners {
		ln.Close()
		delete(p.listeners, key)
	}
}

func (p *Plane) listen(key, addr string) error {
	lc := net.ListenConfig{}
	ln, err := lc.Listen(p.ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	p.mu.Lock()
	p.listeners[key] = ln
	p.mu.Unlock()
	return nil
}

// serve accepts on ln until it is closed by us; a listener that fails on
// its own is closed and bound again, with backoff.
func (p *Plane) serve(key string, ln net.Listener) {
	p.acceptors.Go(func() {
		for {
			err := p.accept(key, ln)
			if p.ctx.Err() != nil || !p.owns(key, ln) {
				return
			}
			p.log.Error("listener failed; binding it again", "listener", ln.Addr().String(), "err", err)
			p.setFailing(key, true)
			ln.Close() // its address must be free to bind again
			if ln = p.rebind(key, ln.Addr().String()); ln == nil {
				return
			}
			p.setFailing(key, false)
			p.log.Info("listener bound again", "listener", ln.Addr().String())
		}
	})
}

func (p *Plane) setFailing(key string, failing bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if failing {
		p.failing[key] = true
	} else {
		delete(p.failing, key)
	}
}

// Serving reports whether every listener is bound and accepting: nil, or
// which one failed and is being bound again. It asks the plane itself, so
// a health probe opens no connection (which an upstream listener would
// carry to an instance).
func (p *Plane) Serving() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key := range p.failing {
		if key == "" {
			key = "public"
		}
		return fmt.Errorf("listener %s failed; binding it again", key)
	}
	if _, ok := p.listeners[""]; !ok {
		return errors.New("public listener closed")
	}
	return nil
}

func (p *Plane) owns(key string, ln net.Listener) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.listeners[key] == ln
}

func (p *Plane) rebind(key, addr string) net.Listener {
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-p.ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		ln, err := (&net.ListenConfig{}).Listen(p.ctx, "tcp", addr)
		if err == nil {
			p.mu.Lock()
			defer p.mu.Unlock()
			if _, still := p.listeners[key]; !still {
				ln.Close()
				return nil
			}
			p.listeners[key] = ln
			return ln
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// accept serves ln's connections until it fails for good. Running out of
// file descriptors or memory is not that: it waits (backoff up to 1 s) and
// accepts again on the same listener.
func (p *Plane) accept(key string, ln net.Listener) error {
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if !transientAccept(err) {
				return err
			}
			p.log.Warn("accept failed; trying again", "listener", ln.Addr().String(), "err", err, "backoff", backoff)
			select {
			case <-p.ctx.Done():
				return err
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		switch {
		case key == "":
			p.handlers.Go(func() { p.inbound(c) })
		case strings.HasPrefix(key, outboundKey):
			p.handlers.Go(func() { p.tp.handle(c) })
		default:
			p.handlers.Go(func() { p.outbound(key, c) })
		}
	}
}

// transientAccept reports whether an accept error passes by itself: too
// many open files, no buffer space, an aborted connection, a timeout.
func transientAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// proxy tracks a pair of connections while pipe copies between them:
// client is the side that connected to the plane, server the side the
// plane dialed. For an inbound connection, source is its verified peer and
// changed the intentions' change channel from before it was authorized: if
// that fired before the connection was tracked, it is authorized again.
func (p *Plane) proxy(direction string, client, server net.Conn, source *ServiceID, changed <-chan struct{}) {
	t := &tracked{a: client, b: server, source: source}
	if !p.conns.add(t) {
		t.close() // the plane stopped meanwhile
		return
	}
	select {
	case <-changed: // nil for outbound: never
		if !p.stillAllowed(*source) {
			p.conns.remove(t)
			t.close()
			return
		}
	default:
	}
	p.obs.ConnOpened(direction)
	pipe(client, server, func(in, out int64) { p.obs.Transferred(direction, in, out) })
	p.conns.remove(t)
	p.obs.ConnClosed(direction)
}

func (p *Plane) leafExpiry() {
	select {
	case <-p.id.Ready():
	case <-p.ctx.Done():
		return
	}
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		p.obs.LeafExpiry(p.id.Expiry())
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
	}
}
