// Package iptables builds and installs meshx's transparent-proxy redirection
// rules: the same chains as `consul connect redirect-traffic`
// (CONSUL_PROXY_INBOUND, CONSUL_PROXY_IN_REDIRECT, CONSUL_PROXY_OUTPUT,
// CONSUL_PROXY_REDIRECT, CONSUL_DNS_REDIRECT) in the nat table, with a few
// deliberate improvements documented in docs/transparent-proxy.md.
//
// The rule set is a pure function of Config (Rules). A Manager installs it
// atomically and idempotently, checks it and removes exactly what it added,
// never flushing a table.
package iptables

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Chain names, identical to Consul's so operators' knowledge carries over.
const (
	ChainInbound         = "CONSUL_PROXY_INBOUND"
	ChainInboundRedirect = "CONSUL_PROXY_IN_REDIRECT"
	ChainOutput          = "CONSUL_PROXY_OUTPUT"
	ChainRedirect        = "CONSUL_PROXY_REDIRECT"
	ChainDNS             = "CONSUL_DNS_REDIRECT"
)

// Chains lists meshx's chains in the order they are declared.
func Chains() []string {
	return []string{ChainInbound, ChainInboundRedirect, ChainOutput, ChainRedirect, ChainDNS}
}

// isOurChain reports whether name is one of meshx's chains.
func isOurChain(name string) bool { return slices.Contains(Chains(), name) }

// DefaultOutboundPort is the proxy's outbound listener port when
// Config.OutboundPort is 0 (Consul's default too).
const DefaultOutboundPort = 15001

// DefaultProtectedPorts returns the inbound ports that are never redirected
// unless Config.ProtectedInboundPorts says otherwise: SSH (22) and the Consul
// agent's default ports (server RPC 8300, Serf LAN 8301, Serf WAN 8302,
// HTTP 8500, HTTPS 8501, gRPC 8502, gRPC TLS 8503, DNS 8600).
func DefaultProtectedPorts() []int {
	return []int{22, 8300, 8301, 8302, 8500, 8501, 8502, 8503, 8600}
}

// Config is one host's transparent-proxy settings.
type Config struct {
	// InboundPort is the proxy's inbound (sidecar public) port; inbound TCP is
	// redirected here. Required (1-65535).
	InboundPort int
	// OutboundPort is the proxy's outbound listener; outbound TCP is
	// redirected here. 0 means DefaultOutboundPort (15001).
	OutboundPort int
	// ProxyUID is the UID the proxy runs as; its outbound traffic is never
	// redirected. Required and not 0: excluding root would exempt every root
	// process on the host from the mesh, so the proxy must have its own user.
	ProxyUID int
	// ProxyMark, when not 0, is the socket mark (SO_MARK) the proxy puts on
	// its own connections; marked traffic is never redirected, whatever
	// user sent it. With a mark, ProxyUID may be 0: no user is excluded
	// (an in-process proxy running as root must not exempt every root
	// process on the host).
	ProxyMark uint32
	// ExcludeUIDs are further UIDs whose outbound traffic is never redirected
	// (meshx adds the Consul agent's UID). Nil or empty: none.
	ExcludeUIDs []int
	// ExcludeInboundPorts are destination ports never redirected inbound,
	// on top of ProtectedInboundPorts. Nil or empty: none.
	ExcludeInboundPorts []int
	// ExcludeOutboundPorts are destination ports never redirected outbound.
	// Nil or empty: none.
	ExcludeOutboundPorts []int
	// ExcludeOutboundCIDRs are destinations never redirected outbound. IPv4
	// and IPv6 prefixes may be mixed; each goes to its own family's rules (an
	// IPv6 prefix has no effect unless IPv6 is set). Nil or empty: none.
	ExcludeOutboundCIDRs []netip.Prefix
	// ProtectedInboundPorts are inbound ports never captured. Nil means
	// DefaultProtectedPorts(); an empty non-nil slice protects nothing.
	ProtectedInboundPorts []int
	// DNS, when set, redirects DNS queries (UDP and TCP) sent to the DNS
	// address on port 53 to the DNS address and port, as Consul's
	// -consul-dns-ip/-consul-dns-port do. Nil means no DNS redirect (the
	// CONSUL_DNS_REDIRECT chain is still created, empty, as Consul does).
	DNS *DNS
	// IPv6 also programs ip6tables. The caller sets it when the host has IPv6.
	IPv6 bool
}

// DNS is where DNS queries are redirected: Consul DNS, e.g. 127.0.0.1:8600.
// Queries to the address's IP on port 53 go to the address's port instead.
type DNS struct {
	Address netip.AddrPort
}

// ErrInvalidConfig wraps every problem Validate reports.
var ErrInvalidConfig = errors.New("invalid transparent-proxy config")

