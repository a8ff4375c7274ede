// Package integration runs meshx's binaries against a real Consul agent and
// real built-in Connect proxies on loopback.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/testutil"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshx-bin-")
	if err != nil {
		panic(err)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/meshx/meshx/cmd/meshx-init",
		"github.com/meshx/meshx/cmd/meshx-proxy", "github.com/meshx/meshx/test/integration/fakeproxy",
		"github.com/meshx/meshx/test/integration/nsapp")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	// Proxies may run as an unprivileged user (proxy.user): let it in.
	if err := os.Chmod(dir, 0o755); err != nil {
		panic(err)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// host is one meshx installation: its dirs and its agent.
type host struct {
	t      testing.TB
	dirs   state.Dirs
	consul *testutil.Consul
	name   string
	netns  string // meshx runs in this network namespace; "" = the test's

	clientOnce sync.Once
	cl         *api.Client
}

// argv is how a meshx binary runs on the host: in its namespace, if any.
func (h *host) argv(bin string, args ...string) []string {
	argv := append([]string{filepath.Join(binDir, bin)}, args...)
	if h.netns != "" {
		argv = append([]string{"ip", "netns", "exec", h.netns}, argv...)
	}
	return argv
}

var rangeBase = 20000

// newHost makes config/state/runtime dirs and a meshx.yaml for the agent c,
// with a port range of its own (50 ports).
func newHost(t testing.TB, c *testutil.Consul, extraGlobal string) *host {
	t.Helper()
	root := t.TempDir()
	h := &host{t: t, consul: c, name: "testhost",
		dirs: state.Dirs{Config: root + "/etc", State: root + "/state", Runtime: root + "/run"}}
	lo := rangeBase
	rangeBase += 50
	if rangeBase > 20950 {
		rangeBase = 20000
	}
	addr := "http://127.0.0.1:1"
	if c != nil {
		addr = c.Address()
	}
	h.write("meshx.yaml", fmt.Sprintf(`version: 1
consul: {address: %q, binary: %q}
ports: {ip: 127.0.0.1, range: "%d-%d"}
hostname: %s
%s`, addr, testutil.ConsulBinary(t), lo, lo+49, h.name, extraGlobal))
	return h
}

func (h *host) write(rel, content string) string {
	h.t.Helper()
	p := filepath.Join(h.dirs.Config, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func (h *host) service(file, content string) string { return h.write("services.d/"+file, content) }

func (h *host) flags() []string {
	return []string{"--config-dir", h.dirs.Config, "--state-dir", h.dirs.State, "--runtime-dir", h.dirs.Runtime}
}

type result struct {
	code           int
	stdout, stderr string
}

// init runs meshx-init to completion.
func (h *host) init(args ...string) result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := h.argv("meshx-init", append(h.flags(), args...)...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatalf("meshx-init %v: %v", args, err)
	}
	h.t.Logf("meshx-init %s -> %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// foreground starts `meshx-init run --foreground` and stops it (SIGINT) when
// the test ends, failing if it leaves a process behind.
type fg struct {
	cmd  *exec.Cmd
	out  *testutil.SyncBuffer
	done chan struct{}
}

func (h *host) foreground() *fg {
	h.t.Helper()
	f := &fg{out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	argv := h.argv("meshx-init", append(h.flags(), "run", "--foreground", "--systemd=no")...)
	f.cmd = exec.Command(argv[0], argv[1:]...)
	f.cmd.Stdout, f.cmd.Stderr = f.out, f.out
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := f.cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() { _ = f.cmd.Wait(); close(f.done) }()
	h.t.Cleanup(func() {
		f.stop(h.t)
		h.t.Logf("foreground output:\n%s", f.out.String())
	})
	return f
}

// stop sends SIGINT and waits (30s) for meshx-init and all its children.
func (f *fg) stop(t testing.TB) {
	t.Helper()
	if !testutil.Interrupt(f.cmd.Process, f.done, 30*time.Second) {
		t.Errorf("meshx-init --foreground did not stop within 30s of SIGINT")
	}
}

// client is the test's one API client of the host's agent: a new client
// per call would leave its idle connections behind, and the agent answers
// 429 past 200 connections from one address.
func (h *host) client() *api.Client {
	h.t.Helper()
	h.clientOnce.Do(func() {
		cfg := api.DefaultConfig()
		cfg.Address = h.consul.Address()
		cl, err := api.NewClient(cfg)
		if err != nil {
			h.t.Fatal(err)
		}
		h.cl = cl
	})
	return h.cl
}

// checks returns the status of each meshx TTL check in the agent, by id.
func (h *host) checks() map[string]string {
	h.t.Helper()
	cs, err := h.client().Agent().Checks()
	out := map[string]string{}
	if err != nil {
		return out
	}
	for id, c := range cs {
		if strings.HasPrefix(id, "meshx-ttl:") {
			out[strings.TrimPrefix(id, "meshx-ttl:")] = c.Status
		}
	}
	return out
}

func (h *host) services() map[string]*api.AgentService {
	h.t.Helper()
	s, err := h.client().Agent().Services()
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *host) waitPassing(timeout time.Duration, ids ...string) {
	h.t.Helper()
	testutil.Eventually(h.t, timeout, func() error {
		cs := h.checks()
		for _, id := range ids {
			if cs[id] != api.HealthPassing {
				return fmt.Errorf("check of %s is %q (all: %v)", id, cs[id], cs)
			}
		}
		return nil
	})
}

func (h *host) plan(name string) *plan.Plan {
	h.t.Helper()
	p, err := h.dirs.LoadPlan(name)
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

func (h *host) status(name string) state.Status {
	st, _ := h.dirs.LoadStatus(name)
	return st
}

// app is a real HTTP server standing in for a service's application.
func startApp(t testing.TB, body string) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// get fetches http://127.0.0.1:port/ with a short timeout.
func get(port int) (string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), err
}

func waitBody(t testing.TB, timeout time.Duration, port int, want string) {
	t.Helper()
	testutil.Eventually(t, timeout, func() error {
		got, err := get(port)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("body %q, want %q", got, want)
		}
		return nil
	})
}

func procAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

func mustJSON(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// cacheDir is where scripts/build-consul.sh caches Consul.
func cacheDir() string {
	if d := os.Getenv("MESHX_CACHE"); d != "" {
		return d
	}
	return "/var/cache/meshx"
}
