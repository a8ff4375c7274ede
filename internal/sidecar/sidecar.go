// Package sidecar is meshx-proxy: it keeps one service in the mesh. It makes
// sure the registration is in the agent, runs the service's data plane (a
// Proxy), installs transparent-proxy rules once the proxy accepts, heartbeats
// the TTL check from real health (proxy alive, listeners accepting, app
// reachable), says READY only when traffic can flow, and on stop undoes all of
// it in reverse.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/login"
	"github.com/meshx/meshx/internal/metrics"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/process"
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

// Options configure Run. Each field's comment says what its zero value
// means; withDefaults fills them in.
type Options struct {
	// Dirs are meshx's directories: the plan is read from State, the status
	// and pid files go to Runtime. Required: State and Runtime.
	Dirs state.Dirs
	// Global is meshx.yaml. Required.
	Global *config.Global
	// Service is the service's name, the unit's instance. Required.
	Service string
	// Logger receives everything meshx-proxy logs. nil: discard.
	Logger *slog.Logger
	// Notify sends sd_notify states ("READY=1", "STATUS=...", "WATCHDOG=1",
	// "STOPPING=1"). nil: none.
	Notify func(state string)
	// NewRedirector makes the backend of transparent-proxy rules; called only
	// when rules are to be installed or removed (the plan enables transparent
	// proxy, or a previous run left rules). nil: such a service fails to start.
	NewRedirector func() (Redirector, error)
	// Connect returns the agent for meshx.yaml's consul section. It is called
	// at start and again after the ACL token file changed, so it must read
	// the token file each time. nil: register.Connect (consul/api).
	Connect func(config.Consul) (register.Agent, error)
	// NewProxy makes the data plane of a plan; called at start and for each
	// restart of the data plane (changed command or mode, rotated token). It
	// returns a nil Proxy for a plan without a data plane (mode none). nil:
	// the in-process data plane for mode native, else the plan's proxy
	// command supervised as a child process.
	NewProxy func(ProxyParams) (Proxy, error)
	// StopTimeout bounds each shutdown step; 0 = 5s.
	StopTimeout time.Duration
	// ProxyStopTimeout is the proxy's SIGTERM grace period; 0 = 10s.
	ProxyStopTimeout time.Duration
	// Poll is how often the ACL token file is checked for a change and the
	// watchdog's progress is refreshed between slow beats; 0 = 1s.
	Poll time.Duration
	// Reload, when it yields, makes meshx-proxy re-read its plan (SIGHUP):
	// registration and upstreams are updated, the proxy restarted only if its
	// command changed. nil: never.
	Reload <-chan struct{}
}

// ErrConfig marks problems that restarting will not fix (exit code 2).
var ErrConfig = errors.New("configuration")

// ErrMissingOption is returned (wrapped, with ErrConfig) by Run when a
// required option is empty.
var ErrMissingOption = errors.New("sidecar: missing required option")

