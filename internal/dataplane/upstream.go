package dataplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Upstream is one service or prepared query the app reaches through a
// local listener (Bind), or, in transparent mode, through the outbound
// listener (Bind empty).
type Upstream struct {
	Key        string // unique within the service; names the listener in logs
	Name       string // destination service or prepared query
	Query      bool   // Name is a prepared query
	Datacenter string // "" = the local datacenter
	Namespace  string // "" = default
	Bind       string // host:port of the local listener; "" = none
}

// FromRegistration reads the upstreams of a rendered sidecar registration.
func FromRegistration(ups []api.Upstream) []Upstream {
	out := make([]Upstream, 0, len(ups))
	for _, u := range ups {
		addr := u.LocalBindAddress
		if addr == "" {
			addr = "127.0.0.1"
		}
		up := Upstream{Name: u.DestinationName, Query: u.DestinationType == api.UpstreamDestTypePreparedQuery,
			Datacenter: u.Datacenter, Namespace: u.DestinationNamespace}
		if u.LocalBindPort != 0 {
			up.Bind = net.JoinHostPort(addr, strconv.Itoa(u.LocalBindPort))
		}
		up.Key = up.key()
		out = append(out, up)
	}
	return out
}

func (u Upstream) key() string {
	k := u.Name
	if u.Query {
		k = "query:" + k
	}
	if u.Datacenter != "" {
		k += "@" + u.Datacenter
	}
	return k + "/" + u.Bind
}

// target is one instance to dial, with what it must prove to be.
type target struct {
	addr string     // host:port of its public (mTLS) listener
	ip   netip.Addr // the instance's address, for transparent matching
	vip  netip.Addr // the service's virtual IP, if any
	// appPort is the port its app listens on behind the proxy, so that a
	// transparent dial of the instance's own address and port is matched.
	appPort int
	want    ServiceID // TrustDomain filled in at dial time
}

// upstream keeps the healthy instances of one Upstream and dials them.
type upstream struct {
	cfg    Upstream
	id     *Identity
	src    Source
	log    *slog.Logger
	dialer *net.Dialer
	obs    Observer

	targets atomic.Pointer[[]target]
	known   chan struct{} // closed once the first answer arrived
	once    sync.Once
	rr      atomic.Uint64
	changed func() // called after each change of targets (may be nil)
}

// queryPoll is how often a prepared query is executed again (as Envoy does).
var queryPoll = 30 * time.Second

func (u *upstream) run(ctx context.Context) {
	if u.cfg.Query {
		for {
			u.fetchQuery(ctx)
			select {
			case <-ctx.Done():
				return
			case <-time.After(queryPoll):
			}
		}
	}
	watch(ctx, u.log, "instances of "+u.cfg.Name, func(ctx context.Context, index uint64) (uint64, error) {
		es, next, err := u.src.Instances(ctx, u.cfg.Name, u.cfg.Datacenter, index)
		if err != nil || next == index {
			return next, err
		}
		u.publish(es)
		return next, nil
	})
}

func (u *upstream) fetchQuery(ctx context.Context) {
	es, err := u.src.Query(ctx, u.cfg.Name, u.cfg.Datacenter)
	if err != nil {
		u.log.Warn("prepared query failed; keeping the last instances", "err", err)
		return
	}
	u.publish(es)
}

func (u *upstream) publish(es []*api.ServiceEntry) {
	ts := make([]target, 0, len(es))
	for _, e := range es {
		if t, ok := u.target(e); ok {
			ts = append(ts, t)
		}
	}
	old := u.targets.Swap(&ts)
	if old == nil || len(*old) != len(ts) {
		u.log.Info("upstream instances", "upstream", u.cfg.Name, "healthy", len(ts))
	}
	u.once.Do(func() { close(u.known) })
	if u.changed != nil {
		u.changed()
	}
}

// target reads one Connect-capable instance: a sidecar proxy (its
// destination is the service) or a Connect-native service.
func (u *upstream) target(e *api.ServiceEntry) (target, bool) {
	if e.Service == nil || e.Service.Port == 0 {
		return target{}, false
	}
	svc := e.Service.Service
	if e.Service.Kind == api.ServiceKindConnectProxy && e.Service.Proxy != nil {
		svc = e.Service.Proxy.DestinationServiceName
	}
	host := e.Service.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return target{}, false
	}
	dc := u.cfg.Datacenter
	if dc == "" && e.Node != nil {
		dc = e.Node.Datacenter
	}
	ns := e.Service.Namespace
	t := target{addr: net.JoinHostPort(host, strconv.Itoa(e.Service.Port)), ip: ip.Unmap(),
		want: ServiceID{Namespace: ns, Datacenter: dc, Service: svc}}
	if e.Service.Proxy != nil {
		t.appPort = e.Service.Proxy.LocalServicePort
	}
	if va, ok := e.Service.TaggedAddresses["consul-virtual"]; ok {
		if v, err := netip.ParseAddr(va.Address); err == nil {
			t.vip = v.Unmap()
		}
	}
	return t, true
}

// errNoInstances is returned when an upstream has no healthy instance.
var errNoInstances = errors.New("no healthy instances")

// dialAttempts is how many instances one connection tries.
const dialAttempts = 3

// dial opens an mTLS connection to a healthy instance, trying another when
// one fails. With only valid (transparent proxy to an instance's own
// address and port), exactly that instance is dialed, or none.
func (u *upstream) dial(ctx context.Context, only netip.AddrPort) (*tls.Conn, error) {
	select {
	case <-u.known:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p := u.targets.Load()
	if p == nil || len(*p) == 0 {
		return nil, fmt.Errorf("%s: %w", u.cfg.Name, errNoInstances)
	}
	ts := *p
	if only.IsValid() {
		i := slices.IndexFunc(ts, func(t target) bool { return t.ip == only.Addr() && t.appPort == int(only.Port()) })
		if i < 0 {
			return nil, fmt.Errorf("%s: %s is not a healthy instance of it", u.cfg.Name, only)
		}
		ts = ts[i : i+1]
	}
	start := int(u.rr.Add(1) % uint64(len(ts)))
	var errs []error
	for i := 0; i < min(dialAttempts, len(ts)); i++ {
		t := ts[(start+i)%len(ts)]
		if i > 0 {
			u.obs.DialRetried(u.cfg.Name)
		}
		c, err := u.dialOne(ctx, t)
		if err == nil {
			return c, nil
		}
		u.obs.DialFailed(u.cfg.Name)
		u.log.Debug("dial failed", "upstream", u.cfg.Name, "instance", t.addr, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", t.addr, err))
	}
	return nil, fmt.Errorf("%s: every instance tried failed: %w", u.cfg.Name, errors.Join(errs...))
}

func (u *upstream) dialOne(ctx context.Context, t target) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := u.dialer.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	want := t.want
	want.TrustDomain = u.id.TrustDomain()
	sni := SNI(want.Service, want.Namespace, want.Datacenter, want.TrustDomain)
	if u.cfg.Query {
		sni = QuerySNI(u.cfg.Name, want.Datacenter, want.TrustDomain)
	}
	c := tls.Client(raw, u.id.ClientConfig(sni, want))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		u.obs.TLSFailed(u.cfg.Name)
		return nil, err
	}
	return c, nil
}
