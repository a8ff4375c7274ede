package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshx/meshx/internal/ports"
)

// Global is a host's meshx.yaml, after defaults.
type Global struct {
	File      string // "" when the file does not exist (all defaults)
	Consul    Consul
	Ports     PortRange
	ProxyUser string // user the proxy runs as; "" = the user meshx-proxy runs as
	Hostname  string // "" = os.Hostname()
	Defaults  Defaults
	Metrics   Metrics
	Network   HostNetwork

	fields locs // where the file wrote each field
}

// Consul is how meshx reaches the local agent. Empty fields fall back to the
// standard CONSUL_* environment variables, then to the agent's defaults.
type Consul struct {
	Address       string // http://host:port, https://host:port or unix:///path
	TokenFile     string // file holding the ACL token; never put the token itself here
	CAFile        string
	CertFile      string
	KeyFile       string
	TLSServerName string
	GRPCAddress   string        // for envoy mode; "" = the consul CLI's default
	Binary        string        // the consul binary proxies run; default "consul" on PATH
	Wait          time.Duration // how long to retry an unreachable agent; default 2m
	// Login, when set, makes meshx get its token by logging in through an ACL
	// auth method instead of reading TokenFile (the two exclude each other).
	Login *Login
	// Token is a token meshx got at run time (an ACL login kept in memory);
	// never read from meshx.yaml. It wins over TokenFile.
	Token Secret
	// Source is the local address connections to the agent come from, set
	// at run time (a service's own loopback address, see
	// register.SourceAddress); never read from meshx.yaml. Invalid: the
	// system picks.
	Source netip.Addr
}

// Secret is a value that must never be printed: fmt shows it redacted.
type Secret string

func (Secret) String() string   { return "[redacted]" }
func (Secret) GoString() string { return "[redacted]" }

// Login is an ACL login through a Consul auth method (consul.login).
type Login struct {
	Method          string            // the auth method's name
	BearerTokenFile string            // holds the bearer token (a JWT...) presented to it
	Meta            map[string]string // set on the tokens the logins create
}

// Metrics is where each meshx-proxy serves Prometheus metrics: a port of its
// own, allocated like the others, on IP.
type Metrics struct {
	Disabled bool       // metrics.enabled: false
	IP       netip.Addr // default 127.0.0.1
}

// HostNetwork is the host-wide setting for services with network.namespace.
type HostNetwork struct {
	// Subnet is where service namespaces get their addresses (IPv4). Its
	// first address is the gateway (the host's end of every namespace's
	// link). Default DefaultSubnet.
	Subnet netip.Prefix
	// HostAddress is the address registrations advertise and published ports
	// are bound to. The zero Addr means the source address of the host's
	// default route, found at run time.
	HostAddress netip.Addr
	// DNS are the nameservers written to each namespace's resolv.conf; empty
	// means the gateway.
	DNS []netip.Addr
	// CNIPath is where the CNI plugins are; empty means DefaultCNIPath.
	CNIPath []string
}

// DefaultSubnet sits in 198.18.0.0/15 (RFC 2544, benchmarking), clear of the
// private ranges networks commonly use (10/8, 172.16/12, 192.168/16) and of
// the shared range 100.64/10 that carrier NAT and overlay VPNs use.
var DefaultSubnet = netip.MustParsePrefix("198.19.240.0/24")

// DefaultCNIPath is where Debian's containernetworking-plugins installs
// the plugins, then the upstream default.
var DefaultCNIPath = []string{"/usr/lib/cni", "/opt/cni/bin"}

// Gateway is the namespaces' gateway: the subnet's first address.
func (n HostNetwork) Gateway() netip.Addr { return n.Subnet.Addr().Next() }

// PortRange is where meshx allocates local ports (default ports.DefaultLow-High).
type PortRange = ports.Range

// DefaultWait is how long meshx retries an unreachable agent.
const DefaultWait = 2 * time.Minute

