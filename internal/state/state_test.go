package state

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/atomicfile"
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
)

func dirs(t *testing.T) Dirs {
	t.Helper()
	root := t.TempDir()
	return Dirs{Config: filepath.Join(root, "etc"), State: filepath.Join(root, "state"), Runtime: filepath.Join(root, "run")}
}

// testPlan builds a realistic plan: a parsed service-config rendered by plan.Build.
func testPlan(t *testing.T, name string) *plan.Plan {
	t.Helper()
	g, err := config.ParseGlobal("meshx.yaml", []byte("version: 1\nhostname: h1\n"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := config.Parse("/etc/meshx/services.d/"+name+".yaml", []byte(`version: 1
service: {name: `+name+`, port: 8080, tags: [v1], meta: {team: a}}
check: {ttl: 20s, interval: 5s}
upstreams: [{name: db, port: 9191}, {name: cache}]
proxy: {mode: envoy}
transparent_proxy:
  enabled: true
  exclude_outbound_cidrs: [169.254.169.254/32]
  dns: {enabled: true}
`), g.Defaults)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := plan.Build(s, plan.Host{Hostname: "h1", Global: g},
		plan.Ports{Service: 8080, Sidecar: 21000, Upstreams: map[string]int{"cache": 20999}})
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

func TestPlanRoundTrip(t *testing.T) {
	d := dirs(t)
	pl := testPlan(t, "web")
	if changed, err := d.SavePlan(pl); err != nil || !changed {
		t.Fatalf("SavePlan = %v, %v", changed, err)
	}
	if changed, err := d.SavePlan(pl); err != nil || changed {
		t.Errorf("saving the same plan again = %v, %v; want false, nil", changed, err)
	}
	got, err := d.LoadPlan("web")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, pl) {
		t.Errorf("round trip changed the plan:\n got %+v\nwant %+v", got, pl)
	}
	if got.Transparent == nil || got.Transparent.DNS == nil || time.Duration(got.TTL) != 20*time.Second {
		t.Errorf("fields lost: transparent %+v, ttl %v", got.Transparent, got.TTL)
	}
}

func TestLoadPlanErrors(t *testing.T) {
	d := dirs(t)
	_, err := d.LoadPlan("web")
	if !errors.Is(err, ErrNoPlan) || !strings.Contains(err.Error(), "web") {
		t.Errorf("missing plan: %v; want ErrNoPlan naming the service", err)
	}
	if _, err := atomicfile.Write(filepath.Join(d.State, "services", "bad.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = d.LoadPlan("bad")
	if err == nil || errors.Is(err, ErrNoPlan) || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("corrupt plan: %v; want an error naming the file, not ErrNoPlan", err)
	}
}

func TestPlanNames(t *testing.T) {
	d := dirs(t)
	if names, err := d.PlanNames(); err != nil || names != nil {
		t.Errorf("no state dir: %v, %v; want nil, nil", names, err)
	}
	for _, n := range []string{"web", "api"} {
		if _, err := d.SavePlan(testPlan(t, n)); err != nil {
			t.Fatal(err)
		}
	}
	svc := filepath.Join(d.State, "services")
	for _, junk := range []string{".web.json.tmp123456", ".hidden.json", "notes.txt", "web.json~"} {
		if err := os.WriteFile(filepath.Join(svc, junk), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	names, err := d.PlanNames()
	if err != nil || !reflect.DeepEqual(names, []string{"api", "web"}) {
		t.Errorf("PlanNames = %v, %v; want [api web]", names, err)
	}
}

func TestRemovePlan(t *testing.T) {
	d := dirs(t)
	if _, err := d.SavePlan(testPlan(t, "web")); err != nil {
		t.Fatal(err)
	}
	if err := d.SetExtra("web", []config.Upstream{{Name: "db", Type: "service"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // idempotent
		if err := d.RemovePlan("web"); err != nil {
			t.Fatalf("RemovePlan #%d: %v", i+1, err)
		}
	}
	if _, err := d.LoadPlan("web"); !errors.Is(err, ErrNoPlan) {
		t.Errorf("plan still there: %v", err)
	}
	if ups, err := d.Extra("web"); err != nil || ups != nil {
		t.Errorf("extra upstreams still there: %v, %v", ups, err)
	}
}

func TestExtra(t *testing.T) {
	d := dirs(t)
	if ups, err := d.Extra("web"); err != nil || ups != nil {
		t.Fatalf("none stored: %v, %v; want nil, nil", ups, err)
	}
	want := []config.Upstream{
		{Name: "db", Type: "service", Port: 9191, Datacenter: "dc2"},
		{Name: "cache", Type: "service"},
		{Name: "q", Type: "prepared_query", Port: 9192, Address: "127.0.0.2"},
	}
	if err := d.SetExtra("web", want); err != nil {
		t.Fatal(err)
	}
	got, err := d.Extra("web")
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Extra = %+v, %v; want %+v", got, err, want)
	}
	if other, _ := d.Extra("api"); other != nil {
		t.Errorf("another service sees web's upstreams: %+v", other)
	}
	for i, empty := range [][]config.Upstream{{}, nil} { // the second: already gone
		if err := d.SetExtra("web", empty); err != nil {
			t.Fatalf("SetExtra(empty) #%d: %v", i+1, err)
		}
		if _, err := os.Stat(filepath.Join(d.State, "connected", "web.json")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("SetExtra(empty) #%d left the file: %v", i+1, err)
		}
	}
	if _, err := atomicfile.Write(filepath.Join(d.State, "connected", "bad.json"), []byte("[{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Extra("bad"); err == nil || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("corrupt file: %v; want an error naming it", err)
	}
}

func TestStatus(t *testing.T) {
	d := dirs(t)
	if _, ok := d.LoadStatus("web"); ok {
		t.Fatal("a status before any was saved")
	}
	want := Status{Service: "web", ID: "web-h1", PID: 42, ProxyPID: 43, ProxyState: "running", Restarts: 2,
		Ready: true, Health: "passing", Output: "proxy running", Since: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)}
	if err := d.SaveStatus(want); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.Runtime, "proxies", "web.json")); err != nil {
		t.Errorf("status not in the runtime dir: %v", err)
	}
	got, ok := d.LoadStatus("web")
	if !ok || !got.Since.Equal(want.Since) {
		t.Fatalf("LoadStatus = %+v, %v", got, ok)
	}
	got.Since = want.Since
	if got != want {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
	d.RemoveStatus("web")
	d.RemoveStatus("web") // idempotent
	if _, ok := d.LoadStatus("web"); ok {
		t.Error("status still there after RemoveStatus")
	}
}
