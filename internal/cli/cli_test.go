package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/supervisor"
	"github.com/meshx/meshx/internal/testutil"
)

// host is a config dir, a state dir and a runtime dir; the state and runtime
// dirs are not created, so a test sees whether anything made them.
type host struct {
	t                     *testing.T
	config, state, runtim string
}

func newHost(t *testing.T) *host {
	t.Helper()
	root := t.TempDir()
	h := &host{t: t, config: filepath.Join(root, "etc"), state: filepath.Join(root, "state"), runtim: filepath.Join(root, "run")}
	// No agent listens here: these commands must not need one.
	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: \"http://127.0.0.1:%d\", wait: 1s}\nhostname: h1\n",
		testutil.FreePort(t)))
	return h
}

func (h *host) write(rel, content string) string {
	h.t.Helper()
	p := filepath.Join(h.config, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func (h *host) flags(args ...string) []string {
	return append([]string{"--config-dir", h.config, "--state-dir", h.state, "--runtime-dir", h.runtim}, args...)
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, main func(ctx context.Context, args []string, stdout, stderr *bytes.Buffer) int, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := main(context.Background(), args, &out, &errb)
	r := result{code, out.String(), errb.String()}
	t.Logf("%v -> %d\nstdout:\n%s\nstderr:\n%s", args, r.code, r.stdout, r.stderr)
	return r
}

func initMain(ctx context.Context, args []string, stdout, stderr *bytes.Buffer) int {
	return InitMain(ctx, args, stdout, stderr)
}

func proxyMain(ctx context.Context, args []string, stdout, stderr *bytes.Buffer) int {
	return ProxyMain(ctx, args, stdout, stderr, nil)
}

// TestUsageErrors: every way of calling a command wrongly exits 2 and says why.
func TestUsageErrors(t *testing.T) {
	h := newHost(t)
	h.write("services.d/web.yaml", "version: 1\nservice: {name: web}\n")
	cases := []struct {
		name string
		main func(context.Context, []string, *bytes.Buffer, *bytes.Buffer) int
		args []string
		want string // in stderr
	}{
		{"init unknown flag", initMain, h.flags("validate", "--bogus"), "unknown flag: --bogus"},
		{"init unknown global flag", initMain, []string{"--bogus", "validate"}, "unknown flag: --bogus"},
		{"init unknown command", initMain, h.flags("frobnicate"), `unknown command "frobnicate"`},
		{"init mistyped command", initMain, h.flags("validat"), "did you mean validate?"},
		{"validate with an argument", initMain, h.flags("validate", "web"), "expected no arguments"},
		{"run with an argument", initMain, h.flags("run", "web"), "expected no arguments"},
		{"status with an argument", initMain, h.flags("status", "web"), "expected no arguments"},
		{"stop without service", initMain, h.flags("stop"), "expected one service name"},
		{"stop with two services", initMain, h.flags("stop", "a", "b"), "expected one service name"},
		{"connect without upstream", initMain, h.flags("connect", "web"), "expected a service name and at least one upstream"},
		{"disconnect without anything", initMain, h.flags("disconnect"), "expected a service name and at least one upstream"},
		{"bad --systemd", initMain, h.flags("run", "--systemd=maybe"), `--systemd must be auto, yes or no, not "maybe"`},
		{"bad --log-level", initMain, h.flags("--log-level", "loud", "validate"), "--log-level"},
		{"bad --force value", initMain, h.flags("run", "--force=perhaps"), "invalid argument"},
		{"stop an unknown service", initMain, h.flags("stop", "nope"), `unknown service "nope"`},
		{"proxy without service", proxyMain, h.flags(), "expected one service name"},
		{"proxy with two services", proxyMain, h.flags("a", "b"), "expected one service name"},
		{"proxy unknown flag", proxyMain, h.flags("--bogus", "web"), "unknown flag: --bogus"},
		{"proxy bad --log-level", proxyMain, h.flags("--log-level", "loud", "web"), "--log-level"},
		{"proxy without a plan", proxyMain, h.flags("web"), "no rendered plan"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, tc.main, tc.args...)
			if r.code != ExitInvalid {
				t.Errorf("exit %d, want %d", r.code, ExitInvalid)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr lacks %q", tc.want)
			}
			if strings.Count(r.stderr, tc.want) > 1 {
				t.Errorf("the error is printed more than once")
			}
		})
	}
	if _, err := os.Stat(h.state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a usage error created the state dir: %v", err)
	}
}

