package sidecar

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/process"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/supervisor"
	"github.com/meshx/meshx/internal/testutil"
)

// TestExecProxy drives the default data plane through its four steps with a
// real child process.
func TestExecProxy(t *testing.T) {
	open := listening(t)
	closed := testutil.FreePort(t)

	newProxy := func(t *testing.T, argv []string, maxRestarts int, port int) (Proxy, state.Dirs, *[]ProxyState, *sync.Mutex) {
		t.Helper()
		dirs := testDirs(t)
		pl := lifecyclePlan()
		pl.Proxy.Argv, pl.Proxy.MaxRestarts = argv, maxRestarts
		var mu sync.Mutex
		var states []ProxyState
		o, err := Options{Dirs: dirs, Global: &config.Global{}, Service: "web"}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		p, err := o.NewProxy(ProxyParams{Plan: pl, Logger: testutil.Logger(t),
			PublicPort: func(context.Context) (int, error) { return port, nil },
			OnState: func(s ProxyState) {
				mu.Lock()
				states = append(states, s)
				mu.Unlock()
			}})
		if err != nil || p == nil {
			t.Fatalf("NewProxy = %v, %v", p, err)
		}
		return p, dirs, &states, &mu
	}

	t.Run("no command, no data plane", func(t *testing.T) {
		o, _ := Options{Dirs: testDirs(t), Global: &config.Global{}, Service: "web"}.withDefaults()
		pl := lifecyclePlan()
		pl.Proxy.Argv = nil
		if p, err := o.NewProxy(ProxyParams{Plan: pl, Logger: testutil.Logger(t)}); p != nil || err != nil {
			t.Errorf("NewProxy = %v, %v; want nil, nil", p, err)
		}
	})

	t.Run("runs, accepts, stops", func(t *testing.T) {
		p, dirs, states, mu := newProxy(t, []string{"sleep", "30"}, 0, closed)
		if err := p.Accepting(context.Background()); err == nil || !strings.Contains(err.Error(), "proxy not running (stopped") {
			t.Errorf("Accepting before Start = %v", err)
		}
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		var pid int
		testutil.Eventually(t, 5*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			for _, s := range *states {
				if s.State == string(supervisor.StateRunning) && s.PID > 0 {
					pid = s.PID
					return nil
				}
			}
			return errors.New("not running yet")
		})
		b, err := os.ReadFile(dirs.ProxyPIDPath("web"))
		if err != nil || !strings.HasPrefix(string(b), strconv.Itoa(pid)+" ") {
			t.Errorf("pid file %q, %v; want the proxy's pid %d", b, err, pid)
		}
		if err := p.Accepting(context.Background()); err == nil || !strings.Contains(err.Error(), "proxy not accepting on port") {
			t.Errorf("Accepting with a closed public port = %v", err)
		}
		p.Stop()
		p.Stop() // again: nothing
		if process.Alive(pid) {
			t.Errorf("proxy %d still alive after Stop", pid)
		}
		select {
		case err := <-p.Exited():
			t.Errorf("Exited yielded %v after Stop", err)
		default:
		}
	})

	t.Run("accepting", func(t *testing.T) {
		p, _, _, _ := newProxy(t, []string{"sleep", "30"}, 0, open)
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		testutil.Eventually(t, 5*time.Second, func() error { return p.Accepting(context.Background()) })
	})

	t.Run("gives up", func(t *testing.T) {
		p, _, _, _ := newProxy(t, []string{"false"}, 1, open)
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		select {
		case err := <-p.Exited():
			if !errors.Is(err, supervisor.ErrGaveUp) {
				t.Errorf("Exited = %v, want ErrGaveUp", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the proxy never gave up")
		}
	})

	t.Run("token file unreadable", func(t *testing.T) {
		o, _ := Options{Dirs: testDirs(t), Global: &config.Global{}, Service: "web"}.withDefaults()
		if _, err := o.NewProxy(ProxyParams{Plan: lifecyclePlan(), Logger: testutil.Logger(t),
			Consul: config.Consul{TokenFile: "/nonexistent/token"}}); err == nil || !strings.Contains(err.Error(), "token file") {
			t.Errorf("NewProxy = %v, want a token-file error", err)
		}
	})

	t.Run("unknown user", func(t *testing.T) {
		o, _ := Options{Dirs: testDirs(t), Global: &config.Global{}, Service: "web"}.withDefaults()
		pl := lifecyclePlan()
		pl.Proxy.User = "meshx-no-such-user"
		if _, err := o.NewProxy(ProxyParams{Plan: pl, Logger: testutil.Logger(t)}); !errors.Is(err, ErrConfig) {
			t.Errorf("NewProxy = %v, want ErrConfig", err)
		}
	})
}