// withDefaults checks the required options and fills in the defaults. It is
// the only place defaults are applied.
func (o Options) withDefaults() (Options, error) {
	var missing []error
	for name, empty := range map[string]bool{"Dirs.State": o.Dirs.State == "", "Dirs.Runtime": o.Dirs.Runtime == "",
		"Global": o.Global == nil, "Service": o.Service == ""} {
		if empty {
			missing = append(missing, fmt.Errorf("%w: %s", ErrMissingOption, name))
		}
	}
	if err := errors.Join(missing...); err != nil {
		return o, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Notify == nil {
		o.Notify = func(string) {}
	}
	if o.Connect == nil {
		o.Connect = register.Connect
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 5 * time.Second
	}
	if o.ProxyStopTimeout == 0 {
		o.ProxyStopTimeout = supervisor.DefaultStopTimeout
	}
	if o.Poll == 0 {
		o.Poll = time.Second
	}
	if o.NewProxy == nil {
		o.NewProxy = defaultProxies(o)
	}
	return o, nil
}

type daemon struct {
	o        Options // defaults filled in
	log      *slog.Logger
	progress atomic.Int64 // unix nanos of the main loop's last step

	// Used only by the goroutine running Run.
	pl         *plan.Plan
	agent      register.Agent
	reg        *register.Registrar
	proxy      Proxy // the running data plane; nil: none
	rulesIn    bool
	redirector Redirector
	m          *metrics.Metrics // nil: metrics off
	started    time.Time
	login      *login.Session // consul.login; nil: none
	nextLogin  time.Time      // the earliest the main loop logs in again
	refused    atomic.Bool    // the agent refused the login's token

	mu          sync.Mutex   // guards the fields below
	st          state.Status // written by the data plane's OnState too
	sidecarPort int          // the agent-assigned public port, once asked
	// tokenProblem is why the ACL token file cannot be used (nil: it can).
	tokenProblem error
	loginErr     string // the last login's failure; "" once one worked
}

// Run runs meshx-proxy for one service until ctx ends (then cleans up and
// returns nil) or a failure that needs a restart.
func Run(ctx context.Context, o Options) error {
	d, err := newDaemon(o)
	if err != nil {
		return err
	}
	return d.run(ctx)
}

// newDaemon checks o, loads the plan and connects the agent client (which
// does not talk to the agent yet).
func newDaemon(o Options) (*daemon, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	pl, err := o.Dirs.LoadPlan(o.Service)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if pl.Transparent != nil && o.NewRedirector == nil {
		return nil, fmt.Errorf("%w: transparent proxy enabled but no rule backend", ErrConfig)
	}
	// This service's connections to a loopback agent come from a loopback
	// address of its own: see register.SourceAddress.
	g := *o.Global
	g.Consul.Source = register.SourceAddress(register.APIConfig(g.Consul).Address, pl.ID)
	o.Global = &g
	d := &daemon{o: o, pl: pl, log: o.Logger.With("service_id", pl.ID), m: newMetrics(pl.MetricsAddress), started: time.Now()}
	d.st = state.Status{Service: pl.Name, ID: pl.ID, PID: os.Getpid(), StartTime: process.Self().Start,
		Health: api.HealthCritical, Since: time.Now()}
	if d.agent, err = o.Connect(o.Global.Consul); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := d.setupLogin(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	d.reg = &register.Registrar{Agent: d.agent, Hostname: pl.Registration.Meta[plan.MetaHost]}
	return d, nil
}

func (d *daemon) status(s string) {
	d.log.Info(s)
	d.o.Notify("STATUS=" + s)
}

func (d *daemon) touch() { d.progress.Store(time.Now().UnixNano()) }

// run is the life cycle: clear what a crashed run left, register, start the
// data plane, heartbeat until stopped, shut down in reverse.
func (d *daemon) run(ctx context.Context) error {
	d.touch()
	stopWatchdog := d.startWatchdog()
	defer stopWatchdog()
	defer d.serveMetrics()()
	d.clearStale(ctx)
	if err := d.register(ctx); err != nil {
		return d.exit(ctx, err)
	}
	if err := d.startProxy(ctx); err != nil {
		return d.exit(ctx, err)
	}
	defer d.stopProxy()
	hb, err := d.heartbeat()
	if err != nil {
		return d.exit(ctx, err)
	}
	return d.shutdown(d.loop(ctx, hb))
}

// clearStale is the crash-only start: the status, proxy and rules a killed
// meshx-proxy left are removed. Rules are put back once the proxy accepts
// again: nothing is redirected into a dead port.
func (d *daemon) clearStale(ctx context.Context) {
	d.publish() // a crashed run's status (ready, pids) is stale from here on
	KillStaleProxy(ctx, d.o.Dirs, d.pl.Name, d.log)
	if err := d.removeRules(ctx); err != nil {
		d.log.Warn("remove stale transparent-proxy rules", "err", err)
	}
}

// register waits for the agent and makes sure it holds the plan, with the
// check critical.
func (d *daemon) register(ctx context.Context) error {
	addr := register.Address(d.o.Global.Consul)
	d.status("waiting for the consul agent at " + addr)
	if err := d.waitAgent(ctx, addr); err != nil {
		return err
	}
	if err := d.loginAtStart(ctx); err != nil {
		return err
	}
	d.status("registering " + d.pl.ID)
	res, check, err := d.reg.EnsureCheck(ctx, d.pl, api.HealthCritical, false)
	if err != nil {
		d.m.AgentError("register")
		return err
	}
	d.log.Info("registration", "result", string(res), "check", check)
	if err := d.ownRegistration(ctx, d.pl, res, api.HealthCritical); err != nil {
		return err
	}
	// The agent keeps an existing check's status across re-registration, so a
	// check a killed meshx-proxy left passing would stay passing: make it
	// critical, explicitly, before holding interim criticals back.
	if check != api.HealthCritical {
		if err := ttl.Set(ctx, d.agent, d.pl.CheckID, ttl.Health{Status: api.HealthCritical,
			Output: "meshx-proxy starting: proxy not running yet"}); err != nil {
			d.log.Warn("set check critical at start", "err", err)
		}
	}
	return nil
}

// waitAgent waits for the agent as long as it takes, in rounds short enough
// that the watchdog sees the loop alive.
func (d *daemon) waitAgent(ctx context.Context, addr string) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := register.WaitAgent(wctx, d.agent, addr, 5*time.Second, d.log)
		cancel()
		d.touch()
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// heartbeat makes the TTL heartbeat of the plan's check.
func (d *daemon) heartbeat() (*ttl.Heartbeat, error) {
	return ttl.New(ttl.Options{Agent: agentRef{d}, CheckID: d.pl.CheckID, Interval: time.Duration(d.pl.Interval),
		Probe: d.probe, Logger: d.log, OnBeat: d.onBeat, Hold: d.holdWhileStarting(),
		Reregister: func(ctx context.Context, status string) error {
			if _, err := d.reg.Ensure(ctx, d.pl, status, false); err != nil {
				d.m.AgentError("register")
				return err
			}
			d.m.Resync(metrics.ResyncAgentLost)
			return nil
		}})
}

// startProxy makes and starts the plan's data plane (none for mode none).
func (d *daemon) startProxy(ctx context.Context) error {
	p, err := d.o.NewProxy(ProxyParams{Plan: d.pl, Logger: d.log, Consul: d.o.Global.Consul,
		PublicPort: d.publicPort, OnState: d.onProxyState, Metrics: d.m})
	if err != nil || p == nil {
		d.proxy = nil
		return err
	}
	d.status("starting proxy")
	if err := p.Start(ctx); err != nil {
		return err
	}
	d.proxy = p
	return nil
}

// stopProxy stops the data plane and waits for it; a no-op when none runs.
func (d *daemon) stopProxy() {
	if d.proxy != nil {
		d.proxy.Stop()
		d.proxy = nil
	}
}

// restartProxy stops the proxy and starts it again (new argv, env or
// token). A failed start ends the run: a service must not look healthy with
// no proxy behind it.
func (d *daemon) restartProxy(ctx context.Context) error {
	d.m.ProxyRestarted(metrics.RestartReconfigured)
	d.stopProxy()
	if err := d.startProxy(ctx); err != nil {
		return fmt.Errorf("restart proxy: %w", err)
	}
	return nil
}

func (d *daemon) onProxyState(s ProxyState) {
	d.m.ProxyState(s.State)
	d.mu.Lock()
	d.st.ProxyPID, d.st.ProxyState, d.st.Restarts = s.PID, s.State, s.Restarts
	d.mu.Unlock()
	d.publish()
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
	d.m.Ready(time.Since(d.started))
	d.status("ready: " + hl.Output)
}

func (d *daemon) onBeat(hl ttl.Health, err error) {
	if err == nil {
		d.m.Heartbeat(hl.Status, time.Now())
	} else {
		d.m.AgentError("ttl")
		d.noteRefused(err)
	}
	d.mu.Lock()
	before := d.st
	d.st.Health, d.st.Output = hl.Status, hl.Output
	if err != nil {
		d.st.Output = hl.Output + " (not written: " + err.Error() + ")"
		if d.loginErr != "" { // the token is refused and no new one could be had
			d.st.Health, d.st.Output = api.HealthCritical, d.loginErr
		}
	}
	changed := d.st.Health != before.Health || d.st.Output != before.Output
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

// shutdown undoes start in reverse: check critical, callers drained (see
// drain), proxy stopped, rules removed, deregistered. When the proxy gave up (loopErr != nil) the
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
	if err := ttl.Set(ctx, d.agent, d.pl.CheckID, ttl.Health{Status: api.HealthCritical, Output: why}); err != nil {
		d.log.Warn("set check critical", "err", err)
	}
	cancel()
	if loopErr == nil {
		d.drain()
	}
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
	ctx, cancel = step()
	d.logout(ctx)
	cancel()
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
