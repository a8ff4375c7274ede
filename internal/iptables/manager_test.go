package iptables

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// foreign are rules another tool (Docker here) keeps in the same nat table.
var foreign = []string{
	"-N DOCKER",
	"-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
	"-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
	"-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
	"-A DOCKER -i docker0 -j RETURN",
}

// consulLeftovers is what `consul connect redirect-traffic` leaves, applied
// twice by hand so that the jumps are doubled, for another inbound port.
var consulLeftovers = []string{
	"-N CONSUL_PROXY_INBOUND", "-N CONSUL_PROXY_IN_REDIRECT", "-N CONSUL_PROXY_OUTPUT",
	"-N CONSUL_PROXY_REDIRECT", "-N CONSUL_DNS_REDIRECT",
	"-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND",
	"-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT",
	"-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT",
	"-A CONSUL_PROXY_INBOUND -p tcp -j CONSUL_PROXY_IN_REDIRECT",
	"-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 20000",
	"-A CONSUL_PROXY_OUTPUT -m owner --uid-owner 995 -j RETURN",
	"-A CONSUL_PROXY_OUTPUT -d 127.0.0.1/32 -j RETURN",
	"-A CONSUL_PROXY_OUTPUT -j CONSUL_PROXY_REDIRECT",
	"-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
}