func TestHelp(t *testing.T) {
	h := newHost(t)
	cases := []struct {
		prog string
		main func(context.Context, []string, *bytes.Buffer, *bytes.Buffer) int
		args []string
		want string
	}{
		{"meshx-init", initMain, []string{"--help"}, "Exit codes: 0 ok, 1 runtime failure, 2 bad input"},
		{"meshx-init", initMain, nil, "meshx-init [command]"},
		{"meshx-init", initMain, []string{"-h"}, "meshx-init [command]"},
		{"meshx-init", initMain, []string{"help"}, "meshx-init [command]"},
		{"meshx-init", initMain, []string{"validate", "--help"}, "meshx-init validate"},
		{"meshx-init", initMain, []string{"render", "--help"}, "meshx-init render [service...]"},
		{"meshx-init", initMain, []string{"run", "--help"}, "--systemd"},
		{"meshx-init", initMain, []string{"status", "--help"}, "--json"},
		{"meshx-init", initMain, []string{"stop", "--help"}, "meshx-init stop <service>"},
		{"meshx-init", initMain, []string{"connect", "--help"}, "meshx-init connect <service> <upstream>..."},
		{"meshx-init", initMain, []string{"disconnect", "--help"}, "meshx-init disconnect <service> <upstream>..."},
		{"meshx-init", initMain, []string{"help", "run"}, "--foreground"},
		{"meshx-proxy", proxyMain, []string{"--help"}, "--cleanup"},
		{"meshx-proxy", proxyMain, []string{"-h"}, "meshx-proxy <service>"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(append([]string{tc.prog}, tc.args...), " "), func(t *testing.T) {
			r := run(t, tc.main, h.flags(tc.args...)...)
			if r.code != ExitOK || !strings.Contains(r.stdout, tc.want) {
				t.Errorf("exit %d, stdout lacks %q", r.code, tc.want)
			}
			if r.stderr != "" {
				t.Errorf("help wrote to stderr: %s", r.stderr)
			}
		})
	}
	if _, err := os.Stat(h.state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--help created the state dir: %v", err)
	}
}

func TestValidate(t *testing.T) {
	t.Run("all good", func(t *testing.T) {
		h := newHost(t)
		web := h.write("services.d/web.yaml", "version: 1\nservice: {name: web, port: 8080}\nupstreams: [{name: db}]\n")
		api := h.write("services.d/api.json", `{"name": "api", "port": 9090}`)
		h.write("services.d/README.txt", "not a service-config")
		r := run(t, initMain, h.flags("validate")...)
		want := fmt.Sprintf("ok\t%s\tapi\tapi-h1\nok\t%s\tweb\tweb-h1\n", api, web)
		if r.code != ExitOK || r.stdout != want || r.stderr != "" {
			t.Errorf("exit %d, stdout:\n%s\nwant exit 0, stdout:\n%s", r.code, r.stdout, want)
		}
		noState(t, h)
	})

	t.Run("one broken file", func(t *testing.T) {
		h := newHost(t)
		web := h.write("services.d/web.yaml", "version: 1\nservice: {name: web}\n")
		bad := h.write("services.d/bad.yaml", "version: 1\nservice:\n  name: bad\n  port: eighty\n")
		r := run(t, initMain, h.flags("validate")...)
		if r.code != ExitInvalid {
			t.Errorf("exit %d, want 2", r.code)
		}
		if want := fmt.Sprintf("ok\t%s\tweb\tweb-h1\n", web); r.stdout != want {
			t.Errorf("stdout %q, want %q", r.stdout, want)
		}
		loc := regexp.MustCompile("(?m)^meshx-init: " + regexp.QuoteMeta(bad) + `:4: service\.port: must be a whole number, not the string "eighty"$`)
		if !loc.MatchString(r.stderr) {
			t.Errorf("stderr lacks the located error %s", loc)
		}
		noState(t, h)
	})

	t.Run("broken meshx.yaml", func(t *testing.T) {
		h := newHost(t)
		h.write("services.d/web.yaml", "version: 1\nservice: {name: web}\n")
		cfg := h.write("meshx.yaml", "version: 1\nports: {range: \"20000-10\"}\n")
		r := run(t, initMain, h.flags("validate")...)
		if r.code != ExitInvalid || !strings.Contains(r.stderr, cfg+":2: ports.range") || r.stdout != "" {
			t.Errorf("exit %d; want 2, nothing on stdout and the error located at %s:2", r.code, cfg)
		}
		noState(t, h)
	})
}