// Validate reports every problem of c at once (errors.Join), each wrapping
// ErrInvalidConfig and naming the field.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	checkPort := func(field string, p int) {
		if p < 1 || p > 65535 {
			bad("%s %d: not a port (1-65535)", field, p)
		}
	}
	if c.InboundPort == 0 {
		bad("InboundPort: required")
	} else {
		checkPort("InboundPort", c.InboundPort)
	}
	if c.OutboundPort != 0 {
		checkPort("OutboundPort", c.OutboundPort)
	}
	if c.InboundPort != 0 && c.InboundPort == c.outboundPort() {
		bad("OutboundPort %d: same as InboundPort", c.outboundPort())
	}
	switch {
	case c.ProxyUID == 0 && c.ProxyMark == 0:
		bad("ProxyUID: required, and not 0 (root), unless ProxyMark is set: the proxy needs its own user or mark")
	case c.ProxyUID < 0 || int64(c.ProxyUID) >= 1<<32-1:
		bad("ProxyUID %d: not a UID", c.ProxyUID)
	}
	for _, u := range c.ExcludeUIDs {
		if u < 0 || int64(u) >= 1<<32-1 {
			bad("ExcludeUIDs: %d is not a UID", u)
		}
	}
	for _, p := range c.ExcludeInboundPorts {
		checkPort("ExcludeInboundPorts:", p)
	}
	for _, p := range c.ExcludeOutboundPorts {
		checkPort("ExcludeOutboundPorts:", p)
	}
	for _, p := range c.ProtectedInboundPorts {
		checkPort("ProtectedInboundPorts:", p)
	}
	for _, p := range c.ExcludeOutboundCIDRs {
		switch {
		case !p.IsValid():
			bad("ExcludeOutboundCIDRs: invalid prefix %q", p.String())
		case p.Addr().Is4In6():
			bad("ExcludeOutboundCIDRs: %s is IPv4-mapped; write the IPv4 prefix", p)
		}
	}
	if c.DNS != nil {
		a := c.DNS.Address
		switch {
		case !a.Addr().IsValid():
			bad("DNS.Address: required when DNS is set")
		case a.Port() == 0:
			bad("DNS.Address %s: port required", a)
		case a.Addr().Is4In6():
			bad("DNS.Address %s: IPv4-mapped; write the IPv4 address", a)
		case a.Addr().Zone() != "":
			bad("DNS.Address %s: zoned address not supported", a)
		case familyOf(a.Addr()) == IPv6 && !c.IPv6:
			bad("DNS.Address %s: IPv6 address but IPv6 is off", a)
		}
	}
	return errors.Join(errs...)
}

func (c Config) outboundPort() int {
	if c.OutboundPort == 0 {
		return DefaultOutboundPort
	}
	return c.OutboundPort
}

func (c Config) protectedPorts() []int {
	if c.ProtectedInboundPorts == nil {
		return DefaultProtectedPorts()
	}
	return c.ProtectedInboundPorts
}

// Family is an address family: IPv4 (iptables) or IPv6 (ip6tables).
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return "family(" + strconv.Itoa(int(f)) + ")"
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// Rule is one rule appended to a chain of the nat table.
type Rule struct {
	// Chain is the chain the rule is appended to: a built-in chain
	// (PREROUTING, OUTPUT) for the jumps into meshx's chains, else one of
	// meshx's chains.
	Chain string
	// Spec is the rule's matches and target exactly as iptables -S prints
	// them, e.g. "-p tcp -j CONSUL_PROXY_INBOUND".
	Spec string
}

// String renders the rule as iptables -S / iptables-save does.
func (r Rule) String() string { return "-A " + r.Chain + " " + r.Spec }

// Table is the nat-table rule set of one family.
type Table struct {
	Family Family
	// Chains are meshx's chains, all declared even when empty.
	Chains []string
	// Rules are the jumps from built-in chains first, then each chain's
	// rules, in order.
	Rules []Rule
}

// ChainRules returns the rules of one of meshx's chains.
func (t Table) ChainRules(chain string) []Rule {
	var out []Rule
	for _, r := range t.Rules {
		if r.Chain == chain {
			out = append(out, r)
		}
	}
	return out
}

