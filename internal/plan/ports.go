package plan

import (
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/ports"
)

// Ports are a service's allocated or fixed ports.
type Ports struct {
	Service   int
	Upstreams map[string]int // by config.Upstream.Key()
	Sidecar   int            // the sidecar's public port
	Admin     int            // envoy admin; 0 unless mode envoy
	Metrics   int            // envoy's merged metrics; 0 unless proxy.prometheus_scrape_path
	// ProxyMetrics is meshx-proxy's own metrics port; 0 when metrics are off.
	ProxyMetrics int
}

// Keys used with the port allocator.
func ServicePortKey(id string) string            { return "service/" + id }
func UpstreamPortKey(id, upstream string) string { return "upstream/" + id + "/" + upstream }
func AdminPortKey(id string) string              { return "envoy-admin/" + id }
func SidecarPortKey(id string) string            { return "sidecar/" + id }
func MetricsPortKey(id string) string            { return "envoy-metrics/" + id }
func ProxyMetricsPortKey(id string) string       { return "metrics/" + id }

// portNeeds is what decides a service's set of ports: the same whether read
// from its service-config (before allocating) or from its plan (to release).
type portNeeds struct {
	id           string
	fixed        int      // the service's fixed port; 0: allocated
	upstreams    []upNeed // in order
	admin        bool     // mode envoy
	envoyMetrics bool     // proxy.prometheus_scrape_path set
	proxyMetrics bool     // meshx-proxy's metrics on
	// local: the service has a network namespace of its own, where its fixed
	// ports are bound; they reserve nothing on the host (three namespaced
	// apps may all use 8080).
	local bool
}

type upNeed struct {
	key   string
	fixed int
}

// portSlot is one port of a service: its allocator key, its fixed value (0:
// allocated), and where Ports keeps it.
type portSlot struct {
	key   string
	fixed int
	down  bool // allocated downward from the top of the range (upstreams)
	set   func(p *Ports, port int)
}

// slots is the one list of a service's ports.
func (n portNeeds) slots() []portSlot {
	out := []portSlot{
		{key: ServicePortKey(n.id), fixed: n.fixed, set: func(p *Ports, v int) { p.Service = v }},
		{key: SidecarPortKey(n.id), set: func(p *Ports, v int) { p.Sidecar = v }},
	}
	for _, u := range n.upstreams {
		out = append(out, portSlot{key: UpstreamPortKey(n.id, u.key), fixed: u.fixed, down: true,
			set: func(p *Ports, v int) { p.Upstreams[u.key] = v }})
	}
	if n.admin {
		out = append(out, portSlot{key: AdminPortKey(n.id), set: func(p *Ports, v int) { p.Admin = v }})
	}
	if n.envoyMetrics {
		out = append(out, portSlot{key: MetricsPortKey(n.id), set: func(p *Ports, v int) { p.Metrics = v }})
	}
	if n.proxyMetrics {
		out = append(out, portSlot{key: ProxyMetricsPortKey(n.id), set: func(p *Ports, v int) { p.ProxyMetrics = v }})
	}
	return out
}

// needsOf reads a service-config's port needs.
func needsOf(s *config.Service, h Host, extra []config.Upstream) portNeeds {
	id, _ := RenderID(s, h.Hostname)
	n := portNeeds{id: id, fixed: s.Port, admin: s.Proxy.Mode == config.ModeEnvoy,
		envoyMetrics: s.Proxy.PrometheusScrapePath != "", proxyMetrics: !h.Global.Metrics.Disabled,
		local: s.Network.Namespace}
	for _, u := range upstreams(s, extra) {
		n.upstreams = append(n.upstreams, upNeed{key: u.Key(), fixed: u.Port})
	}
	return n
}

// requests are the allocator requests for n.
func (n portNeeds) requests() []ports.Request {
	var reqs []ports.Request
	for _, sl := range n.slots() {
		if n.local && sl.fixed != 0 {
			continue
		}
		reqs = append(reqs, ports.Request{Key: sl.key, Fixed: sl.fixed, Down: sl.down})
	}
	return reqs
}

// fill returns the Ports with each slot's port from port.
func (n portNeeds) fill(port func(key string) int) Ports {
	p := Ports{Upstreams: map[string]int{}}
	for _, sl := range n.slots() {
		if n.local && sl.fixed != 0 {
			sl.set(&p, sl.fixed)
			continue
		}
		sl.set(&p, port(sl.key))
	}
	return p
}

// PortKeys are the allocator keys of every port the plan holds (to release
// them when the service is gone).
func (pl *Plan) PortKeys() []string {
	n := portNeeds{id: pl.ID, admin: pl.Proxy.AdminPort != 0, envoyMetrics: pl.Proxy.MetricsPort != 0,
		proxyMetrics: pl.MetricsAddress != ""}
	for _, u := range pl.Upstreams {
		n.upstreams = append(n.upstreams, upNeed{key: u.Key})
	}
	var keys []string
	for _, sl := range n.slots() {
		keys = append(keys, sl.key)
	}
	return keys
}
