// Package plan turns a validated service-config into the exact thing meshx
// acts on: the final Consul registration, the proxy argv and the heartbeat
// settings. A plan is a pure function of the config, the host's globals and
// the allocated ports; meshx-init writes it to the state dir and meshx-proxy
// reads it back, so both act on the same rendered data.
package plan

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/netns"
	"github.com/meshx/meshx/internal/template"
)

// Meta keys meshx writes on every service it registers.
const (
	MetaManaged = "meshx-managed" // "true": registered by meshx
	MetaHost    = "meshx-host"    // the hostname of the meshx that owns it
	MetaHash    = "meshx-hash"    // hash of the rest of the registration
	MetaName    = "meshx-service" // the service-config's service name (unit instance)
)

// Plan is one service, rendered.
type Plan struct {
	Name      string `json:"name"`
	ID        string `json:"id"`
	File      string `json:"file"`
	Address   string `json:"address"`
	Port      int    `json:"port"`
	SidecarID string `json:"sidecar_id"`
	// SidecarPort is the sidecar's public (mTLS) port, allocated and pinned
	// so it stays the same across reboots (Consul would hand out 21000+ in
	// registration order); a port the registration template sets wins.
	SidecarPort int `json:"sidecar_port"`

	Registration *api.AgentServiceRegistration `json:"registration"`
	Hash         string                        `json:"hash"`

	CheckID  string   `json:"check_id"`
	TTL      Duration `json:"ttl"`
	Interval Duration `json:"interval"`
	Probe    string   `json:"probe"`

	Upstreams []Upstream `json:"upstreams,omitempty"`
	Proxy     Proxy      `json:"proxy"`
	// Transparent is set when the service enables transparent proxy.
	Transparent *config.Transparent `json:"transparent,omitempty"`
	// MetricsAddress is where meshx-proxy serves Prometheus metrics
	// (ip:port, path MetricsPath); "" when metrics are off.
	MetricsAddress string `json:"metrics_address,omitempty"`
	// Netns is set when the service runs in a network namespace of its own
	// (network.namespace); its Address is filled in by meshx-init's address
	// allocation, after rendering.
	Netns *netns.Spec `json:"netns,omitempty"`
}

// MetricsPath is the URL path of meshx-proxy's metrics.
const MetricsPath = "/metrics"

// Meta keys of the sidecar registration that say where its meshx-proxy serves
// metrics, as Prometheus's Consul service discovery exposes them
// (__meta_consul_service_metadata_prometheus_port, ..._path).
const (
	MetaPrometheusPort = "prometheus_port"
	MetaPrometheusPath = "prometheus_path"
)

// Upstream is one locally bound upstream.
type Upstream struct {
	Key     string `json:"key"`
	Name    string `json:"name"`
	Address string `json:"address"`
	Port    int    `json:"port"`
}

// Proxy is what meshx-proxy runs.
type Proxy struct {
	Mode        string   `json:"mode"`
	Argv        []string `json:"argv,omitempty"` // empty for mode none
	User        string   `json:"user,omitempty"`
	MaxRestarts int      `json:"max_restarts"`
	// Drain bounds the wait at a stop for callers to leave and connections
	// to finish, after the check went critical and before the proxy stops.
	Drain       Duration `json:"drain"`
	AdminPort   int      `json:"admin_port,omitempty"`   // envoy admin listener
	MetricsPort int      `json:"metrics_port,omitempty"` // envoy merged metrics listener (0.0.0.0)
}

// Duration is a time.Duration that reads and writes as "10s".
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// Host is what a plan needs to know about the host.
type Host struct {
	Hostname       string
	Global         *config.Global
	ExtraUpstreams []config.Upstream // added at run time with `meshx-init connect`
}

// RenderID renders a service's id template; errors are *FieldError.
func RenderID(s *config.Service, hostname string) (string, error) {
	id, err := template.RenderString(s.ID, template.Vars{"name": s.Name, "hostname": hostname}, "service.id")
	if err != nil {
		return "", fieldError(err)
	}
	if !validID(id) {
		return "", &FieldError{Field: "service.id",
			Msg: fmt.Sprintf("rendered id %q is not valid (letters, digits, '.', '_', '-', at most 128)", id)}
	}
	return id, nil
}

// upstreams returns a service's upstreams, then the run-time ones it does not
// already have.
func upstreams(s *config.Service, extra []config.Upstream) []config.Upstream {
	out := slices.Clone(s.Upstreams)
	for _, u := range extra {
		if !slices.ContainsFunc(out, func(o config.Upstream) bool { return o.Key() == u.Key() }) {
			out = append(out, u)
		}
	}
	return out
}

func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		ok := r == '.' || r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !ok {
			return false
		}
	}
	return true
}

