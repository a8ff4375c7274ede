// Package boot is meshx-init's work: read every service-config, validate all of
// them before touching anything, allocate ports, render plans, register with
// the agent, deregister what is no longer configured, and bring up one
// meshx-proxy per service (systemd units over D-Bus, or child processes).
package boot

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/state"
)

// Env is what every meshx-init command works with.
type Env struct {
	Dirs   state.Dirs
	Log    *slog.Logger
	Stdout io.Writer
	// Stderr receives the problems of broken service-configs and the output
	// of foreground meshx-proxy children. nil: discard.
	Stderr io.Writer
	// Connect returns the agent for meshx.yaml's consul section. nil:
	// register.Connect (the consul/api client).
	Connect func(config.Consul) (register.Agent, error)
}

// connect returns the agent of c through env's seam.
func (env Env) connect(c config.Consul) (register.Agent, error) {
	if env.Connect != nil {
		return env.Connect(c)
	}
	return register.Connect(c)
}

// stderr is env.Stderr, or a discarding writer.
func (env Env) stderr() io.Writer {
	if env.Stderr != nil {
		return env.Stderr
	}
	return io.Discard
}

// Loaded is a host's configuration, validated and rendered.
type Loaded struct {
	Global   *config.Global
	Set      *config.Set
	Plans    []*plan.Plan
	Hostname string
	notOwned map[string]bool // services refused by registration as someone else's
}

// Load reads and renders everything. A broken meshx.yaml is returned as an
// error (it blocks all); broken service-configs are in Set.Broken. With dry,
// ports are allocated against a scratch copy of the state, so nothing changes.
func Load(env Env, dry bool) (*Loaded, error) {
	g, err := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
	if err != nil {
		return nil, err
	}
	if err := g.CheckFiles(); err != nil {
		return nil, err
	}
	set, err := config.LoadServices(config.ServicesDir(env.Dirs.Config), g.Defaults)
	if err != nil {
		return nil, err
	}
	host := g.Hostname
	if host == "" {
		if host, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("hostname: %w", err)
		}
	}
	extra := map[string][]config.Upstream{}
	for _, s := range set.Services {
		ups, err := env.Dirs.Extra(s.Name)
		if err != nil {
			return nil, err
		}
		extra[s.Name] = ups
	}
	po := ports.Options{StateDir: env.Dirs.State, Range: g.Ports}
	if dry {
		if po.StateDir, err = scratchCopy(env.Dirs.State); err != nil {
			return nil, err
		}
		defer os.RemoveAll(po.StateDir)
	}
	alloc := func(reqs []ports.Request) (map[string]int, error) { return ports.Allocate(po, reqs) }
	plans, err := plan.BuildAll(set, plan.Host{Hostname: host, Global: g}, extra, alloc)
	if err != nil {
		return nil, err
	}
	if err := assignAddresses(po.StateDir, g, plans); err != nil {
		return nil, err
	}
	return &Loaded{Global: g, Set: set, Plans: plans, Hostname: host}, nil
}

// scratchCopy copies the allocation state (ports, namespace addresses) into
// a temp dir for a dry run.
func scratchCopy(stateDir string) (string, error) {
	dir, err := os.MkdirTemp("", "meshx-dry-")
	if err != nil {
		return "", err
	}
	for _, f := range []string{ports.StateFile, filepath.Join(filepath.Base(netnsStateDir(stateDir)), ports.StateFile)} {
		b, err := os.ReadFile(filepath.Join(stateDir, f))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil {
			err = os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, f), b, 0o644)
		}
		if err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	return dir, nil
}

// ReportBroken logs every broken file's problems and writes them to w.
func ReportBroken(set *config.Set, log *slog.Logger, w io.Writer) {
	files := make([]string, 0, len(set.Broken))
	for f := range set.Broken {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		log.Error("invalid service-config; this service is skipped", "file", f, "err", set.Broken[f])
		fmt.Fprintln(w, set.Broken[f])
	}
}
