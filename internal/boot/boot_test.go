package boot

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/testutil"
)

// testEnv makes a host's dirs with a meshx.yaml (extra appended to it) and
// returns the Env and its stdout.
func testEnv(t *testing.T, extra string) (Env, *bytes.Buffer) {
	t.Helper()
	root := t.TempDir()
	d := state.Dirs{Config: filepath.Join(root, "etc"), State: filepath.Join(root, "state"), Runtime: filepath.Join(root, "run")}
	writeFile(t, config.ConfigPath(d.Config), "version: 1\nhostname: h1\nports: {range: \"24000-24099\"}\n"+extra)
	var out bytes.Buffer
	return Env{Dirs: d, Log: testutil.Logger(t), Stdout: &out}, &out
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func service(t *testing.T, env Env, file, content string) string {
	t.Helper()
	return writeFile(t, filepath.Join(config.ServicesDir(env.Dirs.Config), file), content)
}

func TestLoadDryAllocatesNothing(t *testing.T) {
	env, _ := testEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web}\nupstreams: [{name: db}]\n")
	portsFile := filepath.Join(env.Dirs.State, ports.StateFile)

	dry, err := Load(env, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Plans) != 1 || dry.Plans[0].Port == 0 || dry.Hostname != "h1" {
		t.Fatalf("dry Load: %+v", dry)
	}
	if _, err := os.Stat(env.Dirs.State); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a dry Load created the state dir: %v", err)
	}

	real, err := Load(env, false)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(portsFile)
	if err != nil {
		t.Fatalf("a real Load allocated nothing: %v", err)
	}
	if real.Plans[0].Port != dry.Plans[0].Port {
		t.Errorf("dry run gave port %d, the real one %d", dry.Plans[0].Port, real.Plans[0].Port)
	}

	// A dry run with a new service sees the existing allocations but adds none.
	service(t, env, "api.yaml", "version: 1\nservice: {name: api}\n")
	dry, err = Load(env, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Plans) != 2 || dry.Plans[0].Port == dry.Plans[1].Port {
		t.Errorf("dry plans %+v", dry.Plans)
	}
	if after, _ := os.ReadFile(portsFile); !bytes.Equal(after, before) {
		t.Errorf("a dry Load changed %s:\n%s\nwas:\n%s", portsFile, after, before)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Run("broken meshx.yaml", func(t *testing.T) {
		env, _ := testEnv(t, "")
		writeFile(t, config.ConfigPath(env.Dirs.Config), "version: 1\nbogus: true\n")
		if _, err := Load(env, true); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("err = %v, want config.ErrInvalid", err)
		}
	})
	t.Run("broken service-config is set aside", func(t *testing.T) {
		env, _ := testEnv(t, "")
		service(t, env, "web.yaml", "version: 1\nservice: {name: web}\n")
		bad := service(t, env, "bad.yaml", "version: 1\nservice: {name: Bad}\n")
		l, err := Load(env, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Plans) != 1 || l.Plans[0].Name != "web" || l.Set.Broken[bad] == nil {
			t.Errorf("plans %d, broken %v", len(l.Plans), l.Set.Broken)
		}
	})
}

func TestReportBroken(t *testing.T) {
	set := &config.Set{Broken: map[string]error{
		"/etc/meshx/services.d/c.yaml": errors.New("/etc/meshx/services.d/c.yaml:2: service.name: missing"),
		"/etc/meshx/services.d/a.yaml": errors.New("/etc/meshx/services.d/a.yaml:1: file is empty"),
		"/etc/meshx/services.d/b.json": errors.New("/etc/meshx/services.d/b.json:3: JSON syntax error"),
	}}
	var out, log bytes.Buffer
	ReportBroken(set, slog.New(slog.NewTextHandler(&log, nil)), &out)
	want := "/etc/meshx/services.d/a.yaml:1: file is empty\n" +
		"/etc/meshx/services.d/b.json:3: JSON syntax error\n" +
		"/etc/meshx/services.d/c.yaml:2: service.name: missing\n"
	if out.String() != want {
		t.Errorf("output\n%s\nwant\n%s", out.String(), want)
	}
	if n := strings.Count(log.String(), "level=ERROR"); n != 3 {
		t.Errorf("%d error lines logged, want 3:\n%s", n, log.String())
	}

	out.Reset()
	ReportBroken(&config.Set{Broken: map[string]error{}}, slog.New(slog.DiscardHandler), &out)
	if out.Len() != 0 {
		t.Errorf("nothing broken, yet printed %q", out.String())
	}
}

