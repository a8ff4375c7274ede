// Package sidecar is meshx-proxy: it keeps one service in the mesh. It makes
// sure the registration is in the agent, supervises the proxy process, installs
// transparent-proxy rules once the proxy accepts, heartbeats the TTL check from
// real health (proxy alive, listeners accepting, app reachable), says READY only
// when traffic can flow, and on stop undoes all of it in reverse.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/dataplane"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/supervisor"
	"github.com/meshx/meshx/internal/systemd"
	"github.com/meshx/meshx/internal/ttl"
)

// Redirector installs and removes the host's transparent-proxy rules.
type Redirector interface {
	Apply(ctx context.Context, t *config.Transparent, inboundPort int, proxy Owner) error
	Remove(ctx context.Context) error
}

// Owner is what marks the proxy's own outbound traffic, which the rules
// never redirect: its user (a proxy process of its own) or its socket mark
// (the native data plane, inside meshx-proxy).
type Owner struct {
	UID  int
	Mark uint32
}

// Options configure Run. Required: Dirs, Global, Service.
type Options struct {
	Dirs    state.Dirs
	Global  *config.Global
	Service string
	Logger  *slog.Logger // nil: discard
	// Notify sends sd_notify states ("READY=1", "STATUS=...", "WATCHDOG=1",
	// "STOPPING=1"). nil: none.
	Notify func(state string)
	// NewRedirector makes the backend of transparent-proxy rules; called only
	// when rules are to be installed or removed (the plan enables transparent
	// proxy, or a previous run left rules). nil: such a service fails to start.
	NewRedirector func() (Redirector, error)
	// StopTimeout bounds each shutdown step; 0 = 5s.
	StopTimeout time.Duration
	// ProxyStopTimeout is the proxy's SIGTERM grace period; 0 = 10s.
	ProxyStopTimeout time.Duration
	// Reload, when it yields, makes meshx-proxy re-read its plan (SIGHUP):
	// registration and upstreams are updated, the proxy restarted only if its
	// command changed.
	Reload <-chan struct{}
}

// ErrConfig marks problems that restarting will not fix (exit code 2).
var ErrConfig = errors.New("configuration")

type daemon struct {
	o        Options
	log      *slog.Logger
	pl       *plan.Plan
	cl       *api.Client
	reg      *register.Registrar
	sup      *supervisor.Supervisor
	plane    *dataplane.Plane   // mode native: the in-process data plane
	supErr   chan error         // the running supervisor's result
	supStop  context.CancelFunc // stops the running supervisor
	progress atomic.Int64       // unix nanos of the main loop's last step

	mu          sync.Mutex
	st          state.Status
	sidecarPort int
	rulesIn     bool
	redirector  Redirector
	// tokenProblem is why the ACL token file cannot be used (nil: it can).
	tokenProblem error
}

// Run runs meshx-proxy for one service until ctx ends (then cleans up and
// returns nil) or a failure that needs a restart.
func Run(ctx context.Context, o Options) error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Notify == nil {
		o.Notify = func(string) {}
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 5 * time.Second
	}
	pl, err := o.Dirs.LoadPlan(o.Service)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d := &daemon{o: o, pl: pl, log: o.Logger.With("service_id", pl.ID)}
	d.st = state.Status{Service: pl.Name, ID: pl.ID, PID: os.Getpid(), StartTime: state.ProcStart(os.Getpid()),
		Health: api.HealthCritical, Since: time.Now()}
	if pl.Transparent != nil && o.NewRedirector == nil {
		return fmt.Errorf("%w: transparent proxy enabled but no rule backend", ErrConfig)
	}
	d.cl, err = register.NewClient(o.Global.Consul)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d.reg = &register.Registrar{Agent: d.cl.Agent(), Hostname: pl.Registration.Meta[plan.MetaHost]}
	return d.run(ctx)
}

func (d *daemon) status(s string) {
	d.log.Info(s)
	d.o.Notify("STATUS=" + s)
}

func (d *daemon) touch() { d.progress.Store(time.Now().UnixNano()) }

