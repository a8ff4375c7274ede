package boot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/agenttest"
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/process"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/testutil"
)

// fakeEnv is testEnv with an in-memory agent behind Env.Connect and stderr
// captured.
func fakeEnv(t *testing.T, extra string) (Env, *agenttest.Agent, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	env, out := testEnv(t, extra)
	ag := agenttest.New()
	var errOut bytes.Buffer
	env.Stderr = &errOut
	env.Connect = func(config.Consul) (register.Agent, error) { return ag.Client(""), nil }
	return env, ag, out, &errOut
}

// writes keeps the calls that change something, in order.
func writes(calls []string) []string {
	var out []string
	for _, c := range calls {
		k, _, _ := strings.Cut(c, " ")
		if k == "register" || k == "deregister" || k == "ttl" {
			out = append(out, c)
		}
	}
	return out
}

func TestRunWithFakeAgent(t *testing.T) {
	env, ag, out, errOut := fakeEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080}\n")
	service(t, env, "api.yaml", "version: 1\nservice: {name: api, port: 8081}\nupstreams: [{name: web}]\n")
	service(t, env, "bad.yaml", "version: 1\nservice: {name: bad, port: eighty}\n")
	ctx := context.Background()
	o := RunOptions{Systemd: "no"}

	t.Run("first run registers the valid services, reports the broken one", func(t *testing.T) {
		err := Run(ctx, env, o)
		if !errors.Is(err, ErrBroken) {
			t.Fatalf("Run = %v, want ErrBroken", err)
		}
		got := writes(ag.Calls())
		slices.Sort(got) // registrations run a few at a time
		if want := []string{"register api-h1 critical", "register web-h1 critical"}; !slices.Equal(got, want) {
			t.Errorf("writes %q, want %q", got, want)
		}
		if s := ag.ServiceByID("web-h1-sidecar-proxy"); s == nil {
			t.Error("no sidecar registered for web")
		}
		for _, w := range []string{"api\tapi-h1\tport 8081\tregistered\n", "web\tweb-h1\tport 8080\tregistered\n"} {
			if !strings.Contains(out.String(), w) {
				t.Errorf("stdout %q lacks %q", out, w)
			}
		}
		if !strings.Contains(errOut.String(), "bad.yaml") || !strings.Contains(errOut.String(), "service.port") {
			t.Errorf("stderr %q does not report bad.yaml's service.port", errOut)
		}
		if names, _ := env.Dirs.PlanNames(); !slices.Equal(names, []string{"api", "web"}) {
			t.Errorf("saved plans %q", names)
		}
	})

	t.Run("a re-run changes nothing", func(t *testing.T) {
		before := len(ag.Calls())
		out.Reset()
		if err := Run(ctx, env, o); !errors.Is(err, ErrBroken) {
			t.Fatalf("Run = %v", err)
		}
		if w := writes(ag.Calls()[before:]); len(w) != 0 {
			t.Errorf("a re-run wrote %q", w)
		}
		if strings.Count(out.String(), "\tunchanged\n") != 2 {
			t.Errorf("stdout %q, want two unchanged", out)
		}
	})

	t.Run("a removed config is deregistered and forgotten", func(t *testing.T) {
		if err := os.Remove(filepath.Join(config.ServicesDir(env.Dirs.Config), "api.yaml")); err != nil {
			t.Fatal(err)
		}
		before := len(ag.Calls())
		out.Reset()
		if err := Run(ctx, env, o); !errors.Is(err, ErrBroken) {
			t.Fatalf("Run = %v", err)
		}
		if w, want := writes(ag.Calls()[before:]), []string{"deregister api-h1-sidecar-proxy", "deregister api-h1"}; !slices.Equal(w, want) {
			t.Errorf("writes %q, want %q", w, want)
		}
		if !strings.Contains(out.String(), "api\tapi-h1\t-\tderegistered (config gone)") {
			t.Errorf("stdout %q", out)
		}
		if _, err := env.Dirs.LoadPlan("api"); err == nil {
			t.Error("api's plan kept")
		}
	})

	t.Run("an owned registration with no config at all is removed", func(t *testing.T) {
		ag.Register(&api.AgentServiceRegistration{ID: "old-h1", Name: "old",
			Meta: map[string]string{plan.MetaManaged: "true", plan.MetaHost: "h1", plan.MetaName: "old"}})
		before := len(ag.Calls())
		_ = Run(ctx, env, o)
		if w := writes(ag.Calls()[before:]); !slices.Contains(w, "deregister old-h1") {
			t.Errorf("writes %q, want old-h1 deregistered", w)
		}
	})
}