func TestParseSpec(t *testing.T) {
	cases := []struct {
		spec    string
		want    config.Upstream
		wantErr string
	}{
		{spec: "db", want: config.Upstream{Name: "db", Type: "service"}},
		{spec: "db:9191", want: config.Upstream{Name: "db", Type: "service", Port: 9191}},
		{spec: "db:9191:dc2", want: config.Upstream{Name: "db", Type: "service", Port: 9191, Datacenter: "dc2"}},
		{spec: "db.finance:9191", want: config.Upstream{Name: "db", Type: "service", Namespace: "finance", Port: 9191}},
		{spec: "prepared_query:nearest:9192", want: config.Upstream{Name: "nearest", Type: "prepared_query", Port: 9192}},
		{spec: "db:", wantErr: "not a port number"},
		{spec: "db:x", wantErr: "not a port number"},
		{spec: "db:1:dc:x", wantErr: "too many ':'"},
		{spec: ":9191", wantErr: "missing upstream name"},
		{spec: "Bad", wantErr: `invalid upstream name "Bad"`},
		{spec: "db;rm -rf /", wantErr: "invalid upstream name"},
		{spec: "", wantErr: "invalid upstream name"},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := parseSpec(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("parseSpec(%q) = %+v, %v; want an error with %q", tc.spec, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseSpec(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
			}
		})
	}
}

// TestKeepBroken: a service whose file is broken now keeps its last good
// plan (its unit is left alone); one whose file is gone does not.
func TestKeepRunning(t *testing.T) {
	env, _ := testEnv(t, "")
	web := service(t, env, "web.yaml", "version: 1\nservice: {name: web}\n")
	api := service(t, env, "api.yaml", "version: 1\nservice: {name: api}\n")
	old := service(t, env, "old.yaml", "version: 1\nservice: {name: old}\n")
	l, err := Load(env, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, pl := range l.Plans {
		if _, err := env.Dirs.SavePlan(pl); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, api, "version: 1\nservice: {name: api, port: eighty}\n")
	if err := os.Remove(old); err != nil {
		t.Fatal(err)
	}
	l, err = Load(env, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Plans) != 1 || l.Plans[0].File != web || l.Set.Broken[api] == nil {
		t.Fatalf("after the edits: %d plans, broken %v", len(l.Plans), l.Set.Broken)
	}
	got := keepRunning(env, l, l.Plans)
	var names []string
	for _, pl := range got {
		names = append(names, pl.Name)
	}
	if !reflect.DeepEqual(names, []string{"web", "api"}) {
		t.Errorf("keepRunning = %v, want [web api]", names)
	}
	if got[1].File != api || got[1].Port == 0 {
		t.Errorf("api's kept plan: %+v", got[1])
	}
	if len(l.Plans) != 1 {
		t.Errorf("keepRunning changed its input: %d plans", len(l.Plans))
	}

	// A valid service whose registration failed in this run keeps its unit,
	// unless it was refused as someone else's.
	got = keepRunning(env, l, nil)
	if len(got) != 2 {
		t.Errorf("with web's registration failed: kept %d plans, want web and api", len(got))
	}
	l.notOwned = map[string]bool{"web": true}
	if got = keepRunning(env, l, nil); len(got) != 1 || got[0].Name != "api" {
		t.Errorf("with web not owned: kept %v, want api only", got)
	}
}

// plans loads a host with n services named s0..s(n-1).
func plans(t *testing.T, env Env, n int) []*plan.Plan {
	t.Helper()
	for i := range n {
		service(t, env, fmt.Sprintf("s%d.yaml", i), fmt.Sprintf("version: 1\nservice: {name: s%d}\n", i))
	}
	l, err := Load(env, false)
	if err != nil {
		t.Fatal(err)
	}
	return l.Plans
}