func (d *daemon) run(ctx context.Context) error {
	d.touch()
	stopWatchdog := d.startWatchdog()
	defer stopWatchdog()
	d.publish() // a crashed run's status (ready, pids) is stale from here on
	KillStaleProxy(d.o.Dirs, d.pl.Name, d.log)
	// Crash-only: rules a killed meshx-proxy left are removed now and put back
	// once the proxy accepts again: nothing is redirected into a dead port.
	if err := d.removeRules(ctx); err != nil {
		d.log.Warn("remove stale transparent-proxy rules", "err", err)
	}
	addr := register.Address(d.o.Global.Consul)
	d.status("waiting for the consul agent at " + addr)
	if err := d.waitAgent(ctx, addr); err != nil {
		return d.exit(ctx, err)
	}
	d.status("registering " + d.pl.ID)
	res, check, err := d.reg.EnsureCheck(ctx, d.pl, api.HealthCritical, false)
	if err != nil {
		return d.exit(ctx, err)
	}
	d.log.Info("registration", "result", string(res), "check", check)
	// The agent keeps an existing check's status across re-registration, so a
	// check a killed meshx-proxy left passing would stay passing: make it
	// critical, explicitly, before holding interim criticals back.
	if check != api.HealthCritical {
		if err := ttl.Set(ctx, d.cl.Agent(), d.pl.CheckID, ttl.Health{Status: api.HealthCritical,
			Output: "meshx-proxy starting: proxy not running yet"}); err != nil {
			d.log.Warn("set check critical at start", "err", err)
		}
	}
	if err := d.startProxy(ctx); err != nil {
		return d.exit(ctx, err)
	}
	defer d.stopProxy()
	hb, err := ttl.New(ttl.Options{Agent: agentRef{d}, CheckID: d.pl.CheckID, Interval: time.Duration(d.pl.Interval),
		Probe: d.probe, Logger: d.log, OnBeat: d.onBeat, Hold: d.holdWhileStarting(),
		Reregister: func(ctx context.Context, status string) error {
			_, err := d.reg.Ensure(ctx, d.pl, status, false)
			return err
		}})
	if err != nil {
		return d.exit(ctx, err)
	}
	loopErr := d.loop(ctx, hb)
	return d.shutdown(loopErr)
}

// startProxy starts supervising the plan's proxy command (none for mode none).
func (d *daemon) startProxy(ctx context.Context) error {
	d.supErr = make(chan error, 1)
	if d.native() {
		return d.startNative(ctx)
	}
	if len(d.pl.Proxy.Argv) == 0 {
		d.sup = nil
		return nil
	}
	sup, err := d.newSupervisor()
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.sup, d.supStop = sup, cancel
	d.status("starting proxy")
	go func() { d.supErr <- sup.Run(sctx) }()
	return nil
}

// stopProxy stops the proxy (SIGTERM, then SIGKILL after the timeout) and
// waits for the supervisor to finish; a no-op when none runs.
func (d *daemon) stopProxy() {
	d.stopNative()
	if d.sup == nil {
		return
	}
	d.supStop()
	if err := <-d.supErr; err != nil && !errors.Is(err, context.Canceled) {
		d.log.Warn("proxy stop", "err", err)
	}
	d.sup = nil
}

func upstreamRemoved(old, cur *plan.Plan) bool {
	have := map[string]bool{}
	for _, u := range cur.Upstreams {
		have[u.Key] = true
	}
	for _, u := range old.Upstreams {
		if !have[u.Key] {
			return true
		}
	}
	return false
}

