package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/supervisor"
	"github.com/meshx/meshx/internal/ttl"
)

func (d *daemon) newSupervisor() (*supervisor.Supervisor, error) {
	env, err := register.ProxyEnv(d.o.Global.Consul, os.Environ())
	if err != nil {
		return nil, err
	}
	cred, err := credential(d.pl.Proxy.User)
	if err != nil {
		return nil, fmt.Errorf("%w: proxy.user: %w", ErrConfig, err)
	}
	return supervisor.New(supervisor.Options{
		Name: "proxy", Argv: d.pl.Proxy.Argv, Env: env, Credential: cred,
		Logger: d.log.With("component", "proxy"), MaxRestarts: d.pl.Proxy.MaxRestarts,
		StopTimeout: d.o.ProxyStopTimeout, RestartOnSuccess: true,
		OnStateChange: d.onProxyState, PreStart: d.portsFree,
	})
}

func (d *daemon) onProxyState(s supervisor.Status) {
	d.mu.Lock()
	d.st.ProxyPID, d.st.ProxyState, d.st.Restarts = s.PID, string(s.State), s.Restarts
	d.mu.Unlock()
	if s.State == supervisor.StateRunning && s.PID > 0 {
		rec := fmt.Sprintf("%d %s\n", s.PID, state.ProcStart(s.PID))
		_, _ = state.WriteRuntimeFile(d.o.Dirs.ProxyPIDPath(d.o.Service), []byte(rec), 0o644)
	}
	d.publish()
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
func (d *daemon) owner() Owner {
	if d.native() {
		return Owner{Mark: NativeMark}
	}
	return Owner{UID: d.proxyUID()}
}

func (d *daemon) proxyUID() int {
	if d.pl.Proxy.User == "" {
		return os.Geteuid()
	}
	if u, err := user.Lookup(d.pl.Proxy.User); err == nil {
		n, _ := strconv.Atoi(u.Uid)
		return n
	}
	return os.Geteuid()
}

// probe computes the service's health from the parts traffic needs.
func (d *daemon) probe(ctx context.Context) ttl.Health {
	crit := func(format string, a ...any) ttl.Health {
		return ttl.Health{Status: api.HealthCritical, Output: fmt.Sprintf(format, a...)}
	}
	d.mu.Lock()
	tokenProblem := d.tokenProblem
	d.mu.Unlock()
	if tokenProblem != nil {
		return crit("%v", tokenProblem)
	}
	switch {
	case d.native():
		if d.plane == nil {
			return crit("native data plane not running")
		}
		select {
		case <-d.plane.Ready():
		default:
			return crit("native data plane waiting for its certificate, the CA roots and the intentions")
		}
		if h, ok := d.listenersAccept(ctx); !ok {
			return h
		}
	case len(d.pl.Proxy.Argv) > 0:
		if d.sup == nil {
			return crit("proxy not running (not started)")
		}
		s := d.sup.Status()
		if s.State != supervisor.StateRunning {
			return crit("proxy not running (%s, %d restarts; last exit: %s)", s.State, s.Restarts, orNone(s.LastExit))
		}
		if h, ok := d.listenersAccept(ctx); !ok {
			return h
		}
	}
	if d.pl.Probe == "tcp" {
		if err := dial(ctx, d.pl.Address, d.pl.Port); err != nil {
			return crit("app not reachable at %s:%d: %v", d.pl.Address, d.pl.Port, err)
		}
		return ttl.Health{Status: api.HealthPassing, Output: fmt.Sprintf("proxy running, app reachable at %s:%d", d.pl.Address, d.pl.Port)}
	}
	return ttl.Health{Status: api.HealthPassing, Output: "proxy running"}
}

// listenersAccept checks that the public listener and every upstream
// listener accept a connection.
func (d *daemon) listenersAccept(ctx context.Context) (ttl.Health, bool) {
	crit := func(format string, a ...any) (ttl.Health, bool) {
		return ttl.Health{Status: api.HealthCritical, Output: fmt.Sprintf(format, a...)}, false
	}
	port, err := d.publicPort(ctx)
	if err != nil {
		return crit("sidecar %s: %v", d.pl.SidecarID, err)
	}
	if err := dial(ctx, "127.0.0.1", port); err != nil {
		return crit("proxy not accepting on port %d: %v", port, err)
	}
	for _, u := range d.pl.Upstreams {
		if err := dial(ctx, u.Address, u.Port); err != nil {
			return crit("upstream %s listener %s:%d not accepting: %v", u.Name, u.Address, u.Port, err)
		}
	}
	return ttl.Health{}, true
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// publicPort is the sidecar's public (mTLS) port: pinned in the plan, else
// (a plan from an older meshx) as the agent assigned it.
func (d *daemon) publicPort(ctx context.Context) (int, error) {
	if d.pl.SidecarPort != 0 {
		return d.pl.SidecarPort, nil
	}
	d.mu.Lock()
	p := d.sidecarPort
	d.mu.Unlock()
	if p != 0 {
		return p, nil
	}
	s, _, err := d.cl.Agent().Service(d.pl.SidecarID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	d.sidecarPort = s.Port
	d.mu.Unlock()
	return s.Port, nil
}

func dial(ctx context.Context, host string, port int) error {
	if host == "" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			return oe.Err
		}
		return err
	}
	return c.Close()
}

// KillStaleProxy ends a proxy a killed meshx-proxy left behind (crash-only
// start and ExecStopPost): the pid recorded at its start, if it still runs the
// same program, gets SIGTERM then SIGKILL on its process group.
func KillStaleProxy(dirs state.Dirs, service string, log *slog.Logger) {
	path := dirs.ProxyPIDPath(service)
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	defer os.Remove(path)
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return
	}
	pid, err := strconv.Atoi(f[0])
	// The recorded start time guards against a reused pid.
	if err != nil || pid <= 1 || state.ProcStart(pid) != f[1] {
		return
	}
	log.Warn("stopping a proxy left by a previous meshx-proxy", "proxy_pid", pid)
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	for i := 0; i < 50 && state.ProcAlive(pid); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if state.ProcAlive(pid) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// portsFree is the proxy's precondition: no other process holds a port it
// is to listen on. Such a proxy could not bind it, and the probe, dialling the
// port, would reach the other process and look healthy. A failure counts as a
// failed start (restarts with backoff), and the check's output names the port.
func (d *daemon) portsFree() error {
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
	check("public mTLS listener", netip.IPv4Unspecified(), d.pl.SidecarPort)
	for _, u := range d.pl.Upstreams {
		ip, err := netip.ParseAddr(u.Address)
		if err != nil {
			ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		check("upstream "+u.Name+" listener", ip, u.Port)
	}
	return errors.Join(errs...)
}
