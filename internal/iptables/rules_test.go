package iptables

import (
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/testutil"
)

func mustPrefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

// goldenCases are the configs whose rule sets are pinned in testdata/ and,
// where Consul can express them, compared with Consul's own rules.
var goldenCases = []struct {
	name string
	cfg  Config
}{
	{"minimal", Config{InboundPort: 21000, ProxyUID: 995}},
	{"vagrant", Config{
		InboundPort: 21000, ProxyUID: 995,
		ExcludeInboundPorts:  []int{22},
		ExcludeUIDs:          []int{996},
		ExcludeOutboundCIDRs: mustPrefixes("169.254.169.254/32"),
	}},
	{"excludes-dns", Config{
		InboundPort: 21001, OutboundPort: 15002, ProxyUID: 995,
		ExcludeUIDs:          []int{996, 995, 997},
		ExcludeInboundPorts:  []int{9100, 22, 9102},
		ExcludeOutboundPorts: []int{5432, 6379},
		ExcludeOutboundCIDRs: mustPrefixes("10.1.2.3/8", "192.0.2.3/32", "10.0.0.0/8", "2001:db8::/32"),
		DNS:                  &DNS{Address: netip.MustParseAddrPort("127.0.0.1:8600")},
	}},
	{"no-protected-ports", Config{InboundPort: 21000, ProxyUID: 995, ProtectedInboundPorts: []int{}}},
	{"custom-protected-ports", Config{InboundPort: 21000, ProxyUID: 995, ProtectedInboundPorts: []int{2222, 8500}}},
	{"dual-stack", Config{
		InboundPort: 21000, ProxyUID: 995, IPv6: true,
		ExcludeUIDs:          []int{996},
		ExcludeOutboundPorts: []int{5432},
		ExcludeOutboundCIDRs: mustPrefixes("169.254.169.254/32", "fd00:ec2::254/128"),
		DNS:                  &DNS{Address: netip.MustParseAddrPort("127.0.0.1:8600")},
	}},
	{"dual-stack-dns6", Config{
		InboundPort: 21000, ProxyUID: 995, IPv6: true,
		DNS: &DNS{Address: netip.MustParseAddrPort("[::1]:8600")},
	}},
}

func TestRulesGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Rules(tc.cfg)
			if err != nil {
				t.Fatalf("Rules: %v", err)
			}
			testutil.Golden(t, filepath.Join("testdata", tc.name+".rules"), []byte(rs.String()))
		})
	}
}

func TestRulesArePure(t *testing.T) {
	cfg := goldenCases[2].cfg
	before := cfg.ExcludeOutboundCIDRs[0]
	a, errA := Rules(cfg)
	b, errB := Rules(cfg)
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two calls with the same config gave different rule sets")
	}
	if cfg.ExcludeOutboundCIDRs[0] != before {
		t.Fatal("Rules modified its input")
	}
}

func TestRulesInvariants(t *testing.T) {
	for _, tc := range goldenCases {
		rs, err := Rules(tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range rs.Tables {
			if !reflect.DeepEqual(tb.Chains, Chains()) {
				t.Errorf("%s/%s: chains %v, want all five", tc.name, tb.Family, tb.Chains)
			}
			seen := map[string]bool{}
			for _, r := range tb.Rules {
				if seen[r.String()] {
					t.Errorf("%s/%s: duplicate rule %s", tc.name, tb.Family, r)
				}
				seen[r.String()] = true
			}
			out := tb.ChainRules(ChainOutput)
			if last := out[len(out)-1]; last.Spec != "-j "+ChainRedirect {
				t.Errorf("%s/%s: CONSUL_PROXY_OUTPUT ends with %s", tc.name, tb.Family, last)
			}
			if !strings.Contains(tb.Save(), "-m owner --uid-owner 995 -j RETURN") {
				t.Errorf("%s/%s: proxy UID not excluded", tc.name, tb.Family)
			}
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Config{InboundPort: 21000, ProxyUID: 995}
	cases := []struct {
		name string
		mod  func(*Config)
		want []string // substrings, all of which must appear
	}{
		{"missing inbound port", func(c *Config) { c.InboundPort = 0 }, []string{"InboundPort: required"}},
		{"inbound port too big", func(c *Config) { c.InboundPort = 70000 }, []string{"InboundPort 70000"}},
		{"outbound equals inbound", func(c *Config) { c.OutboundPort = 21000 }, []string{"same as InboundPort"}},
		{"default outbound equals inbound", func(c *Config) { c.InboundPort = 15001 }, []string{"OutboundPort 15001: same as InboundPort"}},
		{"root proxy", func(c *Config) { c.ProxyUID = 0 }, []string{"ProxyUID: required, and not 0"}},
		{"negative uid", func(c *Config) { c.ProxyUID = -3 }, []string{"ProxyUID -3"}},
		{"bad exclude uid", func(c *Config) { c.ExcludeUIDs = []int{-1} }, []string{"ExcludeUIDs: -1"}},
		{"bad ports", func(c *Config) {
			c.ExcludeInboundPorts = []int{0}
			c.ExcludeOutboundPorts = []int{65536}
			c.ProtectedInboundPorts = []int{-22}
		}, []string{"ExcludeInboundPorts: 0", "ExcludeOutboundPorts: 65536", "ProtectedInboundPorts: -22"}},
		{"invalid prefix", func(c *Config) { c.ExcludeOutboundCIDRs = []netip.Prefix{{}} }, []string{"ExcludeOutboundCIDRs: invalid prefix"}},
		{"mapped prefix", func(c *Config) { c.ExcludeOutboundCIDRs = mustPrefixes("::ffff:10.0.0.0/104") }, []string{"IPv4-mapped"}},
		{"dns without address", func(c *Config) { c.DNS = &DNS{} }, []string{"DNS.Address: required"}},
		{"dns without port", func(c *Config) { c.DNS = &DNS{Address: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)} }, []string{"port required"}},
		{"dns v6 without ipv6", func(c *Config) { c.DNS = &DNS{Address: netip.MustParseAddrPort("[::1]:8600")} }, []string{"IPv6 is off"}},
		{"everything at once", func(c *Config) { *c = Config{DNS: &DNS{}} }, []string{"InboundPort: required", "ProxyUID: required", "DNS.Address: required"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted the config")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error does not wrap ErrInvalidConfig: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if _, err := Rules(c); err == nil {
				t.Error("Rules accepted an invalid config")
			}
		})
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range goldenCases {
		if err := tc.cfg.Validate(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestDefaultProtectedPortsIsACopy(t *testing.T) {
	p := DefaultProtectedPorts()
	p[0] = 1
	if DefaultProtectedPorts()[0] != 22 {
		t.Fatal("DefaultProtectedPorts shares its slice")
	}
}
