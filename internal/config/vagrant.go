package config

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The Vagrant transparent-proxy flow's /srv/consul/service-config.json comes in two
// shapes; both are read as-is. Both default to transparent proxy with Envoy, as that
// flow's default template did. Strings are parsed strictly: "false" is false, a
// missing upstream port is a located error.

const annotationPrefix = "consul.hashicorp.com/"

// NamespaceAnnotation is meshx's own annotation for network.namespace:
// "true" puts the service in a network namespace of its own.
const NamespaceAnnotation = "meshx.io/network-namespace"

// flatFields are the flat shape's own fields and their normalized names.
var flatFields = map[string]string{"name": "service.name", "id": "service.id", "address": "service.address",
	"port": "service.port", "tags": "service.tags", "meta": "service.meta"}

// decodeFlat reads the flat-Consul-fields shape: {"name": "web", "port": 8080, ...}.
func decodeFlat(data []byte, root *yaml.Node, ix *docIndex, p *Problems) *Service {
	s := &Service{Shape: "vagrant-flat", fields: locs{}, Transparent: &Transparent{}}
	s.Proxy.Mode = ModeEnvoy
	raw := map[string]Loc{}
	walkLines(root, "", raw)
	// Normalized names map back to what the file wrote: service.port -> port,
	// service.meta.team -> meta.team; a missing service.name is "name".
	s.fields[""] = raw[""]
	s.fields["service"] = Loc{Line: raw[""].Line}
	for k, l := range raw {
		top, _, _ := strings.Cut(k, ".")
		top, _, _ = strings.Cut(top, "[")
		if n, ok := flatFields[top]; ok {
			s.fields[n+k[len(top):]] = l
		}
	}
	var v struct {
		rawServiceFields `yaml:",inline"`
		Connect          *struct {
			SidecarService *struct {
				Proxy *struct {
					Mode      string `yaml:"mode"`
					Upstreams []struct {
						DestinationName string `yaml:"destination_name"`
						DestinationType string `yaml:"destination_type"`
						Datacenter      string `yaml:"datacenter"`
						LocalBindPort   int    `yaml:"local_bind_port"`
						LocalBindAddr   string `yaml:"local_bind_address"`
					} `yaml:"upstreams"`
				} `yaml:"proxy"`
			} `yaml:"sidecar_service"`
		} `yaml:"connect"`
	}
	decodeStrict(data, root, &v, ix, p) // on problems, v holds what did decode
	v.copyTo(s)
	if v.Connect != nil && v.Connect.SidecarService != nil && v.Connect.SidecarService.Proxy != nil {
		px := v.Connect.SidecarService.Proxy
		switch px.Mode {
		case "", "transparent":
		case "direct":
			s.Transparent = nil
		default:
			p.at(raw["connect.sidecar_service.proxy.mode"], "must be \"transparent\" or \"direct\", not %q", px.Mode)
		}
		for i, u := range px.Upstreams {
			base := fieldIndex("connect.sidecar_service.proxy.upstreams", i)
			to := fieldIndex("upstreams", i)
			s.fields[to] = raw[base]
			for from, norm := range map[string]string{"destination_name": "name", "destination_type": "type",
				"datacenter": "datacenter", "local_bind_port": "port", "local_bind_address": "address"} {
				l, ok := raw[base+"."+from]
				if !ok {
					l = Loc{Line: raw[base].Line, Name: base + "." + from}
				}
				s.fields[to+"."+norm] = l
			}
			s.Upstreams = append(s.Upstreams, Upstream{Name: u.DestinationName, Type: u.DestinationType,
				Datacenter: u.Datacenter, Port: u.LocalBindPort, Address: u.LocalBindAddr})
		}
	}
	return s
}

