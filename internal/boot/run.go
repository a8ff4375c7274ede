package boot

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/fault"
	"github.com/meshx/meshx/internal/lockfile"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/systemd"
)

// RunOptions configure the boot job.
type RunOptions struct {
	Force bool // take over services registered by someone else
	// Systemd: "auto" (use systemd when it runs the host), "yes" or "no".
	Systemd string
	// Foreground: supervise one meshx-proxy child per service until ctx ends.
	Foreground bool
	// ProxyBinary is the meshx-proxy to run in the foreground; "" = next to
	// this executable, else on PATH.
	ProxyBinary string
	// ProxyArgs are global flags to pass to each meshx-proxy child.
	ProxyArgs []string
}

// ErrBroken: some service-configs were broken; the valid ones were brought up.
var ErrBroken = errors.New("some service-configs are invalid")

// RunLock is the lock file in the runtime dir that makes runs take turns.
const RunLock = "init.lock"

// Run is `meshx-init run`. Runs take turns: a second run (a reload during
// boot, a run by hand) waits for the first to finish, so a service is never
// registered or started twice.
func Run(ctx context.Context, env Env, o RunOptions) error {
	path := filepath.Join(env.Dirs.Runtime, RunLock)
	lock, err := lockfile.Acquire(ctx, path, func(holder int) {
		env.Log.Info("another meshx-init run is in progress; waiting for it to finish", "holder_pid", holder, "lock", path)
	})
	if err != nil {
		return err
	}
	unlock := sync.OnceFunc(lock.Unlock)
	defer unlock()
	fault.Point("locked")
	l, err := Load(env, false)
	if err != nil {
		return err
	}
	fault.Point("allocated")
	ReportBroken(l.Set, env.Log, env.stderr())
	cl, logout, err := agentClient(ctx, env, l.Global.Consul, l.Global.Consul.Wait)
	if err != nil {
		return err
	}
	defer logout()
	warnConnBudget(env.Log, cl, register.APIConfig(l.Global.Consul).Address, l.Plans)
	r := &register.Registrar{Agent: cl, Hostname: l.Hostname}
	var fl *fleet
	var failed []error
	onUp := func(*plan.Plan) {}
	if o.Foreground {
		l.Plans, failed = withoutNamespaces(l.Plans)
		// Each meshx-proxy starts as soon as its own service is registered.
		if fl, err = newFleet(ctx, env, o); err != nil {
			return err
		}
		onUp = fl.start
	}
	l.notOwned = map[string]bool{}
	up, regFailed, err := registerAll(ctx, env, r, l.Plans, o.Force, onUp, l.notOwned)
	if err != nil {
		return err
	}
	failed = append(failed, regFailed...)
	fault.Point("saved")
	if err := gc(ctx, env, l, r); err != nil {
		failed = append(failed, err)
	}
	useSystemd := o.Systemd == "yes" || (o.Systemd == "auto" && systemd.Available() && !o.Foreground)
	if useSystemd {
		if err := reconcileUnits(ctx, env, keepRunning(env, l, up)); err != nil {
			failed = append(failed, err)
		}
	}
	fault.Point("units")
	logout() // the fleet's meshx-proxies log in for themselves
	if fl != nil {
		unlock() // the foreground run supervises until stopped: let others in
		if err := fl.wait(); err != nil {
			failed = append(failed, err)
		}
	}
	if len(l.Set.Broken) > 0 {
		failed = append(failed, fmt.Errorf("%w: %d file(s)", ErrBroken, len(l.Set.Broken)))
	}
	return errors.Join(failed...)
}

// ErrNamespaceNeedsSystemd: a service with network.namespace runs only under
// systemd (its meshx-netns@ unit sets the namespace up, and its
// meshx-proxy@ unit joins it).
var ErrNamespaceNeedsSystemd = errors.New("network.namespace needs systemd (meshx-netns@ and meshx-proxy@ units)")

// withoutNamespaces drops the plans with a network namespace, one error each.
func withoutNamespaces(plans []*plan.Plan) (keep []*plan.Plan, errs []error) {
	for _, pl := range plans {
		if pl.Netns != nil {
			errs = append(errs, fmt.Errorf("%s: %w", pl.Name, ErrNamespaceNeedsSystemd))
			continue
		}
		keep = append(keep, pl)
	}
	return keep, errs
}

// registerWorkers bounds the registrations in flight: the agent handles them
// one at a time, a few in flight hide the round trips.
const registerWorkers = 4