func dualStack(t *testing.T) RuleSet {
	t.Helper()
	for _, tc := range goldenCases {
		if tc.name == "dual-stack" {
			rs, err := Rules(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			return rs
		}
	}
	t.Fatal("no dual-stack case")
	return RuleSet{}
}

// fakeWithForeign is a fake holding the foreign rules in both families.
func fakeWithForeign(t *testing.T) (*fakeRunner, *Manager) {
	t.Helper()
	r := newFakeRunner()
	r.load(IPv4, foreign...)
	r.load(IPv6, foreign...)
	return r, newFakeManager(t, r)
}

func newFakeManager(t *testing.T, r *fakeRunner) *Manager {
	t.Helper()
	m, err := New(Options{Runner: r})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// expectState checks that each family holds exactly the foreign rules plus
// the table of rs (or nothing of meshx's for a family rs lacks).
func expectState(t *testing.T, r *fakeRunner, rs RuleSet) {
	t.Helper()
	for _, f := range families {
		want := newFakeRunner()
		want.load(f, foreign...)
		if tb, ok := rs.Table(f); ok {
			if err := want.Restore(context.Background(), f, installPayload(tb, nil)); err != nil {
				t.Fatal(err)
			}
		}
		if got, w := r.dump(f), want.dump(f); got != w {
			t.Errorf("%s table:\n%s\nwant:\n%s", f, got, w)
		}
	}
}

func TestApplyInstallsExactlyAndIsIdempotent(t *testing.T) {
	ctx := context.Background()
	r, m := fakeWithForeign(t)
	rs := dualStack(t)
	for i := range 3 {
		if err := m.Apply(ctx, rs); err != nil {
			t.Fatalf("apply %d: %v", i+1, err)
		}
		expectState(t, r, rs)
		if diff, err := m.Diff(ctx, rs); err != nil || diff != nil {
			t.Fatalf("apply %d: diff %q, %v", i+1, diff, err)
		}
	}
}

func TestApplyReplacesStaleRules(t *testing.T) {
	ctx := context.Background()
	r := newFakeRunner()
	r.load(IPv4, append(slices.Clone(foreign), consulLeftovers...)...)
	r.load(IPv6, append(slices.Clone(foreign), consulLeftovers[:6]...)...)
	m := newFakeManager(t, r)
	rs := dualStack(t)
	if ok, _ := m.Check(ctx, rs); ok {
		t.Fatal("Check accepted Consul's leftovers")
	}
	if err := m.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	expectState(t, r, rs)

	// A later config without IPv6 takes the IPv6 rules away.
	v4, err := Rules(Config{InboundPort: 21000, ProxyUID: 995})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(ctx, v4); err != nil {
		t.Fatal(err)
	}
	expectState(t, r, v4)
	if ok, err := m.Check(ctx, v4); !ok || err != nil {
		t.Fatalf("Check after re-apply: %v %v", ok, err)
	}
}

// TestApplyFailureLeavesNothing fails every step of an apply over stale
// rules in turn, including each line of each restore transaction, and checks
// that no meshx chain or jump is left in either family and that the foreign
// rules are untouched.
func TestApplyFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	rs := dualStack(t)
	setup := func() *fakeRunner {
		r := newFakeRunner()
		r.load(IPv4, append(slices.Clone(foreign), consulLeftovers...)...)
		r.load(IPv6, foreign...)
		return r
	}
	probe := setup()
	if err := newFakeManager(t, probe).Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	steps := slices.Clone(probe.steps)
	if len(steps) < 40 {
		t.Fatalf("only %d steps recorded: %q", len(steps), steps)
	}
	for i, step := range steps {
		t.Run(fmt.Sprintf("%02d %s", i, step), func(t *testing.T) {
			r := setup()
			n := 0
			r.fault = func(string) error {
				n++
				if n == i+1 {
					return errInjected
				}
				return nil
			}
			err := newFakeManager(t, r).Apply(ctx, rs)
			if !errors.Is(err, errInjected) {
				t.Fatalf("Apply = %v, want the injected failure", err)
			}
			for _, f := range families {
				if left := r.ours(f); left != nil {
					t.Errorf("%s: left behind %q", f, left)
				}
			}
			expectState(t, r, RuleSet{})
		})
	}
}

func TestApplyReportsFailedRollback(t *testing.T) {
	r := newFakeRunner()
	restores := 0
	r.fault = func(step string) error {
		if strings.HasPrefix(step, "Restore ") && !strings.Contains(step, " line ") {
			restores++
			if restores >= 2 { // the IPv6 install and then the IPv4 rollback
				return errInjected
			}
		}
		return nil
	}
	err := newFakeManager(t, r).Apply(context.Background(), dualStack(t))
	if err == nil || !strings.Contains(err.Error(), "apply ipv6 rules") || !strings.Contains(err.Error(), "roll back ipv4 rules") {
		t.Fatalf("Apply = %v, want both the failure and the failed rollback", err)
	}
}

func TestApplyCancelledStillRollsBack(t *testing.T) {
	r := newFakeRunner()
	ctx, cancel := context.WithCancel(context.Background())
	r.fault = func(step string) error {
		if step == "Restore ipv6" {
			cancel()
			return context.Canceled
		}
		return nil
	}
	err := newFakeManager(t, r).Apply(ctx, dualStack(t))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply = %v", err)
	}
	if left := r.ours(IPv4); left != nil {
		t.Fatalf("IPv4 rules left after a cancelled apply: %q", left)
	}
}

func TestApplyWithoutIPv6Tools(t *testing.T) {
	ctx := context.Background()
	r := newFakeRunner()
	r.unavailable[IPv6] = true
	m := newFakeManager(t, r)
	if err := m.Apply(ctx, dualStack(t)); !errors.Is(err, ErrFamilyUnavailable) {
		t.Fatalf("Apply of an IPv6 rule set without ip6tables = %v", err)
	}
	if left := r.ours(IPv4); left != nil {
		t.Fatalf("IPv4 rules left: %q", left)
	}
	v4, _ := Rules(Config{InboundPort: 21000, ProxyUID: 995})
	if err := m.Apply(ctx, v4); err != nil {
		t.Fatalf("IPv4-only apply without ip6tables: %v", err)
	}
	if ok, err := m.Check(ctx, v4); !ok || err != nil {
		t.Fatalf("Check: %v %v", ok, err)
	}
	if err := m.Remove(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestApplyRefusesEmptyRuleSet(t *testing.T) {
	if err := newFakeManager(t, newFakeRunner()).Apply(context.Background(), RuleSet{}); err == nil {
		t.Fatal("Apply accepted a rule set without tables")
	}
}

func TestRemoveIsExactAndIdempotent(t *testing.T) {
	ctx := context.Background()
	r, m := fakeWithForeign(t)
	if err := m.Remove(ctx); err != nil {
		t.Fatalf("Remove with nothing installed: %v", err)
	}
	if err := m.Apply(ctx, dualStack(t)); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := m.Remove(ctx); err != nil {
			t.Fatalf("remove %d: %v", i+1, err)
		}
		expectState(t, r, RuleSet{})
	}
	// Partial leftovers (a chain without its jump, a jump into a chain whose
	// rules are gone) are removed too.
	r.load(IPv4, append(slices.Clone(foreign), "-N CONSUL_DNS_REDIRECT", "-N CONSUL_PROXY_OUTPUT", "-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT")...)
	if err := m.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, r, RuleSet{})
}

