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
	"github.com/meshx/meshx/internal/supervisor"
)

// foreground supervises one meshx-proxy child per service until ctx ends,
// for hosts and containers without systemd. A child that exits 0 (stopped by
// `meshx-init stop`) is not restarted; a failed one is, with backoff.
func foreground(ctx context.Context, env Env, plans []*plan.Plan, o RunOptions) error {
	bin, err := proxyBinary(o.ProxyBinary)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(plans))
	for i, pl := range plans {
		argv := append(append([]string{bin}, o.ProxyArgs...), pl.Name)
		sup, err := supervisor.New(supervisor.Options{
			Name: "meshx-proxy " + pl.Name, Argv: argv, Logger: env.Log.With("service", pl.Name),
			MaxRestarts: -1, StopTimeout: 30 * time.Second, BackoffMax: 10 * time.Second,
			Output: os.Stderr, // meshx-proxy logs structured lines of its own
		})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sup.Run(ctx); err != nil {
				errs[i] = fmt.Errorf("meshx-proxy %s: %w", pl.Name, err)
			}
		}()
	}
	fmt.Fprintf(env.Stdout, "supervising %d meshx-proxy process(es); stop with Ctrl-C\n", len(plans))
	wg.Wait()
	return errors.Join(errs...)
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
	if st, ok := env.Dirs.LoadStatus(name); ok && st.PID > 0 {
		if err := syscall.Kill(st.PID, syscall.SIGHUP); err == nil {
			env.Log.Info("asked meshx-proxy to reload its plan", "service", name, "pid", st.PID)
		}
	}
}

// stopProxy asks a running meshx-proxy to stop (it deregisters on the way
// out) and waits up to 30s for it to go. It reports whether one was running.
func stopProxy(env Env, name string) bool {
	st, ok := env.Dirs.LoadStatus(name)
	if !ok || st.PID <= 0 || syscall.Kill(st.PID, syscall.SIGTERM) != nil {
		return false
	}
	for i := 0; i < 300; i++ {
		if syscall.Kill(st.PID, 0) != nil {
			return true
		}
		if _, ok := env.Dirs.LoadStatus(name); !ok {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	env.Log.Warn("meshx-proxy did not stop within 30s", "service", name, "pid", st.PID)
	return true
}
