package plan

import (
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/config"
)

// FuzzBuild renders arbitrary service-configs (registration templates
// included) through BuildAll: it must never panic, and a service it plans
// holds a registration meshx's own checks accept, whose address other hosts
// can dial (or none).
func FuzzBuild(f *testing.F) {
	for _, seed := range []string{
		"version: 1\nservice: {name: web, address: 127.0.0.1, port: 8080, tags: [v1], meta: {team: a}}\n",
		"version: 1\nservice: {name: web}\nupstreams: [{name: db}, {name: q, type: prepared_query, port: 9000}]\n",
		"version: 1\nservice: {name: web}\nregistration:\n  Weights: {Passing: 3, Warning: 1}\n  Checks:\n    - {HTTP: \"http://{{address}}:{{port}}/\", Interval: 10s}\n",
		"version: 1\nservice: {name: web}\nregistration:\n  Address: 10.0.0.5\n  TaggedAddresses: {lan: {Address: 10.0.0.5, Port: 80}}\n",
		"version: 1\nservice: {name: web}\nregistration:\n  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams: [{DestinationName: db, LocalBindPort: 9191}]\n",
		"version: 1\nservice: {name: web}\nproxy: {mode: envoy, prometheus_scrape_path: /metrics}\n",
		`{"name": "web", "port": 8080, "connect": {"sidecar_service": {"proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 9191}]}}}}`,
	} {
		f.Add([]byte(seed))
	}
	g, err := config.ParseGlobal("meshx.yaml", []byte("version: 1\nhostname: h1\n"))
	if err != nil {
		f.Fatal(err)
	}
	h := Host{Hostname: "h1", Global: g}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := config.Parse("web.yaml", data, g.Defaults)
		if err != nil {
			return
		}
		st := &config.Set{Services: []*config.Service{s}, Broken: map[string]error{}}
		var fa fakeAlloc
		plans, err := BuildAll(st, h, nil, fa.alloc)
		if err != nil {
			return // a problem of meshx.yaml's template: none here
		}
		for _, pl := range plans {
			reg := *pl.Registration
			reg.Checks = nil
			for _, c := range pl.Registration.Checks {
				if c.CheckID != pl.CheckID { // meshx's own heartbeat, added after the checks
					reg.Checks = append(reg.Checks, c)
				}
			}
			reg.Meta = map[string]string{}
			for k, v := range pl.Registration.Meta {
				if !strings.HasPrefix(k, "meshx-") { // meshx's own, added after the checks
					reg.Meta[k] = v
				}
			}
			if err := checkRegistration(&reg, pl.SidecarID); err != nil {
				t.Fatalf("planned a registration its own checks refuse: %v", err)
			}
			if a := pl.Registration.Address; a != "" && !config.Advertisable(a) {
				t.Fatalf("advertises %q", a)
			}
		}
	})
}