type rawGlobal struct {
	Version int `yaml:"version"`
	Consul  struct {
		Address       string       `yaml:"address"`
		TokenFile     string       `yaml:"token_file"`
		CAFile        string       `yaml:"ca_file"`
		CertFile      string       `yaml:"cert_file"`
		KeyFile       string       `yaml:"key_file"`
		TLSServerName string       `yaml:"tls_server_name"`
		GRPCAddress   string       `yaml:"grpc_address"`
		Binary        string       `yaml:"binary"`
		Wait          durationText `yaml:"wait"`
		Login         *struct {
			Method          string            `yaml:"method"`
			BearerTokenFile string            `yaml:"bearer_token_file"`
			Meta            map[string]string `yaml:"meta"`
		} `yaml:"login"`
	} `yaml:"consul"`
	Ports struct {
		IP    string `yaml:"ip"`
		Range string `yaml:"range"`
	} `yaml:"ports"`
	ProxyUser string `yaml:"proxy_user"`
	Hostname  string `yaml:"hostname"`
	Defaults  struct {
		Check struct {
			TTL      durationText `yaml:"ttl"`
			Interval durationText `yaml:"interval"`
			Probe    string       `yaml:"probe"`
		} `yaml:"check"`
		Proxy struct {
			Mode string `yaml:"mode"`
		} `yaml:"proxy"`
		Registration map[string]any `yaml:"registration"`
	} `yaml:"defaults"`
	Metrics struct {
		Enabled *bool  `yaml:"enabled"`
		IP      string `yaml:"ip"`
	} `yaml:"metrics"`
	Network struct {
		Subnet      string   `yaml:"subnet"`
		HostAddress string   `yaml:"host_address"`
		DNS         []string `yaml:"dns"`
		CNIPath     []string `yaml:"cni_path"`
	} `yaml:"network"`
}

// LoadGlobal reads meshx.yaml; a missing file means all defaults.
func LoadGlobal(path string) (*Global, error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		g := &Global{}
		g.setDefaults()
		return g, nil
	}
	p := &Problems{file: path}
	data := readConfig(path, p)
	if data == nil {
		return nil, p.Err()
	}
	return ParseGlobal(path, data)
}

