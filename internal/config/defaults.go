package config

import (
	"net/netip"
	"time"
)

// Built-in defaults, all in one place.
const (
	DefaultIDTemplate   = "{{name}}-{{hostname}}"
	DefaultTTL          = 10 * time.Second
	DefaultMaxRestarts  = 5
	DefaultDrain        = 5 * time.Second
	DefaultOutboundPort = 15001
)

// DefaultDNS is Consul's DNS interface on a default agent.
var DefaultDNS = netip.MustParseAddrPort("127.0.0.1:8600")

// Defaults are a host's defaults for every service (meshx.yaml `defaults:`);
// a service-config's own value wins over them, and they win over built-ins.
type Defaults struct {
	Check     Check  // zero fields: the built-in defaults
	ProxyMode string // "" = ModeConnect
	// Registration is a structured template merged over the built-in default
	// registration, under each service's own `registration:` (plan does it).
	Registration map[string]any
}

func (s *Service) setDefaults(d Defaults) {
	if s.ID == "" {
		s.ID = DefaultIDTemplate
	}
	if s.Check.TTL == 0 {
		s.Check.TTL = firstDuration(d.Check.TTL, DefaultTTL)
	}
	if s.Check.Interval == 0 {
		s.Check.Interval = d.Check.Interval
		if s.Check.Interval == 0 || s.Check.Interval >= s.Check.TTL {
			s.Check.Interval = s.Check.TTL / 2
		}
	}
	if s.Check.Probe == "" {
		s.Check.Probe = firstString(d.Check.Probe, ProbeTCP)
	}
	if s.Proxy.Mode == "" {
		s.Proxy.Mode = firstString(d.ProxyMode, ModeConnect)
	}
	if !s.maxRestartsSet {
		s.Proxy.MaxRestarts = DefaultMaxRestarts
	}
	if !s.drainSet {
		s.Proxy.Drain = DefaultDrain
	}
	for i := range s.Upstreams {
		if s.Upstreams[i].Type == "" {
			s.Upstreams[i].Type = "service"
		}
	}
	if t := s.Transparent; t != nil {
		if t.OutboundPort == 0 {
			t.OutboundPort = DefaultOutboundPort
		}
		if t.DNS != nil && !t.DNS.Address.IsValid() {
			t.DNS.Address = DefaultDNS
		}
	}
}

func firstDuration(v ...time.Duration) time.Duration {
	for _, d := range v {
		if d != 0 {
			return d
		}
	}
	return 0
}

func firstString(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}
