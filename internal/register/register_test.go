package register

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/testutil"
)

// recorder is a reverse proxy in front of the agent that records each
// request ("PUT /v1/agent/service/register"), to prove what was sent.
type recorder struct {
	mu   sync.Mutex
	reqs []string
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

func (r *recorder) writes() []string {
	var out []string
	for _, q := range r.take() {
		if !strings.HasPrefix(q, "GET ") {
			out = append(out, q)
		}
	}
	return out
}

// agent is a real dev agent shared by the subtests of one test, reached
// through a recorder.
type agent struct {
	api *api.Agent // direct, for setting up and checking
	rec *recorder
	via API // through the recorder, for the code under test
}

func startAgent(t *testing.T) *agent {
	t.Helper()
	c := testutil.StartConsul(t, "")
	direct, err := api.NewClient(&api.Config{Address: c.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	target, _ := url.Parse("http://" + c.HTTPAddr)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, r.Method+" "+r.URL.Path)
		rec.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	via, err := api.NewClient(&api.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return &agent{api: direct.Agent(), rec: rec, via: NewAPI(via)}
}

// buildPlan renders a service-config (meshx shape) for a host, as meshx-init does.
func buildPlan(t *testing.T, hostname, file, yaml string) *plan.Plan {
	t.Helper()
	g, err := config.ParseGlobal("meshx.yaml", []byte("version: 1\nhostname: "+hostname+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := config.Parse(file, []byte(yaml), g.Defaults)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := plan.Build(s, plan.Host{Hostname: hostname, Global: g},
		plan.Ports{Service: 18080, Sidecar: 21500, Upstreams: map[string]int{"db": 20999}})
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

func (a *agent) service(t *testing.T, id string) *api.AgentService {
	t.Helper()
	s, _, err := a.api.Service(id, nil)
	if IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (a *agent) check(t *testing.T, id string) *api.AgentCheck {
	t.Helper()
	cs, err := a.api.Checks()
	if err != nil {
		t.Fatal(err)
	}
	return cs[id]
}

func ensure(t *testing.T, r *Registrar, pl *plan.Plan, status string, force bool, want Result) {
	t.Helper()
	got, err := r.Ensure(context.Background(), pl, status, force)
	if err != nil || got != want {
		t.Fatalf("Ensure(%s, status %q, force %v) = %q, %v; want %q", pl.ID, status, force, got, err, want)
	}
}

// TestRegistrar runs against one real dev agent; each subtest uses services
// of its own.
func TestRegistrar(t *testing.T) {
	a := startAgent(t)
	ctx := context.Background()
	r := &Registrar{Agent: a.via, Hostname: "h1"}

	t.Run("registers, then sends nothing while unchanged", func(t *testing.T) {
		pl := buildPlan(t, "h1", "/etc/meshx/services.d/web.yaml", "version: 1\nservice: {name: web, tags: [v1]}\nupstreams: [{name: db}]\n")
		a.rec.take()
		ensure(t, r, pl, "", false, Registered)
		if w := a.rec.writes(); !slices.Equal(w, []string{"PUT /v1/agent/service/register"}) {
			t.Errorf("first Ensure sent %v, want one registration", w)
		}
		s, side, c := a.service(t, pl.ID), a.service(t, pl.SidecarID), a.check(t, pl.CheckID)
		if s == nil || side == nil || c == nil {
			t.Fatalf("service %v, sidecar %v, check %v", s, side, c)
		}
		if !r.Owned(s) || s.Meta[plan.MetaHash] != pl.Hash || s.Meta[plan.MetaName] != "web" {
			t.Errorf("meta %v: want owned by h1 with hash %s", s.Meta, pl.Hash)
		}
		if c.Status != api.HealthCritical {
			t.Errorf("a new check is %s, want critical", c.Status)
		}
		if side.Port != 21500 || side.Proxy == nil || len(side.Proxy.Upstreams) != 1 || side.Proxy.Upstreams[0].LocalBindPort != 20999 {
			t.Errorf("sidecar %+v", side)
		}

		ensure(t, r, pl, "", false, Unchanged)
		reqs := a.rec.take()
		for _, q := range reqs {
			if !strings.HasPrefix(q, "GET ") || q == "GET /v1/agent/services" {
				t.Errorf("an unchanged Ensure sent %q (want only reads of this service)", q)
			}
		}
		if again := a.service(t, pl.ID); again.ContentHash != s.ContentHash || again.ModifyIndex != s.ModifyIndex {
			t.Errorf("the agent's service changed: hash %s -> %s, index %d -> %d",
				s.ContentHash, again.ContentHash, s.ModifyIndex, again.ModifyIndex)
		}
	})

	t.Run("an update keeps the check's status", func(t *testing.T) {
		pl := buildPlan(t, "h1", "/etc/meshx/services.d/api.yaml", "version: 1\nservice: {name: api, tags: [v1]}\n")
		ensure(t, r, pl, "", false, Registered)
		if err := a.api.UpdateTTL(pl.CheckID, "proxy running", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
		pl2 := buildPlan(t, "h1", "/etc/meshx/services.d/api.yaml", "version: 1\nservice: {name: api, tags: [v2]}\n")
		if pl2.Hash == pl.Hash {
			t.Fatal("a changed tag did not change the plan's hash")
		}
		ensure(t, r, pl2, "", false, Updated)
		if s := a.service(t, pl.ID); !slices.Equal(s.Tags, []string{"v2"}) || s.Meta[plan.MetaHash] != pl2.Hash {
			t.Errorf("not updated: tags %v, meta %v", s.Tags, s.Meta)
		}
		if c := a.check(t, pl.CheckID); c == nil || c.Status != api.HealthPassing {
			t.Errorf("check after update: %+v, want still passing", c)
		}
		ensure(t, r, pl2, "", false, Unchanged)
	})

	// The agent keeps an existing check's status when the check is registered
	// again ("to avoid flapping"), whatever status the registration carries:
	// an explicit status only takes effect for a new check. This pins that
	// agent behaviour, which meshx-proxy's start ("registered critical")
	// must reckon with.
	t.Run("the agent keeps an existing check's status over an explicit one", func(t *testing.T) {
		pl := buildPlan(t, "h1", "/etc/meshx/services.d/keep.yaml", "version: 1\nservice: {name: keep, tags: [v1]}\n")
		ensure(t, r, pl, api.HealthPassing, false, Registered)
		if c := a.check(t, pl.CheckID); c == nil || c.Status != api.HealthPassing {
			t.Fatalf("a new check registered passing is %+v", c)
		}
		pl2 := buildPlan(t, "h1", "/etc/meshx/services.d/keep.yaml", "version: 1\nservice: {name: keep, tags: [v2]}\n")
		ensure(t, r, pl2, api.HealthCritical, false, Updated)
		if c := a.check(t, pl.CheckID); c == nil || c.Status != api.HealthPassing {
			t.Errorf("check: %+v; the agent now applies the registered status (re-check meshx-proxy's start)", c)
		}
		// EnsureCheck tells the caller what the check really is afterwards.
		for _, p := range []*plan.Plan{pl2, pl} { // unchanged, then updated
			if _, got, err := r.EnsureCheck(context.Background(), p, api.HealthCritical, false); err != nil || got != api.HealthPassing {
				t.Errorf("EnsureCheck = %q, %v; want the kept status passing", got, err)
			}
		}
		fresh := buildPlan(t, "h1", "/etc/meshx/services.d/fresh.yaml", "version: 1\nservice: {name: fresh}\n")
		if res, got, err := r.EnsureCheck(context.Background(), fresh, api.HealthCritical, false); err != nil || res != Registered || got != api.HealthCritical {
			t.Errorf("EnsureCheck of a new service = %s, %q, %v; want registered, critical", res, got, err)
		}
	})

	t.Run("a missing part is put back", func(t *testing.T) {
		pl := buildPlan(t, "h1", "/etc/meshx/services.d/parts.yaml", "version: 1\nservice: {name: parts}\n")
		ensure(t, r, pl, api.HealthPassing, false, Registered)
		if err := a.api.ServiceDeregister(pl.SidecarID); err != nil {
			t.Fatal(err)
		}
		ensure(t, r, pl, "", false, Updated)
		if a.service(t, pl.SidecarID) == nil {
			t.Error("sidecar not registered again")
		}
		if c := a.check(t, pl.CheckID); c == nil || c.Status != api.HealthPassing {
			t.Errorf("check: %+v, want still passing", c)
		}
		if err := a.api.CheckDeregister(pl.CheckID); err != nil {
			t.Fatal(err)
		}
		ensure(t, r, pl, "", false, Updated)
		if c := a.check(t, pl.CheckID); c == nil || c.Status != api.HealthCritical {
			t.Errorf("check re-created as %+v, want critical (it had no status to keep)", c)
		}
	})

	t.Run("refuses a service it does not own unless forced", func(t *testing.T) {
		cases := []struct {
			name string
			meta map[string]string
		}{
			{"registered by hand", nil},
			{"registered by meshx on another host", map[string]string{plan.MetaManaged: "true", plan.MetaHost: "h2"}},
			{"meshx meta not true", map[string]string{plan.MetaManaged: "false", plan.MetaHost: "h1"}},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				name := []string{"foreign-a", "foreign-b", "foreign-c"}[i]
				pl := buildPlan(t, "h1", "/etc/meshx/services.d/"+name+".yaml", "version: 1\nservice: {name: "+name+"}\n")
				if err := a.api.ServiceRegister(&api.AgentServiceRegistration{ID: pl.ID, Name: name, Port: 9999, Meta: tc.meta}); err != nil {
					t.Fatal(err)
				}
				a.rec.take()
				_, err := r.Ensure(ctx, pl, "", false)
				if !errors.Is(err, ErrNotOwned) || !strings.Contains(err.Error(), pl.ID) || !strings.Contains(err.Error(), "--force") {
					t.Fatalf("err = %v; want ErrNotOwned naming %s and --force", err, pl.ID)
				}
				if w := a.rec.writes(); len(w) != 0 {
					t.Errorf("a refused Ensure sent %v", w)
				}
				if s := a.service(t, pl.ID); s.Port != 9999 || a.service(t, pl.SidecarID) != nil {
					t.Errorf("the foreign service was touched: %+v", s)
				}
				ensure(t, r, pl, "", true, Updated)
				if s := a.service(t, pl.ID); !r.Owned(s) || s.Port != 18080 {
					t.Errorf("not taken over: %+v", s)
				}
				ensure(t, r, pl, "", false, Unchanged)
			})
		}
	})

	t.Run("deregisters service and sidecar; absent is fine", func(t *testing.T) {
		pl := buildPlan(t, "h1", "/etc/meshx/services.d/gone.yaml", "version: 1\nservice: {name: gone}\n")
		ensure(t, r, pl, "", false, Registered)
		for i := range 2 {
			if err := r.Deregister(ctx, pl.ID, pl.SidecarID); err != nil {
				t.Fatalf("Deregister #%d: %v", i+1, err)
			}
		}
		if a.service(t, pl.ID) != nil || a.service(t, pl.SidecarID) != nil || a.check(t, pl.CheckID) != nil {
			t.Error("service, sidecar or check still registered")
		}
		if err := r.Deregister(ctx, "never-there", ""); err != nil {
			t.Errorf("Deregister of an unknown id: %v", err)
		}
	})

	t.Run("OwnedServices lists only meshx's own on this host", func(t *testing.T) {
		other := &Registrar{Agent: a.via, Hostname: "h2"}
		mine := buildPlan(t, "h1", "/etc/meshx/services.d/owned.yaml", "version: 1\nservice: {name: owned}\n")
		theirs := buildPlan(t, "h2", "/etc/meshx/services.d/owned.yaml", "version: 1\nservice: {name: owned}\n")
		ensure(t, r, mine, "", false, Registered)
		ensure(t, other, theirs, "", false, Registered)
		if err := a.api.ServiceRegister(&api.AgentServiceRegistration{ID: "by-hand", Name: "by-hand"}); err != nil {
			t.Fatal(err)
		}
		got, err := r.OwnedServices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		all, err := a.api.Services()
		if err != nil {
			t.Fatal(err)
		}
		for id, s := range all {
			want := s.Kind == api.ServiceKindTypical && s.Meta[plan.MetaManaged] == "true" && s.Meta[plan.MetaHost] == "h1"
			if _, listed := got[id]; listed != want {
				t.Errorf("%s (kind %q, meta %v): listed %v, want %v", id, s.Kind, s.Meta, listed, want)
			}
		}
		if got[mine.ID] == nil || got[theirs.ID] != nil || got[mine.SidecarID] != nil || got["by-hand"] != nil {
			t.Errorf("OwnedServices = %v", keys(got))
		}
	})
}

func keys(m map[string]*api.AgentService) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