func TestRunNotOwnedAndForce(t *testing.T) {
	env, ag, _, _ := fakeEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080}\n")
	ag.Register(&api.AgentServiceRegistration{ID: "web-h1", Name: "web", Port: 9999})
	ctx := context.Background()
	if err := Run(ctx, env, RunOptions{Systemd: "no"}); !errors.Is(err, register.ErrNotOwned) {
		t.Fatalf("Run = %v, want ErrNotOwned", err)
	}
	if s := ag.ServiceByID("web-h1"); s.Port != 9999 {
		t.Errorf("someone else's service was changed: %+v", s)
	}
	if err := Run(ctx, env, RunOptions{Systemd: "no", Force: true}); err != nil {
		t.Fatalf("Run --force = %v", err)
	}
	if s := ag.ServiceByID("web-h1"); s.Port != 8080 || s.Meta[plan.MetaManaged] != "true" {
		t.Errorf("not taken over: %+v", s)
	}
}

func TestRunAgentUnreachable(t *testing.T) {
	env, ag, _, _ := fakeEnv(t, "consul: {wait: 1s}\n")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080}\n")
	ag.SetDown(agenttest.ErrDown)
	err := Run(context.Background(), env, RunOptions{Systemd: "no"})
	if !errors.Is(err, register.ErrAgentUnreachable) {
		t.Fatalf("Run = %v, want ErrAgentUnreachable", err)
	}
	if w := writes(ag.Calls()); len(w) != 0 {
		t.Errorf("wrote %q to an agent that is down", w)
	}
}

// TestRunForeground: each meshx-proxy child runs once its service is
// registered, and its output goes to the Env's stderr, nowhere else.
func TestRunForeground(t *testing.T) {
	env, ag, out, errOut := fakeEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080}\n")
	// The child says which service it was started for, then exits 0: a
	// clean exit is not restarted, so Run returns.
	o := RunOptions{Systemd: "no", Foreground: true, ProxyBinary: "/bin/sh", ProxyArgs: []string{"-c", `echo "meshx-proxy for $0"`}}
	if err := Run(context.Background(), env, o); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if !strings.Contains(errOut.String(), "meshx-proxy for web") {
		t.Errorf("stderr %q, want the child's output", errOut)
	}
	if !strings.Contains(out.String(), "supervising 1 meshx-proxy process(es)") {
		t.Errorf("stdout %q", out)
	}
	if ag.ServiceByID("web-h1") == nil {
		t.Error("not registered")
	}
}

func TestStatusWithFakeAgent(t *testing.T) {
	env, ag, out, _ := fakeEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080}\nupstreams: [{name: db, port: 9191}]\n")
	ctx := context.Background()
	if err := Run(ctx, env, RunOptions{Systemd: "no"}); err != nil {
		t.Fatal(err)
	}
	if err := ag.Client("").UpdateTTLOpts("meshx-ttl:web-h1", "proxy running", api.HealthPassing, nil); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := Status(ctx, env, StatusOptions{}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "SERVICE") {
		t.Fatalf("status:\n%s", out)
	}
	head, row := strings.Fields(lines[0]), strings.Fields(lines[1])
	for col, want := range map[string]string{"SERVICE": "web", "ID": "web-h1", "PORT": "8080", "UPSTREAMS": "db=9191", "CHECK": "passing"} {
		if i := slices.Index(head, col); i < 0 || i >= len(row) || row[i] != want {
			t.Errorf("column %s of %q: want %q (header %q)", col, row, want, head)
		}
	}

	out.Reset()
	if err := Status(ctx, env, StatusOptions{JSON: true}); err != nil {
		t.Fatal(err)
	}
	var rows []Row
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || len(rows) != 1 || rows[0].Check != api.HealthPassing || rows[0].Output != "proxy running" {
		t.Errorf("JSON rows %+v, %v", rows, err)
	}

	ag.SetDown(agenttest.ErrDown)
	out.Reset()
	if err := Status(ctx, env, StatusOptions{JSON: true}); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || !strings.HasPrefix(rows[0].Check, "unknown (agent: ") {
		t.Errorf("with the agent down: %+v, %v", rows, err)
	}
}

