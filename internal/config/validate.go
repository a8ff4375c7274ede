package config

import (
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// Service names must be DNS labels: valid for Consul, for Consul DNS, for a
// systemd unit instance, and free of shell metacharacters.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// userRE is Debian's rule for user names (adduser's default NAME_REGEX, relaxed for '_').
var userRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// IDs may also hold dots and capitals (hostnames) and template braces.
var idTemplateRE = regexp.MustCompile(`^[A-Za-z0-9{}$._-]{1,128}$`)

// hostnameRE is a DNS name: letters, digits, '-' and '.' (RFC 1123).
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)

// ValidName reports whether name is a valid service or upstream name.
func ValidName(name string) bool { return nameRE.MatchString(name) }

func (s *Service) validate(p *Problems) {
	at := func(field, format string, args ...any) { p.at(s.Loc(field), format, args...) }
	switch {
	case s.Name == "":
		at("service.name", "missing: every service needs a name")
	case !ValidName(s.Name):
		at("service.name", "invalid name %q: use lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit", s.Name)
	}
	if !idTemplateRE.MatchString(s.ID) {
		at("service.id", "invalid id %q: use letters, digits, '.', '_', '-' (templates like {{hostname}} allowed), at most 128", s.ID)
	}
	switch a, err := netip.ParseAddr(s.Address); {
	case s.Address == "":
	case !validHost(s.Address):
		at("service.address", "invalid address %q: write an IP address or a host name", s.Address)
	case err == nil && notUnicast(a) != "":
		at("service.address", "%s is %s: write where the app listens, like 127.0.0.1", s.Address, notUnicast(a))
	}
	if s.Port < 0 || s.Port > 65535 {
		at("service.port", "port %d out of range 1-65535 (omit it to have one allocated)", s.Port)
	}
	ValidateTags(s.Tags, "service.tags", at)
	ValidateMeta(s.Meta, "service.meta", at)
	checkTemplate(s.Registration, "registration", func(field, msg string) { at(field, "%s", msg) })
	switch {
	case s.Check.TTL < MinTTL:
		at("check.ttl", "ttl %s is too short (at least %s)", s.Check.TTL, MinTTL)
	case s.Check.TTL > MaxTTL:
		at("check.ttl", "ttl %s is too long (at most %s)", s.Check.TTL, MaxTTL)
	}
	switch {
	case s.Check.Interval <= 0 || s.Check.Interval >= s.Check.TTL:
		at("check.interval", "interval %s must be positive and shorter than ttl %s", s.Check.Interval, s.Check.TTL)
	case s.Check.Interval < MinInterval:
		at("check.interval", "interval %s is too short (at least %s)", s.Check.Interval, MinInterval)
	}
	if len(s.Upstreams) > MaxUpstreams {
		at("upstreams", "%d upstreams; at most %d", len(s.Upstreams), MaxUpstreams)
	}
	if s.Check.Probe != ProbeTCP && s.Check.Probe != ProbeNone {
		at("check.probe", "unknown probe %q (tcp or none)", s.Check.Probe)
	}
	s.validateUpstreams(at)
	switch s.Proxy.Mode {
	case ModeConnect, ModeEnvoy, ModeNative, ModeNone:
	default:
		at("proxy.mode", "unknown mode %q (%s)", s.Proxy.Mode, ValidModes)
	}
	if s.Proxy.Mode == ModeNative {
		if _, ok := s.fields["proxy.command"]; ok {
			at("proxy.command", "the native data plane runs inside meshx-proxy: there is no command to run")
		}
		if s.Proxy.User != "" {
			at("proxy.user", "the native data plane runs inside meshx-proxy: there is no proxy process to run as another user")
		}
	}
	if s.Proxy.MaxRestarts < -1 || s.Proxy.MaxRestarts == 0 {
		// The supervisor reads 0 as its default: "never restart" cannot be had.
		at("proxy.max_restarts", "must be at least 1, or -1 for unlimited, not %d", s.Proxy.MaxRestarts)
	}
	if s.Proxy.Drain < 0 || s.Proxy.Drain > MaxDrain {
		at("proxy.drain", "must be between 0s (no drain) and %s, not %s", MaxDrain, s.Proxy.Drain)
	}
	if _, ok := s.fields["proxy.command"]; ok && len(s.Proxy.Command) == 0 {
		at("proxy.command", "must not be empty (omit it for the default)")
	}
	if len(s.Proxy.Command) > 0 && s.Proxy.Command[0] == "" {
		at("proxy.command[0]", "the program must not be empty")
	}
	for _, args := range []struct {
		field string
		argv  []string
	}{{"proxy.command", s.Proxy.Command}, {"proxy.extra_args", s.Proxy.ExtraArgs}} {
		for i, a := range args.argv {
			if strings.ContainsRune(a, 0) {
				at(fieldIndex(args.field, i), "an argument cannot hold a NUL byte")
			}
		}
	}
	switch {
	case len(s.Proxy.ExtraArgs) > 0 && s.Proxy.Mode != ModeEnvoy:
		at("proxy.extra_args", "extra arguments are passed to Envoy: they need proxy.mode envoy")
	case len(s.Proxy.ExtraArgs) > 0 && len(s.Proxy.Command) > 0:
		at("proxy.extra_args", "extra arguments go after the default envoy command; with proxy.command, write them there")
	}
	switch {
	case s.Proxy.PrometheusScrapePath != "" && s.Proxy.Mode != ModeEnvoy:
		at("proxy.prometheus_scrape_path", "merged metrics are served by Envoy: they need proxy.mode envoy")
	case s.Proxy.PrometheusScrapePath != "" && len(s.Proxy.Command) > 0:
		at("proxy.prometheus_scrape_path", "the scrape path is passed to the default envoy command; with proxy.command, pass -prometheus-scrape-path there")
	case s.Proxy.PrometheusScrapePath != "" && !validPath(s.Proxy.PrometheusScrapePath):
		at("proxy.prometheus_scrape_path", "must be a URL path starting with /, not %q", s.Proxy.PrometheusScrapePath)
	}
	if s.Proxy.User != "" && !userRE.MatchString(s.Proxy.User) {
		at("proxy.user", "invalid user name %q", s.Proxy.User)
	}
	s.validateTransparent(at)
}