func TestCheckDetectsDrift(t *testing.T) {
	ctx := context.Background()
	rs := dualStack(t)
	cases := []struct {
		name  string
		drift func(r *fakeRunner)
		want  string
	}{
		{"rule deleted", func(r *fakeRunner) {
			r.tables[IPv4].chains[ChainOutput] = r.tables[IPv4].chains[ChainOutput][1:]
		}, "ipv4: missing -A CONSUL_PROXY_OUTPUT -m owner --uid-owner 995 -j RETURN"},
		{"jump doubled", func(r *fakeRunner) {
			r.tables[IPv6].chains["OUTPUT"] = append(r.tables[IPv6].chains["OUTPUT"], "-p tcp -j CONSUL_PROXY_OUTPUT")
		}, "ipv6: chain OUTPUT: rules differ in order or count"},
		{"foreign rule in our chain", func(r *fakeRunner) {
			r.tables[IPv4].chains[ChainDNS] = []string{"-j RETURN"}
		}, "ipv4: unexpected -A CONSUL_DNS_REDIRECT -j RETURN"},
		{"chain gone", func(r *fakeRunner) {
			r.tables[IPv6].chains[ChainDNS] = nil
			delete(r.tables[IPv6].chains, ChainDNS)
			r.tables[IPv6].user = slices.DeleteFunc(r.tables[IPv6].user, func(c string) bool { return c == ChainDNS })
		}, "ipv6: chain CONSUL_DNS_REDIRECT missing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newFakeRunner()
			m := newFakeManager(t, r)
			if err := m.Apply(ctx, rs); err != nil {
				t.Fatal(err)
			}
			tc.drift(r)
			diff, err := m.Diff(ctx, rs)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(diff, func(d string) bool { return strings.HasPrefix(d, tc.want) }) {
				t.Fatalf("diff %q lacks %q", diff, tc.want)
			}
			if ok, _ := m.Check(ctx, rs); ok {
				t.Fatal("Check accepted drifted rules")
			}
		})
	}
}

func TestCheckRejectsIPv6LeftoversForIPv4RuleSet(t *testing.T) {
	ctx := context.Background()
	r := newFakeRunner()
	r.load(IPv6, consulLeftovers...)
	m := newFakeManager(t, r)
	v4, _ := Rules(Config{InboundPort: 21000, ProxyUID: 995})
	if err := r.Restore(ctx, IPv4, installPayload(v4.Tables[0], nil)); err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.Check(ctx, v4); ok {
		t.Fatal("Check ignored meshx chains in the IPv6 table")
	}
}

func TestJumpsToOurs(t *testing.T) {
	for spec, want := range map[string]bool{
		"-p tcp -j CONSUL_PROXY_INBOUND":                                  true,
		"-d 127.0.0.1/32 -p udp -m udp --dport 53 -g CONSUL_DNS_REDIRECT": true,
		"-j DOCKER": false,
		"-m comment --comment \"-j CONSUL_PROXY_OUTPUT\" -j ACCEPT": false,
		"-j CONSUL_PROXY_OUTPUT_OTHER":                              false,
		"":                                                          false,
	} {
		if got := jumpsToOurs(spec); got != want {
			t.Errorf("jumpsToOurs(%q) = %v", spec, got)
		}
	}
}