// decodeAnnotations reads {"annotations": {"consul.hashicorp.com/...": "..."}}.
func decodeAnnotations(root *yaml.Node, p *Problems) *Service {
	s := &Service{Shape: "vagrant-annotations", fields: locs{}, Transparent: &Transparent{}}
	s.Proxy.Mode = ModeEnvoy
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := root.Content[i]; k.Value != "annotations" {
			p.add(k.Line, k.Value, "unknown field (this file has the annotations shape: only \"annotations\" is allowed)")
		}
	}
	_, ann := lookup(root, "annotations")
	if ann.Kind != yaml.MappingNode {
		p.add(ann.Line, "annotations", "must be a mapping of strings, not %s", kindName(ann))
		return nil
	}
	// Missing annotations are reported by their names, at "annotations".
	annLoc := func(name string) Loc { return Loc{Line: ann.Line, Name: "annotations." + annotationPrefix + name} }
	s.fields[""] = Loc{Line: root.Line}
	s.fields["service"] = Loc{Line: ann.Line, Name: "annotations"}
	s.fields["service.name"], s.fields["service.port"] = annLoc("connect-service"), annLoc("connect-service-port")
	tproxy := true
	for i := 0; i+1 < len(ann.Content); i += 2 {
		kn, vn := ann.Content[i], ann.Content[i+1]
		field := "annotations." + kn.Value
		loc := Loc{Line: kn.Line, Name: field}
		if vn.Kind != yaml.ScalarNode || vn.Tag == "!!null" {
			p.add(kn.Line, field, "must be a string, not %s", kindName(vn))
			continue
		}
		key, val := kn.Value, strings.TrimSpace(vn.Value)
		bad := func(format string, args ...any) { p.add(kn.Line, field, format, args...) }
		if want := annotationType(strings.TrimPrefix(key, annotationPrefix)); vn.ShortTag() != "!!str" && vn.ShortTag() != want {
			bad("must be a string, not %s", gotName(vn.ShortTag(), vn.Value))
			continue
		}
		if key == "alpha.consul.hashicorp.com/virtual-ip" {
			if b, ok := parseBool(val); ok {
				s.Transparent.VirtualIP = b
			} else {
				bad("must be \"true\" or \"false\", not %q", val)
			}
			continue
		}
		if key == NamespaceAnnotation {
			b, ok := parseBool(val)
			if !ok {
				bad("must be \"true\" or \"false\", not %q", val)
			}
			s.Network.Namespace, s.fields["network.namespace"] = b, loc
			continue
		}
		if !strings.HasPrefix(key, annotationPrefix) {
			bad("unknown annotation (expected the %q prefix)", annotationPrefix)
			continue
		}
		name := strings.TrimPrefix(key, annotationPrefix)
		switch {
		case name == "connect-service":
			s.Name, s.fields["service.name"] = val, loc
		case name == "connect-service-port":
			s.fields["service.port"] = loc
			n, err := strconv.Atoi(val)
			if err != nil {
				bad("not a port number: %q", val)
			}
			s.Port = n
		case name == "connect-service-upstreams":
			s.fields["upstreams"] = loc
			for j, item := range splitCSV(val) {
				u, err := ParseUpstream(item)
				if err != nil {
					bad("upstream %d (%q): %v", j+1, item, err)
					continue
				}
				f := fieldIndex("upstreams", len(s.Upstreams))
				for _, sub := range []string{"", ".name", ".type", ".datacenter", ".namespace", ".port", ".address"} {
					s.fields[f+sub] = loc
				}
				s.Upstreams = append(s.Upstreams, u)
			}
		case name == "service-tags":
			s.Tags = splitCSV(val)
			s.fields.setList("service.tags", len(s.Tags), loc)
		case strings.HasPrefix(name, "service-meta-"):
			if s.Meta == nil {
				s.Meta = map[string]string{}
			}
			mk := strings.TrimPrefix(name, "service-meta-")
			s.Meta[mk], s.fields["service.meta."+mk] = val, loc
		case name == "transparent-proxy":
			b, ok := parseBool(val)
			if !ok {
				bad("must be \"true\" or \"false\", not %q", val)
			}
			tproxy = b
		case strings.HasPrefix(name, "transparent-proxy-exclude-"):
			s.annotationExclude(p, loc, strings.TrimPrefix(name, "transparent-proxy-exclude-"), val)
		case name == "prometheus-scrape-path":
			s.Proxy.PrometheusScrapePath, s.fields["proxy.prometheus_scrape_path"] = val, loc
		case name == "envoy-extra-args":
			// Split on white space only: the text is never given to a shell.
			s.Proxy.ExtraArgs, s.fields["proxy.extra_args"] = strings.Fields(val), loc
		default:
			bad("unsupported annotation")
		}
	}
	if !tproxy {
		s.Transparent = nil
	}
	return s
}