// reload re-reads the plan meshx-init rendered (after a config change or
// connect/disconnect). An error ends the run (exit 1): systemd or the
// foreground fleet restarts meshx-proxy, which then starts from the new plan.
func (d *daemon) reload(ctx context.Context) error {
	pl, err := d.o.Dirs.LoadPlan(d.o.Service)
	if err != nil {
		d.log.Error("reload plan", "err", err)
		return nil
	}
	old := d.pl
	if pl.ID != old.ID {
		// The heartbeat, the rules and the registration all hang on the id:
		// retire the old one and start again under the new one.
		d.log.Info("service id changed; deregistering the old id and restarting", "old_id", old.ID, "new_id", pl.ID)
		if err := d.reg.DeregisterOwned(ctx, old.ID, old.SidecarID); err != nil {
			d.log.Error("deregister old id", "err", err)
		}
		return errIDChanged
	}
	if (old.Transparent == nil) != (pl.Transparent == nil) {
		// Turning transparent proxy on or off changes the unit's capabilities:
		// meshx-init restarts the unit for it, and the new run applies it.
		d.log.Info("transparent proxy turned on or off: takes effect when the unit restarts")
		pl.Transparent = old.Transparent
	}
	d.pl = pl
	d.mu.Lock()
	d.sidecarPort = 0
	d.mu.Unlock()
	d.log.Info("plan reloaded", "upstreams", len(pl.Upstreams))
	if d.rulesIn && !reflect.DeepEqual(old.Transparent, pl.Transparent) {
		if err := d.applyRules(ctx); err != nil {
			d.log.Error("update transparent-proxy rules", "err", err)
		}
	}
	if _, err := d.reg.Ensure(ctx, pl, "", false); err != nil {
		d.log.Error("register after reload", "err", err)
	}
	switch {
	case old.Proxy.Mode != pl.Proxy.Mode:
		d.log.Info("proxy mode changed; restarting the data plane", "old", old.Proxy.Mode, "new", pl.Proxy.Mode)
	case d.plane != nil:
		// The native plane opens and closes upstream listeners in place:
		// the others, and every open connection, carry on.
		if err := d.plane.SetUpstreams(planUpstreams(pl)); err != nil {
			d.log.Error("update upstream listeners", "err", err)
		}
		return nil
	case !slices.Equal(old.Proxy.Argv, pl.Proxy.Argv) || old.Proxy.User != pl.Proxy.User:
		d.log.Info("proxy command changed; restarting the proxy")
	case upstreamRemoved(old, pl):
		// Consul's built-in proxy adds listeners for new upstreams on the fly
		// but never closes those of removed ones: a restart does.
		d.log.Info("an upstream was removed; restarting the proxy to close its listener")
	default:
		return nil
	}
	return d.restartProxy(ctx)
}

var errIDChanged = errors.New("service id changed")

// restartProxy stops the proxy and starts it again (new argv, env or
// token). A failed start ends the run: a service must not look healthy with
// no proxy behind it.
func (d *daemon) restartProxy(ctx context.Context) error {
	d.stopProxy()
	if err := d.startProxy(ctx); err != nil {
		return fmt.Errorf("restart proxy: %w", err)
	}
	return nil
}

// waitAgent waits for the agent as long as it takes, in rounds short enough
// that the watchdog sees the loop alive.
func (d *daemon) waitAgent(ctx context.Context, addr string) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := register.WaitAgent(wctx, d.cl, addr, 5*time.Second, d.log)
		cancel()
		d.touch()
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// loop heartbeats until ctx ends or the proxy gives up: fast (every 50ms)
// until ready, then every Interval.
func (d *daemon) loop(ctx context.Context, hb *ttl.Heartbeat) error {
	fast := 50 * time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	alive := time.NewTicker(time.Second) // keeps progress fresh between slow beats
	defer alive.Stop()
	token := newTokenWatch(register.APIConfig(d.o.Global.Consul).TokenFile)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-alive.C:
			d.touch()
			changed, problem := token.poll()
			if d.setTokenProblem(problem) {
				t.Reset(0) // the check says so now, not at the next beat
			}
			if changed {
				if err := d.rotateToken(ctx); err != nil {
					return err
				}
			}
			continue
		case <-d.o.Reload:
			if err := d.reload(ctx); err != nil {
				return err
			}
			continue
		case err := <-d.supErr:
			d.sup = nil
			if err == nil {
				err = errors.New("proxy exited")
			}
			return fmt.Errorf("proxy: %w", err)
		case <-t.C:
		}
		d.touch()
		bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		hl, err := hb.Beat(bctx)
		cancel()
		d.maybeReady(ctx, hl, err)
		next := time.Duration(d.pl.Interval)
		if !d.isReady() && next > fast {
			next = fast
		}
		t.Reset(next)
	}
}

// startGrace is how long, at start, a critical health is not written: the
// check was registered critical, and a proxy usually accepts well within it.
const startGrace = 10 * time.Second

