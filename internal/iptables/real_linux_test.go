package iptables

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
)

// Tests against real iptables (nf_tables or legacy, whatever iptables is),
// each in network namespaces of its own.

// foreignReal are rules in the style Docker adds, per family, installed
// before meshx and expected to survive every apply and remove.
var foreignReal = map[Family]string{
	IPv4: `*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
`,
	IPv6: `*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s fd00:dead::/64 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
`,
}

func withForeign(t *testing.T, ns netns) map[Family]string {
	t.Helper()
	before := map[Family]string{}
	for _, f := range families {
		ns.restore(t, f, foreignReal[f])
		before[f] = parseSave(ns.save(t, f)).without().String()
		if !strings.Contains(before[f], "DOCKER") {
			t.Fatalf("foreign rules not installed:\n%s", before[f])
		}
	}
	return before
}

// expectReal checks that ns holds exactly rs's rules (nothing of meshx's in a
// family rs lacks) and, if foreign is set, exactly those foreign rules.
func expectReal(t *testing.T, ns netns, rs RuleSet, foreign map[Family]string) {
	t.Helper()
	for _, f := range families {
		got := parseSave(ns.save(t, f))
		want := natTable{rules: map[string][]string{}}
		if tb, ok := rs.Table(f); ok {
			want = parseSave(tb.Save())
		}
		if g, w := got.only().String(), want.String(); g != w {
			t.Errorf("%s: meshx rules in the kernel:\n%s\nwant:\n%s", f, g, w)
		}
		if foreign != nil {
			if g := got.without().String(); g != foreign[f] {
				t.Errorf("%s: foreign rules changed:\n%s\nwere:\n%s", f, g, foreign[f])
			}
		}
	}
}

// TestRealApplyMatchesGolden installs each golden rule set and reads it back
// with iptables-save: the kernel holds exactly the golden rules, in the
// canonical form Check compares against, and Remove takes them all away.
func TestRealApplyMatchesGolden(t *testing.T) {
	ctx := context.Background()
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t, "golden")
			m := ns.manager(t)
			rs, err := Rules(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Apply(ctx, rs); err != nil {
				t.Fatal(err)
			}
			expectReal(t, ns, rs, nil)
			if diff, err := m.Diff(ctx, rs); err != nil || diff != nil {
				t.Fatalf("Diff after Apply: %q %v", diff, err)
			}
			if err := m.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			expectReal(t, ns, RuleSet{}, nil)
			if ok, err := m.Check(ctx, RuleSet{}); !ok || err != nil {
				t.Fatalf("Check of nothing after Remove: %v %v", ok, err)
			}
		})
	}
}

// TestRealIdempotentReplacesStaleKeepsForeign: over Docker-style foreign rules
// and a doubled Consul rule set, apply twice (same rules, no duplicates, no
// "Chain already exists"), re-apply a different config from a new Manager
// (as after kill -9), remove twice; the foreign rules never change.
func TestRealIdempotentReplacesStaleKeepsForeign(t *testing.T) {
	ctx := context.Background()
	ns := newNetns(t, "idem")
	foreign := withForeign(t, ns)
	ns.restore(t, IPv4, "*nat\n"+strings.Join(consulLeftoversSave(), "\n")+"\nCOMMIT\n")

	a := dualStack(t)
	b, err := Rules(Config{InboundPort: 20500, OutboundPort: 15009, ProxyUID: 1234, ExcludeOutboundPorts: []int{443}})
	if err != nil {
		t.Fatal(err)
	}

	m := ns.manager(t)
	for i := range 2 {
		if err := m.Apply(ctx, a); err != nil {
			t.Fatalf("apply %d: %v", i+1, err)
		}
		expectReal(t, ns, a, foreign)
	}
	if ok, err := m.Check(ctx, a); !ok || err != nil {
		t.Fatalf("Check: %v %v", ok, err)
	}

	restarted := ns.manager(t)
	if err := restarted.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	expectReal(t, ns, b, foreign)
	if ok, _ := restarted.Check(ctx, a); ok {
		t.Fatal("Check accepted the old rule set")
	}

	for i := range 2 {
		if err := restarted.Remove(ctx); err != nil {
			t.Fatalf("remove %d: %v", i+1, err)
		}
		expectReal(t, ns, RuleSet{}, foreign)
	}
}

// consulLeftoversSave turns consulLeftovers into restore lines.
func consulLeftoversSave() []string {
	var out []string
	for _, l := range consulLeftovers {
		if name, ok := strings.CutPrefix(l, "-N "); ok {
			out = append(out, ":"+name+" - [0:0]")
			continue
		}
		out = append(out, l)
	}
	return out
}

// corruptingRunner is the real runner with a fault: the restore payload of
// the chosen families gets a bad rule in its middle, so iptables-restore
// itself fails half-way through the transaction.
type corruptingRunner struct {
	Runner
	corrupt map[Family]bool
}

func (c corruptingRunner) Restore(ctx context.Context, f Family, payload string) error {
	if c.corrupt[f] && strings.Contains(payload, "-A ") {
		lines := strings.Split(payload, "\n")
		mid := len(lines) / 2
		lines = append(lines[:mid], append([]string{"-A " + ChainOutput + " -j MESHX_NO_SUCH_CHAIN"}, lines[mid:]...)...)
		payload = strings.Join(lines, "\n")
	}
	return c.Runner.Restore(ctx, f, payload)
}

// TestRealApplyFailureIsAtomic makes the real iptables-restore fail half-way
// (IPv4, IPv6, over nothing or over an installed rule set) and checks that
// no meshx chain or jump is left in either family and foreign rules stay.
func TestRealApplyFailureIsAtomic(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		corrupt Family
		stale   bool
	}{
		{"ipv4 fresh", IPv4, false},
		{"ipv4 over installed rules", IPv4, true},
		{"ipv6 after ipv4 committed", IPv6, false},
		{"ipv6 over installed rules", IPv6, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t, "atomic")
			foreign := withForeign(t, ns)
			rs := dualStack(t)
			if tc.stale {
				if err := ns.manager(t).Apply(ctx, rs); err != nil {
					t.Fatal(err)
				}
				expectReal(t, ns, rs, foreign)
			}
			prod, err := newExecRunner(ns.path)
			if err != nil {
				t.Fatal(err)
			}
			m, err := New(Options{Runner: corruptingRunner{Runner: prod, corrupt: map[Family]bool{tc.corrupt: true}}})
			if err != nil {
				t.Fatal(err)
			}
			err = m.Apply(ctx, rs)
			if err == nil || !strings.Contains(err.Error(), "MESHX_NO_SUCH_CHAIN") {
				t.Fatalf("Apply = %v, want iptables-restore's failure", err)
			}
			t.Logf("Apply failed as injected: %v", err)
			expectReal(t, ns, RuleSet{}, foreign)
		})
	}
}

// TestRealRemoveWithNothingInstalled: Remove on a pristine namespace is fine.
func TestRealRemoveWithNothingInstalled(t *testing.T) {
	ns := newNetns(t, "empty")
	foreign := withForeign(t, ns)
	if err := ns.manager(t).Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	expectReal(t, ns, RuleSet{}, foreign)
}

func TestRealNewRejectsMissingNamespace(t *testing.T) {
	needNetns(t)
	_, err := New(Options{NetNS: "/var/run/netns/mxipt-does-not-exist"})
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("New with a missing namespace = %v", err)
	}
}
