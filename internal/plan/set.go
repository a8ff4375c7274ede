package plan

import (
	"errors"
	"fmt"
	"maps"
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
		if o, dup := ids[SidecarID(id)]; dup {
			set.Reject(s, "service.id", "the id of its sidecar, %q, is also used by %s", SidecarID(id), o.File)
			continue
		}
		ids[id], ids[SidecarID(id)] = s, s
	}
	checkFixedPorts(set)
	checkTransparent(set)
	// Dry render with placeholder ports: template errors are found before any
	// port is allocated.
	for _, s := range slices.Clone(set.Services) {
		hh := h
		hh.ExtraUpstreams = extra[s.Name]
		_, err := Build(s, hh, needsOf(s, h, extra[s.Name]).fill(placeholder(s, extra[s.Name])))
		var fe *FieldError
		if errors.As(err, &fe) && fe.Global {
			return nil, h.Global.Problem(fe.Field, "%s", fe.Msg)
		}
		if err != nil {
			reject(s, err)
		}
	}
	got, err := allocate(set, h, extra, alloc)
	if err != nil {
		return nil, err
	}
	var plans []*Plan
	for _, s := range set.Services {
		p := needsOf(s, h, extra[s.Name]).fill(func(key string) int { return got[key] })
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

// placeholder hands out ports for a dry render: every port set, none real,
// each distinct and clear of the ports the service fixes, as the allocator's
// would be.
func placeholder(s *config.Service, extra []config.Upstream) func(string) int {
	fixed := map[int]bool{s.Port: true}
	for _, u := range upstreams(s, extra) {
		fixed[u.Port] = true
	}
	next := 0
	return func(string) int {
		for next++; fixed[next]; next++ {
		}
		return next
	}
}

// SidecarID is the id of the sidecar of the service id: Consul's default,
// which meshx keeps.
func SidecarID(id string) string { return id + "-sidecar-proxy" }

// allocate gets the ports of every service of set in one allocation. A
// service that needs more ports than the range holds is rejected first; when
// the range runs out for the whole set, each service is allocated on its own,
// in file order, and one that finds no port left is rejected alone, located
// in its file, while the others keep theirs.
func allocate(set *config.Set, h Host, extra map[string][]config.Upstream, alloc Allocator) (map[string]int, error) {
	size := h.Global.Ports.High - h.Global.Ports.Low + 1
	each := map[*config.Service][]ports.Request{}
	var all []ports.Request
	for _, s := range slices.Clone(set.Services) {
		reqs := needsOf(s, h, extra[s.Name]).requests()
		n := 0
		for _, q := range reqs {
			if q.Fixed == 0 {
				n++
			}
		}
		if n > size {
			set.Reject(s, demandField(s), "needs %d ports from the range %d-%d (ports.range in %s), which holds %d",
				n, h.Global.Ports.Low, h.Global.Ports.High, globalName(h.Global), size)
			continue
		}
		each[s] = reqs
		all = append(all, reqs...)
	}
	if len(all) == 0 {
		return map[string]int{}, nil // nothing to allocate: the state is not touched
	}
	got, err := alloc(all)
	if !errors.Is(err, ports.ErrExhausted) {
		if err != nil {
			return nil, fmt.Errorf("allocate ports: %w", err)
		}
		return got, nil
	}
	got = map[string]int{}
	for _, s := range slices.Clone(set.Services) {
		g, err := alloc(each[s])
		switch {
		case errors.Is(err, ports.ErrExhausted):
			set.Reject(s, demandField(s), "no port left for this service: %v", err)
		case err != nil:
			return nil, fmt.Errorf("allocate ports: %w", err)
		default:
			maps.Copy(got, g)
		}
	}
	return got, nil
}

// demandField is where a service's demand for ports is written: its
// upstreams, when it has any.
func demandField(s *config.Service) string {
	if len(s.Upstreams) > 0 {
		return "upstreams"
	}
	return "service"
}

func globalName(g *config.Global) string {
	if g.File == "" {
		return "meshx.yaml (defaults)"
	}
	return g.File
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
		if s.Network.Namespace {
			continue // its fixed ports are bound in its own namespace
		}
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

// checkTransparent allows one transparent-proxy service per network
// namespace, as the redirection rules are per namespace: any number in
// namespaces of their own (network.namespace), one in the host's.
func checkTransparent(set *config.Set) {
	var first *config.Service
	for _, s := range slices.Clone(set.Services) {
		if s.Transparent == nil || s.Network.Namespace {
			continue
		}
		if first != nil {
			set.Reject(s, "transparent_proxy", "only one service per host may enable transparent proxy in the host's network namespace; %s already does (give each its own with network.namespace: true)", first.File)
			continue
		}
		first = s
	}
}