func (d *daemon) holdWhileStarting() func(ttl.Health) bool {
	start := time.Now()
	return func(h ttl.Health) bool {
		return h.Status == api.HealthCritical && !d.isReady() && time.Since(start) < startGrace
	}
}

func (d *daemon) isReady() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.Ready
}

// maybeReady says READY=1 the first time the check was written passing, after
// installing transparent-proxy rules (the proxy accepts by then: passing
// requires it).
func (d *daemon) maybeReady(ctx context.Context, hl ttl.Health, err error) {
	if d.isReady() || err != nil || hl.Status != api.HealthPassing {
		return
	}
	if d.pl.Transparent != nil && !d.rulesIn {
		if err := d.applyRules(ctx); err != nil {
			d.log.Error("install transparent-proxy rules", "err", err)
			return
		}
	}
	d.mu.Lock()
	d.st.Ready = true
	d.mu.Unlock()
	d.publish()
	d.o.Notify("READY=1")
	d.status("ready: " + hl.Output)
}

func (d *daemon) onBeat(hl ttl.Health, err error) {
	d.mu.Lock()
	changed := d.st.Health != hl.Status || d.st.Output != hl.Output
	d.st.Health, d.st.Output = hl.Status, hl.Output
	if err != nil {
		d.st.Output = hl.Output + " (not written: " + err.Error() + ")"
	}
	d.mu.Unlock()
	if changed {
		d.publish()
		if d.isReady() {
			d.o.Notify("STATUS=" + hl.Status + ": " + hl.Output)
		}
	}
}

func (d *daemon) publish() {
	d.mu.Lock()
	s := d.st
	d.mu.Unlock()
	if err := d.o.Dirs.SaveStatus(s); err != nil {
		d.log.Warn("publish status", "err", err)
	}
}

// exit handles the end of a start that did not reach the main loop: a stop
// request (ctx ended) still gets the full shutdown; a failure returns as is.
func (d *daemon) exit(ctx context.Context, err error) error {
	if errors.Is(err, context.Canceled) || ctx.Err() != nil {
		return d.shutdown(nil)
	}
	return err
}

// shutdown undoes start in reverse: check critical, proxy stopped, rules
// removed, deregistered. When the proxy gave up (loopErr != nil) the
// registration stays, critical, for the restarted unit to pick up.
func (d *daemon) shutdown(loopErr error) error {
	d.o.Notify("STOPPING=1")
	d.status("stopping")
	step := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), d.o.StopTimeout)
	}
	why := "meshx-proxy stopping"
	if loopErr != nil {
		why = "meshx-proxy failed: " + loopErr.Error()
	}
	ctx, cancel := step()
	if err := ttl.Set(ctx, d.cl.Agent(), d.pl.CheckID, ttl.Health{Status: api.HealthCritical, Output: why}); err != nil {
		d.log.Warn("set check critical", "err", err)
	}
	cancel()
	d.stopProxy()
	ctx, cancel = step()
	if err := d.removeRules(ctx); err != nil {
		d.log.Error("remove transparent-proxy rules", "err", err)
	}
	cancel()
	if loopErr == nil {
		ctx, cancel := step()
		if err := d.reg.DeregisterOwned(ctx, d.pl.ID, d.pl.SidecarID); err != nil {
			d.log.Error("deregister", "err", err)
		} else {
			d.log.Info("deregistered", "id", d.pl.ID)
		}
		cancel()
	}
	d.o.Dirs.RemoveStatus(d.pl.Name)
	return loopErr
}

// startWatchdog pings systemd's watchdog (when the unit has one) only while
// the main loop makes progress: a wedged loop lets systemd restart the unit.
func (d *daemon) startWatchdog() func() {
	ctx, cancel := context.WithCancel(context.Background())
	limit := 3 * time.Second
	if w := systemd.WatchdogInterval(); w > limit {
		limit = w
	}
	go systemd.RunWatchdog(ctx, func() error {
		if since := time.Since(time.Unix(0, d.progress.Load())); since > limit {
			return fmt.Errorf("main loop stalled for %s", since.Round(time.Second))
		}
		return nil
	}, d.log)
	return cancel
}
