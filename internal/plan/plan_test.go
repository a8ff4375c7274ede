package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/testutil"
)

// global parses a meshx.yaml ("" = none).
func global(t *testing.T, yaml string) *config.Global {
	t.Helper()
	if yaml == "" {
		g, err := config.LoadGlobal(filepath.Join(t.TempDir(), "meshx.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	g, err := config.ParseGlobal("meshx.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func host(t *testing.T, globalYAML string) Host {
	return Host{Hostname: "h1", Global: global(t, globalYAML)}
}

// service parses one service-config; name is its file name.
func service(t *testing.T, name, content string, g *config.Global) *config.Service {
	t.Helper()
	s, err := config.Parse(name, []byte(content), g.Defaults)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// set makes a Set of files (name -> content), all of which must parse.
func set(t *testing.T, g *config.Global, files ...string) *config.Set {
	t.Helper()
	st := &config.Set{Broken: map[string]error{}}
	for i := 0; i+1 < len(files); i += 2 {
		st.Services = append(st.Services, service(t, files[i], files[i+1], g))
	}
	return st
}

// fakeAlloc hands out ports like ports.Allocate on an empty state (services
// up from 20000, upstreams down from 20999, fixed ports as fixed) and records
// every request.
type fakeAlloc struct {
	reqs []ports.Request
	err  error
}

func (f *fakeAlloc) alloc(reqs []ports.Request) (map[string]int, error) {
	f.reqs = append(f.reqs, reqs...)
	if f.err != nil {
		return nil, f.err
	}
	out := map[string]int{}
	up, down := ports.DefaultLow, ports.DefaultHigh
	for _, r := range reqs {
		switch {
		case r.Fixed > 0:
			out[r.Key] = r.Fixed
		case r.Down:
			out[r.Key], down = down, down-1
		default:
			out[r.Key], up = up, up+1
		}
	}
	return out, nil
}

func (f *fakeAlloc) keys() []string {
	var out []string
	for _, r := range f.reqs {
		out = append(out, r.Key)
	}
	return out
}

func planJSON(t *testing.T, pl *Plan) []byte {
	t.Helper()
	b, err := json.MarshalIndent(pl, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// TestBuildGolden renders one service per case through BuildAll and compares
// the whole plan (registration JSON, proxy argv, ports, heartbeat) with
// testdata/build/<case>.json.
func TestBuildGolden(t *testing.T) {
	tests := []struct {
		name   string
		global string
		file   string
		in     string
		extra  []config.Upstream
	}{
		{name: "connect-minimal", file: "web.yaml", in: "version: 1\nservice: {name: web}\n"},
		{name: "connect-full", file: "web.yaml", in: `version: 1
service:
  name: web
  port: 8080
  tags: [v1, primary]
  meta: {team: a}
check: {ttl: 20s, interval: 4s, probe: none}
upstreams:
  - {name: db, port: 9191}
  - {name: cache}
  - {name: db, datacenter: dc2}
  - {name: billing, namespace: finance, address: 127.0.0.2}
  - {name: nearest-db, type: prepared_query, port: 9192}
proxy: {max_restarts: 2, user: meshx-proxy}
`},
		{name: "envoy", file: "web.yaml", in: `version: 1
service: {name: web, port: 8080}
upstreams: [{name: db}]
proxy:
  mode: envoy
  extra_args: [--log-level, debug, --concurrency, "2"]
  prometheus_scrape_path: /metrics
`},
		{name: "envoy-plain", file: "web.yaml", in: "version: 1\nservice: {name: web}\nproxy: {mode: envoy}\n"},
		{name: "mode-none", file: "web.yaml", in: "version: 1\nservice: {name: web, port: 8080}\nproxy: {mode: none}\n"},
		{name: "custom-command", file: "web.yaml", in: `version: 1
service: {name: web, port: 8080}
upstreams: [{name: db, port: 9191}, {name: cache}]
proxy:
  command: [/usr/local/bin/my-proxy, --id, "{{id}}", --listen, "{{address}}:{{port}}", --port, "{{$port$}}", --upstreams, "{{upstreams_text}}", --consul, "{{consul}}"]
`},
		{name: "transparent", file: "web.yaml", in: `version: 1
service: {name: web, port: 8080}
proxy: {mode: envoy}
transparent_proxy:
  enabled: true
  outbound_port: 15002
  exclude_inbound_ports: [22]
  exclude_outbound_cidrs: [169.254.169.254]
  dns: {enabled: true}
`},
		{name: "registration-template", file: "web.yaml", in: `version: 1
service:
  name: web
  port: 8080
  meta: {team: a}
registration:
  Meta:
    owner: "{{hostname}}"
    team: b
  Weights: {Passing: 10, Warning: 1}
  EnableTagOverride: true
  Checks:
    - Name: http
      HTTP: "http://{{address}}:{{port}}/health"
      Interval: 10s
      Header: {X-Service: ["{{name}}"]}
  Connect:
    SidecarService:
      Proxy:
        Config: {protocol: http}
`},
		{name: "registration-removes", file: "web.yaml", in: `version: 1
service: {name: web, tags: [a], meta: {team: a}}
registration:
  Tags: null
  Meta: null
`},
		{name: "metrics-off", global: "version: 1\nmetrics: {enabled: false}\n", file: "web.yaml",
			in: "version: 1\nservice: {name: web, port: 8080}\n"},
		{name: "metrics-on-all-addresses", global: "version: 1\nmetrics: {ip: 0.0.0.0}\n", file: "web.yaml",
			in: "version: 1\nservice: {name: web, port: 8080}\n"},
		{name: "address-written", file: "web.yaml", in: "version: 1\nservice: {name: web, address: 10.0.0.5, port: 8080}\n"},
		{name: "address-loopback", file: "web.yaml", in: "version: 1\nservice: {name: web, address: 127.0.0.1, port: 8080}\n"},
		{name: "global-defaults", global: `version: 1
hostname: ignored-here
ports: {ip: 127.0.0.9, range: 10000-10999}
proxy_user: envoy
consul: {binary: /opt/consul}
defaults:
  proxy: {mode: envoy}
  check: {ttl: 30s}
  registration:
    Meta: {rack: r1, team: default}
    Weights: {Passing: 3}
`, file: "web.yaml", in: `version: 1
service: {name: web, meta: {team: a}}
registration:
  Meta: {owner: me}
`},
		{name: "vagrant-flat", file: "service-config.json", in: `{"name": "web", "port": 8080}`},
		{name: "vagrant-annotations", file: "service-config.json", in: `{"annotations": {
  "consul.hashicorp.com/connect-service": "web",
  "consul.hashicorp.com/connect-service-port": "8080",
  "consul.hashicorp.com/connect-service-upstreams": "db:9191,cache:9192:dc2,billing.finance:9193,prepared_query:nearest:9194",
  "consul.hashicorp.com/service-tags": "v1",
  "consul.hashicorp.com/service-meta-team": "a",
  "consul.hashicorp.com/transparent-proxy": "false",
  "consul.hashicorp.com/prometheus-scrape-path": "/metrics",
  "consul.hashicorp.com/envoy-extra-args": "-l debug"
}}`},
		{name: "namespace", file: "web.yaml", in: `version: 1
service: {name: web, port: 8080}
network: {namespace: true}
upstreams: [{name: db}]
proxy: {mode: envoy}
transparent_proxy: {enabled: true, dns: {enabled: true}}
`},
		{name: "namespace-host-address", file: "web.yaml",
			global: "version: 1\nnetwork: {subnet: 10.99.0.0/24, host_address: 192.0.2.7, dns: [192.0.2.53]}\n",
			in:     "version: 1\nservice: {name: web, port: 8080}\nnetwork: {namespace: true}\n"},
		{name: "extra-upstreams", file: "web.yaml", in: "version: 1\nservice: {name: web}\nupstreams: [{name: db}]\n",
			extra: []config.Upstream{{Name: "db", Type: "service"}, {Name: "cache", Type: "service", Port: 9300}, {Name: "api", Type: "service", Datacenter: "dc2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := host(t, tt.global)
			st := set(t, h.Global, tt.file, tt.in)
			var fa fakeAlloc
			plans, err := BuildAll(st, h, map[string][]config.Upstream{st.Services[0].Name: tt.extra}, fa.alloc)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Err(); err != nil {
				t.Fatal(err)
			}
			if len(plans) != 1 {
				t.Fatalf("%d plans", len(plans))
			}
			testutil.Golden(t, filepath.Join("testdata", "build", tt.name+".json"), planJSON(t, plans[0]))
			// What BuildAll rendered is what Build renders from the same ports.
			again, err := Build(st.Services[0], Host{Hostname: h.Hostname, Global: h.Global, ExtraUpstreams: tt.extra}, portsOf(plans[0]))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(planJSON(t, again), planJSON(t, plans[0])) {
				t.Errorf("Build differs from BuildAll")
			}
		})
	}
}

func portsOf(pl *Plan) Ports {
	p := Ports{Service: pl.Port, Sidecar: pl.SidecarPort, Admin: pl.Proxy.AdminPort, Metrics: pl.Proxy.MetricsPort, Upstreams: map[string]int{}}
	if ap, err := netip.ParseAddrPort(pl.MetricsAddress); err == nil {
		p.ProxyMetrics = int(ap.Port())
	}
	for _, u := range pl.Upstreams {
		p.Upstreams[u.Key] = u.Port
	}
	return p
}

// TestBuildAllocates checks what BuildAll asks the allocator for.
func TestBuildAllocates(t *testing.T) {
	h := host(t, "")
	st := set(t, h.Global,
		"a.yaml", "version: 1\nservice: {name: a, port: 8080}\nupstreams: [{name: db, port: 9191}, {name: cache}]\n",
		"b.yaml", "version: 1\nservice: {name: b}\nproxy: {mode: envoy, prometheus_scrape_path: /metrics}\n")
	var fa fakeAlloc
	plans, err := BuildAll(st, h, map[string][]config.Upstream{"b": {{Name: "a", Type: "service"}}}, fa.alloc)
	if err != nil {
		t.Fatal(err)
	}
	want := []ports.Request{
		{Key: "service/a-h1", Fixed: 8080},
		{Key: "sidecar/a-h1"},
		{Key: "upstream/a-h1/db", Fixed: 9191, Down: true},
		{Key: "upstream/a-h1/cache", Down: true},
		{Key: "metrics/a-h1"},
		{Key: "service/b-h1"},
		{Key: "sidecar/b-h1"},
		{Key: "upstream/b-h1/a", Down: true},
		{Key: "envoy-admin/b-h1"},
		{Key: "envoy-metrics/b-h1"},
		{Key: "metrics/b-h1"},
	}
	if !slices.Equal(fa.reqs, want) {
		t.Errorf("requests:\n%v\nwant\n%v", fa.reqs, want)
	}
	// PortKeys names every key a plan holds, for release.
	var all []string
	for _, pl := range plans {
		all = append(all, pl.PortKeys()...)
	}
	if !slices.Equal(all, fa.keys()) {
		t.Errorf("PortKeys = %v, want %v", all, fa.keys())
	}
}

// TestHash checks the registration hash is stable across runs and changes
// with anything in the registration.
func TestHash(t *testing.T) {
	base := "version: 1\nservice: {name: web, port: 8080, tags: [a], meta: {k: v}}\ncheck: {ttl: 10s}\nupstreams: [{name: db, port: 9191}]\n"
	build := func(t *testing.T, content, hostname string) *Plan {
		t.Helper()
		h := host(t, "")
		h.Hostname = hostname
		var fa fakeAlloc
		plans, err := BuildAll(set(t, h.Global, "web.yaml", content), h, nil, fa.alloc)
		if err != nil || len(plans) != 1 {
			t.Fatalf("%v %v", plans, err)
		}
		return plans[0]
	}
	first := build(t, base, "h1")
	for range 20 { // map order must not matter
		if pl := build(t, base, "h1"); pl.Hash != first.Hash {
			t.Fatalf("hash not stable: %s then %s", first.Hash, pl.Hash)
		}
	}
	if got := first.Registration.Meta[MetaHash]; got != first.Hash {
		t.Errorf("meta %s = %q, want the plan's hash %q", MetaHash, got, first.Hash)
	}
	if Hash(first.Registration) != first.Hash {
		t.Errorf("Hash does not ignore its own meta key")
	}
	changes := map[string]string{
		"port":          strings.Replace(base, "8080", "8081", 1),
		"tag":           strings.Replace(base, "[a]", "[b]", 1),
		"meta":          strings.Replace(base, "{k: v}", "{k: w}", 1),
		"ttl":           strings.Replace(base, "10s", "11s", 1),
		"upstream port": strings.Replace(base, "9191", "9192", 1),
		"upstream dc":   strings.Replace(base, "port: 9191}", "port: 9191, datacenter: dc2}", 1),
		"address":       strings.Replace(base, "port: 8080,", "port: 8080, address: 10.0.0.1,", 1),
		"registration":  base + "registration: {Weights: {Passing: 2}}\n",
		"transparent":   base + "proxy: {mode: envoy}\ntransparent_proxy: {enabled: true}\n",
		"id":            strings.Replace(base, "name: web,", "name: web, id: web-1,", 1),
	}
	seen := map[string]string{first.Hash: "base"}
	for what, content := range changes {
		pl := build(t, content, "h1")
		if o, dup := seen[pl.Hash]; dup {
			t.Errorf("changing the %s gives the hash of %s", what, o)
		}
		seen[pl.Hash] = what
	}
	if pl := build(t, base, "h2"); pl.Hash == first.Hash {
		t.Errorf("changing the hostname (id and meta) keeps the hash")
	}
	// The proxy argv is not part of the registration: it does not change the hash.
	if pl := build(t, base+"proxy: {max_restarts: 1}\n", "h1"); pl.Hash != first.Hash {
		t.Errorf("max_restarts changed the registration hash")
	}
}

// TestBuildAllRejects checks the problems only rendering finds: each moves
// its file to Broken with a located message, the other files go on, and a
// broken file allocates no port.
func TestBuildAllRejects(t *testing.T) {
	good := []string{"z-good.yaml", "version: 1\nservice: {name: good}\n"}
	tests := []struct {
		name  string
		files []string
		want  map[string]string // file -> exact error text
		kept  []string          // names of the services planned
	}{
		{
			name: "duplicate id after rendering hostname",
			files: []string{
				"a.yaml", "version: 1\nservice: {name: web, id: \"web-{{hostname}}\"}\n",
				"b.yaml", "version: 1\nservice:\n  name: api\n  id: web-h1\n",
			},
			want: map[string]string{"b.yaml": `b.yaml:4: service.id: service id "web-h1" is also used by a.yaml`},
			kept: []string{"web", "good"},
		},
		{
			name: "id equal to another service's sidecar id",
			files: []string{
				"a.yaml", "version: 1\nservice: {name: web}\n",
				"b.yaml", "version: 1\nservice: {name: api, id: web-h1-sidecar-proxy}\n",
			},
			want: map[string]string{"b.yaml": `b.yaml:2: service.id: service id "web-h1-sidecar-proxy" is also used by a.yaml`},
			kept: []string{"web", "good"},
		},
		{
			name: "fixed port clashes with another file's fixed port",
			files: []string{
				"a.yaml", "version: 1\nservice: {name: web, port: 8080}\n",
				"b.yaml", "version: 1\nservice: {name: api}\nupstreams:\n  - name: db\n    port: 8080\n",
				"c.yaml", "version: 1\nservice:\n  name: db\n  port: 8080\n",
			},
			want: map[string]string{
				"b.yaml": `b.yaml:5: upstreams[0].port: port 8080 is already taken by a.yaml (service.port)`,
				"c.yaml": `c.yaml:4: service.port: port 8080 is already taken by a.yaml (service.port)`,
			},
			kept: []string{"web", "good"},
		},
		{
			name: "two transparent services on one host",
			files: []string{
				"a.yaml", "version: 1\nservice: {name: web}\nproxy: {mode: envoy}\ntransparent_proxy: {enabled: true}\n",
				"b.json", `{"name": "api"}`,
			},
			want: map[string]string{"b.json": `b.json:1: transparent_proxy: only one service per host may enable transparent proxy in the host's network namespace; a.yaml already does (give each its own with network.namespace: true)`},
			kept: []string{"web", "good"},
		},
		{
			name: "transparent services each in a namespace, and one in the host's",
			files: []string{
				"a.yaml", "version: 1\nservice: {name: a}\nproxy: {mode: envoy}\ntransparent_proxy: {enabled: true}\nnetwork: {namespace: true}\n",
				"b.yaml", "version: 1\nservice: {name: b}\nproxy: {mode: envoy}\ntransparent_proxy: {enabled: true}\nnetwork: {namespace: true}\n",
				"c.yaml", "version: 1\nservice: {name: c}\nproxy: {mode: envoy}\ntransparent_proxy: {enabled: true}\n",
				"d.json", `{"annotations": {"consul.hashicorp.com/connect-service": "d", "meshx.io/network-namespace": "true"}}`,
				"e.yaml", "version: 1\nservice: {name: e, port: 8080}\nnetwork: {namespace: true}\nupstreams: [{name: a, port: 9191}]\n",
				"f.yaml", "version: 1\nservice: {name: f, port: 8080}\nnetwork: {namespace: true}\nupstreams: [{name: a, port: 9191}]\n",
				"g.yaml", "version: 1\nservice: {name: g, port: 8080}\n",
			},
			want: map[string]string{},
			kept: []string{"a", "b", "c", "d", "e", "f", "g", "good"},
		},
		{
			name: "unknown template variables, located",
			files: []string{
				"a.yaml", "version: 1\nservice: {name: web}\nregistration:\n  Meta:\n    owner: \"{{team}}\"\n",
				"b.yaml", "version: 1\nservice: {name: api}\nproxy:\n  command:\n    - my-proxy\n    - \"{{admin_address}}\"\n",
				"c.yaml", "version: 1\nservice: {name: db, id: \"db-{{port}}\"}\n",
				"d.yaml", "version: 1\nservice: {name: d}\nregistration:\n  Checks:\n    - HTTP: \"http://{{addr}}/\"\n",
				"e.yaml", "version: 1\nservice: {name: e}\nregistration:\n  Tags: [\"{{upstreams}}\"]\n",
				"f.yaml", "version: 1\nservice: {name: f}\nregistration:\n  Meta: {a: \"{{id}\"}\n",
			},
			want: map[string]string{
				"a.yaml": `a.yaml:5: registration.Meta.owner: unknown template variable {{team}}`,
				"b.yaml": `b.yaml:6: proxy.command[1]: unknown template variable {{admin_address}}`,
				"c.yaml": `c.yaml:2: service.id: unknown template variable {{port}}`,
				"d.yaml": `d.yaml:5: registration.Checks[0].HTTP: unknown template variable {{addr}}`,
				"e.yaml": `e.yaml:4: registration.Tags[0]: {{upstreams}}: a []interface {} has no text form: use "{{$name$}}" alone in a value to insert it typed`,
				"f.yaml": `f.yaml:4: registration.Meta.a: "{{" without its "}}" (write {{name}})`,
			},
			kept: []string{"good"},
		},
		{
			name: "registration templates that do not fit",
			files: []string{
				"a.yaml", "version: 1\nservice: {name: a}\nregistration:\n  ID: other\n",
				"b.yaml", "version: 1\nservice: {name: b}\nregistration:\n  Name: other\n",
				"c.yaml", "version: 1\nservice: {name: c}\nregistration:\n  Connect: null\n",
				"d.yaml", "version: 1\nservice: {name: d}\nregistration:\n  Meta:\n    meshx-host: evil\n",
				"e.yaml", "version: 1\nservice: {name: e}\nregistration:\n  Port: \"{{port}}\"\n",
				"f.yaml", "version: 1\nservice: {name: f}\nregistration:\n  Weights:\n    Pasing: 1\n",
				"g.yaml", "version: 1\nservice: {name: g}\nregistration:\n  meta: {x: y}\n",
				"h.yaml", "version: 1\nservice: {name: h}\nregistration:\n  Checks:\n    - Interval: 10\n",
				"i.yaml", "version: 1\nservice: {name: i}\nregistration:\n  Connect:\n    SidecarService:\n      Proxy:\n        Upstreams: [{DestinationName: x, Bogus: 1}]\n",
			},
			want: map[string]string{
				"a.yaml": `a.yaml:4: registration.ID: the ID comes from service.id; do not set it in the template`,
				"b.yaml": `b.yaml:4: registration.Name: the name comes from service.name; do not set it in the template`,
				"c.yaml": `c.yaml:4: registration.Connect: Connect.SidecarService must stay: meshx runs a sidecar for every service`,
				"d.yaml": `d.yaml:5: registration.Meta.meshx-host: the meta key prefix "meshx-" is reserved for meshx's ownership records`,
				"e.yaml": `e.yaml:4: registration.Port: must be a whole number (use "{{$var$}}" to insert a number typed), not a JSON string`,
				"f.yaml": `f.yaml:5: registration.Weights.Pasing: unknown field: Consul's service registration has no Pasing`,
				"g.yaml": `g.yaml:4: registration.meta: write Meta: names are case-sensitive here`,
				"h.yaml": `h.yaml:5: registration.Checks[0].Interval: must be a string, not a JSON number`,
				"i.yaml": `i.yaml:7: registration.Connect.SidecarService.Proxy.Upstreams[0].Bogus: unknown field: Consul's service registration has no Bogus`,
			},
			kept: []string{"good"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := host(t, "")
			st := set(t, h.Global, append(slices.Clone(tt.files), good...)...)
			var fa fakeAlloc
			plans, err := BuildAll(st, h, nil, fa.alloc)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, pl := range plans {
				got = append(got, pl.Name)
			}
			if !slices.Equal(got, tt.kept) {
				t.Errorf("planned %v, want %v", got, tt.kept)
			}
			if len(st.Broken) != len(tt.want) {
				t.Errorf("broken: %v", st.Err())
			}
			for f, want := range tt.want {
				if err := st.Broken[f]; err == nil || err.Error() != want {
					t.Errorf("%s: %v\nwant %s", f, err, want)
				}
			}
			// A broken file allocates no port.
			for _, k := range fa.keys() {
				for f := range tt.want {
					for _, s := range allServices(t, tt.files) {
						if s.file == f && strings.Contains(k, "/"+s.name+"-") {
							t.Errorf("broken %s asked for port %s", f, k)
						}
					}
				}
			}
			if len(fa.keys()) == 0 {
				t.Errorf("nothing allocated for the good services")
			}
		})
	}
}

type fileService struct{ file, name string }

func allServices(t *testing.T, files []string) []fileService {
	var out []fileService
	g := global(t, "")
	for i := 0; i+1 < len(files); i += 2 {
		out = append(out, fileService{files[i], service(t, files[i], files[i+1], g).Name})
	}
	return out
}

// TestBuildAllGlobalTemplateError checks that an unknown variable in
// meshx.yaml's default registration is reported in meshx.yaml, at its line.
func TestBuildAllGlobalTemplateError(t *testing.T) {
	h := host(t, "version: 1\ndefaults:\n  registration:\n    Meta:\n      rack: \"{{rack}}\"\n")
	st := set(t, h.Global, "a.yaml", "version: 1\nservice: {name: web}\n")
	var fa fakeAlloc
	_, err := BuildAll(st, h, nil, fa.alloc)
	want := "meshx.yaml:5: defaults.registration.Meta.rack: unknown template variable {{rack}}"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant  %s", err, want)
	}
	if len(fa.reqs) != 0 {
		t.Errorf("allocated %v", fa.keys())
	}
	h = host(t, "version: 1\ndefaults:\n  registration:\n    Wieghts: {Passing: 1}\n")
	_, err = BuildAll(set(t, h.Global, "a.yaml", "version: 1\nservice: {name: web}\n"), h, nil, fa.alloc)
	want = "meshx.yaml:4: defaults.registration.Wieghts: unknown field: Consul's service registration has no Wieghts"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant  %s", err, want)
	}
}

func TestBuildAllAllocatorError(t *testing.T) {
	h := host(t, "")
	fa := fakeAlloc{err: fmt.Errorf("%w: ports.json", ports.ErrCorruptState)}
	_, err := BuildAll(set(t, h.Global, "a.yaml", "version: 1\nservice: {name: web}\n"), h, nil, fa.alloc)
	if err == nil || !strings.HasPrefix(err.Error(), "allocate ports: ") {
		t.Fatalf("err = %v", err)
	}
}

// TestBuildAllExhaustedRejectsAlone: a file whose upstreams cannot fit in the
// port range is rejected alone, located at its upstreams; the other files get
// their ports. A file that needs more ports than the range holds is rejected
// before anything is allocated.
func TestBuildAllExhaustedRejectsAlone(t *testing.T) {
	h := host(t, "version: 1\nports: {range: 20000-20009}\n")
	ups := func(n int) string {
		var b strings.Builder
		b.WriteString("upstreams:\n")
		for i := range n {
			fmt.Fprintf(&b, "  - name: u%d\n", i)
		}
		return b.String()
	}
	st := set(t, h.Global,
		"a.yaml", "version: 1\nservice: {name: a}\n"+ups(1),
		"b.yaml", "version: 1\nservice: {name: b}\n"+ups(7), // 10 ports: more than the 6 left after a
		"c.yaml", "version: 1\nservice: {name: c}\n"+ups(1),
		"d.yaml", "version: 1\nservice: {name: d}\n"+ups(12), // 15 ports: more than the range
	)
	o := ports.Options{StateDir: t.TempDir(), Range: h.Global.Ports, InUse: func(netip.Addr, int) bool { return false }}
	plans, err := BuildAll(st, h, nil, func(reqs []ports.Request) (map[string]int, error) { return ports.Allocate(o, reqs) })
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, pl := range plans {
		got = append(got, pl.Name)
	}
	if !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("planned %v, want [a c]", got)
	}
	for file, want := range map[string]string{
		"b.yaml": "b.yaml:3: upstreams: no port left for this service: port range exhausted",
		"d.yaml": "d.yaml:3: upstreams: needs 15 ports from the range 20000-20009 (ports.range in meshx.yaml), which holds 10",
	} {
		if err := st.Broken[file]; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: %v\nwant prefix %s", file, err, want)
		}
	}
}

func TestBuildAllEmpty(t *testing.T) {
	h := host(t, "")
	var fa fakeAlloc
	plans, err := BuildAll(&config.Set{Broken: map[string]error{}}, h, nil, fa.alloc)
	if err != nil || len(plans) != 0 {
		t.Fatalf("%v %v", plans, err)
	}
}

func TestRenderID(t *testing.T) {
	g := global(t, "")
	tests := []struct {
		in, want, err string
	}{
		{"version: 1\nservice: {name: web}\n", "web-h1.example.com", ""},
		{"version: 1\nservice: {name: web, id: \"{{hostname}}_{{name}}\"}\n", "h1.example.com_web", ""},
		{"version: 1\nservice: {name: web, id: \"{{nope}}\"}\n", "", "service.id: unknown template variable {{nope}}"},
	}
	for _, tt := range tests {
		got, err := RenderID(service(t, "a.yaml", tt.in, g), "h1.example.com")
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("err = %v, want %s", err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("RenderID = %q, %v; want %q", got, err, tt.want)
		}
	}
	// A hostname that makes the id invalid.
	_, err := RenderID(service(t, "a.yaml", "version: 1\nservice: {name: web}\n", g), "bad host")
	if err == nil || !strings.Contains(err.Error(), `rendered id "web-bad host" is not valid`) {
		t.Errorf("err = %v", err)
	}
}

func TestDurationJSON(t *testing.T) {
	var d Duration
	if err := json.Unmarshal([]byte(`"1m30s"`), &d); err != nil || d != Duration(90e9) {
		t.Fatalf("%v %v", d, err)
	}
	b, _ := json.Marshal(d)
	if string(b) != `"1m30s"` {
		t.Errorf("marshal = %s", b)
	}
	if err := json.Unmarshal([]byte(`"soon"`), &d); err == nil {
		t.Error("accepted a bad duration")
	}
	if err := json.Unmarshal([]byte(`5`), &d); err == nil {
		t.Error("accepted a number")
	}
}

// TestPlanRoundTrip checks that a plan written by meshx-init reads back the
// same in meshx-proxy.
func TestPlanRoundTrip(t *testing.T) {
	h := host(t, "")
	var fa fakeAlloc
	plans, err := BuildAll(set(t, h.Global, "a.yaml", "version: 1\nservice: {name: web}\nproxy: {mode: envoy}\ntransparent_proxy: {enabled: true, exclude_outbound_cidrs: [10.0.0.0/8]}\n"), h, nil, fa.alloc)
	if err != nil {
		t.Fatal(err)
	}
	b := planJSON(t, plans[0])
	var back Plan
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(planJSON(t, &back), b) {
		t.Errorf("round trip differs:\n%s\n%s", planJSON(t, &back), b)
	}
}

// TestDocExamples parses and renders every configuration example of
// docs/configuration.md (the YAML blocks with a version), so the reference
// cannot drift from the code.
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(doc), "```yaml\n")[1:]
	n := 0
	for i, b := range blocks {
		b, _, _ = strings.Cut(b, "```")
		if !strings.Contains(b, "version: 1") {
			continue // a template, not a file
		}
		n++
		t.Run(fmt.Sprintf("block%d", i+1), func(t *testing.T) {
			if !strings.Contains(b, "\nservice:") && !strings.HasPrefix(b, "service:") && !strings.Contains(b, "\nservice: ") {
				if _, err := config.ParseGlobal("meshx.yaml", []byte(b)); err != nil {
					t.Fatalf("%v\n%s", err, b)
				}
				return
			}
			h := host(t, "")
			s, err := config.Parse("example.yaml", []byte(b), h.Global.Defaults)
			if err != nil {
				t.Fatalf("%v\n%s", err, b)
			}
			st := &config.Set{Services: []*config.Service{s}, Broken: map[string]error{}}
			var fa fakeAlloc
			if _, err := BuildAll(st, h, nil, fa.alloc); err != nil || st.Err() != nil {
				t.Fatalf("%v %v\n%s", err, st.Err(), b)
			}
		})
	}
	if n < 8 {
		t.Errorf("only %d examples found", n)
	}
	for i, b := range strings.Split(string(doc), "```json\n")[1:] {
		b, _, _ = strings.Cut(b, "```")
		if _, err := config.Parse("service-config.json", []byte(b), config.Defaults{}); err != nil {
			t.Errorf("json block %d: %v\n%s", i+1, err, b)
		}
	}
}

// TestAdvertisedAddress: service.address is always where the sidecar reaches
// the app, and it reaches the catalog only when other hosts can dial it; a
// template that writes an address other hosts cannot dial is refused,
// located.
func TestAdvertisedAddress(t *testing.T) {
	h := host(t, "")
	for _, tc := range []struct {
		addr, advertised string
	}{
		{"127.0.0.1", ""}, {"127.0.0.53", ""}, {"::1", ""}, {"localhost", ""}, {"169.254.10.1", ""}, {"fe80::1", ""},
		{"10.0.0.5", "10.0.0.5"}, {"192.168.56.11", "192.168.56.11"}, {"2001:db8::5", "2001:db8::5"}, {"web.internal", "web.internal"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			st := set(t, h.Global, "web.yaml", fmt.Sprintf("version: 1\nservice: {name: web, address: %q, port: 8080}\n", tc.addr))
			var fa fakeAlloc
			plans, err := BuildAll(st, h, nil, fa.alloc)
			if err != nil || len(plans) != 1 {
				t.Fatalf("%v %v", plans, err)
			}
			reg := plans[0].Registration
			sc := reg.Connect.SidecarService
			if reg.Address != tc.advertised || sc.Address != "" {
				t.Errorf("advertised %q, sidecar %q; want %q and none", reg.Address, sc.Address, tc.advertised)
			}
			if got := sc.Proxy.LocalServiceAddress; got != tc.addr {
				t.Errorf("LocalServiceAddress %q, want %q", got, tc.addr)
			}
			if plans[0].Address != tc.addr {
				t.Errorf("plan address (the probe's) %q, want %q", plans[0].Address, tc.addr)
			}
		})
	}
	for _, tc := range []struct{ name, in, want string }{
		{"Address from the template", "version: 1\nservice: {name: web}\nregistration:\n  Address: \"{{address}}\"\n",
			`web.yaml:4: registration.Address: "127.0.0.1" is a loopback address`},
		{"sidecar Address", "version: 1\nservice: {name: web}\nregistration:\n  Connect:\n    SidecarService:\n      Address: 0.0.0.0\n",
			`web.yaml:6: registration.Connect.SidecarService.Address: "0.0.0.0" is the unspecified address`},
		{"tagged address", "version: 1\nservice: {name: web}\nregistration:\n  TaggedAddresses:\n    lan: {Address: 169.254.1.1, Port: 80}\n",
			`web.yaml:5: registration.TaggedAddresses.lan.Address: "169.254.1.1" is a link-local address`},
		{"multicast", "version: 1\nservice: {name: web}\nregistration:\n  Address: 224.0.0.1\n",
			`web.yaml:4: registration.Address: "224.0.0.1" is a multicast address`},
		{"not an address", "version: 1\nservice: {name: web}\nregistration:\n  Address: 999.1.1.1\n",
			`web.yaml:4: registration.Address: invalid address "999.1.1.1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := set(t, h.Global, "web.yaml", tc.in)
			var fa fakeAlloc
			plans, err := BuildAll(st, h, nil, fa.alloc)
			if err != nil || len(plans) != 0 {
				t.Fatalf("%v %v", plans, err)
			}
			if got := st.Err(); got == nil || !strings.HasPrefix(got.Error(), tc.want) {
				t.Errorf("got %v\nwant prefix %s", got, tc.want)
			}
		})
	}
}
