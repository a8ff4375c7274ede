package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"net/url"
	"os"
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
}

// PortRange is where meshx allocates local ports (default ports.DefaultLow-High).
type PortRange = ports.Range

// DefaultWait is how long meshx retries an unreachable agent.
const DefaultWait = 2 * time.Minute

type rawGlobal struct {
	Version int `yaml:"version"`
	Consul  struct {
		Address       string `yaml:"address"`
		TokenFile     string `yaml:"token_file"`
		CAFile        string `yaml:"ca_file"`
		CertFile      string `yaml:"cert_file"`
		KeyFile       string `yaml:"key_file"`
		TLSServerName string `yaml:"tls_server_name"`
		GRPCAddress   string `yaml:"grpc_address"`
		Binary        string `yaml:"binary"`
		Wait          string `yaml:"wait"`
	} `yaml:"consul"`
	Ports struct {
		IP    string `yaml:"ip"`
		Range string `yaml:"range"`
	} `yaml:"ports"`
	ProxyUser string `yaml:"proxy_user"`
	Hostname  string `yaml:"hostname"`
	Defaults  struct {
		Check struct {
			TTL      string `yaml:"ttl"`
			Interval string `yaml:"interval"`
			Probe    string `yaml:"probe"`
		} `yaml:"check"`
		Proxy struct {
			Mode string `yaml:"mode"`
		} `yaml:"proxy"`
		Registration map[string]any `yaml:"registration"`
	} `yaml:"defaults"`
}

// LoadGlobal reads meshx.yaml; a missing file means all defaults.
func LoadGlobal(path string) (*Global, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		g := &Global{}
		g.setDefaults()
		return g, nil
	}
	if err != nil {
		return nil, err
	}
	return ParseGlobal(path, data)
}

// ParseGlobal decodes and validates a meshx.yaml.
func ParseGlobal(path string, data []byte) (*Global, error) {
	p := &Problems{file: path}
	g := &Global{File: path}
	if len(strings.TrimSpace(string(data))) == 0 {
		g.setDefaults()
		return g, nil
	}
	root := parseFile(path, data, p)
	var r rawGlobal
	if root == nil || !decodeStrict(data, &r, p) {
		return nil, p.Err()
	}
	lines := map[string]Loc{}
	walkLines(root, "", lines)
	at := func(field, format string, args ...any) { p.add(lines[field].Line, field, format, args...) }
	if r.Version != CurrentVersion {
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
	g.Consul.Wait = parseDur(c.Wait, func(err error) { at("consul.wait", "%v", err) })
	if r.Ports.IP != "" {
		ip, err := netip.ParseAddr(r.Ports.IP)
		if err != nil {
			at("ports.ip", "not an IP address: %q", r.Ports.IP)
		}
		g.Ports.IP = ip
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
	d := r.Defaults
	g.Defaults = Defaults{ProxyMode: d.Proxy.Mode, Registration: d.Registration, Check: Check{Probe: d.Check.Probe,
		TTL:      parseDur(d.Check.TTL, func(err error) { at("defaults.check.ttl", "%v", err) }),
		Interval: parseDur(d.Check.Interval, func(err error) { at("defaults.check.interval", "%v", err) })}}
	switch d.Proxy.Mode {
	case "", ModeConnect, ModeEnvoy, ModeNone:
	default:
		at("defaults.proxy.mode", "unknown mode %q (connect, envoy or none)", d.Proxy.Mode)
	}
	switch d.Check.Probe {
	case "", ProbeTCP, ProbeNone:
	default:
		at("defaults.check.probe", "unknown probe %q (tcp or none)", d.Check.Probe)
	}
	g.setDefaults()
	if err := g.Ports.Validate(); err != nil {
		at("ports.range", "%v", err)
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	return g, nil
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
}

func parseDur(v string, bad func(error)) time.Duration {
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		bad(errors.New("not a duration (like 10s or 2m): " + strconv.Quote(v)))
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

// checkAddress accepts http://, https:// and unix:// agent addresses.
func checkAddress(a string) error {
	u, err := url.Parse(a)
	if err != nil {
		return errors.New("not a URL: " + strconv.Quote(a))
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return errors.New("missing host:port in " + strconv.Quote(a))
		}
	case "unix":
		if u.Path == "" {
			return errors.New("missing socket path in " + strconv.Quote(a) + " (write unix:///run/consul/http.sock)")
		}
	default:
		return errors.New("address must start with http://, https:// or unix://, not " + strconv.Quote(a))
	}
	return nil
}

// ConfigPath, ServicesDir: where a config dir keeps its files.
func ConfigPath(dir string) string  { return dir + "/meshx.yaml" }
func ServicesDir(dir string) string { return dir + "/services.d" }