// ParseGlobal decodes and validates a meshx.yaml; an empty file means all
// defaults. Like Parse, it reports every problem at once, each located.
func ParseGlobal(path string, data []byte) (*Global, error) {
	p := &Problems{file: path}
	g := &Global{File: path, fields: locs{}}
	if len(bytes.TrimSpace(data)) == 0 {
		g.setDefaults()
		return g, nil
	}
	root := parseFile(path, data, p)
	if root == nil {
		return nil, p.Err()
	}
	var r rawGlobal
	decodeStrict(data, root, &r, indexDoc(root), p) // on problems, r holds what did decode
	walkLines(root, "", g.fields)
	at := func(field, format string, args ...any) { p.at(g.Loc(field), format, args...) }
	switch _, v := lookup(root, "version"); {
	case v == nil || v.ShortTag() == "!!null":
		at("version", "missing: write \"version: %d\" at the top of the file", CurrentVersion)
	case v.ShortTag() == "!!int" && r.Version != CurrentVersion:
		at("version", "unsupported version %d (this meshx reads version %d)", r.Version, CurrentVersion)
	}
	c := r.Consul
	g.Consul = Consul{Address: c.Address, TokenFile: c.TokenFile, CAFile: c.CAFile, CertFile: c.CertFile,
		KeyFile: c.KeyFile, TLSServerName: c.TLSServerName, GRPCAddress: c.GRPCAddress, Binary: c.Binary}
	if c.Address != "" {
		if err := checkAddress(c.Address); err != nil {
			at("consul.address", "%v", err)
		}
	}
	for _, f := range g.Consul.files() {
		if *f.path != "" && !filepath.IsAbs(*f.path) {
			at(f.field, "write an absolute path, not %q: a relative one depends on the directory meshx runs in", *f.path)
		}
	}
	if c.GRPCAddress != "" {
		if err := checkGRPCAddress(c.GRPCAddress); err != nil {
			at("consul.grpc_address", "%v", err)
		}
	}
	g.Consul.Wait = parseDur(string(c.Wait), func(msg string) { at("consul.wait", "%s", msg) })
	if l := c.Login; l != nil {
		g.Consul.Login = &Login{Method: l.Method, BearerTokenFile: l.BearerTokenFile, Meta: l.Meta}
		checkLogin(g.Consul.Login, c.TokenFile != "", at)
	}
	if m := r.Metrics; m.Enabled != nil || m.IP != "" {
		g.Metrics.Disabled = m.Enabled != nil && !*m.Enabled
		if m.IP != "" {
			if msg := CheckLocalAddr("address", m.IP, true); msg != "" {
				at("metrics.ip", "%s", msg)
			} else {
				g.Metrics.IP = netip.MustParseAddr(m.IP)
			}
		}
	}
	if r.Ports.IP != "" {
		if msg := CheckLocalAddr("address", r.Ports.IP, false); msg != "" {
			at("ports.ip", "%s", msg)
		} else {
			g.Ports.IP = netip.MustParseAddr(r.Ports.IP)
		}
	}
	if r.Ports.Range != "" {
		lo, hi, err := parseRange(r.Ports.Range)
		if err != nil {
			at("ports.range", "%v", err)
		}
		g.Ports.Low, g.Ports.High = lo, hi
	}
	g.ProxyUser, g.Hostname = r.ProxyUser, r.Hostname
	if g.ProxyUser != "" && !userRE.MatchString(g.ProxyUser) {
		at("proxy_user", "invalid user name %q", g.ProxyUser)
	}
	if g.Hostname != "" && !hostnameRE.MatchString(g.Hostname) {
		at("hostname", "invalid hostname %q: use letters, digits, '.' and '-'", g.Hostname)
	}
	d := r.Defaults
	g.Defaults = Defaults{ProxyMode: d.Proxy.Mode, Registration: d.Registration, Check: Check{Probe: d.Check.Probe,
		TTL:      parseDur(string(d.Check.TTL), func(msg string) { at("defaults.check.ttl", "%s", msg) }),
		Interval: parseDur(string(d.Check.Interval), func(msg string) { at("defaults.check.interval", "%s", msg) })}}
	switch t := g.Defaults.Check.TTL; {
	case t != 0 && t < MinTTL:
		at("defaults.check.ttl", "ttl %s is too short (at least %s)", t, MinTTL)
	case t > MaxTTL:
		at("defaults.check.ttl", "ttl %s is too long (at most %s)", t, MaxTTL)
	}
	if i := g.Defaults.Check.Interval; i != 0 && i < MinInterval {
		at("defaults.check.interval", "interval %s is too short (at least %s)", i, MinInterval)
	}
	if g.Consul.Wait > MaxWait {
		at("consul.wait", "%s is too long (at most %s)", g.Consul.Wait, MaxWait)
	}
	switch d.Proxy.Mode {
	case "", ModeConnect, ModeEnvoy, ModeNative, ModeNone:
	default:
		at("defaults.proxy.mode", "unknown mode %q (%s)", d.Proxy.Mode, ValidModes)
	}
	switch d.Check.Probe {
	case "", ProbeTCP, ProbeNone:
	default:
		at("defaults.check.probe", "unknown probe %q (tcp or none)", d.Check.Probe)
	}
	checkTemplate(d.Registration, "defaults.registration", func(field, msg string) { at(field, "%s", msg) })
	g.Network = parseNetwork(r, at)
	g.setDefaults()
	if err := g.Ports.Validate(); err != nil {
		for _, e := range unjoin(err) {
			at("ports.range", "%v", e)
		}
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	return g, nil
}

// Loc returns where meshx.yaml wrote a field (see Service.Loc).
func (g *Global) Loc(field string) Loc { return g.fields.loc(field) }

// Problem returns a located problem of meshx.yaml, for checks made later
// (such as rendering its default registration template).
func (g *Global) Problem(field, format string, args ...any) error {
	p := &Problems{file: g.File}
	if p.file == "" {
		p.file = "meshx.yaml"
	}
	p.at(g.Loc(field), format, args...)
	return p.Err()
}

// unjoin splits an errors.Join result into its errors.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func (g *Global) setDefaults() {
	if !g.Ports.IP.IsValid() {
		g.Ports.IP = netip.MustParseAddr("127.0.0.1")
	}
	if g.Ports.Low == 0 && g.Ports.High == 0 {
		g.Ports.Low, g.Ports.High = ports.DefaultLow, ports.DefaultHigh
	}
	if g.Consul.Wait == 0 {
		g.Consul.Wait = DefaultWait
	}
	if g.Consul.Binary == "" {
		g.Consul.Binary = "consul"
	}
	if !g.Metrics.IP.IsValid() {
		g.Metrics.IP = netip.MustParseAddr("127.0.0.1")
	}
	if !g.Network.Subnet.IsValid() {
		g.Network.Subnet = DefaultSubnet
	}
	if len(g.Network.DNS) == 0 {
		g.Network.DNS = []netip.Addr{g.Network.Gateway()}
	}
	if len(g.Network.CNIPath) == 0 {
		g.Network.CNIPath = DefaultCNIPath
	}
}

