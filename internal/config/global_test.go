package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/ports"
)

func defaultGlobal() Global {
	return Global{
		Consul:  Consul{Binary: "consul", Wait: DefaultWait},
		Ports:   PortRange{IP: netip.MustParseAddr("127.0.0.1"), Low: ports.DefaultLow, High: ports.DefaultHigh},
		Metrics: Metrics{IP: netip.MustParseAddr("127.0.0.1")},
		Network: HostNetwork{Subnet: DefaultSubnet, DNS: []netip.Addr{netip.MustParseAddr("198.19.240.1")},
			CNIPath: DefaultCNIPath},
	}
}

func TestLoadGlobalMissingFileIsDefaults(t *testing.T) {
	g, err := LoadGlobal(filepath.Join(t.TempDir(), "meshx.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := defaultGlobal()
	g.fields = nil
	if !reflect.DeepEqual(*g, want) {
		t.Errorf("got %+v\nwant %+v", *g, want)
	}
}

func TestLoadGlobalUnreadable(t *testing.T) {
	dir := t.TempDir()
	// A directory where the file should be: not "missing", so an error.
	if err := os.Mkdir(filepath.Join(dir, "meshx.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadGlobal(filepath.Join(dir, "meshx.yaml")); err == nil {
		t.Fatal("LoadGlobal read a directory")
	}
}

func TestParseGlobal(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want func(g *Global)
	}{
		{"empty file", "", func(g *Global) {}},
		{"comments and blanks only", "  \n", func(g *Global) {}},
		{"version only", "version: 1\n", func(g *Global) {}},
		{"http address", "version: 1\nconsul: {address: \"http://127.0.0.1:8500\"}\n",
			func(g *Global) { g.Consul.Address = "http://127.0.0.1:8500" }},
		{"https address and TLS files", "version: 1\nconsul:\n  address: https://consul.local:8501\n  token_file: /etc/meshx/token\n  ca_file: /etc/ssl/ca.pem\n  cert_file: /etc/ssl/c.pem\n  key_file: /etc/ssl/k.pem\n  tls_server_name: consul.local\n",
			func(g *Global) {
				g.Consul.Address, g.Consul.TokenFile, g.Consul.CAFile = "https://consul.local:8501", "/etc/meshx/token", "/etc/ssl/ca.pem"
				g.Consul.CertFile, g.Consul.KeyFile, g.Consul.TLSServerName = "/etc/ssl/c.pem", "/etc/ssl/k.pem", "consul.local"
			}},
		{"unix socket", "version: 1\nconsul: {address: \"unix:///run/consul/http.sock\"}\n",
			func(g *Global) { g.Consul.Address = "unix:///run/consul/http.sock" }},
		{"grpc address, binary, wait", "version: 1\nconsul: {grpc_address: \"127.0.0.1:8502\", binary: /opt/consul/bin/consul, wait: 30s}\n",
			func(g *Global) {
				g.Consul.GRPCAddress, g.Consul.Binary, g.Consul.Wait = "127.0.0.1:8502", "/opt/consul/bin/consul", 30*time.Second
			}},
		{"grpc address as URL", "version: 1\nconsul: {grpc_address: \"https://127.0.0.1:8503\"}\n",
			func(g *Global) { g.Consul.GRPCAddress = "https://127.0.0.1:8503" }},
		{"ports", "version: 1\nports: {ip: 127.0.0.2, range: \"10000-10999\"}\n",
			func(g *Global) { g.Ports = PortRange{IP: netip.MustParseAddr("127.0.0.2"), Low: 10000, High: 10999} }},
		{"ports range with spaces, IPv6", "version: 1\nports: {ip: \"::1\", range: \" 15000 - 15099 \"}\n",
			func(g *Global) { g.Ports = PortRange{IP: netip.MustParseAddr("::1"), Low: 15000, High: 15099} }},
		{"proxy user and hostname", "version: 1\nproxy_user: envoy\nhostname: vm-1.example.com\n",
			func(g *Global) { g.ProxyUser, g.Hostname = "envoy", "vm-1.example.com" }},
		{"defaults", "version: 1\ndefaults:\n  check: {ttl: 30s, interval: 10s, probe: none}\n  proxy: {mode: envoy}\n  registration:\n    Meta: {rack: r1}\n",
			func(g *Global) {
				g.Defaults = Defaults{Check: Check{TTL: 30 * time.Second, Interval: 10 * time.Second, Probe: ProbeNone},
					ProxyMode: ModeEnvoy, Registration: map[string]any{"Meta": map[string]any{"rack": "r1"}}}
			}},
		{"login", "version: 1\nconsul:\n  login:\n    method: vm-jwt\n    bearer_token_file: /run/identity/jwt\n    meta: {host: vm1}\n",
			func(g *Global) {
				g.Consul.Login = &Login{Method: "vm-jwt", BearerTokenFile: "/run/identity/jwt", Meta: map[string]string{"host": "vm1"}}
			}},
		{"metrics off", "version: 1\nmetrics: {enabled: false}\n", func(g *Global) { g.Metrics.Disabled = true }},
		{"metrics on all addresses", "version: 1\nmetrics: {enabled: true, ip: 0.0.0.0}\n",
			func(g *Global) { g.Metrics.IP = netip.MustParseAddr("0.0.0.0") }},
		{"network", "version: 1\nnetwork:\n  subnet: 10.99.0.0/24\n  host_address: 192.0.2.7\n  dns: [10.99.0.1, 1.1.1.1]\n  cni_path: [/opt/cni/bin]\n",
			func(g *Global) {
				g.Network = HostNetwork{Subnet: netip.MustParsePrefix("10.99.0.0/24"), HostAddress: netip.MustParseAddr("192.0.2.7"),
					DNS: []netip.Addr{netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("1.1.1.1")}, CNIPath: []string{"/opt/cni/bin"}}
			}},
		{"network subnet only: DNS follows its gateway", "version: 1\nnetwork: {subnet: 10.99.8.0/22}\n",
			func(g *Global) {
				g.Network.Subnet = netip.MustParsePrefix("10.99.8.0/22")
				g.Network.DNS = []netip.Addr{netip.MustParseAddr("10.99.8.1")}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := ParseGlobal("meshx.yaml", []byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			want := defaultGlobal()
			want.File = "meshx.yaml"
			tt.want(&want)
			g.fields = nil
			if !reflect.DeepEqual(*g, want) {
				t.Errorf("got  %+v\nwant %+v", *g, want)
			}
		})
	}
}

func TestParseGlobalBad(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // exact lines
	}{
		{"syntax error", "version: 1\nconsul: [\n", []string{"meshx.yaml:2: syntax error: did not find expected node content"}},
		{"version missing", "consul: {address: \"http://a:1\"}\n", []string{`meshx.yaml:1: version: missing: write "version: 1" at the top of the file`}},
		{"version wrong", "version: 2\n", []string{"meshx.yaml:1: version: unsupported version 2 (this meshx reads version 1)"}},
		{"unknown field", "version: 1\nconsul:\n  adress: http://a:1\n", []string{"meshx.yaml:3: consul.adress: unknown field; did you mean address?"}},
		{"wrong type", "version: 1\nports:\n  range: [1, 2]\n", []string{"meshx.yaml:3: ports.range: must be a string, not a list"}},
		{"address without scheme", "version: 1\nconsul: {address: \"127.0.0.1:8500\"}\n",
			[]string{`meshx.yaml:2: consul.address: address must start with http://, https:// or unix://, not "127.0.0.1:8500"`}},
		{"address tcp scheme", "version: 1\nconsul:\n  address: tcp://127.0.0.1:8500\n",
			[]string{`meshx.yaml:3: consul.address: address must start with http://, https:// or unix://, not "tcp://127.0.0.1:8500"`}},
		{"address grpc scheme", "version: 1\nconsul:\n  address: grpc://127.0.0.1:8502\n",
			[]string{`meshx.yaml:3: consul.address: address must start with http://, https:// or unix://, not "grpc://127.0.0.1:8502"`}},
		{"address http without host", "version: 1\nconsul:\n  address: \"http://\"\n",
			[]string{`meshx.yaml:3: consul.address: missing host:port in "http://"`}},
		{"unix relative path", "version: 1\nconsul:\n  address: unix://run/consul.sock\n",
			[]string{`meshx.yaml:3: consul.address: write the socket's absolute path after unix:// (like unix:///run/consul/http.sock), not "unix://run/consul.sock"`}},
		{"unix without path", "version: 1\nconsul:\n  address: \"unix://\"\n",
			[]string{`meshx.yaml:3: consul.address: write the socket's absolute path after unix:// (like unix:///run/consul/http.sock), not "unix://"`}},
		{"grpc address bad", "version: 1\nconsul:\n  grpc_address: localhost\n",
			[]string{`meshx.yaml:3: consul.grpc_address: write host:port or a URL (like http://127.0.0.1:8502), not "localhost"`}},
		{"bad durations", "version: 1\nconsul:\n  wait: forever\ndefaults:\n  check:\n    ttl: -5s\n    interval: 0s\n",
			[]string{
				`meshx.yaml:3: consul.wait: not a duration (like 10s or 2m): "forever"`,
				`meshx.yaml:6: defaults.check.ttl: must be positive, not "-5s"`,
				`meshx.yaml:7: defaults.check.interval: must be positive, not "0s"`,
			}},
		{"ttl too short", "version: 1\ndefaults:\n  check: {ttl: 100ms}\n",
			[]string{"meshx.yaml:3: defaults.check.ttl: ttl 100ms is too short (at least 1s)"}},
		{"bad ip", "version: 1\nports:\n  ip: localhost\n", []string{`meshx.yaml:3: ports.ip: invalid address "localhost": write an IP address`}},
		{"range not a range", "version: 1\nports:\n  range: \"20000\"\n",
			[]string{`meshx.yaml:3: ports.range: write the range as LOW-HIGH, like 20000-20999, not "20000"`}},
		{"range reversed", "version: 1\nports:\n  range: 20999-20000\n",
			[]string{"meshx.yaml:3: ports.range: port range 20999-20000: low end is above high end"}},
		{"range out of 1-65535", "version: 1\nports:\n  range: 0-70000\n",
			[]string{
				"meshx.yaml:3: ports.range: port range 0-70000: low end 0 is outside 1..65535",
				"meshx.yaml:3: ports.range: port range 0-70000: high end 70000 is outside 1..65535",
			}},
		{"range over consul's sidecar ports", "version: 1\nports:\n  range: 20900-21100\n",
			[]string{"meshx.yaml:3: ports.range: port range 20900-21100 overlaps Consul's sidecar proxy ports 21000-21255"}},
		{"range over both consul blocks", "version: 1\nports:\n  range: 21200-21600\n",
			[]string{
				"meshx.yaml:3: ports.range: port range 21200-21600 overlaps Consul's sidecar proxy ports 21000-21255",
				"meshx.yaml:3: ports.range: port range 21200-21600 overlaps Consul's expose path ports 21500-21755",
			}},
		{"bad names", "version: 1\nproxy_user: \"root;id\"\nhostname: \"vm 1\"\n",
			[]string{`meshx.yaml:2: proxy_user: invalid user name "root;id"`, `meshx.yaml:3: hostname: invalid hostname "vm 1": use letters, digits, '.' and '-'`}},
		{"bad defaults", "version: 1\ndefaults:\n  proxy: {mode: sidecar}\n  check: {probe: http}\n  registration:\n    Meta:\n      1: x\n",
			[]string{
				`meshx.yaml:3: defaults.proxy.mode: unknown mode "sidecar" (connect, envoy, native or none)`,
				`meshx.yaml:4: defaults.check.probe: unknown probe "http" (tcp or none)`,
				`meshx.yaml:6: defaults.registration.Meta: every key of a template mapping must be a string`,
			}},
		{"login and token file", "version: 1\nconsul:\n  token_file: /etc/meshx/token\n  login:\n    method: m\n    bearer_token_file: /run/jwt\n",
			[]string{"meshx.yaml:4: consul.login: use either consul.token_file or consul.login, not both"}},
		{"login incomplete", "version: 1\nconsul:\n  login: {meta: {a: b}}\n",
			[]string{
				"meshx.yaml:3: consul.login: method: missing: the name of the ACL auth method to log in with",
				"meshx.yaml:3: consul.login: bearer_token_file: missing: the file holding the bearer token (a JWT) to present",
			}},
		{"login bad values", "version: 1\nconsul:\n  login:\n    method: \"my method\"\n    bearer_token_file: jwt\n    metod: x\n",
			[]string{
				`meshx.yaml:4: consul.login.method: invalid auth method name "my method": use letters, digits, '-' and '_'`,
				`meshx.yaml:5: consul.login.bearer_token_file: must be an absolute path, not "jwt"`,
				"meshx.yaml:6: consul.login.metod: unknown field; did you mean method?",
			}},
		{"metrics bad", "version: 1\nmetrics:\n  enabled: maybe\n  ip: localhost\n",
			[]string{
				"meshx.yaml:3: metrics.enabled: must be true or false, not the string \"maybe\"",
				`meshx.yaml:4: metrics.ip: invalid address "localhost": write an IP address`,
			}},
		{"bad network", "version: 1\nnetwork:\n  subnet: 10.1.2.3/24\n  host_address: 127.0.0.1\n  dns: [resolver]\n  cni_path: [lib/cni]\n",
			[]string{
				"meshx.yaml:3: network.subnet: subnet 10.1.2.3/24 has host bits set: write 10.1.2.0/24",
				`meshx.yaml:4: network.host_address: not an IPv4 address other hosts can reach: "127.0.0.1"`,
				`meshx.yaml:5: network.dns[0]: not an IP address: "resolver"`,
				`meshx.yaml:6: network.cni_path[0]: not an absolute path: "lib/cni"`,
			}},
		{"network subnet too big, IPv6", "version: 1\nnetwork: {subnet: 10.0.0.0/8}\n---\n",
			[]string{"meshx.yaml:2: network.subnet: subnet 10.0.0.0/8: the prefix length must be 20 to 29"}},
		{"network subnet IPv6", "version: 1\nnetwork:\n  subnet: fd00::/64\n",
			[]string{`meshx.yaml:3: network.subnet: not an IPv4 subnet (like 198.19.240.0/24): "fd00::/64"`}},
		{"every problem at once", "version: 1\nconsul:\n  address: ftp://x\n  wait: x\nports:\n  ip: x\n  range: 21000-21001\nbogus: 1\n",
			[]string{
				`meshx.yaml:3: consul.address: address must start with http://, https:// or unix://, not "ftp://x"`,
				`meshx.yaml:4: consul.wait: not a duration (like 10s or 2m): "x"`,
				`meshx.yaml:6: ports.ip: invalid address "x": write an IP address`,
				"meshx.yaml:7: ports.range: port range 21000-21001 overlaps Consul's sidecar proxy ports 21000-21255",
				"meshx.yaml:8: bogus: unknown field (known here: version, consul, ports, proxy_user, hostname, defaults, metrics, network)",
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := ParseGlobal("meshx.yaml", []byte(tt.in))
			if err == nil {
				t.Fatalf("accepted: %+v", g)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("not ErrInvalid: %v", err)
			}
			if got, want := err.Error(), strings.Join(tt.want, "\n"); got != want {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestParseGlobalEphemeral checks a range inside the kernel's ephemeral range
// is refused; the range itself comes from the running kernel.
func TestParseGlobalEphemeral(t *testing.T) {
	_, err := ParseGlobal("meshx.yaml", []byte("version: 1\nports: {range: 40000-40099}\n"))
	if err == nil || !strings.Contains(err.Error(), "meshx.yaml:2: ports.range: port range 40000-40099 overlaps the kernel's ephemeral port range") {
		t.Fatalf("err = %v", err)
	}
}

func TestGlobalLocAndProblem(t *testing.T) {
	g, err := ParseGlobal("/etc/meshx/meshx.yaml", []byte("version: 1\ndefaults:\n  registration:\n    Meta:\n      a: \"{{nope}}\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = g.Problem("defaults.registration.Meta.a", "unknown template variable {{%s}}", "nope")
	if want := "/etc/meshx/meshx.yaml:5: defaults.registration.Meta.a: unknown template variable {{nope}}"; err == nil || err.Error() != want {
		t.Errorf("Problem = %v, want %s", err, want)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Error("Problem is not ErrInvalid")
	}
}