func TestStopWithFakeAgent(t *testing.T) {
	env, ag, out, _ := fakeEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080}\n")
	ctx := context.Background()
	if err := Run(ctx, env, RunOptions{Systemd: "no"}); err != nil {
		t.Fatal(err)
	}
	if err := Stop(ctx, env, "nope"); !errors.Is(err, ErrUnknownService) {
		t.Errorf("Stop(nope) = %v, want ErrUnknownService", err)
	}
	before := len(ag.Calls())
	out.Reset()
	if err := Stop(ctx, env, "web"); err != nil {
		t.Fatal(err)
	}
	if w, want := writes(ag.Calls()[before:]), []string{"deregister web-h1-sidecar-proxy", "deregister web-h1"}; !slices.Equal(w, want) {
		t.Errorf("writes %q, want %q", w, want)
	}
	if !strings.Contains(out.String(), "web\tweb-h1\tstopped and deregistered") {
		t.Errorf("stdout %q", out)
	}
	if _, err := env.Dirs.LoadPlan("web"); err != nil {
		t.Errorf("a stop forgot the plan (its ports must stay): %v", err)
	}
}

func TestConnectDisconnectWithFakeAgent(t *testing.T) {
	env, ag, out, _ := fakeEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080}\nupstreams: [{name: db, port: 9191}]\n")
	ctx := context.Background()
	if err := Run(ctx, env, RunOptions{Systemd: "no"}); err != nil {
		t.Fatal(err)
	}
	if err := Connect(ctx, env, "nope", []string{"cache"}); !errors.Is(err, ErrUnknownService) {
		t.Errorf("Connect to an unknown service = %v", err)
	}

	before := len(ag.Calls())
	out.Reset()
	err := Connect(ctx, env, "web", []string{"cache:9300", "Bad_Name", "db"})
	if err == nil || !strings.Contains(err.Error(), "Bad_Name") {
		t.Errorf("Connect = %v, want an error naming the bad spec", err)
	}
	for _, w := range []string{"cache:9300\t127.0.0.1:9300\n", "db\t127.0.0.1:9191\n", "Bad_Name\terror: "} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("stdout %q lacks %q", out, w)
		}
	}
	if w := writes(ag.Calls()[before:]); !slices.Equal(w, []string{"register web-h1 critical"}) {
		t.Errorf("writes %q, want one registration", w)
	}
	pl, err := env.Dirs.LoadPlan("web")
	if err != nil || len(pl.Upstreams) != 2 {
		t.Fatalf("plan after connect: %+v, %v", pl, err)
	}

	out.Reset()
	err = Disconnect(ctx, env, "web", []string{"cache", "db"})
	if err == nil || !strings.Contains(err.Error(), "db: not connected at run time") {
		t.Errorf("Disconnect = %v, want db refused (it comes from the config)", err)
	}
	if !strings.Contains(out.String(), "cache\tdisconnected") {
		t.Errorf("stdout %q", out)
	}
	if pl, _ := env.Dirs.LoadPlan("web"); len(pl.Upstreams) != 1 || pl.Upstreams[0].Name != "db" {
		t.Errorf("upstreams after disconnect: %+v", pl.Upstreams)
	}
}