// parseNetwork decodes meshx.yaml's network block; defaults come later.
func parseNetwork(r rawGlobal, at func(field, format string, args ...any)) HostNetwork {
	var n HostNetwork
	rn := r.Network
	if rn.Subnet != "" {
		pf, err := netip.ParsePrefix(rn.Subnet)
		switch {
		case err != nil || !pf.Addr().Is4():
			at("network.subnet", "not an IPv4 subnet (like %s): %q", DefaultSubnet, rn.Subnet)
		case pf.Bits() < 20 || pf.Bits() > 29:
			at("network.subnet", "subnet %s: the prefix length must be 20 to 29", pf)
		case pf.Masked() != pf:
			at("network.subnet", "subnet %s has host bits set: write %s", pf, pf.Masked())
		default:
			n.Subnet = pf
		}
	}
	if rn.HostAddress != "" {
		a, err := netip.ParseAddr(rn.HostAddress)
		if err != nil || !a.Is4() || a.IsLoopback() || a.IsUnspecified() {
			at("network.host_address", "not an IPv4 address other hosts can reach: %q", rn.HostAddress)
		}
		n.HostAddress = a
	}
	for i, d := range rn.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil {
			at(fmt.Sprintf("network.dns[%d]", i), "not an IP address: %q", d)
			continue
		}
		n.DNS = append(n.DNS, a)
	}
	for i, d := range rn.CNIPath {
		if !strings.HasPrefix(d, "/") {
			at(fmt.Sprintf("network.cni_path[%d]", i), "not an absolute path: %q", d)
		}
	}
	n.CNIPath = rn.CNIPath
	return n
}

// authMethodRE is what Consul accepts as an auth method's name.
var authMethodRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// checkLogin validates consul.login.
func checkLogin(l *Login, tokenFile bool, at func(field, format string, args ...any)) {
	if tokenFile {
		at("consul.login", "use either consul.token_file or consul.login, not both")
	}
	switch {
	case l.Method == "":
		at("consul.login", "method: missing: the name of the ACL auth method to log in with")
	case !authMethodRE.MatchString(l.Method):
		at("consul.login.method", "invalid auth method name %q: use letters, digits, '-' and '_'", l.Method)
	}
	switch {
	case l.BearerTokenFile == "":
		at("consul.login", "bearer_token_file: missing: the file holding the bearer token (a JWT) to present")
	case !filepath.IsAbs(l.BearerTokenFile):
		at("consul.login.bearer_token_file", "must be an absolute path, not %q", l.BearerTokenFile)
	}
	for _, k := range slices.Sorted(maps.Keys(l.Meta)) {
		if k == "" {
			at("consul.login.meta", "a meta key must not be empty")
		}
	}
}

func parseDur(v string, bad func(msg string)) time.Duration {
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		bad("not a duration (like 10s or 2m): " + strconv.Quote(v))
		return 0
	case d <= 0:
		bad("must be positive, not " + strconv.Quote(v))
		return 0
	}
	return d
}

