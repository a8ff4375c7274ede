package boot

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/ports"
)

// TestReleaseOrphans: ports allocated for a service that has neither a
// config nor a saved plan (a run killed before saving it) are released;
// those of configured services and of saved plans are kept.
func TestReleaseOrphans(t *testing.T) {
	env, _ := testEnv(t, "")
	service(t, env, "web.yaml", "version: 1\nservice: {name: web}\nupstreams: [{name: db}]\n")
	kept := service(t, env, "api.yaml", "version: 1\nservice: {name: api}\n")
	gone := service(t, env, "tmp.yaml", "version: 1\nservice: {name: tmp}\n")
	l, err := Load(env, false) // allocates all three, saves no plan
	if err != nil {
		t.Fatal(err)
	}
	for _, pl := range l.Plans {
		if pl.Name == "api" {
			if _, err := env.Dirs.SavePlan(pl); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range []string{kept, gone} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if l, err = Load(env, false); err != nil {
		t.Fatal(err)
	}
	if err := releaseOrphans(env, l); err != nil {
		t.Fatal(err)
	}
	held, err := ports.Load(ports.Options{StateDir: env.Dirs.State})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, pl := range l.Plans { // web, still configured
		want = append(want, pl.PortKeys()...)
	}
	api, err := env.Dirs.LoadPlan("api") // its config is gone, its plan is kept
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, api.PortKeys()...)
	if slices.ContainsFunc(want, func(k string) bool { return strings.Contains(k, "tmp-h1") }) || len(want) < 5 {
		t.Fatalf("test setup: want %v", want)
	}
	slices.Sort(want)
	if got := slices.Sorted(maps.Keys(held)); !slices.Equal(got, want) {
		t.Errorf("ports held after releasing orphans: %v, want %v", got, want)
	}
}