// rendered is the documented shape of `meshx-init render`.
type rendered struct {
	Service      string                        `json:"service"`
	File         string                        `json:"file"`
	Registration *api.AgentServiceRegistration `json:"registration"`
	ProxyArgv    []string                      `json:"proxy_argv"`
	Upstreams    []plan.Upstream               `json:"upstreams"`
}

func decodeRender(t *testing.T, out string) []rendered {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var got []rendered
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("render output is not the documented JSON: %v\n%s", err, out)
	}
	return got
}

func TestRender(t *testing.T) {
	h := newHost(t)
	web := h.write("services.d/web.yaml", "version: 1\nservice: {name: web, port: 8080, tags: [v1]}\nupstreams: [{name: db}]\n")
	h.write("services.d/api.yaml", "version: 1\nservice: {name: api, port: 9090}\nproxy: {mode: none}\n")

	r := run(t, initMain, h.flags("render")...)
	if r.code != ExitOK {
		t.Fatalf("exit %d", r.code)
	}
	got := decodeRender(t, r.stdout)
	if len(got) != 2 || got[0].Service != "api" || got[1].Service != "web" {
		t.Fatalf("services %+v, want api then web", got)
	}
	w := got[1]
	if w.File != web || w.Registration == nil || w.Registration.ID != "web-h1" || w.Registration.Port != 8080 ||
		w.Registration.Meta[plan.MetaManaged] != "true" || len(w.Registration.Tags) != 1 {
		t.Errorf("web's registration: %+v", w.Registration)
	}
	if len(w.ProxyArgv) == 0 || !strings.Contains(strings.Join(w.ProxyArgv, " "), "-sidecar-for web-h1") {
		t.Errorf("web's proxy argv %q", w.ProxyArgv)
	}
	if len(w.Upstreams) != 1 || w.Upstreams[0].Name != "db" || w.Upstreams[0].Port == 0 {
		t.Errorf("web's upstreams %+v", w.Upstreams)
	}
	if len(got[0].ProxyArgv) != 0 {
		t.Errorf("mode none has proxy argv %q", got[0].ProxyArgv)
	}

	// Rendering twice gives the same ports: the dry run allocates nothing.
	if again := run(t, initMain, h.flags("render")...); again.stdout != r.stdout {
		t.Errorf("a second render differs:\n%s", again.stdout)
	}
	if one := decodeRender(t, run(t, initMain, h.flags("render", "web")...).stdout); len(one) != 1 || one[0].Service != "web" {
		t.Errorf("render web gave %+v", one)
	}
	noState(t, h)

	t.Run("with a broken file", func(t *testing.T) {
		h.write("services.d/bad.yaml", "version: 1\nservice: {name: bad, colour: red}\n")
		r := run(t, initMain, h.flags("render")...)
		if r.code != ExitInvalid || !strings.Contains(r.stderr, "bad.yaml:2: service.colour: unknown field") {
			t.Errorf("exit %d; want 2 and the located error", r.code)
		}
		if got := decodeRender(t, r.stdout); len(got) != 2 {
			t.Errorf("the valid services are not all rendered: %+v", got)
		}
		noState(t, h)
	})
}

// noState fails when a command that changes nothing left anything in the
// state or runtime dir.
func noState(t *testing.T, h *host) {
	t.Helper()
	for _, d := range []string{h.state, h.runtim} {
		es, err := os.ReadDir(d)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if len(es) > 0 {
			t.Errorf("%s holds %d entries; want it absent or empty", d, len(es))
		}
	}
}

// TestProxyCleanupWithoutPlan: --cleanup is safe to run at any time, even for
// a service that was never rendered.
func TestProxyCleanupWithoutPlan(t *testing.T) {
	h := newHost(t)
	r := run(t, proxyMain, h.flags("--cleanup", "web")...)
	if r.code != ExitOK {
		t.Errorf("exit %d, want 0", r.code)
	}
}

