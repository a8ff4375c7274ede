package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

// TestRenderDiff: render --diff against a real dev agent says what a run
// would change, changes nothing itself, and is right: after the run it
// predicted there is nothing left to change.
func TestRenderDiff(t *testing.T) {
	h, cl := withAgent(t)
	h.write("services.d/web.yaml", "version: 1\nservice: {name: web, port: 8080, tags: [v1]}\n")
	h.write("services.d/client.yaml", "version: 1\nservice: {name: client, port: 8081}\nupstreams: [{name: web, port: 9191}]\n")
	h.write("services.d/old.yaml", "version: 1\nservice: {name: old, port: 8082}\n")
	var golden strings.Builder
	diff := func(step string) string {
		t.Helper()
		r := run(t, initMain, h.flags("render", "--diff")...)
		if r.code != ExitOK {
			t.Fatalf("%s: render --diff exit %d", step, r.code)
		}
		fmt.Fprintf(&golden, "== %s\n%s", step, r.stdout)
		return r.stdout
	}
	webPort := func() int {
		t.Helper()
		s, _, err := cl.Agent().Service("web-h1", nil)
		if err != nil {
			t.Fatalf("web-h1 in the agent: %v", err)
		}
		return s.Port
	}
	runInit := func() {
		t.Helper()
		if r := run(t, initMain, h.flags("run", "--systemd=no")...); r.code != ExitOK {
			t.Fatalf("meshx-init run: exit %d", r.code)
		}
	}

	diff("an empty agent: everything is registered")
	if svcs, err := cl.Agent().Services(); err != nil || len(svcs) != 0 {
		t.Fatalf("render --diff registered something: %v %v", svcs, err)
	}
	runInit()
	if out := diff("after the run"); strings.Count(out, ": unchanged\n") != 3 || strings.Count(out, "\n") != 3 {
		t.Errorf("right after a run render --diff should find every service unchanged:\n%s", out)
	}

	// Edits: web moves to 8081 and gains a tag, client gains an upstream, old
	// is removed, and taken's id belongs to someone else.
	h.write("services.d/web.yaml", "version: 1\nservice: {name: web, port: 8090, tags: [v1, v2]}\n")
	h.write("services.d/client.yaml", "version: 1\nservice: {name: client, port: 8081}\nupstreams: [{name: web, port: 9191}, {name: db, port: 9192}]\n")
	if err := os.Remove(filepath.Join(h.config, "services.d/old.yaml")); err != nil {
		t.Fatal(err)
	}
	h.write("services.d/taken.yaml", "version: 1\nservice: {name: taken, port: 8083}\n")
	if err := cl.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "taken-h1", Name: "taken", Port: 8083}); err != nil {
		t.Fatal(err)
	}
	// And the agent lost client's check (a restarted agent loses them all).
	if err := cl.Agent().CheckDeregister("meshx-ttl:client-h1"); err != nil {
		t.Fatal(err)
	}
	diff("after edits")
	if p := webPort(); p != 8080 {
		t.Errorf("render --diff changed the agent: web-h1 on port %d", p)
	}

	h.write("services.d/taken.yaml", "version: 1\nservice: {name: taken, port: 8083, id: taken-mine}\n")
	runInit()
	if p := webPort(); p != 8090 {
		t.Errorf("web-h1 on port %d after the run, want 8090 as render --diff said", p)
	}
	diff("after the run that applied them")
	if r := run(t, initMain, h.flags("render", "--diff", "web")...); r.stdout != "web (web-h1): unchanged\n" {
		t.Errorf("render --diff web: %q, want web's line only", r.stdout)
	}
	// A change outside the listed fields is still an update.
	h.write("services.d/web.yaml", "version: 1\nservice: {name: web, port: 8090, tags: [v1, v2]}\ncheck: {ttl: 20s}\n")
	diff("after a change of web's check TTL")
	testutil.Golden(t, filepath.Join("testdata", "render-diff.golden"), []byte(golden.String()))
}

// TestRenderDiffAgentUnreachable: without an agent to compare with, --diff
// fails (exit 1) and says why; plain render needs no agent.
func TestRenderDiffAgentUnreachable(t *testing.T) {
	h := newHost(t) // its agent address has no agent
	h.write("services.d/web.yaml", "version: 1\nservice: {name: web, port: 8080}\n")
	r := run(t, initMain, h.flags("render", "--diff")...)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "connection refused") {
		t.Errorf("render --diff without an agent: exit %d, stderr %q; want 1 and why", r.code, r.stderr)
	}
	if r := run(t, initMain, h.flags("render")...); r.code != ExitOK {
		t.Errorf("render without an agent: exit %d", r.code)
	}
}
