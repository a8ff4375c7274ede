package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

// TestBadInput: every broken service-config gives a located error and exit 2,
// and Consul is left exactly as it was: nothing registered for that file.
func TestBadInput(t *testing.T) {
	c := testutil.StartConsul(t, "")
	cases := []struct {
		name, file, content string
		want                string // regexp over stderr: file:line: field: message
	}{
		{"yaml syntax", "a.yaml", "version: 1\nservice: {name: web\n", `a\.yaml:\d+: .*syntax error`},
		{"json syntax", "a.json", "{\n  \"name\": \"web\",\n  \"port\": 80,\n}\n", `a\.json:4: JSON syntax error`},
		{"unknown field", "a.yaml", "version: 1\nservice: {name: web, colour: red}\n", `a\.yaml:2: service.colour: unknown field`},
		{"wrong type", "a.yaml", "version: 1\nservice: {name: web, port: eighty}\n", `a\.yaml:2: service.port: must be a whole number, not the string "eighty"`},
		{"missing name", "a.yaml", "version: 1\nservice: {port: 8080}\n", `a\.yaml(:\d+)?: service.name: missing`},
		{"invalid name", "a.yaml", "version: 1\nservice:\n  name: \"web;rm -rf /\"\n", `a\.yaml:3: service.name: invalid name`},
		{"upper-case name", "a.yaml", "version: 1\nservice:\n  name: Web\n", `a\.yaml:3: service.name: invalid name`},
		{"port out of range", "a.yaml", "version: 1\nservice:\n  name: web\n  port: 70000\n", `a\.yaml:4: service.port: port 70000 out of range`},
		{"unknown template variable", "a.yaml", "version: 1\nservice: {name: web}\nregistration:\n  Meta:\n    owner: \"{{team}}\"\n", `a\.yaml:5: registration.Meta.owner: unknown template variable \{\{team\}\}`},
		{"empty file", "a.yaml", "", `a\.yaml:1: file is empty`},
		{"annotation upstream without port", "a.json", `{"annotations": {"consul.hashicorp.com/connect-service": "web", "consul.hashicorp.com/connect-service-upstreams": "db"}}`, `a\.json:1: annotations.consul.hashicorp.com/connect-service-upstreams: upstream 1 .*missing local port`},
		{"annotation bool", "a.json", "{\"annotations\": {\n\"consul.hashicorp.com/connect-service\": \"web\",\n\"consul.hashicorp.com/transparent-proxy\": \"nope\"}}", `a\.json:3: annotations.consul.hashicorp.com/transparent-proxy: must be "true" or "false"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, c, "")
			before := h.services()
			path := h.service(tc.file, tc.content)
			for _, cmd := range [][]string{{"validate"}, {"run", "--systemd=no"}} {
				r := h.init(cmd...)
				if r.code != 2 {
					t.Errorf("%v: exit %d, want 2", cmd, r.code)
				}
				if !regexp.MustCompile(regexp.QuoteMeta(filepath.Dir(path)) + "/" + tc.want).MatchString(r.stderr) {
					t.Errorf("%v: stderr does not match %q:\n%s", cmd, tc.want, r.stderr)
				}
			}
			if after := h.services(); len(after) != len(before) {
				t.Errorf("Consul changed: %d services before, %d after", len(before), len(after))
			}
			if _, err := os.Stat(filepath.Join(h.dirs.State, "ports.json")); err == nil {
				t.Errorf("a port was allocated for a broken file")
			}
		})
	}

	t.Run("a duplicate id and a clashing fixed port block only the later file", func(t *testing.T) {
		h := newHost(t, c, "")
		h.service("a.yaml", "version: 1\nservice: {name: web, port: 18081}\n")
		h.service("b.yaml", "version: 1\nservice: {name: api, id: web-testhost}\n")
		h.service("c.yaml", "version: 1\nservice:\n  name: db\n  port: 18081\n")
		r := h.init("run", "--systemd=no")
		if r.code != 2 {
			t.Errorf("exit %d, want 2", r.code)
		}
		for _, want := range []string{`b.yaml:2: service.id: service id "web-testhost" is also used by`, `c.yaml:4: service.port: port 18081 is already taken by`} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q", want)
			}
		}
		s := h.services()
		if s["web-testhost"] == nil || s["api-testhost"] != nil || s["db-testhost"] != nil {
			t.Errorf("want only web registered, got %v", keys(s))
		}
	})

	t.Run("a broken meshx.yaml blocks everything", func(t *testing.T) {
		h := newHost(t, c, "")
		h.service("a.yaml", "version: 1\nservice: {name: web}\n")
		h.write("meshx.yaml", "version: 1\nports: {range: \"21000-21100\"}\n")
		r := h.init("run", "--systemd=no")
		if r.code != 2 || !strings.Contains(r.stderr, "meshx.yaml:2: ports.range:") || !strings.Contains(r.stderr, "21000-21255") {
			t.Errorf("exit %d, stderr:\n%s", r.code, r.stderr)
		}
	})
}

func keys(m map[string]*api.AgentService) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestOwnership: a service with the same id registered by someone else is
// refused and left alone; --force takes it over.
func TestOwnership(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	if err := h.client().Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web-testhost", Name: "web", Port: 9999}); err != nil {
		t.Fatal(err)
	}
	h.service("web.yaml", "version: 1\nservice: {name: web, port: 18082}\n")
	r := h.init("run", "--systemd=no")
	if r.code != 1 || !strings.Contains(r.stderr, "not owned by meshx") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if s := h.services()["web-testhost"]; s == nil || s.Port != 9999 || s.Meta["meshx-managed"] != "" {
		t.Fatalf("the foreign registration was touched: %+v", s)
	}
	if r := h.init("run", "--systemd=no", "--force"); r.code != 0 {
		t.Fatalf("--force: exit %d", r.code)
	}
	if s := h.services()["web-testhost"]; s == nil || s.Port != 18082 || s.Meta["meshx-managed"] != "true" {
		t.Fatalf("not taken over: %+v", s)
	}
}

// TestConfigGone: an owned service whose config file is removed is
// deregistered (sidecar too), its plan and ports forgotten.
func TestConfigGone(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	web := h.service("web.yaml", "version: 1\nservice: {name: web}\nupstreams: [{name: db}]\n")
	h.service("api.yaml", "version: 1\nservice: {name: api}\n")
	if r := h.init("run", "--systemd=no"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	if err := os.Remove(web); err != nil {
		t.Fatal(err)
	}
	r := h.init("run", "--systemd=no")
	if r.code != 0 || !strings.Contains(r.stdout, "deregistered (config gone)") {
		t.Fatalf("exit %d\n%s", r.code, r.stdout)
	}
	s := h.services()
	if s["web-testhost"] != nil || s["web-testhost-sidecar-proxy"] != nil || s["api-testhost"] == nil {
		t.Fatalf("services now: %v", keys(s))
	}
	if _, err := h.dirs.LoadPlan("web"); err == nil {
		t.Errorf("web's plan is still there")
	}
	b, _ := os.ReadFile(filepath.Join(h.dirs.State, "ports.json"))
	if strings.Contains(string(b), "web-testhost") {
		t.Errorf("web's ports are still allocated:\n%s", b)
	}
}

// TestAgentUnreachable: meshx-init retries with backoff, then fails with an
// error naming the address; nothing is left half-done.
func TestAgentUnreachable(t *testing.T) {
	h := newHost(t, nil, "")
	port := testutil.FreePort(t)
	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: \"http://127.0.0.1:%d\", wait: 3s}\nhostname: testhost\n", port))
	h.service("web.yaml", "version: 1\nservice: {name: web}\n")
	start := time.Now()
	r := h.init("run", "--systemd=no")
	if r.code != 1 {
		t.Errorf("exit %d, want 1", r.code)
	}
	want := fmt.Sprintf("consul agent unreachable at http://127.0.0.1:%d after 3s", port)
	if !strings.Contains(r.stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
	}
	if strings.Count(r.stderr, "waiting for the consul agent") < 1 {
		t.Errorf("no retry was logged")
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("gave up after %s, want about 3s", d)
	}
	if _, err := h.dirs.LoadPlan("web"); err == nil {
		t.Errorf("a plan was saved although nothing was registered")
	}
}

// TestIDChange: a service whose id template changed is registered under the
// new id and its old id is deregistered, not left as a ghost.
func TestIDChange(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	h.service("web.yaml", "version: 1\nservice: {name: web}\n")
	if r := h.init("run", "--systemd=no"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	h.service("web.yaml", "version: 1\nservice: {name: web, id: \"web-blue-{{hostname}}\"}\n")
	if r := h.init("run", "--systemd=no"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	s := h.services()
	if s["web-blue-testhost"] == nil || s["web-testhost"] != nil || s["web-testhost-sidecar-proxy"] != nil {
		t.Fatalf("services now: %v", keys(s))
	}
}
