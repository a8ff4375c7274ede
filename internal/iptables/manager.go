package iptables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Runner is the small interface behind which reading and committing nat-table
// rules sits. The default one (Linux) reads with go-iptables and commits with
// iptables-restore --noflush; unit tests use an in-memory fake.
type Runner interface {
	// ListChains returns the names of every chain of f's nat table,
	// built-in ones included.
	ListChains(ctx context.Context, f Family) ([]string, error)
	// List returns one existing chain of f's nat table as iptables -S prints
	// it: a declaration line ("-P" or "-N"), then one "-A chain ..." line per
	// rule.
	List(ctx context.Context, f Family, chain string) ([]string, error)
	// Restore commits payload, iptables-restore --noflush input for the nat
	// table, as one transaction: every line takes effect or none does.
	Restore(ctx context.Context, f Family, payload string) error
}

// ErrFamilyUnavailable is returned (wrapped) by a Runner for a family whose
// tools are missing, e.g. no ip6tables. Remove treats it as "nothing there".
var ErrFamilyUnavailable = errors.New("iptables family unavailable")

// Options configure a Manager.
type Options struct {
	// NetNS is the path of the network namespace to program, e.g.
	// /var/run/netns/test1. Empty means the caller's current namespace.
	// Used by the default Runner only.
	NetNS string
	// Runner reads and commits rules. Nil means the default runner:
	// go-iptables and iptables-restore, in NetNS.
	Runner Runner
	// Logger receives one line per change. Nil discards.
	Logger *slog.Logger
	// RollbackTimeout bounds the clean-up after a failed Apply, which runs
	// even when the Apply context was cancelled. 0 means 30 s.
	RollbackTimeout time.Duration
}

// Manager installs, checks and removes meshx's rules in one network
// namespace. Its methods are safe for concurrent use; they are serialised.
type Manager struct {
	mu              sync.Mutex
	run             Runner
	log             *slog.Logger
	rollbackTimeout time.Duration
}

// New returns a Manager. With a nil Options.Runner it finds iptables (and
// ip6tables if present) and checks that NetNS, if set, can be opened.
func New(opts Options) (*Manager, error) {
	m := &Manager{run: opts.Runner, log: opts.Logger, rollbackTimeout: opts.RollbackTimeout}
	if m.log == nil {
		m.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if m.rollbackTimeout == 0 {
		m.rollbackTimeout = 30 * time.Second
	}
	if m.run == nil {
		r, err := newExecRunner(opts.NetNS)
		if err != nil {
			return nil, err
		}
		m.run = r
	}
	return m, nil
}

// families are handled in this order by every operation.
var families = []Family{IPv4, IPv6}

// builtinChains are the built-in nat chains meshx jumps from.
var builtinChains = []string{"PREROUTING", "OUTPUT"}

// Apply installs rs atomically and idempotently. For each family in rs one
// iptables-restore transaction declares (creates or flushes) meshx's chains,
// deletes any meshx jumps already in the built-in chains (left by an earlier
// run, a killed process or consul connect redirect-traffic), and appends the
// whole rule set. A family absent from rs has its meshx rules removed. If any
// step fails, every meshx chain and jump is removed again (in both families)
// so that either the whole rule set is in place or none of it is; the error
// reports both the failure and any problem with that clean-up.
func (m *Manager) Apply(ctx context.Context, rs RuleSet) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := rs.Table(IPv4); !ok {
		return errors.New("apply transparent-proxy rules: rule set has no IPv4 table")
	}
	start := time.Now()
	for _, f := range families {
		var err error
		if t, ok := rs.Table(f); ok {
			err = m.install(ctx, t)
		} else {
			err = m.remove(ctx, f)
		}
		if err != nil {
			err = fmt.Errorf("apply %s rules: %w", f, err)
			return errors.Join(err, m.rollback(ctx))
		}
	}
	m.log.Info("transparent-proxy rules applied", "families", len(rs.Tables), "took", time.Since(start))
	return nil
}

