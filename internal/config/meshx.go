package config

import (
	"net/netip"
	"time"

	"gopkg.in/yaml.v3"
)

// The meshx shape of a service-config, as written (see docs/configuration.md).
type rawService struct {
	Version int              `yaml:"version"`
	Service rawServiceFields `yaml:"service"`
	Check   struct {
		TTL      durationText `yaml:"ttl"`
		Interval durationText `yaml:"interval"`
		Probe    string       `yaml:"probe"`
	} `yaml:"check"`
	Upstreams []struct {
		Name       string `yaml:"name"`
		Type       string `yaml:"type"`
		Datacenter string `yaml:"datacenter"`
		Namespace  string `yaml:"namespace"`
		Port       int    `yaml:"port"`
		Address    string `yaml:"address"`
	} `yaml:"upstreams"`
	Proxy struct {
		Mode                 string   `yaml:"mode"`
		Command              []string `yaml:"command"`
		ExtraArgs            []string `yaml:"extra_args"`
		MaxRestarts          *int     `yaml:"max_restarts"`
		Drain                string   `yaml:"drain"`
		User                 string   `yaml:"user"`
		PrometheusScrapePath string   `yaml:"prometheus_scrape_path"`
	} `yaml:"proxy"`
	Registration     map[string]any `yaml:"registration"`
	TransparentProxy *struct {
		Enabled              bool     `yaml:"enabled"`
		OutboundPort         int      `yaml:"outbound_port"`
		ExcludeInboundPorts  []int    `yaml:"exclude_inbound_ports"`
		ExcludeOutboundPorts []int    `yaml:"exclude_outbound_ports"`
		ExcludeOutboundCIDRs []string `yaml:"exclude_outbound_cidrs"`
		ExcludeUIDs          []int    `yaml:"exclude_uids"`
		DNS                  *struct {
			Enabled bool   `yaml:"enabled"`
			Address string `yaml:"address"`
		} `yaml:"dns"`
	} `yaml:"transparent_proxy"`
	Network struct {
		Namespace bool `yaml:"namespace"`
	} `yaml:"network"`
}

// rawServiceFields are a service's own fields as written: under "service:"
// in the meshx shape, at the top level in the Vagrant flat shape.
type rawServiceFields struct {
	Name    string            `yaml:"name"`
	ID      string            `yaml:"id"`
	Address string            `yaml:"address"`
	Port    int               `yaml:"port"`
	Tags    []string          `yaml:"tags"`
	Meta    map[string]string `yaml:"meta"`
}

func (f rawServiceFields) copyTo(s *Service) {
	s.Name, s.ID, s.Address, s.Port, s.Tags, s.Meta = f.Name, f.ID, f.Address, f.Port, f.Tags, f.Meta
}

// CurrentVersion is the only service-config version this meshx reads.
const CurrentVersion = 1

func decodeMeshx(data []byte, root *yaml.Node, ix *docIndex, p *Problems) *Service {
	var r rawService
	decodeStrict(data, root, &r, ix, p) // on problems, r holds what did decode
	s := &Service{Shape: "meshx", fields: locs{}}
	walkLines(root, "", s.fields)
	switch _, v := lookup(root, "version"); {
	case v == nil || v.ShortTag() == "!!null":
		p.at(s.Loc("version"), "missing: write \"version: %d\" at the top of the file", CurrentVersion)
	case v.ShortTag() == "!!int" && r.Version != CurrentVersion:
		p.at(s.Loc("version"), "unsupported version %d (this meshx reads version %d)", r.Version, CurrentVersion)
	}
	r.Service.copyTo(s)
	s.Check.TTL = s.duration(p, "check.ttl", string(r.Check.TTL))
	s.Check.Interval = s.duration(p, "check.interval", string(r.Check.Interval))
	s.Check.Probe = r.Check.Probe
	for _, u := range r.Upstreams {
		s.Upstreams = append(s.Upstreams, Upstream{Name: u.Name, Type: u.Type, Datacenter: u.Datacenter,
			Namespace: u.Namespace, Port: u.Port, Address: u.Address})
	}
	s.Proxy = Proxy{Mode: r.Proxy.Mode, Command: r.Proxy.Command, ExtraArgs: r.Proxy.ExtraArgs,
		User: r.Proxy.User, PrometheusScrapePath: r.Proxy.PrometheusScrapePath}
	if r.Proxy.MaxRestarts != nil {
		s.Proxy.MaxRestarts, s.maxRestartsSet = *r.Proxy.MaxRestarts, true
	}
	if r.Proxy.Drain != "" {
		s.Proxy.Drain, s.drainSet = s.duration(p, "proxy.drain", r.Proxy.Drain), true
	}
	s.Registration = r.Registration
	s.Network.Namespace = r.Network.Namespace
	if t := r.TransparentProxy; t != nil && t.Enabled {
		s.Transparent = &Transparent{OutboundPort: t.OutboundPort, ExcludeInboundPorts: t.ExcludeInboundPorts,
			ExcludeOutboundPorts: t.ExcludeOutboundPorts, ExcludeUIDs: t.ExcludeUIDs}
		for i, c := range t.ExcludeOutboundCIDRs {
			s.Transparent.ExcludeOutboundCIDRs = append(s.Transparent.ExcludeOutboundCIDRs,
				s.prefix(p, fieldIndex("transparent_proxy.exclude_outbound_cidrs", i), c))
		}
		if t.DNS != nil && t.DNS.Enabled {
			s.Transparent.DNS = &DNS{}
			if t.DNS.Address != "" {
				s.Transparent.DNS.Address = s.addrPort(p, "transparent_proxy.dns.address", t.DNS.Address)
			}
		}
	}
	return s
}

func (s *Service) duration(p *Problems, field, v string) time.Duration {
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.at(s.Loc(field), "not a duration (like 10s or 1m): %q", v)
	}
	return d
}

func (s *Service) prefix(p *Problems, field, v string) netip.Prefix {
	pf, err := netip.ParsePrefix(v)
	if err != nil {
		if a, aerr := netip.ParseAddr(v); aerr == nil {
			return netip.PrefixFrom(a, a.BitLen())
		}
		p.at(s.Loc(field), "not a CIDR (like 10.0.0.0/8): %q", v)
	}
	return pf.Masked()
}

func (s *Service) addrPort(p *Problems, field, v string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(v)
	switch {
	case err != nil || ap.Port() == 0:
		p.at(s.Loc(field), "not an address:port (like 127.0.0.1:8600): %q", v)
	case notUnicast(ap.Addr()) != "":
		p.at(s.Loc(field), "%s is %s: write one address, like 127.0.0.1:8600", ap.Addr(), notUnicast(ap.Addr()))
	}
	return ap
}
