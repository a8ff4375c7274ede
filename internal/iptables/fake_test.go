package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// fakeRunner models the nat tables of both families in memory, with
// iptables-restore's all-or-nothing semantics, and can fail any step.
type fakeRunner struct {
	mu          sync.Mutex
	tables      map[Family]*fakeNat
	unavailable map[Family]bool
	// fault, when set, is asked before every step; a non-nil result fails
	// that step. Steps are named "ListChains ipv4", "List ipv4 OUTPUT",
	// "Restore ipv4" and, for each payload line, "Restore ipv4 line N: <line>".
	fault func(step string) error
	steps []string // every step asked, in order
}

type fakeNat struct {
	chains map[string][]string // chain -> rule specs
	user   []string            // user chains in creation order
}

var errInjected = errors.New("injected failure")

func newFakeRunner() *fakeRunner {
	r := &fakeRunner{tables: map[Family]*fakeNat{}, unavailable: map[Family]bool{}}
	for _, f := range families {
		r.tables[f] = newFakeNat()
	}
	return r
}

func newFakeNat() *fakeNat {
	n := &fakeNat{chains: map[string][]string{}}
	for _, c := range []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} {
		n.chains[c] = nil
	}
	return n
}

func (n *fakeNat) clone() *fakeNat {
	c := &fakeNat{chains: map[string][]string{}, user: slices.Clone(n.user)}
	for k, v := range n.chains {
		c.chains[k] = slices.Clone(v)
	}
	return c
}

func isBuiltin(c string) bool {
	return slices.Contains([]string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}, c)
}

// step records a step and asks the fault hook about it.
func (r *fakeRunner) step(s string) error {
	r.steps = append(r.steps, s)
	if r.fault != nil {
		if err := r.fault(s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

func (r *fakeRunner) ListChains(_ context.Context, f Family) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unavailable[f] {
		return nil, ErrFamilyUnavailable
	}
	if err := r.step("ListChains " + f.String()); err != nil {
		return nil, err
	}
	n := r.tables[f]
	return append([]string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}, n.user...), nil
}

func (r *fakeRunner) List(_ context.Context, f Family, chain string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unavailable[f] {
		return nil, ErrFamilyUnavailable
	}
	if err := r.step("List " + f.String() + " " + chain); err != nil {
		return nil, err
	}
	rules, ok := r.tables[f].chains[chain]
	if !ok {
		return nil, fmt.Errorf("chain `%s' in table `nat' is incompatible", chain)
	}
	decl := "-N " + chain
	if isBuiltin(chain) {
		decl = "-P " + chain + " ACCEPT"
	}
	out := []string{decl}
	for _, s := range rules {
		out = append(out, "-A "+chain+" "+s)
	}
	return out, nil
}

// Restore applies payload to a copy and keeps the copy only if every line
// succeeded, like iptables-restore.
func (r *fakeRunner) Restore(_ context.Context, f Family, payload string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unavailable[f] {
		return ErrFamilyUnavailable
	}
	if err := r.step("Restore " + f.String()); err != nil {
		return err
	}
	n := r.tables[f].clone()
	for i, line := range strings.Split(strings.TrimSuffix(payload, "\n"), "\n") {
		if err := r.step(fmt.Sprintf("Restore %s line %d: %s", f, i+1, line)); err != nil {
			return err
		}
		if err := n.exec(line); err != nil {
			return fmt.Errorf("line %d %q: %w", i+1, line, err)
		}
	}
	r.tables[f] = n
	return nil
}

// exec applies one iptables-restore line.
func (n *fakeNat) exec(line string) error {
	switch {
	case line == "*nat" || line == "COMMIT":
		return nil
	case strings.HasPrefix(line, ":"):
		name := strings.Fields(line[1:])[0]
		if _, ok := n.chains[name]; !ok {
			n.user = append(n.user, name)
		}
		n.chains[name] = nil // declare: create or flush
		return nil
	}
	op, rest, _ := strings.Cut(line, " ")
	chain, spec, _ := strings.Cut(rest, " ")
	rules, ok := n.chains[chain]
	if !ok {
		return fmt.Errorf("chain %s does not exist", chain)
	}
	switch op {
	case "-A":
		if t := target(spec); t != "" && !isStdTarget(t) {
			if _, ok := n.chains[t]; !ok {
				return fmt.Errorf("chain '%s' does not exist", t)
			}
		}
		n.chains[chain] = append(rules, spec)
	case "-D":
		i := slices.Index(rules, spec)
		if i < 0 {
			return errors.New("bad rule (does a matching rule exist in that chain?)")
		}
		n.chains[chain] = slices.Delete(rules, i, i+1)
	case "-F":
		n.chains[chain] = nil
	case "-X":
		if isBuiltin(chain) || len(rules) > 0 {
			return fmt.Errorf("cannot delete chain %s", chain)
		}
		for c, rs := range n.chains {
			for _, s := range rs {
				if target(s) == chain {
					return fmt.Errorf("chain %s is referenced by %s", chain, c)
				}
			}
		}
		delete(n.chains, chain)
		n.user = slices.DeleteFunc(n.user, func(c string) bool { return c == chain })
	default:
		return fmt.Errorf("unsupported command %s", op)
	}
	return nil
}

func target(spec string) string {
	f := strings.Fields(spec)
	for i := range f {
		if (f[i] == "-j" || f[i] == "-g") && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

func isStdTarget(t string) bool {
	return slices.Contains([]string{"RETURN", "ACCEPT", "DROP", "REDIRECT", "DNAT", "SNAT", "MASQUERADE"}, t)
}

// dump renders a family's whole nat table, iptables -S style, in a stable
// order: built-in chains first, then user chains in creation order.
func (r *fakeRunner) dump(f Family) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.tables[f]
	var b strings.Builder
	for _, c := range append([]string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}, n.user...) {
		if !isBuiltin(c) {
			fmt.Fprintf(&b, "-N %s\n", c)
		}
	}
	for _, c := range append([]string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}, n.user...) {
		for _, s := range n.chains[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, s)
		}
	}
	return b.String()
}

// load replaces a family's table with lines of iptables -S form.
func (r *fakeRunner) load(f Family, lines ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := newFakeNat()
	for _, l := range lines {
		if name, ok := strings.CutPrefix(l, "-N "); ok {
			n.chains[name] = nil
			n.user = append(n.user, name)
			continue
		}
		if err := n.exec(l); err != nil {
			panic(fmt.Sprintf("load %q: %v", l, err))
		}
	}
	r.tables[f] = n
}

// ours lists what of meshx's is in family f: chains and jumps.
func (r *fakeRunner) ours(f Family) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	n := r.tables[f]
	for _, c := range slices.Sorted(maps.Keys(n.chains)) {
		if isOurChain(c) {
			out = append(out, "chain "+c)
		}
		for _, s := range n.chains[c] {
			if isBuiltin(c) && jumpsToOurs(s) {
				out = append(out, "-A "+c+" "+s)
			}
		}
	}
	return out
}
