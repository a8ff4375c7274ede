package plan

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
)

// checkRegistration applies to the rendered registration the rules that the
// same fields get under service: (tags, meta, ports, addresses), and those
// by which the agent would refuse it later (weights, checks, Kind). Whatever
// a template writes is held to them. It returns the first problem, at the
// registration's field path.
func checkRegistration(reg *api.AgentServiceRegistration, sidecarID string) error {
	var first *FieldError
	at := func(field, format string, args ...any) {
		if first == nil {
			first = &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
		}
	}
	const r = "registration"
	if reg.Kind != "" {
		at(r+".Kind", "meshx registers typical services (its sidecar is the proxy): leave Kind out, not %q", reg.Kind)
	}
	if reg.Proxy != nil {
		at(r+".Proxy", "a typical service has no Proxy block: write the sidecar's under Connect.SidecarService.Proxy")
	}
	config.ValidateTags(reg.Tags, r+".Tags", at)
	config.ValidateMeta(reg.Meta, r+".Meta", at)
	checkService(reg, r, at)
	if reg.Weights != nil {
		checkWeights(*reg.Weights, r+".Weights", at)
	}
	if reg.Check != nil {
		checkCheck(reg.Check, r+".Check", at)
	}
	for i, c := range reg.Checks {
		checkCheck(c, fmt.Sprintf("%s.Checks[%d]", r, i), at)
	}
	if c := reg.Connect; c != nil && c.SidecarService != nil {
		sc, f := c.SidecarService, r+".Connect.SidecarService"
		if c.Native {
			at(r+".Connect.Native", "a Connect-native service has no sidecar: leave Native out")
		}
		if sc.Kind != "" && sc.Kind != api.ServiceKindConnectProxy {
			at(f+".Kind", "a sidecar is a %q; leave Kind out, not %q", api.ServiceKindConnectProxy, sc.Kind)
		}
		if sc.ID != "" && sc.ID != sidecarID {
			at(f+".ID", "the sidecar's id is %q (meshx deregisters it by that id); leave ID out", sidecarID)
		}
		config.ValidateTags(sc.Tags, f+".Tags", at)
		config.ValidateMeta(sc.Meta, f+".Meta", at)
		checkService(sc, f, at)
		for i, ck := range sc.Checks {
			checkCheck(ck, fmt.Sprintf("%s.Checks[%d]", f, i), at)
		}
		if sc.Check != nil {
			checkCheck(sc.Check, f+".Check", at)
		}
		if px := sc.Proxy; px != nil {
			checkProxy(px, f+".Proxy", at)
		}
	}
	if first == nil {
		return nil
	}
	return first
}

type atFunc = func(field, format string, args ...any)

