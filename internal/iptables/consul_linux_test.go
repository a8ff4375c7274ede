package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// consulDifferences turns Consul's rules for a config into what meshx
// installs for it, applying exactly the deliberate, documented differences
// (docs/transparent-proxy.md):
//  1. protected inbound ports (SSH, Consul's agent ports) return early;
//  2. the outbound loopback skip is 127.0.0.0/8, not 127.0.0.1/32.
//
// The proxy UID exclusion and IPv6 (::1/128 skipped) are the same in both.
func consulDifferences(nt natTable, c Config, f Family) natTable {
	out := natTable{chains: nt.chains, rules: map[string][]string{}}
	for ch, rs := range nt.rules {
		out.rules[ch] = slices.Clone(rs)
	}
	var protect []string
	for _, p := range c.protectedPorts() {
		protect = append(protect, fmt.Sprintf("-A %s -p tcp -m tcp --dport %d -j RETURN", ChainInbound, p))
	}
	out.rules[ChainInbound] = append(protect, out.rules[ChainInbound]...)
	if f == IPv4 {
		for i, r := range out.rules[ChainOutput] {
			if r == "-A "+ChainOutput+" -d 127.0.0.1/32 -j RETURN" {
				out.rules[ChainOutput][i] = "-A " + ChainOutput + " -d 127.0.0.0/8 -j RETURN"
			}
		}
	}
	return out
}

// normalise rewrites each chain into a form in which two chains that do the
// same thing are equal: a run of consecutive RETURN rules is sorted and
// deduplicated (RETURN rules in a row can be reordered or repeated without
// changing what the chain does); everything else keeps its order.
func normalise(nt natTable) natTable {
	out := natTable{chains: nt.chains, rules: map[string][]string{}}
	for ch, rs := range nt.rules {
		var res, run []string
		flush := func() {
			slices.Sort(run)
			res = append(res, slices.Compact(run)...)
			run = nil
		}
		for _, r := range rs {
			if strings.HasSuffix(r, " -j RETURN") {
				run = append(run, r)
				continue
			}
			flush()
			res = append(res, r)
		}
		flush()
		out.rules[ch] = res
	}
	return out
}

// TestRealEquivalenceWithConsul installs, for several configs, Consul's own
// rules (consul connect redirect-traffic -netns, the pinned binary, against a
// dev agent) in one namespace and meshx's in another, and compares the nat
// tables from iptables-save: equal once the documented differences are
// applied to Consul's and RETURN runs are normalised.
func TestRealEquivalenceWithConsul(t *testing.T) {
	needNetns(t)
	ctx := context.Background()
	agents := map[bool]consulAgent{} // by dual-stack
	agent := func(dual bool) consulAgent {
		if a, ok := agents[dual]; ok {
			return a
		}
		bind := "127.0.0.1"
		if dual {
			bind = "::1"
		}
		agents[dual] = startConsulAgent(t, bind)
		return agents[dual]
	}
	for _, tc := range goldenCases {
		dual := tc.cfg.IPv6
		if dual && len(tc.cfg.ExcludeOutboundCIDRs) > 0 {
			continue // Consul cannot: it fails half-way (see TestConsulDualStackCIDRFailsHalfWay)
		}
		t.Run(tc.name, func(t *testing.T) {
			a := agent(dual)
			consulNS, meshxNS := newNetns(t, "consul"), newNetns(t, "meshx")
			out, err := a.redirectTraffic(consulNS, true, consulFlags(tc.cfg, dual)...)
			if err != nil {
				t.Fatalf("consul connect redirect-traffic: %v\n%s", err, out)
			}
			rs, err := Rules(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := meshxNS.manager(t).Apply(ctx, rs); err != nil {
				t.Fatal(err)
			}
			for _, f := range families {
				consul := parseSave(consulNS.save(t, f))
				meshx := parseSave(meshxNS.save(t, f))
				if n := len(consul.only().chains); (f == IPv4 || dual) && n != 5 {
					t.Fatalf("%s: Consul created %d chains, want 5:\n%s", f, n, consul)
				}
				if f == IPv6 && !dual {
					if len(consul.only().chains)+len(meshx.only().chains) != 0 {
						t.Fatalf("ipv6 rules where none were asked for:\nconsul:\n%s\nmeshx:\n%s", consul, meshx)
					}
					continue
				}
				want := normalise(consulDifferences(consul, tc.cfg, f)).String()
				if got := normalise(meshx).String(); got != want {
					t.Errorf("%s: meshx differs from Consul beyond the documented differences\nmeshx:\n%s\nConsul (adjusted):\n%s\nConsul (as installed):\n%s",
						f, got, want, consul)
				}
			}

			// Consul's known defect that meshx fixes: a second run fails.
			if tc.name == "minimal" {
				out, err := a.redirectTraffic(consulNS, true, consulFlags(tc.cfg, dual)...)
				if err == nil || !strings.Contains(out, "Chain already exists") {
					t.Errorf("second consul run: %v\n%s (expected \"Chain already exists\")", err, out)
				}
			}
		})
	}
}

// TestConsulDualStackCIDRFailsHalfWay records the Consul defect meshx's
// atomic apply avoids: in dual-stack mode Consul gives an IPv6 CIDR to
// iptables, which fails after some rules are already in, leaving half a
// rule set (here: the outbound jump but no inbound rules at all).
func TestConsulDualStackCIDRFailsHalfWay(t *testing.T) {
	needNetns(t)
	a := startConsulAgent(t, "::1")
	ns := newNetns(t, "consul-half")
	out, err := a.redirectTraffic(ns, true, "-proxy-uid", "995", "-proxy-inbound-port", "21000",
		"-exclude-outbound-cidr", "fd00::/8")
	if err == nil {
		t.Fatalf("consul accepted an IPv6 CIDR in dual-stack mode:\n%s", out)
	}
	left := parseSave(ns.save(t, IPv4)).only()
	if len(left.chains) == 0 || len(left.rules["OUTPUT"]) == 0 || len(left.rules["PREROUTING"]) != 0 {
		t.Fatalf("expected half a rule set, got:\n%s", left)
	}
	t.Logf("consul failed with %q and left:\n%s", strings.TrimSpace(out), left)
}