// registerAll registers every plan (a few at a time) and saves the plans that
// registered, calling onUp for each as soon as it is; it then reports each in
// plan order. A failed registration blocks only its service; err is only for
// the state dir failing.
func registerAll(ctx context.Context, env Env, r *register.Registrar, plans []*plan.Plan, force bool,
	onUp func(*plan.Plan), notOwned map[string]bool) (up []*plan.Plan, failed []error, err error) {
	results := make([]register.Result, len(plans))
	errs := make([]error, len(plans))
	saveErrs := make([]error, len(plans))
	sem := make(chan struct{}, registerWorkers)
	var wg sync.WaitGroup
	for i, pl := range plans {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			defer recoverTo(&errs[i], pl.Name)
			if results[i], errs[i] = r.Ensure(ctx, pl, "", force); errs[i] != nil {
				return
			}
			fault.Point("registered")
			changed, err := env.Dirs.SavePlan(pl)
			if err != nil {
				saveErrs[i] = fmt.Errorf("save plan of %s: %w", pl.Name, err)
				return
			}
			if changed {
				signalReload(env, pl.Name)
			}
			onUp(pl)
		}()
	}
	wg.Wait()
	if err := errors.Join(saveErrs...); err != nil {
		return nil, nil, err
	}
	for i, pl := range plans {
		if errs[i] != nil {
			env.Log.Error("register", "service_id", pl.ID, "err", errs[i])
			failed = append(failed, errs[i])
			if errors.Is(errs[i], register.ErrNotOwned) && notOwned != nil {
				notOwned[pl.Name] = true
			}
			continue
		}
		fmt.Fprintf(env.Stdout, "%s\t%s\tport %d\t%s\n", pl.Name, pl.ID, pl.Port, results[i])
		up = append(up, pl)
	}
	return up, failed, nil
}

// gc deregisters services meshx owns here whose service-config is gone, and
// forgets their plans and ports. A service whose file still exists but is
// broken now is left alone: its last good registration keeps serving.
func gc(ctx context.Context, env Env, l *Loaded, r *register.Registrar) error {
	stale, err := staleServices(ctx, env, l, r)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range stale {
		if s.Plan != nil {
			errs = append(errs, forget(ctx, env, l, r, s.Plan))
			continue
		}
		env.Log.Info("deregistering an owned service "+s.Reason, "service_id", s.ID)
		errs = append(errs, r.Deregister(ctx, s.ID, plan.SidecarID(s.ID)))
	}
	errs = append(errs, releaseOrphans(env, l))
	return errors.Join(errs...)
}

// staleService is a service meshx owns here that a run removes.
type staleService struct {
	ID, Name string
	Reason   string     // why, for people: "with no config", "under an old id (now web-h2)"
	Plan     *plan.Plan // its plan when its service-config is gone (forget it all); nil: deregister only
}

// staleServices lists what gc removes: services whose service-config is
// gone, and owned registrations without any plan (state dir wiped) or under an
// id the service no longer has (service.id or hostname template changed).
func staleServices(ctx context.Context, env Env, l *Loaded, r *register.Registrar) ([]staleService, error) {
	valid := map[string]bool{}
	idOf := map[string]string{}
	for _, pl := range l.Plans {
		valid[pl.Name] = true
		idOf[pl.Name] = pl.ID
	}
	fileGone := func(file string) bool {
		_, err := os.Stat(file)
		return errors.Is(err, os.ErrNotExist)
	}
	names, err := env.Dirs.PlanNames()
	if err != nil {
		return nil, err
	}
	owned, err := r.OwnedServices(ctx)
	if err != nil {
		return nil, err
	}
	var out []staleService
	for _, name := range names {
		if valid[name] {
			continue
		}
		pl, err := env.Dirs.LoadPlan(name)
		if err != nil || !fileGone(pl.File) {
			continue
		}
		out = append(out, staleService{ID: pl.ID, Name: pl.Name, Reason: "whose config is gone", Plan: pl})
		delete(owned, pl.ID)
	}
	ids := slices.Sorted(maps.Keys(owned))
	for _, id := range ids {
		name := owned[id].Meta[plan.MetaName]
		if valid[name] {
			if idOf[name] != id {
				out = append(out, staleService{ID: id, Name: name, Reason: "under an old id (now " + idOf[name] + ")"})
			}
			continue
		}
		if _, err := env.Dirs.LoadPlan(name); err == nil {
			continue // a broken file's last good plan
		}
		out = append(out, staleService{ID: id, Name: name, Reason: "with no config"})
	}
	return out, nil
}