// checkTemplate reports keys of a structured template that are not strings
// (YAML allows `1: x`; a registration cannot hold them).
func checkTemplate(v any, field string, bad func(field, msg string)) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(x)) {
			checkTemplate(x[k], field+"."+k, bad)
		}
	case []any:
		for i, e := range x {
			checkTemplate(e, fieldIndex(field, i), bad)
		}
	case map[any]any:
		bad(field, "every key of a template mapping must be a string")
	}
}

// validPath accepts a URL path: a leading '/', no white space, query or fragment.
func validPath(p string) bool {
	return strings.HasPrefix(p, "/") && !strings.ContainsAny(p, " \t\n\r?#\x00")
}

func (s *Service) validateUpstreams(at func(string, string, ...any)) {
	seen := map[string]int{}
	fixed := map[int]int{} // fixed local port -> upstream index
	for i, u := range s.Upstreams {
		f := fieldIndex("upstreams", i)
		switch {
		case u.Name == "":
			at(f+".name", "missing upstream name")
		case !ValidName(u.Name):
			at(f+".name", "invalid upstream name %q", u.Name)
		}
		j, dup := seen[u.key()]
		if dup {
			at(f+".name", "upstream %q listed twice (also item %d)", u.Name, j+1)
		} else {
			seen[u.key()] = i
		}
		if u.Type != "service" && u.Type != "prepared_query" {
			at(f+".type", "unknown type %q (service or prepared_query)", u.Type)
		}
		if u.Datacenter != "" && !ValidName(u.Datacenter) {
			at(f+".datacenter", "invalid datacenter %q", u.Datacenter)
		}
		if u.Namespace != "" && !ValidName(u.Namespace) {
			at(f+".namespace", "invalid namespace %q", u.Namespace)
		}
		if u.Port < 0 || u.Port > 65535 {
			at(f+".port", "port %d out of range 1-65535 (omit it to have one allocated)", u.Port)
		}
		if u.Port != 0 && u.Port == s.Port {
			at(f+".port", "port %d is also the service's own port", u.Port)
		}
		if j, taken := fixed[u.Port]; taken && !dup {
			at(f+".port", "port %d is also the port of upstream %q (item %d)", u.Port, s.Upstreams[j].Name, j+1)
		} else if u.Port > 0 {
			fixed[u.Port] = i
		}
		if u.Address != "" {
			if msg := CheckLocalAddr("local bind address", u.Address, true); msg != "" {
				at(f+".address", "%s", msg)
			}
		}
	}
}

func (u Upstream) key() string { return u.Type + "/" + u.Namespace + "/" + u.Name + "/" + u.Datacenter }

// Key names the upstream uniquely within its service (for port allocation).
func (u Upstream) Key() string {
	k := u.Name
	if u.Type == "prepared_query" {
		k = "pq:" + k
	}
	if u.Namespace != "" {
		k += "." + u.Namespace
	}
	if u.Datacenter != "" {
		k += "@" + u.Datacenter
	}
	return k
}

// maxUID is the largest user id (2^32-2; 2^32-1 is "no user").
const maxUID = 1<<32 - 2

func (s *Service) validateTransparent(at func(string, string, ...any)) {
	t := s.Transparent
	if t == nil {
		return
	}
	if s.Proxy.Mode == ModeConnect && len(s.Proxy.Command) == 0 {
		at("transparent_proxy", "transparent proxy needs proxy.mode native or envoy, or a custom proxy.command: Consul's built-in proxy has no transparent listener")
	}
	ports := func(field string, ps []int) {
		for i, p := range ps {
			if p < 1 || p > 65535 {
				at(fieldIndex(field, i), "port %d out of range 1-65535", p)
			}
		}
	}
	if t.OutboundPort < 1 || t.OutboundPort > 65535 {
		at("transparent_proxy.outbound_port", "port %d out of range 1-65535", t.OutboundPort)
	}
	ports("transparent_proxy.exclude_inbound_ports", t.ExcludeInboundPorts)
	ports("transparent_proxy.exclude_outbound_ports", t.ExcludeOutboundPorts)
	for i, u := range t.ExcludeUIDs {
		switch {
		case u < 0:
			at(fieldIndex("transparent_proxy.exclude_uids", i), "uid %d is negative", u)
		case u > maxUID:
			at(fieldIndex("transparent_proxy.exclude_uids", i), "uid %d is above the largest, %d", u, maxUID)
		}
	}
}
