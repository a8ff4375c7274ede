package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

// withAgent is a host whose meshx.yaml (hostname h1, ports from 30000)
// points at a real dev agent of its own, and a client of that agent.
func withAgent(t *testing.T) (*host, *api.Client) {
	t.Helper()
	c := testutil.StartConsul(t, "")
	h := newHost(t)
	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: \"http://%s\"}\nhostname: h1\nports: {range: \"30000-30049\"}\n", c.HTTPAddr))
	cl, err := api.NewClient(&api.Config{Address: c.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	return h, cl
}

// agentHost is withAgent with web registered by `meshx-init run` (its TTL
// check critical until heartbeated).
func agentHost(t *testing.T) (*host, *api.Client) {
	t.Helper()
	h, cl := withAgent(t)
	h.write("services.d/web.yaml", "version: 1\nservice: {name: web, port: 8080}\n")
	if r := run(t, initMain, h.flags("run", "--systemd=no")...); r.code != ExitOK {
		t.Fatalf("meshx-init run: exit %d", r.code)
	}
	return h, cl
}

// readTTY collects what is written to a pseudo-terminal.
func readTTY(t *testing.T, master *os.File) *testutil.SyncBuffer {
	var out testutil.SyncBuffer
	go func() { _, _ = io.Copy(&out, master) }()
	return &out
}

// TestStatusColor: on a terminal the check's state is coloured, unless
// NO_COLOR is set; piped, never.
func TestStatusColor(t *testing.T) {
	h, _ := agentHost(t)
	const red = "\x1b[31mcritical\x1b[0m"
	t.Setenv("TERM", "xterm")

	// onTTY runs status on a new terminal and returns what it showed.
	onTTY := func(t *testing.T) string {
		master, tty := testutil.OpenPTY(t)
		out := readTTY(t, master)
		if code := InitMain(context.Background(), h.flags("status"), tty, io.Discard); code != ExitOK {
			t.Fatalf("exit %d", code)
		}
		testutil.Eventually(t, 5*time.Second, func() error {
			if !strings.Contains(out.String(), "critical") || !strings.HasSuffix(out.String(), "\r\n") {
				return fmt.Errorf("terminal shows %q, want the table with web's state", out.String())
			}
			return nil
		})
		return out.String()
	}
	t.Run("terminal", func(t *testing.T) {
		t.Setenv("NO_COLOR", "")
		if s := onTTY(t); !strings.Contains(s, red) {
			t.Errorf("web's state is not red on a terminal: %q", s)
		}
	})
	t.Run("terminal with NO_COLOR", func(t *testing.T) {
		t.Setenv("NO_COLOR", "1")
		if s := onTTY(t); strings.Contains(s, "\x1b") {
			t.Errorf("escape codes despite NO_COLOR: %q", s)
		}
	})
	t.Run("piped", func(t *testing.T) {
		t.Setenv("NO_COLOR", "")
		r := run(t, initMain, h.flags("status")...)
		if r.code != ExitOK || !strings.Contains(r.stdout, "critical") || strings.Contains(r.stdout, "\x1b") {
			t.Errorf("piped status: exit %d, %q; want the table without escape codes", r.code, r.stdout)
		}
	})
}

// TestStatusWatch: --watch refreshes until its context ends, shows what
// changed in the agent, and ends with exit 0; piped, the tables follow each
// other, on a terminal each one replaces the last.
func TestStatusWatch(t *testing.T) {
	h, cl := agentHost(t)
	watch := func(t *testing.T, stdout io.Writer, out *testutil.SyncBuffer) {
		t.Helper()
		if err := cl.Agent().UpdateTTL("meshx-ttl:web-h1", "", api.HealthCritical); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan int, 1)
		go func() { done <- InitMain(ctx, h.flags("status", "--watch", "--interval", "100ms"), stdout, io.Discard) }()
		testutil.Eventually(t, 10*time.Second, func() error {
			if !strings.Contains(out.String(), "critical") {
				return fmt.Errorf("no critical check shown yet: %q", out.String())
			}
			return nil
		})
		if err := cl.Agent().UpdateTTL("meshx-ttl:web-h1", "", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, func() error {
			if !strings.Contains(out.String(), "passing") {
				return fmt.Errorf("the check turned passing in the agent, the watch does not show it: %q", out.String())
			}
			return nil
		})
		cancel()
		select {
		case code := <-done:
			if code != ExitOK {
				t.Errorf("--watch ended with exit %d, want 0", code)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("--watch did not end when its context was cancelled")
		}
	}

	t.Run("piped", func(t *testing.T) {
		var out testutil.SyncBuffer
		watch(t, &out, &out)
		s := out.String()
		if n := strings.Count(s, "SERVICE"); n < 2 {
			t.Errorf("%d tables, want one per refresh:\n%s", n, s)
		}
		if !strings.Contains(s, "\n\nSERVICE") || strings.Contains(s, "\x1b") {
			t.Errorf("piped refreshes are not plain tables a blank line apart:\n%q", s)
		}
	})
	t.Run("terminal", func(t *testing.T) {
		t.Setenv("NO_COLOR", "")
		t.Setenv("TERM", "xterm")
		master, tty := testutil.OpenPTY(t)
		out := readTTY(t, master)
		watch(t, tty, out)
		if n := strings.Count(out.String(), "\x1b[H\x1b[2J"); n < 2 {
			t.Errorf("the screen was cleared %d times, want once per refresh:\n%q", n, out.String())
		}
	})
}

func TestStatusWatchInterval(t *testing.T) {
	h := newHost(t)
	for _, iv := range []string{"0s", "-1s"} {
		r := run(t, initMain, h.flags("status", "--watch", "--interval", iv)...)
		if r.code != ExitInvalid || !strings.Contains(r.stderr, "--interval must be positive") {
			t.Errorf("--interval %s: exit %d, stderr %q; want 2 and why", iv, r.code, r.stderr)
		}
	}
}
