package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/atomicfile"
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/process"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/testutil"
	"github.com/meshx/meshx/internal/ttl"
)

func testDirs(t *testing.T) state.Dirs {
	root := t.TempDir()
	return state.Dirs{Config: filepath.Join(root, "etc"), State: filepath.Join(root, "state"), Runtime: filepath.Join(root, "run")}
}

func ups(keys ...string) *plan.Plan {
	pl := &plan.Plan{}
	for _, k := range keys {
		pl.Upstreams = append(pl.Upstreams, plan.Upstream{Key: k, Name: k})
	}
	return pl
}

func TestUpstreamRemoved(t *testing.T) {
	cases := []struct {
		name     string
		old, cur *plan.Plan
		want     bool
	}{
		{"none before or after", ups(), ups(), false},
		{"same", ups("db", "cache"), ups("db", "cache"), false},
		{"reordered", ups("db", "cache"), ups("cache", "db"), false},
		{"one added", ups("db"), ups("db", "cache"), false},
		{"one removed", ups("db", "cache"), ups("db"), true},
		{"all removed", ups("db"), ups(), true},
		{"one replaced", ups("db"), ups("cache"), true},
		{"datacenter changed is another key", ups("db"), ups("db@dc2"), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := upstreamRemoved(tc.old, tc.cur); got != tc.want {
				t.Errorf("upstreamRemoved = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCredential(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", me.Username} {
		if c, err := credential(name); c != nil || err != nil {
			t.Errorf("credential(%q) = %+v, %v; want nil, nil", name, c, err)
		}
	}
	if _, err := credential("meshx-no-such-user"); err == nil {
		t.Error("credential of an unknown user: no error")
	}
	other, err := user.Lookup("nobody")
	if err != nil || other.Uid == me.Uid {
		t.Skip("no user nobody to switch to")
	}
	c, err := credential("nobody")
	if os.Geteuid() != 0 {
		if err == nil || !strings.Contains(err.Error(), "needs meshx-proxy to run as root") {
			t.Errorf("credential(nobody) as non-root = %+v, %v; want an error", c, err)
		}
		return
	}
	if err != nil || c == nil || strconv.Itoa(int(c.Uid)) != other.Uid || strconv.Itoa(int(c.Gid)) != other.Gid || c.Groups == nil || len(c.Groups) != 0 {
		t.Errorf("credential(nobody) = %+v, %v; want uid/gid %s/%s and no supplementary groups", c, err, other.Uid, other.Gid)
	}
}

// TestKillStaleProxy: a recorded proxy is killed only when its pid still
// runs the process that started at the recorded time.
func TestKillStaleProxy(t *testing.T) {
	write := func(t *testing.T, d state.Dirs, rec string) string {
		t.Helper()
		p := d.ProxyPIDPath("web")
		if _, err := atomicfile.WriteVolatile(p, []byte(rec), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gone := func(p string) bool { _, err := os.Stat(p); return errors.Is(err, os.ErrNotExist) }

	t.Run("a reused pid is left alone", func(t *testing.T) {
		d := testDirs(t)
		pid, done := testutil.Spawn(t, "sleep", "30")
		st := process.StartTime(pid)
		n, _ := strconv.Atoi(st)
		p := write(t, d, fmt.Sprintf("%d %d\n", pid, n+1))
		KillStaleProxy(context.Background(), d, "web", testutil.Logger(t))
		select {
		case <-done:
			t.Fatal("a process with another start time was killed")
		default:
		}
		if !process.Alive(pid) || !gone(p) {
			t.Errorf("alive %v, pid file removed %v; want true, true", process.Alive(pid), gone(p))
		}
	})

	t.Run("the recorded proxy is killed", func(t *testing.T) {
		d := testDirs(t)
		pid, done := testutil.Spawn(t, "sleep", "30")
		p := write(t, d, fmt.Sprintf("%d %s\n", pid, process.StartTime(pid)))
		KillStaleProxy(context.Background(), d, "web", testutil.Logger(t))
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the stale proxy still runs")
		}
		if !gone(p) {
			t.Error("pid file left")
		}
	})

	t.Run("one that ignores SIGTERM gets SIGKILL", func(t *testing.T) {
		d := testDirs(t)
		pid, done := testutil.Spawn(t, "sh", "-c", `trap "" TERM; exec sleep 30`)
		testutil.Eventually(t, 5*time.Second, func() error { // the trap is set once sh has become sleep
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); string(b) != "sleep\n" {
				return fmt.Errorf("comm is %q", b)
			}
			return nil
		})
		write(t, d, fmt.Sprintf("%d %s\n", pid, process.StartTime(pid)))
		start := time.Now()
		KillStaleProxy(context.Background(), d, "web", testutil.Logger(t))
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the stale proxy still runs")
		}
		t.Logf("killed after %s", time.Since(start).Round(time.Millisecond))
	})

	for _, rec := range []string{"", "garbage", "12 34 56\n", "1 " + process.StartTime(1) + "\n", "0 0\n", "-5 0\n", "x 1\n"} {
		t.Run(fmt.Sprintf("bad record %q", rec), func(t *testing.T) {
			d := testDirs(t)
			p := write(t, d, rec)
			KillStaleProxy(context.Background(), d, "web", testutil.Logger(t))
			if !gone(p) || !process.Alive(1) {
				t.Errorf("pid file removed %v, init alive %v", gone(p), process.Alive(1))
			}
		})
	}

	t.Run("no record", func(t *testing.T) {
		KillStaleProxy(context.Background(), testDirs(t), "web", testutil.Logger(t))
	})
}

// fakeRules is a Redirector that records calls.
type fakeRules struct {
	applied  []int // inbound ports
	removed  int
	applyErr error
	rmErr    error
}

func (f *fakeRules) Apply(_ context.Context, _ *config.Transparent, inbound int, _ Owner) error {
	if f.applyErr != nil {
		return f.applyErr
	}
	f.applied = append(f.applied, inbound)
	return nil
}

func (f *fakeRules) Remove(context.Context) error {
	if f.rmErr != nil {
		return f.rmErr
	}
	f.removed++
	return nil
}

// testDaemon is a daemon with no agent: enough for readiness, rules and probes.
func testDaemon(t *testing.T, pl *plan.Plan, r Redirector) (*daemon, *[]string) {
	t.Helper()
	var notes []string
	o := Options{Dirs: testDirs(t), Service: pl.Name, Notify: func(s string) { notes = append(notes, s) }}
	built := 0
	if r != nil {
		o.NewRedirector = func() (Redirector, error) {
			if built++; built > 1 {
				t.Error("the rule backend was made twice")
			}
			return r, nil
		}
	}
	d := &daemon{o: o, pl: pl, log: testutil.Logger(t)}
	d.st = state.Status{Service: pl.Name, ID: pl.ID, PID: os.Getpid(), Health: api.HealthCritical}
	return d, &notes
}

func webPlan(transparent bool) *plan.Plan {
	pl := &plan.Plan{Name: "web", ID: "web-h1", SidecarID: "web-h1-sidecar-proxy", SidecarPort: 21000, CheckID: "meshx-ttl:web-h1"}
	if transparent {
		pl.Transparent = &config.Transparent{OutboundPort: 15001}
	}
	return pl
}

func TestHoldWhileStarting(t *testing.T) {
	d, _ := testDaemon(t, webPlan(false), nil)
	hold := d.holdWhileStarting()
	for _, tc := range []struct {
		status string
		want   bool
	}{{api.HealthCritical, true}, {api.HealthWarning, false}, {api.HealthPassing, false}} {
		if got := hold(ttl.Health{Status: tc.status}); got != tc.want {
			t.Errorf("starting: hold(%s) = %v, want %v", tc.status, got, tc.want)
		}
	}
	d.mu.Lock()
	d.st.Ready = true
	d.mu.Unlock()
	if hold(ttl.Health{Status: api.HealthCritical}) {
		t.Error("ready: a critical health is still held")
	}
}

func TestMaybeReady(t *testing.T) {
	passing := ttl.Health{Status: api.HealthPassing, Output: "proxy running"}
	cases := []struct {
		name        string
		transparent bool
		rules       *fakeRules
		hl          ttl.Health
		err         error
		ready       bool
		applied     int
	}{
		{"passing", false, nil, passing, nil, true, 0},
		{"critical", false, nil, ttl.Health{Status: api.HealthCritical}, nil, false, 0},
		{"warning", false, nil, ttl.Health{Status: api.HealthWarning}, nil, false, 0},
		{"passing but not written", false, nil, passing, errors.New("agent down"), false, 0},
		{"transparent: rules first", true, &fakeRules{}, passing, nil, true, 1},
		{"transparent: rules fail", true, &fakeRules{applyErr: errors.New("iptables-restore: exit 1")}, passing, nil, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r Redirector
			if tc.rules != nil {
				r = tc.rules
			}
			d, notes := testDaemon(t, webPlan(tc.transparent), r)
			d.sidecarPort = 21000
			for range 2 { // a second passing beat changes nothing
				d.maybeReady(context.Background(), tc.hl, tc.err)
			}
			ready := strings.Count(strings.Join(*notes, "\n"), "READY=1")
			if d.isReady() != tc.ready || ready != map[bool]int{true: 1, false: 0}[tc.ready] {
				t.Errorf("ready %v with %d READY=1; want %v (notes %q)", d.isReady(), ready, tc.ready, *notes)
			}
			st, ok := d.o.Dirs.LoadStatus("web")
			if tc.ready && (!ok || !st.Ready) {
				t.Errorf("published status %+v, %v; want ready", st, ok)
			}
			if tc.rules != nil {
				if len(tc.rules.applied) != tc.applied || tc.applied > 0 && tc.rules.applied[0] != 21000 {
					t.Errorf("rules applied %v, want %d time(s) on port 21000", tc.rules.applied, tc.applied)
				}
				// Marked before applying, so that a crash half-way still removes them.
				if !fileExists(rulesMarker(d.o.Dirs, "web")) {
					t.Error("no rules marker")
				}
			}
		})
	}
}

func TestRemoveRules(t *testing.T) {
	t.Run("none planned, none marked: no backend needed", func(t *testing.T) {
		d, _ := testDaemon(t, webPlan(false), nil)
		if err := d.removeRules(context.Background()); err != nil {
			t.Error(err)
		}
	})
	t.Run("marked by an earlier run", func(t *testing.T) {
		r := &fakeRules{}
		d, _ := testDaemon(t, webPlan(false), r)
		if _, err := atomicfile.WriteVolatile(rulesMarker(d.o.Dirs, "web"), []byte("installed\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := d.removeRules(context.Background()); err != nil || r.removed != 1 {
			t.Errorf("removeRules = %v after %d removals; want nil after 1", err, r.removed)
		}
		if fileExists(rulesMarker(d.o.Dirs, "web")) {
			t.Error("marker left after a removal")
		}
	})
	t.Run("planned, removal fails: marker kept", func(t *testing.T) {
		r := &fakeRules{rmErr: errors.New("iptables: resource busy")}
		d, _ := testDaemon(t, webPlan(true), r)
		if err := d.applyRules(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // the removal runs to the end even when its context is done
		if err := d.removeRules(ctx); !errors.Is(err, r.rmErr) {
			t.Errorf("removeRules = %v, want the backend's error", err)
		}
		if !fileExists(rulesMarker(d.o.Dirs, "web")) || !d.rulesIn {
			t.Error("a failed removal forgot the rules")
		}
		r.rmErr = nil
		if err := d.removeRules(ctx); err != nil || r.removed != 1 || d.rulesIn {
			t.Errorf("removeRules = %v, removed %d, rulesIn %v", err, r.removed, d.rulesIn)
		}
	})
	t.Run("planned but no backend", func(t *testing.T) {
		d, _ := testDaemon(t, webPlan(true), nil)
		if err := d.removeRules(context.Background()); !errors.Is(err, ErrConfig) {
			t.Errorf("removeRules = %v, want ErrConfig", err)
		}
	})
}

// TestProbeWithoutProxy: with no proxy (mode none) health is the app's.
func TestProbeWithoutProxy(t *testing.T) {
	open := listening(t)
	closed := testutil.FreePort(t)
	cases := []struct {
		name, probe, address string
		port                 int
		status, output       string
	}{
		{"tcp, app up", "tcp", "127.0.0.1", open, api.HealthPassing, fmt.Sprintf("app reachable at 127.0.0.1:%d", open)},
		{"tcp, empty address means loopback", "tcp", "", open, api.HealthPassing, "app reachable"},
		{"tcp, app down", "tcp", "127.0.0.1", closed, api.HealthCritical, fmt.Sprintf("app not reachable at 127.0.0.1:%d: connect: connection refused", closed)},
		{"none", "none", "127.0.0.1", closed, api.HealthPassing, "proxy running"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pl := webPlan(false)
			pl.Probe, pl.Address, pl.Port = tc.probe, tc.address, tc.port
			d, _ := testDaemon(t, pl, nil)
			h := d.probe(context.Background())
			if h.Status != tc.status || !strings.Contains(h.Output, tc.output) {
				t.Errorf("probe = %+v, want %s with %q", h, tc.status, tc.output)
			}
		})
	}
}

// TestCleanupWithoutPlan: --cleanup for a service never rendered removes its
// published status and a stale proxy, and needs no rule backend.
func TestCleanupWithoutPlan(t *testing.T) {
	d := testDirs(t)
	if err := d.SaveStatus(state.Status{Service: "web", PID: 1}); err != nil {
		t.Fatal(err)
	}
	pid, done := testutil.Spawn(t, "sleep", "30")
	if _, err := atomicfile.WriteVolatile(d.ProxyPIDPath("web"), []byte(fmt.Sprintf("%d %s\n", pid, process.StartTime(pid))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(context.Background(), d, "web", "", testutil.Logger(t)); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.LoadStatus("web"); ok {
		t.Error("status left")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("stale proxy left running")
	}
}

// listening returns a loopback port that accepts until the test ends.
func listening(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}
