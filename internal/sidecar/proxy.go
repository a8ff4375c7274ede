package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/meshx/meshx/internal/atomicfile"
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/process"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/supervisor"
)

// execProxy is the Proxy that supervises an external proxy process (the
// plan's proxy argv): restarts with backoff, SIGTERM then SIGKILL at stop,
// its pid recorded so that a killed meshx-proxy's proxy can be found later.
type execProxy struct {
	p       ProxyParams
	sup     *supervisor.Supervisor
	pidFile string
	exited  chan error // capacity 1: the supervisor gave up
	cancel  context.CancelFunc
	done    chan struct{} // closed when the supervisor's Run returned
	err     error         // Run's result at Stop, once done
}

// defaultProxies is the default Options.NewProxy: the in-process data plane
// for mode native, nil (no data plane) for a plan without a proxy command
// (mode none), else the supervised proxy process. o's Dirs, Global and
// ProxyStopTimeout are used.
func defaultProxies(o Options) func(ProxyParams) (Proxy, error) {
	return func(p ProxyParams) (Proxy, error) {
		if p.Plan.Proxy.Mode == config.ModeNative {
			return newNativeProxy(o, p)
		}
		return newExecProxy(o, p)
	}
}

func newExecProxy(o Options, p ProxyParams) (Proxy, error) {
	pl := p.Plan
	if len(pl.Proxy.Argv) == 0 {
		return nil, nil
	}
	// The token is read now: a proxy started after a rotation gets the new one.
	env, err := register.ProxyEnv(p.Consul, os.Environ())
	if err != nil {
		return nil, err
	}
	cred, err := credential(pl.Proxy.User)
	if err != nil {
		return nil, fmt.Errorf("%w: proxy.user: %w", ErrConfig, err)
	}
	e := &execProxy{p: p, pidFile: o.Dirs.ProxyPIDPath(pl.Name), exited: make(chan error, 1)}
	e.sup, err = supervisor.New(supervisor.Options{
		Name: "proxy", Argv: pl.Proxy.Argv, Env: env, Credential: cred,
		Logger: p.Logger.With("component", "proxy"), MaxRestarts: pl.Proxy.MaxRestarts,
		StopTimeout: o.ProxyStopTimeout, RestartOnSuccess: true,
		OnStateChange: e.onState, PreStart: func() error { return portsFree(pl) },
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

func (e *execProxy) Start(ctx context.Context) error {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel, e.done = cancel, make(chan struct{})
	go func() {
		defer close(e.done)
		err := e.sup.Run(sctx)
		if sctx.Err() == nil { // ended by itself, not by Stop: reported there
			e.exited <- err
			err = nil
		}
		e.err = err
	}()
	return nil
}

func (e *execProxy) Exited() <-chan error { return e.exited }

func (e *execProxy) Stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.cancel = nil
	if e.err != nil && !errors.Is(e.err, context.Canceled) {
		e.p.Logger.Warn("proxy stop", "err", e.err)
	}
}

func (e *execProxy) Accepting(ctx context.Context) error {
	s := e.sup.Status()
	if s.State != supervisor.StateRunning {
		return fmt.Errorf("proxy not running (%s, %d restarts; last exit: %s)", s.State, s.Restarts, orNone(s.LastExit))
	}
	return Listening(ctx, e.p.Plan, e.p.PublicPort)
}

func (e *execProxy) onState(s supervisor.Status) {
	if s.State == supervisor.StateRunning && s.PID > 0 {
		_, _ = atomicfile.WriteVolatile(e.pidFile, []byte(process.Of(s.PID).String()+"\n"), 0o644)
	}
	if e.p.OnState != nil {
		e.p.OnState(ProxyState{State: string(s.State), PID: s.PID, Restarts: s.Restarts})
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// credential resolves the user the proxy runs as; "" or our own user: nil.
func credential(name string) (*syscall.Credential, error) {
	if name == "" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == os.Geteuid() {
		return nil, nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("running the proxy as %s needs meshx-proxy to run as root", name)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// owner is what the rules exclude from redirection: the native plane's mark,
// or the proxy process's user.
func owner(pl *plan.Plan) Owner {
	if pl.Proxy.Mode == config.ModeNative {
		return Owner{Mark: NativeMark}
	}
	return Owner{UID: proxyUID(pl)}
}

// proxyUID is the uid the proxy process runs as.
func proxyUID(pl *plan.Plan) int {
	if pl.Proxy.User == "" {
		return os.Geteuid()
	}
	if u, err := user.Lookup(pl.Proxy.User); err == nil {
		n, _ := strconv.Atoi(u.Uid)
		return n
	}
	return os.Geteuid()
}

// KillStaleProxy ends a proxy a killed meshx-proxy left behind (crash-only
// start and ExecStopPost): the process recorded at its start, if it still
// runs (the recorded start time guards against a reused pid), gets SIGTERM
// then SIGKILL on its process group.
func KillStaleProxy(ctx context.Context, dirs state.Dirs, service string, log *slog.Logger) {
	path := dirs.ProxyPIDPath(service)
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	defer os.Remove(path)
	id, err := process.Parse(string(b))
	if err != nil || !id.Running() {
		return
	}
	log.Warn("stopping a proxy left by a previous meshx-proxy", "proxy_pid", id.PID)
	if _, err := process.Stop(ctx, id, process.StopOptions{Group: true, Grace: staleGrace}); err != nil && !errors.Is(err, process.ErrNotRunning) {
		log.Warn("stop a proxy left by a previous meshx-proxy", "proxy_pid", id.PID, "err", err)
	}
}

// staleGrace is how long a left-behind proxy gets between SIGTERM and SIGKILL.
const staleGrace = 5 * time.Second

// portsFree is the proxy's precondition: no other process holds a port it
// is to listen on. Such a proxy could not bind it, and the probe, dialling the
// port, would reach the other process and look healthy. A failure counts as a
// failed start (restarts with backoff), and the check's output names the port.
func portsFree(pl *plan.Plan) error {
	var errs []error
	check := func(what string, ip netip.Addr, port int) {
		if port <= 0 {
			return
		}
		switch err := ports.Listenable(ip, port); {
		case errors.Is(err, syscall.EADDRINUSE):
			errs = append(errs, fmt.Errorf("port %d (%s) is in use by another process", port, what))
		case err != nil:
			errs = append(errs, fmt.Errorf("port %d (%s): %w", port, what, err))
		}
	}
	// The public listener binds every address unless told otherwise.
	check("public mTLS listener", netip.IPv4Unspecified(), pl.SidecarPort)
	for _, u := range pl.Upstreams {
		ip, err := netip.ParseAddr(u.Address)
		if err != nil {
			ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		check("upstream "+u.Name+" listener", ip, u.Port)
	}
	return errors.Join(errs...)
}