// annotationType is the YAML type an annotation may have besides a string:
// the Vagrant flow's Vagrantfile writes booleans and port numbers unquoted.
func annotationType(name string) string {
	switch name {
	case "transparent-proxy", "alpha.consul.hashicorp.com/virtual-ip":
		return "!!bool"
	case "connect-service-port", "transparent-proxy-exclude-inbound-ports",
		"transparent-proxy-exclude-outbound-ports", "transparent-proxy-exclude-uids":
		return "!!int"
	}
	return "!!str"
}

func (s *Service) annotationExclude(p *Problems, loc Loc, what, val string) {
	t := s.Transparent
	items := splitCSV(val)
	ints := func(field string) []int {
		var out []int
		for _, it := range items {
			n, err := strconv.Atoi(it)
			if err != nil {
				p.add(loc.Line, loc.Name, "not a number: %q", it)
				continue
			}
			out = append(out, n)
		}
		s.fields.setList(field, len(out), loc)
		return out
	}
	switch what {
	case "inbound-ports":
		t.ExcludeInboundPorts = ints("transparent_proxy.exclude_inbound_ports")
	case "outbound-ports":
		t.ExcludeOutboundPorts = ints("transparent_proxy.exclude_outbound_ports")
	case "uids":
		t.ExcludeUIDs = ints("transparent_proxy.exclude_uids")
	case "outbound-cidrs":
		for i, it := range items {
			f := fieldIndex("transparent_proxy.exclude_outbound_cidrs", i)
			s.fields[f] = loc
			t.ExcludeOutboundCIDRs = append(t.ExcludeOutboundCIDRs, s.prefix(p, f, it))
		}
	default:
		p.add(loc.Line, loc.Name, "unsupported annotation")
	}
}

// ParseUpstream reads one upstream item as the connect-service-upstreams
// annotation writes them:
// name:port, name:port:dc, name.ns:port, prepared_query:name:port.
func ParseUpstream(item string) (Upstream, error) {
	parts := strings.Split(item, ":")
	u := Upstream{}
	if parts[0] == "prepared_query" {
		u.Type = "prepared_query"
		parts = parts[1:]
	}
	switch len(parts) {
	case 0:
		return u, fmt.Errorf("missing upstream name (write prepared_query:name:port)")
	case 1:
		return u, fmt.Errorf("missing local port (write name:port)")
	case 2, 3:
	default:
		return u, fmt.Errorf("too many ':' (write name:port or name:port:datacenter)")
	}
	u.Name = parts[0]
	if u.Type == "" {
		if name, ns, ok := strings.Cut(parts[0], "."); ok {
			u.Name, u.Namespace = name, ns
		}
	}
	if u.Name == "" {
		return u, fmt.Errorf("missing upstream name")
	}
	port, err := strconv.Atoi(parts[1])
	if err != nil || parts[1] == "" {
		return u, fmt.Errorf("not a port number: %q", parts[1])
	}
	u.Port = port
	if len(parts) == 3 {
		if u.Type == "prepared_query" {
			return u, fmt.Errorf("a prepared query takes no datacenter")
		}
		u.Datacenter = parts[2]
	}
	return u, nil
}

// setList locates a list field and each of its n items at loc (one annotation
// holds them all).
func (m locs) setList(field string, n int, loc Loc) {
	m[field] = loc
	for i := range n {
		m[fieldIndex(field, i)] = loc
	}
}

func splitCSV(v string) []string {
	var out []string
	for _, it := range strings.Split(v, ",") {
		if it = strings.TrimSpace(it); it != "" {
			out = append(out, it)
		}
	}
	return out
}

// parseBool accepts exactly true/false (any case): the Vagrant flow's script
// turned the string "false" into true.
func parseBool(v string) (bool, bool) {
	switch strings.ToLower(v) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}