// checkService checks a registration's port and advertised addresses.
func checkService(reg *api.AgentServiceRegistration, f string, at atFunc) {
	checkPort(reg.Port, f+".Port", at)
	if reg.Address != "" {
		if err := config.CheckAdvertised(reg.Address); err != nil {
			at(f+".Address", "%v", err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(reg.TaggedAddresses)) {
		ta := reg.TaggedAddresses[k]
		if err := config.CheckAdvertised(ta.Address); err != nil {
			at(f+".TaggedAddresses."+k+".Address", "%v", err)
		}
		checkPort(ta.Port, f+".TaggedAddresses."+k+".Port", at)
	}
}

func checkPort(p int, field string, at atFunc) {
	if p < 0 || p > 65535 {
		at(field, "port %d out of range 1-65535", p)
	}
}

// checkWeights applies Consul's rules (structs.ValidateWeights).
func checkWeights(w api.AgentWeights, f string, at atFunc) {
	switch {
	case w.Passing < 1 || w.Passing > 65535:
		at(f+".Passing", "must be 1-65535, not %d", w.Passing)
	case w.Warning < 0 || w.Warning > 65535:
		at(f+".Warning", "must be 0-65535, not %d", w.Warning)
	}
}

// checkCheck applies Consul's rules for a service check: exactly one kind,
// an interval for the kinds Consul runs itself, valid durations, a status
// Consul knows, and target addresses that parse.
func checkCheck(c *api.AgentServiceCheck, f string, at atFunc) {
	if c == nil {
		at(f, "must be a mapping, not null")
		return
	}
	if strings.HasPrefix(c.CheckID, "meshx-") {
		at(f+".CheckID", "the check id prefix \"meshx-\" is meshx's own (its heartbeat is meshx-ttl:<id>)")
	}
	var kinds []string
	for _, k := range []struct {
		name string
		set  bool
	}{{"ScriptArgs", len(c.Args) > 0}, {"HTTP", c.HTTP != ""}, {"TCP", c.TCP != ""}, {"UDP", c.UDP != ""},
		{"GRPC", c.GRPC != ""}, {"H2PING", c.H2PING != ""}, {"TTL", c.TTL != ""},
		{"AliasService", c.AliasService != "" || c.AliasNode != ""}} {
		if k.set {
			kinds = append(kinds, k.name)
		}
	}
	switch {
	case len(kinds) == 0:
		at(f, "a check needs one of ScriptArgs, HTTP, TCP, UDP, GRPC, H2PING, TTL or AliasService")
		return
	case len(kinds) > 1:
		at(f, "a check has one kind; this one has %v", kinds)
		return
	}
	for _, d := range []struct{ name, v string }{{"Interval", c.Interval}, {"Timeout", c.Timeout}, {"TTL", c.TTL},
		{"DeregisterCriticalServiceAfter", c.DeregisterCriticalServiceAfter}} {
		if d.v == "" {
			continue
		}
		if v, err := time.ParseDuration(d.v); err != nil || v <= 0 {
			at(f+"."+d.name, "must be a positive duration (like 10s), not %q", d.v)
		}
	}
	switch kinds[0] {
	case "TTL", "AliasService":
		if c.Interval != "" {
			at(f+".Interval", "a %s check takes no Interval", kinds[0])
		}
	default:
		if iv, err := time.ParseDuration(c.Interval); c.Interval == "" || err == nil && iv < time.Second {
			at(f+".Interval", "a %s check needs an Interval of at least 1s, not %q", kinds[0], c.Interval)
		}
	}
	switch c.Status {
	case "", api.HealthPassing, api.HealthWarning, api.HealthCritical:
	default:
		at(f+".Status", "must be passing, warning or critical, not %q", c.Status)
	}
	if c.HTTP != "" {
		if u, err := url.Parse(c.HTTP); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			at(f+".HTTP", "must be an http:// or https:// URL, not %q", c.HTTP)
		}
	}
	for _, hp := range []struct{ name, v string }{{"TCP", c.TCP}, {"UDP", c.UDP}} {
		if hp.v != "" && !validHostPort(hp.v) {
			at(f+"."+hp.name, "must be host:port, not %q", hp.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"SuccessBeforePassing", c.SuccessBeforePassing}, {"FailuresBeforeWarning", c.FailuresBeforeWarning},
		{"FailuresBeforeCritical", c.FailuresBeforeCritical}} {
		if n.v < 0 {
			at(f+"."+n.name, "must not be negative, not %d", n.v)
		}
	}
}

func validHostPort(v string) bool {
	host, port, err := net.SplitHostPort(v)
	if err != nil || host == "" {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 1 && n <= 65535
}

// checkProxy checks the sidecar's proxy: the app's local address and port,
// and each upstream's name and local listener.
func checkProxy(px *api.AgentServiceConnectProxyConfig, f string, at atFunc) {
	checkPort(px.LocalServicePort, f+".LocalServicePort", at)
	if a := px.LocalServiceAddress; a != "" {
		// The app's address may be a host name (service.address); an IP
		// must be one the sidecar can dial.
		if _, err := netip.ParseAddr(a); err == nil {
			if msg := config.CheckLocalAddr("address", a, false); msg != "" {
				at(f+".LocalServiceAddress", "%s", msg)
			}
		}
	}
	bound := map[string]int{}
	for i, u := range px.Upstreams {
		uf := fmt.Sprintf("%s.Upstreams[%d]", f, i)
		switch u.DestinationType {
		case "", api.UpstreamDestTypeService, api.UpstreamDestTypePreparedQuery:
		default:
			at(uf+".DestinationType", "must be service or prepared_query, not %q", u.DestinationType)
		}
		if u.DestinationType != api.UpstreamDestTypePreparedQuery && !config.ValidName(u.DestinationName) {
			at(uf+".DestinationName", "invalid upstream name %q", u.DestinationName)
		}
		switch {
		case u.LocalBindSocketPath != "" && u.LocalBindPort != 0:
			at(uf+".LocalBindSocketPath", "an upstream listens on LocalBindPort or on LocalBindSocketPath, not both")
		case u.LocalBindSocketPath == "" && (u.LocalBindPort < 1 || u.LocalBindPort > 65535):
			at(uf+".LocalBindPort", "port %d out of range 1-65535", u.LocalBindPort)
		}
		if u.DestinationPeer != "" && u.Datacenter != "" {
			at(uf+".Datacenter", "an upstream names a DestinationPeer or a Datacenter, not both")
		}
		where := net.JoinHostPort(u.LocalBindAddress, strconv.Itoa(u.LocalBindPort))
		if u.LocalBindSocketPath != "" {
			where = u.LocalBindSocketPath
		}
		if j, dup := bound[where]; dup {
			at(uf+".LocalBindPort", "%s is also the local listener of upstream %d (%s)", where, j+1, px.Upstreams[j].DestinationName)
		}
		bound[where] = i
		if u.LocalBindAddress != "" {
			if msg := config.CheckLocalAddr("local bind address", u.LocalBindAddress, true); msg != "" {
				at(uf+".LocalBindAddress", "%s", msg)
			}
		}
		for _, n := range []struct{ field, v string }{{"Datacenter", u.Datacenter}, {"DestinationNamespace", u.DestinationNamespace}} {
			if n.v != "" && !config.ValidName(n.v) {
				at(uf+"."+n.field, "invalid %s %q", strings.ToLower(n.field), n.v)
			}
		}
	}
}