// Remove deletes exactly meshx's jumps and chains from both families. It
// never flushes a table or touches another rule, and it succeeds when
// nothing is installed.
func (m *Manager) Remove(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, f := range families {
		if err := m.remove(ctx, f); err != nil {
			errs = append(errs, fmt.Errorf("remove %s rules: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

// Check reports whether exactly rs is installed: the same chains, the same
// rules in the same order, the same jumps, and nothing of meshx's in a
// family rs does not have.
func (m *Manager) Check(ctx context.Context, rs RuleSet) (bool, error) {
	diff, err := m.Diff(ctx, rs)
	return err == nil && len(diff) == 0, err
}

// Diff lists how the installed rules differ from rs, one line per
// difference; nil means exactly rs is installed.
func (m *Manager) Diff(ctx context.Context, rs RuleSet) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var diff []string
	for _, f := range families {
		want, ok := rs.Table(f)
		if !ok {
			want = Table{Family: f}
		}
		have, err := m.installed(ctx, f)
		if errors.Is(err, ErrFamilyUnavailable) && !ok {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s rules: %w", f, err)
		}
		diff = append(diff, diffTables(want, have)...)
	}
	return diff, nil
}

// Installed reads meshx's rules of family f as they are in the kernel: the
// meshx chains that exist, the jumps into them from the built-in chains, and
// their rules.
func (m *Manager) Installed(ctx context.Context, f Family) (Table, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.installed(ctx, f)
}

func (m *Manager) installed(ctx context.Context, f Family) (Table, error) {
	t := Table{Family: f}
	chains, err := m.ourChains(ctx, f)
	if err != nil || len(chains) == 0 {
		return t, err
	}
	t.Chains = chains
	jumps, err := m.jumps(ctx, f)
	if err != nil {
		return t, err
	}
	t.Rules = jumps
	for _, c := range chains {
		rules, err := m.list(ctx, f, c)
		if err != nil {
			return t, err
		}
		t.Rules = append(t.Rules, rules...)
	}
	return t, nil
}

// install commits table t in one transaction, replacing whatever meshx (or
// Consul) rules are there.
func (m *Manager) install(ctx context.Context, t Table) error {
	var stale []Rule
	chains, err := m.ourChains(ctx, t.Family)
	if err != nil {
		return err
	}
	if len(chains) > 0 { // no meshx chain means no jump into one either
		if stale, err = m.jumps(ctx, t.Family); err != nil {
			return err
		}
	}
	if err := m.run.Restore(ctx, t.Family, installPayload(t, stale)); err != nil {
		return err
	}
	m.log.Debug("transparent-proxy rules installed", "family", t.Family, "rules", len(t.Rules), "replaced_jumps", len(stale))
	return nil
}

// remove deletes meshx's jumps and chains of family f in one transaction.
func (m *Manager) remove(ctx context.Context, f Family) error {
	chains, err := m.ourChains(ctx, f)
	if errors.Is(err, ErrFamilyUnavailable) {
		return nil
	}
	if err != nil || len(chains) == 0 {
		return err
	}
	jumps, err := m.jumps(ctx, f)
	if err != nil {
		return err
	}
	if err := m.run.Restore(ctx, f, removePayload(chains, jumps)); err != nil {
		return err
	}
	m.log.Info("transparent-proxy rules removed", "family", f, "chains", len(chains), "jumps", len(jumps))
	return nil
}

// rollback removes every meshx rule after a failed Apply. It runs on a
// context of its own so that a cancelled Apply still cleans up.
func (m *Manager) rollback(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.rollbackTimeout)
	defer cancel()
	var errs []error
	for _, f := range families {
		if err := m.remove(ctx, f); err != nil {
			errs = append(errs, fmt.Errorf("roll back %s rules: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

// ourChains returns meshx's chains that exist in family f, in Chains() order.
func (m *Manager) ourChains(ctx context.Context, f Family) ([]string, error) {
	all, err := m.run.ListChains(ctx, f)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range Chains() {
		if slices.Contains(all, c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// jumps returns the rules of the built-in chains that jump into meshx's
// chains, whoever added them.
func (m *Manager) jumps(ctx context.Context, f Family) ([]Rule, error) {
	var out []Rule
	for _, c := range builtinChains {
		rules, err := m.list(ctx, f, c)
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			if jumpsToOurs(r.Spec) {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// list returns the rules of one chain, parsed from iptables -S lines.
func (m *Manager) list(ctx context.Context, f Family, chain string) ([]Rule, error) {
	lines, err := m.run.List(ctx, f, chain)
	if err != nil {
		return nil, err
	}
	var out []Rule
	prefix := "-A " + chain + " "
	for _, l := range lines {
		if spec, ok := strings.CutPrefix(l, prefix); ok {
			out = append(out, Rule{Chain: chain, Spec: spec})
		}
	}
	return out, nil
}

// jumpsToOurs reports whether a rule spec ends in a jump (or goto) to one of
// meshx's chains. Such jumps carry no target options, so the target is last.
func jumpsToOurs(spec string) bool {
	f := strings.Fields(spec)
	n := len(f)
	return n >= 2 && (f[n-2] == "-j" || f[n-2] == "-g") && isOurChain(f[n-1])
}

// installPayload declares meshx's chains (creating or flushing them),
// deletes stale jumps and appends t's rules: one transaction.
func installPayload(t Table, stale []Rule) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, c := range t.Chains {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, r := range stale {
		b.WriteString("-D " + r.Chain + " " + r.Spec + "\n")
	}
	for _, r := range t.Rules {
		b.WriteString(r.String() + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// removePayload deletes jumps, then flushes and deletes chains: one
// transaction, touching nothing else.
func removePayload(chains []string, jumps []Rule) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, r := range jumps {
		b.WriteString("-D " + r.Chain + " " + r.Spec + "\n")
	}
	for _, c := range chains {
		b.WriteString("-F " + c + "\n")
	}
	for _, c := range chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// diffTables describes how have differs from want.
func diffTables(want, have Table) []string {
	var out []string
	f := want.Family
	for _, c := range want.Chains {
		if !slices.Contains(have.Chains, c) {
			out = append(out, fmt.Sprintf("%s: chain %s missing", f, c))
		}
	}
	for _, c := range have.Chains {
		if !slices.Contains(want.Chains, c) {
			out = append(out, fmt.Sprintf("%s: chain %s not expected", f, c))
		}
	}
	for _, c := range append(slices.Clone(builtinChains), Chains()...) {
		w, h := rulesOf(want, c), rulesOf(have, c)
		if slices.Equal(w, h) {
			continue
		}
		before := len(out)
		for _, r := range w {
			if !slices.Contains(h, r) {
				out = append(out, fmt.Sprintf("%s: missing %s", f, r))
			}
		}
		for _, r := range h {
			if !slices.Contains(w, r) {
				out = append(out, fmt.Sprintf("%s: unexpected %s", f, r))
			}
		}
		if len(out) == before {
			out = append(out, fmt.Sprintf("%s: chain %s: rules differ in order or count: want %q, have %q", f, c, w, h))
		}
	}
	return out
}

func rulesOf(t Table, chain string) []string {
	var out []string
	for _, r := range t.Rules {
		if r.Chain == chain {
			out = append(out, r.String())
		}
	}
	return out
}
