package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/process"
	"github.com/meshx/meshx/internal/supervisor"
)

// fleet supervises one meshx-proxy child per service until ctx ends, for
// hosts and containers without systemd (run --foreground). A child that exits
// 0 (stopped by `meshx-init stop`) is not restarted; a failed one is, with
// backoff.
type fleet struct {
	ctx  context.Context
	env  Env
	o    RunOptions
	bin  string
	wg   sync.WaitGroup
	mu   sync.Mutex
	n    int
	errs []error
}

func newFleet(ctx context.Context, env Env, o RunOptions) (*fleet, error) {
	bin, err := proxyBinary(o.ProxyBinary)
	if err != nil {
		return nil, err
	}
	return &fleet{ctx: ctx, env: env, o: o, bin: bin}, nil
}

// start launches the supervised meshx-proxy of one service; safe to call from
// several goroutines.
func (f *fleet) start(pl *plan.Plan) {
	argv := append(append([]string{f.bin}, f.o.ProxyArgs...), pl.Name)
	sup, err := supervisor.New(supervisor.Options{
		Name: "meshx-proxy " + pl.Name, Argv: argv, Logger: f.env.Log.With("service", pl.Name),
		MaxRestarts: -1, StopTimeout: 30 * time.Second, BackoffMax: 10 * time.Second,
		Output: f.env.stderr(), // meshx-proxy logs structured lines of its own
		// Exit 2 is bad input (no plan, broken meshx.yaml) and 3 a proxy
		// that kept crashing until max_restarts: restarting cannot help,
		// as the unit's RestartPreventExitStatus=2 3 says.
		FinalExitCodes: []int{2, 3},
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.errs = append(f.errs, err)
		return
	}
	f.n++
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := sup.Run(f.ctx); err != nil {
			f.mu.Lock()
			f.errs = append(f.errs, fmt.Errorf("meshx-proxy %s: %w", pl.Name, err))
			f.mu.Unlock()
		}
	}()
}

// wait blocks until every child has stopped (after ctx ends).
func (f *fleet) wait() error {
	f.mu.Lock()
	fmt.Fprintf(f.env.Stdout, "supervising %d meshx-proxy process(es); stop with Ctrl-C\n", f.n)
	f.mu.Unlock()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}

func proxyBinary(p string) (string, error) {
	if p != "" {
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		cand := filepath.Join(filepath.Dir(self), "meshx-proxy")
		if _, err := os.Stat(cand); err == nil {
			return cand, nil
		}
	}
	return exec.LookPath("meshx-proxy")
}

// signalReload tells a running meshx-proxy that its plan changed (SIGHUP).
func signalReload(env Env, name string) {
	if st, ok := env.Dirs.LoadStatus(name); ok && st.Live() {
		if err := syscall.Kill(st.PID, syscall.SIGHUP); err == nil {
			env.Log.Info("asked meshx-proxy to reload its plan", "service", name, "pid", st.PID)
		}
	}
}

// stopProxy asks a running meshx-proxy to stop (it deregisters on the way
// out) and waits until it has (or has removed its status), SIGKILL after
// 30s or when ctx ends. It reports whether one was running.
func stopProxy(ctx context.Context, env Env, name string) bool {
	st, ok := env.Dirs.LoadStatus(name)
	if !ok {
		return false
	}
	statusGone := func() bool { _, ok := env.Dirs.LoadStatus(name); return !ok }
	killed, err := process.Stop(ctx, process.ID{PID: st.PID, Start: st.StartTime},
		process.StopOptions{Grace: 30 * time.Second, Done: statusGone})
	if errors.Is(err, process.ErrNotRunning) {
		return false
	}
	if err != nil || killed {
		env.Log.Warn("meshx-proxy did not stop within 30s; killed it", "service", name, "pid", st.PID, "err", err)
	}
	return true
}