// TestCancelledIsNotAnError: a run stopped by its context (SIGTERM in main)
// exits 0 without printing an error.
func TestCancelledIsNotAnError(t *testing.T) {
	h := newHost(t)
	h.write("services.d/web.yaml", "version: 1\nservice: {name: web}\n")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	code := InitMain(ctx, h.flags("run", "--systemd=no"), &out, &errb)
	if code != ExitOK || strings.Contains(errb.String(), "meshx-init:") {
		t.Errorf("exit %d, stderr:\n%s", code, errb.String())
	}
}

func TestExitCode(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, ExitOK},
		{"cancelled", fmt.Errorf("wait: %w", context.Canceled), ExitOK},
		{"usage", usageError{errors.New("bad flag")}, ExitInvalid},
		{"runtime", errors.New("agent unreachable"), ExitFailure},
		{"proxy gave up", fmt.Errorf("proxy: %w after 5 restarts", supervisor.ErrGaveUp), ExitGaveUp},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := exitCode(tc.err); got != tc.want {
				t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

// TestGuard: a panic in a main is a runtime failure (exit 1) with its
// stack on stderr, never Go's own exit code 2 ("bad input" for meshx).
func TestGuard(t *testing.T) {
	var errb bytes.Buffer
	code := Guard("meshx-init", &errb, func() int { panic("boom") })
	if code != ExitFailure || !strings.Contains(errb.String(), "meshx-init: internal error: panic: boom") ||
		!strings.Contains(errb.String(), "TestGuard") {
		t.Errorf("exit %d, stderr:\n%s", code, errb.String())
	}
	if code := Guard("meshx-init", &errb, func() int { return ExitInvalid }); code != ExitInvalid {
		t.Errorf("Guard changed a returned exit code: %d", code)
	}
}

// TestEmptyHost: with no service-config, the JSON outputs are empty lists,
// not null.
func TestEmptyHost(t *testing.T) {
	h := newHost(t)
	for _, args := range [][]string{{"render"}, {"render", "nope"}, {"status", "--json"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			r := run(t, initMain, h.flags(args...)...)
			if r.code != ExitOK || r.stdout != "[]\n" {
				t.Errorf("exit %d, stdout %q; want 0, \"[]\\n\"", r.code, r.stdout)
			}
		})
	}
	r := run(t, initMain, h.flags("validate")...)
	if r.code != ExitOK || r.stdout != "" {
		t.Errorf("validate: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestRenderNamespace: render shows what would be created for a namespaced
// service (its namespace, address, published port, resolv.conf) and creates
// nothing; netns up of a service without a plan is refused.
func TestRenderNamespace(t *testing.T) {
	h := newHost(t)
	h.write("meshx.yaml", "version: 1\nhostname: h1\nnetwork: {subnet: 198.19.240.0/24, host_address: 192.0.2.7}\n")
	h.write("services.d/web.yaml", "version: 1\nservice: {name: web, port: 8080}\nnetwork: {namespace: true}\n")
	r := run(t, initMain, h.flags("render")...)
	if r.code != ExitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var got []struct {
		Service      string                        `json:"service"`
		Registration *api.AgentServiceRegistration `json:"registration"`
		Netns        struct {
			Name       string `json:"name"`
			Path       string `json:"path"`
			Address    string `json:"address"`
			Gateway    string `json:"gateway"`
			ResolvConf string `json:"resolv_conf"`
			Publish    []struct {
				HostPort int `json:"host_port"`
			} `json:"publish"`
		} `json:"netns"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 1 {
		t.Fatalf("render: %v\n%s", err, r.stdout)
	}
	n, reg := got[0].Netns, got[0].Registration
	if n.Name != "meshx-web" || n.Path != "/run/netns/meshx-web" || n.Address != "198.19.240.2" || n.Gateway != "198.19.240.1" ||
		n.ResolvConf != "/etc/netns/meshx-web/resolv.conf" || len(n.Publish) != 1 {
		t.Errorf("netns %+v", n)
	}
	if side := reg.Connect.SidecarService; reg.Address != "192.0.2.7" || side.Address != "192.0.2.7" || side.Port != n.Publish[0].HostPort {
		t.Errorf("advertised %s and sidecar %s:%d, want 192.0.2.7 and the published port %+v", reg.Address, side.Address, side.Port, n.Publish)
	}
	noState(t, h)

	if r := run(t, initMain, h.flags("netns", "up", "nosuch")...); r.code == ExitOK || !strings.Contains(r.stderr, `unknown service "nosuch"`) {
		t.Errorf("netns up of a service without a plan: exit %d, %s", r.code, r.stderr)
	}
}