// Build renders the plan of one service with the given ports.
func Build(s *config.Service, h Host, p Ports) (*Plan, error) {
	id, err := RenderID(s, h.Hostname)
	if err != nil {
		return nil, err
	}
	address := s.Address
	if address == "" {
		address = h.Global.Ports.IP.String()
	}
	pl := &Plan{Name: s.Name, ID: id, File: s.File, Address: address, Port: p.Service,
		SidecarID: SidecarID(id), SidecarPort: p.Sidecar, CheckID: "meshx-ttl:" + id,
		TTL: Duration(s.Check.TTL), Interval: Duration(s.Check.Interval), Probe: s.Check.Probe,
		Transparent: s.Transparent}
	if s.Network.Namespace {
		pl.Netns, pl.Transparent = namespaceSpec(s, h, p)
	}
	var consulUps []any
	for _, u := range upstreams(s, h.ExtraUpstreams) {
		port := u.Port
		if port == 0 {
			port = p.Upstreams[u.Key()]
		}
		addr := u.Address
		if addr == "" {
			addr = h.Global.Ports.IP.String()
		}
		pl.Upstreams = append(pl.Upstreams, Upstream{Key: u.Key(), Name: u.Name, Address: addr, Port: port})
		cu := map[string]any{"DestinationName": u.Name, "LocalBindAddress": addr, "LocalBindPort": port}
		if u.Type == "prepared_query" {
			cu["DestinationType"] = "prepared_query"
		}
		if u.Datacenter != "" {
			cu["Datacenter"] = u.Datacenter
		}
		if u.Namespace != "" {
			cu["DestinationNamespace"] = u.Namespace
		}
		consulUps = append(consulUps, cu)
	}
	var meta map[string]any // typed as a template mapping, so that templates can merge over it
	if s.Meta != nil {
		meta = map[string]any{}
		for k, v := range s.Meta {
			meta[k] = v
		}
	}
	vars := template.Vars{
		"name": s.Name, "id": id, "address": address, "port": p.Service, "hostname": h.Hostname,
		"tags": s.Tags, "meta": meta, "upstreams": consulUps, "upstreams_text": upstreamsText(pl.Upstreams),
		"check_id": pl.CheckID, "ttl": s.Check.TTL.String(), "sidecar_id": pl.SidecarID,
		"consul": h.Global.Consul.Binary,
	}
	if s.Proxy.Mode == config.ModeEnvoy {
		vars["admin_port"] = p.Admin
		vars["admin_address"] = netip.AddrPortFrom(h.Global.Ports.IP, uint16(p.Admin)).String()
	}
	if s.Proxy.PrometheusScrapePath != "" {
		vars["metrics_port"] = p.Metrics
	}
	if !h.Global.Metrics.Disabled {
		pl.MetricsAddress = netip.AddrPortFrom(h.Global.Metrics.IP, uint16(p.ProxyMetrics)).String()
		vars["proxy_metrics_port"] = p.ProxyMetrics
	}
	if a := h.Global.Network.HostAddress; s.Network.Namespace && a.IsValid() {
		vars["host_address"] = a.String()
	}
	if err := pl.buildRegistration(s, h, vars); err != nil {
		return nil, err
	}
	if err := pl.buildProxy(s, h, p, vars); err != nil {
		return nil, err
	}
	return pl, nil
}

func upstreamsText(ups []Upstream) string {
	var b bytes.Buffer
	for i, u := range ups {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(u.Name + ":" + strconv.Itoa(u.Port))
	}
	return b.String()
}

// Hash returns a short, stable hash of a registration (its meshx-hash meta excluded).
func Hash(r *api.AgentServiceRegistration) string {
	c := *r
	c.Meta = map[string]string{}
	for k, v := range r.Meta {
		if k != MetaHash {
			c.Meta[k] = v
		}
	}
	b, _ := json.Marshal(&c) // map keys are sorted by encoding/json: stable
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// namespaceSpec is the namespace of a service with network.namespace: the
// sidecar's public port published on the host (the same port number), and
// the host-wide subnet and DNS. Transparent proxy's DNS redirect, left at
// its loopback default, goes to the gateway instead: the agent on the host
// is not on the namespace's loopback.
func namespaceSpec(s *config.Service, h Host, p Ports) (*netns.Spec, *config.Transparent) {
	n := h.Global.Network
	spec := &netns.Spec{Service: s.Name, Subnet: n.Subnet, HostAddress: n.HostAddress, DNS: n.DNS,
		Publish: []netns.Port{{HostPort: p.Sidecar, ContainerPort: p.Sidecar}}}
	t := s.Transparent
	if t != nil && t.DNS != nil && t.DNS.Address == config.DefaultDNS {
		c, d := *t, *t.DNS
		d.Address = netip.AddrPortFrom(n.Gateway(), config.DefaultDNS.Port())
		c.DNS = &d
		t = &c
	}
	return spec, t
}