// releaseOrphans releases allocated ports that no service holds: neither a
// plan of this run nor a plan kept in the state dir. A run killed between
// allocating and saving a plan whose config is then removed, or a service id
// that changed, leaves such ports.
func releaseOrphans(env Env, l *Loaded) error {
	po := ports.Options{StateDir: env.Dirs.State, Range: l.Global.Ports}
	held, err := ports.Load(po)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	plans := slices.Clone(l.Plans)
	names, err := env.Dirs.PlanNames()
	if err != nil {
		return err
	}
	for _, n := range names {
		if pl, err := env.Dirs.LoadPlan(n); err == nil {
			plans = append(plans, pl)
		}
	}
	for _, pl := range plans {
		for _, k := range pl.PortKeys() {
			keep[k] = true
		}
	}
	var orphans []string
	for k := range held {
		if !keep[k] {
			orphans = append(orphans, k)
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	sort.Strings(orphans)
	env.Log.Info("releasing ports no service holds", "keys", orphans)
	return ports.Release(po, orphans)
}

// forget removes everything of a service whose config is gone.
func forget(ctx context.Context, env Env, l *Loaded, r *register.Registrar, pl *plan.Plan) error {
	env.Log.Info("service-config gone; removing the service", "service_id", pl.ID, "file", pl.File)
	// Under systemd its unit is stopped and disabled by reconcileUnits; a
	// foreground or hand-started meshx-proxy is asked to stop here.
	stopProxy(ctx, env, pl.Name)
	if err := r.Deregister(ctx, pl.ID, pl.SidecarID); err != nil {
		return err
	}
	if err := ports.Release(ports.Options{StateDir: env.Dirs.State, Range: l.Global.Ports}, pl.PortKeys()); err != nil {
		return err
	}
	if pl.Netns != nil {
		// The namespace itself goes when reconcileUnits stops its
		// meshx-netns@ unit (CNI DEL).
		if err := releaseAddress(env.Dirs.State, l.Global, pl.Name); err != nil {
			return err
		}
	}
	fmt.Fprintf(env.Stdout, "%s\t%s\t-\tderegistered (config gone)\n", pl.Name, pl.ID)
	return env.Dirs.RemovePlan(pl.Name)
}

// keepRunning adds to up the last good plans of services that are still
// configured but did not come up in this run: a file broken now, or a
// registration that failed (a passing agent hiccup, a token not replicated
// yet). Their running units are left alone; meshx-proxy registers its
// service itself. A service refused as not owned is not kept.
func keepRunning(env Env, l *Loaded, up []*plan.Plan) []*plan.Plan {
	names, _ := env.Dirs.PlanNames()
	have := map[string]bool{}
	for _, pl := range up {
		have[pl.Name] = true
	}
	configured := map[string]bool{}
	for _, pl := range l.Plans {
		configured[pl.Name] = true
	}
	out := append([]*plan.Plan{}, up...)
	for _, n := range names {
		if have[n] {
			continue
		}
		pl, err := env.Dirs.LoadPlan(n)
		if err != nil {
			continue
		}
		_, broken := l.Set.Broken[pl.File]
		if broken || configured[n] && !l.notOwned[n] {
			out = append(out, pl)
		}
	}
	return out
}

func reconcileUnits(ctx context.Context, env Env, up []*plan.Plan) error {
	want := make([]systemd.Instance, 0, len(up))
	for _, pl := range up {
		want = append(want, systemd.Instance{Service: pl.Name, TransparentProxy: pl.Transparent != nil,
			Namespace: pl.Netns != nil})
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Service < want[j].Service })
	acts, err := systemd.Reconcile(ctx, want, env.Log)
	for _, a := range acts {
		line := fmt.Sprintf("%s\t%s\t%s", a.Service, a.Unit, a.Did)
		if a.Err != nil {
			line += "\terror: " + a.Err.Error()
		}
		fmt.Fprintln(env.Stdout, line)
	}
	if err != nil {
		return fmt.Errorf("systemd: %w", err)
	}
	return nil
}

// CheckStatus returns each owned check's status by check id.
func CheckStatus(ctx context.Context, ag register.Agent) (map[string]*api.AgentCheck, error) {
	return ag.ChecksWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
}

// recoverTo turns a panic of a goroutine working on one service into that
// service's error: an unrecovered panic would end meshx-init with exit code 2,
// which means "bad input, nothing changed".
func recoverTo(err *error, service string) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%s: internal error: panic: %v\n%s", service, r, debug.Stack())
	}
}
