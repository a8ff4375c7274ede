package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/testutil"
)

// TestWithAgent runs registerAll and gc against one real dev agent.
func TestWithAgent(t *testing.T) {
	c := testutil.StartConsul(t, "")
	cl, err := api.NewClient(&api.Config{Address: c.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	ag := cl.Agent()
	r := &register.Registrar{Agent: register.NewAPI(cl), Hostname: "h1"}
	ctx := context.Background()
	has := func(t *testing.T, id string) bool {
		t.Helper()
		s, _, err := ag.Service(id, nil)
		if err != nil && !register.IsNotFound(err) {
			t.Fatal(err)
		}
		return s != nil
	}

	t.Run("registerAll", func(t *testing.T) {
		env, out := testEnv(t, "")
		pls := plans(t, env, 7) // more than registerWorkers
		// s3's id is taken by a service meshx does not own.
		if err := ag.ServiceRegister(&api.AgentServiceRegistration{ID: "s3-h1", Name: "s3"}); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		ups := map[string]int{}
		onUp := func(pl *plan.Plan) {
			mu.Lock()
			ups[pl.Name]++
			mu.Unlock()
			if _, err := env.Dirs.LoadPlan(pl.Name); err != nil {
				t.Errorf("onUp(%s) before its plan was saved: %v", pl.Name, err)
			}
		}
		for round, result := range []string{"registered", "unchanged"} {
			out.Reset()
			up, failed, err := registerAll(ctx, env, r, pls, false, onUp, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(up) != 6 || len(failed) != 1 || !errors.Is(failed[0], register.ErrNotOwned) {
				t.Fatalf("round %d: %d up, failed %v; want 6 up and s3 not owned", round, len(up), failed)
			}
			var want strings.Builder
			for _, pl := range pls {
				if pl.Name == "s3" {
					continue
				}
				fmt.Fprintf(&want, "%s\t%s\tport %d\t%s\n", pl.Name, pl.ID, pl.Port, result)
				if !has(t, pl.ID) || !has(t, pl.SidecarID) {
					t.Errorf("%s not registered", pl.ID)
				}
				if n := ups[pl.Name]; n != round+1 {
					t.Errorf("onUp(%s) called %d times after round %d", pl.Name, n, round)
				}
			}
			if out.String() != want.String() {
				t.Errorf("round %d printed\n%s\nwant (in plan order)\n%s", round, out.String(), want.String())
			}
		}
		if ups["s3"] != 0 {
			t.Errorf("onUp called for the refused s3")
		}
		if _, err := env.Dirs.LoadPlan("s3"); err == nil {
			t.Errorf("s3's plan was saved although it was not registered")
		}
		if s, _, _ := ag.Service("s3-h1", nil); s == nil || s.Meta[plan.MetaManaged] != "" {
			t.Errorf("the foreign s3 was touched: %+v", s)
		}
	})

	t.Run("registerAll reports a state dir it cannot write", func(t *testing.T) {
		env, _ := testEnv(t, "")
		pls := plans(t, env, 2)
		writeFile(t, filepath.Join(env.Dirs.State, "services"), "a file where the plans dir should be")
		called := 0
		_, _, err := registerAll(ctx, env, r, pls, false, func(*plan.Plan) { called++ }, nil)
		if err == nil || !strings.Contains(err.Error(), "save plan of") || called != 0 {
			t.Errorf("err = %v, onUp called %d times; want a save error and no onUp", err, called)
		}
	})

	t.Run("gc", func(t *testing.T) {
		env, out := testEnv(t, "")
		files := map[string]string{}
		for _, n := range []string{"web", "api", "ghost", "gone"} {
			files[n] = service(t, env, "gc-"+n+".yaml", "version: 1\nservice: {name: gc-"+n+"}\n")
		}
		l, err := Load(env, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, failed, err := registerAll(ctx, env, r, l.Plans, false, func(*plan.Plan) {}, nil); err != nil || failed != nil {
			t.Fatal(err, failed)
		}
		// api's file is broken now; ghost's file and plan are gone (a wiped
		// state dir); gone's file is gone but its plan is there.
		writeFile(t, files["api"], "version: 1\nservice: {name: gc-api, colour: red}\n")
		for _, f := range []string{files["ghost"], files["gone"]} {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
		}
		if err := env.Dirs.RemovePlan("gc-ghost"); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		l, err = Load(env, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := gc(ctx, env, l, r); err != nil {
			t.Fatal(err)
		}
		for id, want := range map[string]bool{"gc-web-h1": true, "gc-api-h1": true, "gc-api-h1-sidecar-proxy": true,
			"gc-ghost-h1": false, "gc-ghost-h1-sidecar-proxy": false, "gc-gone-h1": false, "gc-gone-h1-sidecar-proxy": false} {
			if has(t, id) != want {
				t.Errorf("%s registered: %v, want %v", id, !want, want)
			}
		}
		if !strings.Contains(out.String(), "gc-gone\tgc-gone-h1\t-\tderegistered (config gone)") {
			t.Errorf("output lacks gone's line:\n%s", out.String())
		}
		names, _ := env.Dirs.PlanNames()
		if strings.Join(names, ",") != "gc-api,gc-web" {
			t.Errorf("plans left: %v, want gc-api (last good) and gc-web", names)
		}
		b, _ := os.ReadFile(filepath.Join(env.Dirs.State, ports.StateFile))
		if strings.Contains(string(b), "gc-gone-h1") || !strings.Contains(string(b), "gc-api-h1") {
			t.Errorf("ports after gc:\n%s", b)
		}
		// A registration of another host, or not meshx's, is never collected.
		if err := ag.ServiceRegister(&api.AgentServiceRegistration{ID: "gc-other", Name: "gc-other",
			Meta: map[string]string{plan.MetaManaged: "true", plan.MetaHost: "h2", plan.MetaName: "gc-other"}}); err != nil {
			t.Fatal(err)
		}
		if err := gc(ctx, env, l, r); err != nil || !has(t, "gc-other") {
			t.Errorf("gc = %v; another host's service must stay", err)
		}
	})
}