// Save renders the table as iptables-save text (nat table, no counters).
func (t Table) Save() string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range t.Chains {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, r := range t.Rules {
		b.WriteString(r.String() + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// RuleSet is the whole rule set of a host: an IPv4 table, and an IPv6 table
// when Config.IPv6 is set.
type RuleSet struct {
	Tables []Table
}

// Table returns the table of family f, if the rule set has one.
func (rs RuleSet) Table(f Family) (Table, bool) {
	for _, t := range rs.Tables {
		if t.Family == f {
			return t, true
		}
	}
	return Table{}, false
}

// String renders every table, each headed by a comment naming its family.
func (rs RuleSet) String() string {
	var b strings.Builder
	for _, t := range rs.Tables {
		fmt.Fprintf(&b, "# %s\n%s", t.Family, t.Save())
	}
	return b.String()
}

// Rules returns the rule set for c. It is a pure function of c.
func Rules(c Config) (RuleSet, error) {
	if err := c.Validate(); err != nil {
		return RuleSet{}, err
	}
	rs := RuleSet{Tables: []Table{table(c, IPv4)}}
	if c.IPv6 {
		rs.Tables = append(rs.Tables, table(c, IPv6))
	}
	return rs, nil
}

// table builds one family's rules. The order inside each chain: RETURN
// exceptions first, then the rule that sends the rest on. Consul inserts its
// exceptions in reverse; the order of RETURN rules among themselves does not
// change what the chain does.
func table(c Config, f Family) Table {
	t := Table{Family: f, Chains: Chains()}
	add := func(chain, format string, args ...any) {
		t.Rules = append(t.Rules, Rule{Chain: chain, Spec: fmt.Sprintf(format, args...)})
	}
	dns := c.DNS != nil && familyOf(c.DNS.Address.Addr()) == f

	// Jumps from the built-in chains. DNS comes before the TCP jump so that
	// TCP queries to port 53 reach Consul DNS rather than the proxy.
	add("PREROUTING", "-p tcp -j %s", ChainInbound)
	if dns {
		ip := hostPrefix(c.DNS.Address.Addr())
		add("OUTPUT", "-d %s -p udp -m udp --dport 53 -j %s", ip, ChainDNS)
		add("OUTPUT", "-d %s -p tcp -m tcp --dport 53 -j %s", ip, ChainDNS)
	}
	add("OUTPUT", "-p tcp -j %s", ChainOutput)

	// Inbound: protected and excluded ports pass, the rest goes to the proxy.
	for _, p := range uniq(c.protectedPorts(), c.ExcludeInboundPorts) {
		add(ChainInbound, "-p tcp -m tcp --dport %d -j RETURN", p)
	}
	add(ChainInbound, "-p tcp -j %s", ChainInboundRedirect)
	add(ChainInboundRedirect, "-p tcp -j REDIRECT --to-ports %d", c.InboundPort)

	// Outbound: the proxy's own traffic, excluded UIDs, CIDRs, ports and
	// loopback pass, the rest goes to the proxy's outbound listener.
	if c.ProxyMark != 0 {
		add(ChainOutput, "-m mark --mark 0x%x -j RETURN", c.ProxyMark)
	}
	var proxyUIDs []int
	if c.ProxyUID != 0 {
		proxyUIDs = []int{c.ProxyUID}
	}
	for _, u := range uniq(proxyUIDs, c.ExcludeUIDs) {
		add(ChainOutput, "-m owner --uid-owner %d -j RETURN", u)
	}
	for _, p := range uniqPrefixes(c.ExcludeOutboundCIDRs, f) {
		add(ChainOutput, "-d %s -j RETURN", p)
	}
	for _, p := range uniq(c.ExcludeOutboundPorts) {
		add(ChainOutput, "-p tcp -m tcp --dport %d -j RETURN", p)
	}
	if f == IPv4 {
		add(ChainOutput, "-d 127.0.0.0/8 -j RETURN")
	} else {
		add(ChainOutput, "-d ::1/128 -j RETURN")
	}
	add(ChainOutput, "-j %s", ChainRedirect)
	add(ChainRedirect, "-p tcp -j REDIRECT --to-ports %d", c.outboundPort())

	if dns {
		a := c.DNS.Address
		ip := hostPrefix(a.Addr())
		add(ChainDNS, "-d %s -p udp -m udp --dport 53 -j DNAT --to-destination %s", ip, a)
		add(ChainDNS, "-d %s -p tcp -m tcp --dport 53 -j DNAT --to-destination %s", ip, a)
	}
	return t
}

// hostPrefix renders a single address as iptables prints it: 127.0.0.1/32.
func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// uniq concatenates lists, keeping the first occurrence of each value.
func uniq(lists ...[]int) []int {
	var out []int
	for _, l := range lists {
		for _, v := range l {
			if !slices.Contains(out, v) {
				out = append(out, v)
			}
		}
	}
	return out
}

// uniqPrefixes returns the masked prefixes of family f, first occurrence kept.
func uniqPrefixes(ps []netip.Prefix, f Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		p = p.Masked()
		if familyOf(p.Addr()) != f || slices.Contains(out, p) {
			continue
		}
		out = append(out, p)
	}
	return out
}