// TestDiffWithFakeAgent: render --diff says what a run would do, field by
// field, and sends nothing that changes the agent.
func TestDiffWithFakeAgent(t *testing.T) {
	env, ag, out, _ := fakeEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080, tags: [v1]}\n")
	ctx := context.Background()
	if err := Run(ctx, env, RunOptions{Systemd: "no"}); err != nil {
		t.Fatal(err)
	}
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080, tags: [v2]}\n")
	service(t, env, "api.yaml", "version: 1\nservice: {name: api, port: 8081}\n")
	ag.Register(&api.AgentServiceRegistration{ID: "old-h1", Name: "old",
		Meta: map[string]string{plan.MetaManaged: "true", plan.MetaHost: "h1", plan.MetaName: "old"}})
	ag.Register(&api.AgentServiceRegistration{ID: "db-h1", Name: "db", Port: 5432})
	service(t, env, "db.yaml", "version: 1\nservice: {name: db, port: 5433}\n")
	before := len(ag.Calls())
	out.Reset()
	if err := Diff(ctx, env, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"api (api-h1): register\n",
		"web (web-h1): update\n  ~ service.tags: v1 -> v2\n  ~ sidecar.tags: v1 -> v2\n",
		"db (db-h1): refused: registered by someone else",
		"old (old-h1): deregister: an owned service",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("diff lacks %q:\n%s", want, out)
		}
	}
	if w := writes(ag.Calls()[before:]); len(w) != 0 {
		t.Errorf("diff wrote %q", w)
	}
	out.Reset()
	if err := Diff(ctx, env, []string{"api"}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "web") || !strings.Contains(out.String(), "api (api-h1): register") {
		t.Errorf("diff of api alone:\n%s", out)
	}
}

// fakeMeshxProxy starts a process standing in for a foreground meshx-proxy
// and publishes its status: it records each SIGHUP in hups and exits at
// SIGTERM.
func fakeMeshxProxy(t *testing.T, env Env, name string) (pid int, hups string, done <-chan struct{}) {
	t.Helper()
	dir := t.TempDir()
	hups, ready := filepath.Join(dir, "hups"), filepath.Join(dir, "ready")
	pid, done = testutil.Spawn(t, "sh", "-c", `trap 'echo hup >> "$0"' HUP; trap 'exit 0' TERM; touch "$1"; while :; do sleep 0.05; done`, hups, ready)
	testutil.Eventually(t, 5*time.Second, func() error { _, err := os.Stat(ready); return err })
	if err := env.Dirs.SaveStatus(state.Status{Service: name, PID: pid, StartTime: process.StartTime(pid)}); err != nil {
		t.Fatal(err)
	}
	return pid, hups, done
}

// TestForegroundProxySignals: a changed plan sends its running meshx-proxy
// SIGHUP; stop without systemd sends it SIGTERM and waits for it.
func TestForegroundProxySignals(t *testing.T) {
	env, ag, _, _ := fakeEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web, port: 8080}\n")
	ctx := context.Background()
	if err := Run(ctx, env, RunOptions{Systemd: "no"}); err != nil {
		t.Fatal(err)
	}
	pid, hups, _ := fakeMeshxProxy(t, env, "web")
	if err := Connect(ctx, env, "web", []string{"db:9300"}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if b, _ := os.ReadFile(hups); string(b) != "hup\n" {
			return fmt.Errorf("hups %q, want one", b)
		}
		return nil
	})
	before := len(ag.Calls())
	if err := Stop(ctx, env, "web"); err != nil {
		t.Fatal(err)
	}
	if process.Alive(pid) {
		t.Error("Stop returned with the meshx-proxy still running")
	}
	if w := writes(ag.Calls()[before:]); !slices.Contains(w, "deregister web-h1") {
		t.Errorf("writes %q, want web deregistered", w)
	}
	if stopProxy(ctx, env, "web") {
		t.Error("stopProxy found a meshx-proxy that had exited")
	}
}