func parseRange(v string) (int, int, error) {
	lo, hi, ok := strings.Cut(v, "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b, err2 := strconv.Atoi(strings.TrimSpace(hi))
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, errors.New("write the range as LOW-HIGH, like 20000-20999, not " + strconv.Quote(v))
	}
	return a, b, nil
}

// checkAddress accepts http://, https:// and unix:// agent addresses: a
// scheme and a host with an optional port (1-65535), or a socket path, and
// nothing else (no user, path, query or fragment).
func checkAddress(a string) error {
	if !strings.Contains(a, "://") {
		return errors.New("address must start with http://, https:// or unix://, not " + strconv.Quote(a))
	}
	u, err := url.Parse(a)
	if err != nil {
		return errors.New("not a URL: " + strconv.Quote(a))
	}
	switch {
	case u.User != nil:
		return errors.New("the address must not hold a user or password (the token goes in token_file): " + strconv.Quote(u.Redacted()))
	case u.RawQuery != "" || u.ForceQuery:
		return errors.New("the address must not hold a query ('?'): " + strconv.Quote(a))
	case u.Fragment != "" || strings.Contains(a, "#"):
		return errors.New("the address must not hold a fragment ('#'): " + strconv.Quote(a))
	}
	switch u.Scheme {
	case "http", "https":
		if u.Hostname() == "" {
			return errors.New("missing host:port in " + strconv.Quote(a))
		}
		if u.Path != "" && u.Path != "/" {
			return errors.New("the agent address takes no path: " + strconv.Quote(a))
		}
		if p := u.Port(); p != "" || strings.HasSuffix(u.Host, ":") {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return fmt.Errorf("port %q out of range 1-65535 in %q", p, a)
			}
		}
		if !validHost(u.Hostname()) {
			return errors.New("invalid host in " + strconv.Quote(a))
		}
	case "unix":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return errors.New("write the socket's absolute path after unix:// (like unix:///run/consul/http.sock), not " + strconv.Quote(a))
		}
	default:
		return errors.New("address must start with http://, https:// or unix://, not " + strconv.Quote(a))
	}
	return nil
}

// checkGRPCAddress accepts what `consul connect envoy -grpc-addr` does: an
// http://, https:// or unix:// URL, or host:port.
func checkGRPCAddress(a string) error {
	if strings.Contains(a, "://") {
		return checkAddress(a)
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil || port == "" || host == "" {
		return errors.New("write host:port or a URL (like http://127.0.0.1:8502), not " + strconv.Quote(a))
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q out of range 1-65535 in %q", port, a)
	}
	return nil
}

type fileField struct {
	field string
	path  *string
}

// files are the fields of c that name files meshx reads.
func (c *Consul) files() []fileField {
	return []fileField{{"consul.token_file", &c.TokenFile}, {"consul.ca_file", &c.CAFile},
		{"consul.cert_file", &c.CertFile}, {"consul.key_file", &c.KeyFile}}
}

// CheckFiles reports, located in meshx.yaml, each file it names (token,
// TLS) that cannot be read now: missing, a directory, unreadable. meshx-init
// calls it before it changes anything; meshx-proxy does not, since a token
// file rewritten at run time may be briefly missing (it reports that as the
// check's status instead).
func (g *Global) CheckFiles() error {
	p := &Problems{file: g.File}
	files := g.Consul.files()
	if l := g.Consul.Login; l != nil {
		files = append(files, fileField{"consul.login.bearer_token_file", &l.BearerTokenFile})
	}
	for _, f := range files {
		if *f.path == "" {
			continue
		}
		file, why := openRegular(*f.path)
		if file == nil {
			p.at(g.Loc(f.field), "cannot read %s: %s", *f.path, why)
			continue
		}
		file.Close()
	}
	return p.Err()
}

// ConfigPath, ServicesDir: where a config dir keeps its files.
func ConfigPath(dir string) string  { return dir + "/meshx.yaml" }
func ServicesDir(dir string) string { return dir + "/services.d" }
