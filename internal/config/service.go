package config

import (
	"net/netip"
	"strings"
	"time"
)

// Proxy modes.
const (
	ModeConnect = "connect" // Consul's built-in Connect proxy (default)
	ModeEnvoy   = "envoy"   // Envoy through `consul connect envoy`
	ModeNone    = "none"    // no proxy process (an externally run proxy)
	ModeNative  = "native"  // meshx-proxy's own Connect data plane, no proxy process
)

// ValidModes lists the proxy modes, for error messages.
const ValidModes = "connect, envoy, native or none"

// Health probes behind the TTL heartbeat.
const (
	ProbeTCP  = "tcp"  // the app's address:port accepts a TCP connection
	ProbeNone = "none" // only the proxy's liveness counts
)

// Service is one service-config after decoding and defaults, whatever shape
// its file had. Templates (ID, Registration, Proxy.Command) are not rendered yet.
type Service struct {
	File string // the file it came from
	// Shape is "meshx", "vagrant-flat" or "vagrant-annotations".
	Shape string

	Name    string
	ID      string // template; default "{{name}}-{{hostname}}"
	Address string // the app's address; default: the port range IP
	Port    int    // the app's port; 0 = allocate
	Tags    []string
	Meta    map[string]string

	Check     Check
	Upstreams []Upstream
	Proxy     Proxy
	// Registration is a structured template merged over the default registration.
	Registration map[string]any
	Transparent  *Transparent // nil = off
	Network      Network

	maxRestartsSet bool // the file wrote proxy.max_restarts
	drainSet       bool // the file wrote proxy.drain

	// fields maps a normalized field path ("service.port", "upstreams[0].port")
	// to where the file wrote it.
	fields locs
}

// Loc is where a field was written: its line and its name as written.
type Loc struct {
	Line int
	Name string
}

// Loc returns where a normalized field was written. A field the file does not
// hold (a missing one, or one only a template names) is located at the
// nearest enclosing field the file does hold, else at the top of the file.
func (s *Service) Loc(field string) Loc { return s.fields.loc(field) }

// locs maps normalized field paths to where a file wrote them; "" is the
// top-level mapping.
type locs map[string]Loc

func (m locs) loc(field string) Loc {
	if l, ok := m[field]; ok {
		return l
	}
	for anc := parentField(field); ; anc = parentField(anc) {
		if l, ok := m[anc]; ok {
			rest := field[len(anc):]
			if l.Name == "" {
				rest = strings.TrimPrefix(rest, ".")
			}
			return Loc{Line: l.Line, Name: l.Name + rest}
		}
		if anc == "" {
			return Loc{Name: field}
		}
	}
}

// parentField returns the field holding f: "a.b[0].c" -> "a.b[0]" -> "a.b" -> "a" -> "".
func parentField(f string) string {
	if i := strings.LastIndexAny(f, ".["); i >= 0 {
		return f[:i]
	}
	return ""
}

// Check configures the TTL check and the heartbeat behind it.
type Check struct {
	TTL      time.Duration // default 10s
	Interval time.Duration // heartbeat period; default TTL/2
	Probe    string        // ProbeTCP (default) or ProbeNone
}

// Upstream is one upstream the service's sidecar binds locally.
type Upstream struct {
	Name       string
	Type       string // "service" (default) or "prepared_query"
	Datacenter string
	Namespace  string
	Port       int // local bind port; 0 = allocate
	Address    string
}

// Proxy configures the data-plane process meshx-proxy supervises.
type Proxy struct {
	Mode        string   // ModeConnect (default), ModeEnvoy, ModeNone
	Command     []string // template; default depends on Mode
	ExtraArgs   []string // appended after "--" in envoy mode
	MaxRestarts int      // default 5; -1 = unlimited; at least 1 otherwise
	// Drain is how long a stop may wait, after the check went critical, for
	// callers to leave and open connections to finish (default 5s, 0 = none,
	// at most MaxDrain).
	Drain time.Duration
	User  string // "" = the global proxy_user
	// PrometheusScrapePath, when set, makes envoy serve merged metrics there.
	PrometheusScrapePath string
}

// Transparent configures transparent-proxy redirection for the host.
type Transparent struct {
	OutboundPort         int // default 15001
	ExcludeInboundPorts  []int
	ExcludeOutboundPorts []int
	ExcludeOutboundCIDRs []netip.Prefix
	ExcludeUIDs          []int
	DNS                  *DNS
	// VirtualIP asks Consul to hand out a virtual IP (Vagrant's alpha annotation).
	VirtualIP bool
}

// Network places the service in a network namespace of its own.
type Network struct {
	// Namespace: the service's meshx-proxy (and its app, through the unit
	// lines meshx documents) run in a network namespace meshx creates with
	// CNI; the sidecar's public port is published on the host's address.
	Namespace bool
}

// DNS redirects the host's DNS queries to Consul DNS.
type DNS struct {
	Address netip.AddrPort // default 127.0.0.1:8600
}
