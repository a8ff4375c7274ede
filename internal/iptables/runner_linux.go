package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"

	sysns "github.com/meshx/meshx/internal/netns"
)

// inNetns runs fn in the network namespace at path ("" = ours).
var inNetns = sysns.Run

// execRunner is the default Runner: go-iptables reads chains and rules,
// iptables-restore --noflush commits whole rule sets in one transaction
// (go-iptables runs one command per rule, which cannot be atomic).
type execRunner struct {
	netns string
	tools map[Family]*familyTools // a missing family means its tools are absent
}

type familyTools struct {
	ipt     *goipt.IPTables
	restore string // path of iptables-restore or ip6tables-restore
}

// xtablesWait is how long (seconds) iptables waits for the xtables lock.
const xtablesWait = 5

func newExecRunner(netns string) (*execRunner, error) {
	if netns != "" {
		f, err := os.Open(netns)
		if err != nil {
			return nil, fmt.Errorf("open network namespace: %w", err)
		}
		f.Close()
	}
	r := &execRunner{netns: netns, tools: map[Family]*familyTools{}}
	for _, f := range families {
		proto, restore := goipt.ProtocolIPv4, "iptables-restore"
		if f == IPv6 {
			proto, restore = goipt.ProtocolIPv6, "ip6tables-restore"
		}
		ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Timeout(xtablesWait))
		if err == nil {
			restore, err = exec.LookPath(restore)
		}
		if err != nil {
			if f == IPv4 {
				return nil, fmt.Errorf("find iptables: %w", err)
			}
			continue // no ip6tables: IPv6 rule sets fail, removal has nothing to do
		}
		r.tools[f] = &familyTools{ipt: ipt, restore: restore}
	}
	return r, nil
}

func (r *execRunner) family(f Family) (*familyTools, error) {
	t, ok := r.tools[f]
	if !ok {
		return nil, fmt.Errorf("%w: %s (is ip6tables installed?)", ErrFamilyUnavailable, f)
	}
	return t, nil
}

func (r *execRunner) ListChains(ctx context.Context, f Family) ([]string, error) {
	t, err := r.family(f)
	if err != nil {
		return nil, err
	}
	var out []string
	err = r.do(ctx, func() (err error) {
		out, err = t.ipt.ListChains("nat")
		return err
	})
	if err != nil && strings.Contains(err.Error(), "Table does not exist") {
		// Legacy iptables without the nat module for this family: no table,
		// so none of meshx's chains either. Restore will say so if asked.
		return nil, nil
	}
	return out, err
}

func (r *execRunner) List(ctx context.Context, f Family, chain string) ([]string, error) {
	t, err := r.family(f)
	if err != nil {
		return nil, err
	}
	var out []string
	err = r.do(ctx, func() (err error) {
		out, err = t.ipt.List("nat", chain)
		return err
	})
	return out, err
}

func (r *execRunner) Restore(ctx context.Context, f Family, payload string) error {
	t, err := r.family(f)
	if err != nil {
		return err
	}
	return r.do(ctx, func() error {
		cmd := exec.CommandContext(ctx, t.restore, "--noflush", "--wait", fmt.Sprint(xtablesWait))
		cmd.Stdin = strings.NewReader(payload)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w: %s", t.restore, err, strings.TrimSpace(out.String()))
		}
		return nil
	})
}

// do runs fn in the runner's network namespace, after checking ctx.
func (r *execRunner) do(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return inNetns(r.netns, fn)
}
