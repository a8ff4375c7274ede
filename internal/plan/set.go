package plan

import (
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/ports"
)

// Allocator hands out ports for requests (ports.Allocate, or a dry run).
type Allocator func(reqs []ports.Request) (map[string]int, error)

// BuildAll renders every valid service of set. Problems found only now
// (duplicate ids, fixed ports clashing across files, template errors, more than
// one transparent proxy) move the service to set.Broken, located in its file;
// only then are ports allocated, so a broken file allocates nothing. extra
// holds upstreams added at run time, by service name. A problem in meshx.yaml's
// defaults.registration is returned as an error located there (it would break
// every service), like any other problem of meshx.yaml.
func BuildAll(set *config.Set, h Host, extra map[string][]config.Upstream, alloc Allocator) ([]*Plan, error) {
	sort.Slice(set.Services, func(i, j int) bool { return set.Services[i].File < set.Services[j].File })
	reject := func(s *config.Service, err error) {
		var fe *FieldError
		if errors.As(err, &fe) {
			set.Reject(s, fe.Field, "%s", fe.Msg)
			return
		}
		set.Reject(s, "", "%v", err)
	}
	ids := map[string]*config.Service{} // service and sidecar ids
	for _, s := range slices.Clone(set.Services) {
		id, err := RenderID(s, h.Hostname)
		if err != nil {
			reject(s, err)
			continue
		}
		if o, dup := ids[id]; dup {
			set.Reject(s, "service.id", "service id %q is also used by %s", id, o.File)
			continue
		}
		if o, dup := ids[id+sidecarSuffix]; dup {
			set.Reject(s, "service.id", "the id of its sidecar, %q, is also used by %s", id+sidecarSuffix, o.File)
			continue
		}
		ids[id], ids[id+sidecarSuffix] = s, s
	}
	checkFixedPorts(set)
	checkTransparent(set)
	// Dry render with placeholder ports: template errors are found before any
	// port is allocated.
	for _, s := range slices.Clone(set.Services) {
		hh := h
		hh.ExtraUpstreams = extra[s.Name]
		_, err := Build(s, hh, placeholderPorts(s, extra[s.Name]))
		var fe *FieldError
		if errors.As(err, &fe) && fe.Global {
			return nil, h.Global.Problem(fe.Field, "%s", fe.Msg)
		}
		if err != nil {
			reject(s, err)
		}
	}
	var reqs []ports.Request
	for _, s := range set.Services {
		id, _ := RenderID(s, h.Hostname)
		reqs = append(reqs, ports.Request{Key: ServicePortKey(id), Fixed: s.Port}, ports.Request{Key: SidecarPortKey(id)})
		for _, u := range upstreams(s, extra[s.Name]) {
			reqs = append(reqs, ports.Request{Key: UpstreamPortKey(id, u.Key()), Fixed: u.Port, Down: true})
		}
		if s.Proxy.Mode == config.ModeEnvoy {
			reqs = append(reqs, ports.Request{Key: AdminPortKey(id)})
		}
		if s.Proxy.PrometheusScrapePath != "" {
			reqs = append(reqs, ports.Request{Key: MetricsPortKey(id)})
		}
		if !h.Global.Metrics.Disabled {
			reqs = append(reqs, ports.Request{Key: ProxyMetricsPortKey(id)})
		}
	}
	got, err := alloc(reqs)
	if err != nil {
		return nil, fmt.Errorf("allocate ports: %w", err)
	}
	var plans []*Plan
	for _, s := range set.Services {
		id, _ := RenderID(s, h.Hostname)
		p := Ports{Service: got[ServicePortKey(id)], Sidecar: got[SidecarPortKey(id)], Admin: got[AdminPortKey(id)],
			Metrics: got[MetricsPortKey(id)], ProxyMetrics: got[ProxyMetricsPortKey(id)], Upstreams: map[string]int{}}
		for _, u := range upstreams(s, extra[s.Name]) {
			p.Upstreams[u.Key()] = got[UpstreamPortKey(id, u.Key())]
		}
		hh := h
		hh.ExtraUpstreams = extra[s.Name]
		pl, err := Build(s, hh, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.File, err) // the dry render passed: a bug, not bad input
		}
		plans = append(plans, pl)
	}
	return plans, nil
}

const sidecarSuffix = "-sidecar-proxy"

// placeholderPorts are ports for a dry render: every port set, none real.
func placeholderPorts(s *config.Service, extra []config.Upstream) Ports {
	p := Ports{Service: 1, Sidecar: 1, Admin: 1, Metrics: 1, ProxyMetrics: 1, Upstreams: map[string]int{}}
	for _, u := range upstreams(s, extra) {
		p.Upstreams[u.Key()] = 1
	}
	return p
}

// checkFixedPorts rejects a service whose fixed port another service (earlier
// by file name) already fixed.
func checkFixedPorts(set *config.Set) {
	type owner struct {
		s     *config.Service
		field string
	}
	taken := map[int]owner{}
	for _, s := range slices.Clone(set.Services) {
		type fp struct {
			port  int
			field string
		}
		var mine []fp
		if s.Port != 0 {
			mine = append(mine, fp{s.Port, "service.port"})
		}
		for i, u := range s.Upstreams {
			if u.Port != 0 {
				mine = append(mine, fp{u.Port, fmt.Sprintf("upstreams[%d].port", i)})
			}
		}
		clash := false
		for _, m := range mine {
			if o, ok := taken[m.port]; ok && o.s != s {
				set.Reject(s, m.field, "port %d is already taken by %s (%s)", m.port, o.s.File, o.field)
				clash = true
				break
			}
		}
		if clash {
			continue
		}
		for _, m := range mine {
			taken[m.port] = owner{s, m.field}
		}
	}
}

// checkTransparent allows one transparent-proxy service per host: the
// redirection rules are per network namespace.
func checkTransparent(set *config.Set) {
	var first *config.Service
	for _, s := range slices.Clone(set.Services) {
		if s.Transparent == nil {
			continue
		}
		if first != nil {
			set.Reject(s, "transparent_proxy", "only one service per host may enable transparent proxy; %s already does", first.File)
			continue
		}
		first = s
	}
}
