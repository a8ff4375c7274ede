package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// dumpService is a Service as its golden files show it: durations as text.
type dumpService struct {
	*Service
	Check struct {
		TTL, Interval string
		Probe         string
	}
}

func dump(t *testing.T, s *Service) []byte {
	t.Helper()
	d := dumpService{Service: s}
	d.Check.TTL, d.Check.Interval, d.Check.Probe = s.Check.TTL.String(), s.Check.Interval.String(), s.Check.Probe
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func testFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if IsServiceFile(e.Name()) {
			out = append(out, e.Name())
		}
	}
	if len(out) == 0 {
		t.Fatalf("no test files in %s", dir)
	}
	return out
}

// TestParseGood decodes every file of testdata/services/good and compares the
// Service after defaults with its golden file (<file>.golden).
func TestParseGood(t *testing.T) {
	dir := filepath.Join("testdata", "services", "good")
	for _, name := range testFiles(t, dir) {
		t.Run(name, func(t *testing.T) {
			s, err := Parse(name, readFile(t, filepath.Join(dir, name)), Defaults{})
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if s.File != name {
				t.Errorf("File = %q, want %q", s.File, name)
			}
			testutil.Golden(t, filepath.Join(dir, name+".golden"), dump(t, s))
		})
	}
}

// locatedRE is the shape of every reported problem: file:line: [field: ]message.
var locatedRE = regexp.MustCompile(`^([^:]+):([1-9][0-9]*): (.+)$`)

// TestParseBad parses every file of testdata/services/bad and compares the
// error text with its golden file; every problem must be located with the file
// name and a line, and the error must be ErrInvalid.
func TestParseBad(t *testing.T) {
	dir := filepath.Join("testdata", "services", "bad")
	for _, name := range testFiles(t, dir) {
		t.Run(name, func(t *testing.T) {
			s, err := Parse(name, readFile(t, filepath.Join(dir, name)), Defaults{})
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", s)
			}
			if s != nil {
				t.Errorf("Parse returned a service along with its error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				m := locatedRE.FindStringSubmatch(line)
				if m == nil || m[1] != name {
					t.Errorf("problem not located as %s:LINE: ...: %q", name, line)
				}
			}
			testutil.Golden(t, filepath.Join(dir, name+".golden"), []byte(err.Error()+"\n"))
		})
	}
}

// TestParseAllProblemsAtOnce checks that problems of different kinds in one
// file (decoding, then checking) are all reported, one located line each.
func TestParseAllProblemsAtOnce(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "unknown field, invalid name, port out of range",
			in:   "version: 1\nservice:\n  name: Web\n  colour: blue\n  port: 99999\n",
			want: []string{
				`f.yaml:3: service.name: invalid name "Web"`,
				`f.yaml:4: service.colour: unknown field`,
				`f.yaml:5: service.port: port 99999 out of range`,
			},
		},
		{
			name: "wrong type, bad version, bad duration, missing name",
			in:   "version: 3\nservice:\n  port: [1]\ncheck:\n  ttl: forever\n",
			want: []string{
				`f.yaml:1: version: unsupported version 3`,
				`f.yaml:2: service.name: missing`,
				`f.yaml:3: service.port: must be a whole number, not a list`,
				`f.yaml:5: check.ttl: not a duration`,
			},
		},
		{
			name: "a value that did not decode is not reported again",
			in:   "version: 1\nservice:\n  name: [web]\n  port: 0x\n",
			want: []string{
				`f.yaml:3: service.name: must be a string, not a list`,
				`f.yaml:4: service.port: must be a whole number, not the string "0x"`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tt.in), Defaults{})
			if err == nil {
				t.Fatal("no error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("problem %d = %q, want prefix %q", i+1, lines[i], w)
				}
			}
			var located []*Error
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				var le *Error
				if errors.As(e, &le) {
					located = append(located, le)
				}
			}
			if len(located) != len(tt.want) {
				t.Errorf("%d *Error values unwrap from the error, want %d", len(located), len(tt.want))
			}
		})
	}
}

// TestParseShapes checks how a file's shape is told apart.
func TestParseShapes(t *testing.T) {
	tests := []struct {
		name, file, in, shape string
	}{
		{"version makes meshx", "a.yaml", "version: 1\nservice: {name: web}\n", "meshx"},
		{"meshx in json", "a.json", `{"version": 1, "service": {"name": "web"}}`, "meshx"},
		{"flat", "a.json", `{"name": "web"}`, "vagrant-flat"},
		{"flat in yaml", "a.yaml", "name: web\nport: 80\n", "vagrant-flat"},
		{"annotations", "a.json", `{"annotations": {"consul.hashicorp.com/connect-service": "web"}}`, "vagrant-annotations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse(tt.file, []byte(tt.in), Defaults{})
			if err != nil {
				t.Fatal(err)
			}
			if s.Shape != tt.shape {
				t.Errorf("Shape = %q, want %q", s.Shape, tt.shape)
			}
		})
	}
}

// TestParseStrictStrings pins the Vagrant flow's weaknesses meshx fixes.
func TestParseStrictStrings(t *testing.T) {
	ann := func(kv string) string {
		return `{"annotations": {"consul.hashicorp.com/connect-service": "web", ` + kv + `}}`
	}
	tests := []struct {
		name        string
		in          string
		transparent bool
		err         string
	}{
		{"false is false", ann(`"consul.hashicorp.com/transparent-proxy": "false"`), false, ""},
		{"False is false", ann(`"consul.hashicorp.com/transparent-proxy": "False"`), false, ""},
		{"FALSE is false", ann(`"consul.hashicorp.com/transparent-proxy": " FALSE "`), false, ""},
		{"true is true", ann(`"consul.hashicorp.com/transparent-proxy": "true"`), true, ""},
		{"JSON false is false", ann(`"consul.hashicorp.com/transparent-proxy": false`), false, ""},
		{"absent is on (the flow's default)", ann(`"consul.hashicorp.com/service-tags": "a"`), true, ""},
		{"0 is refused", ann(`"consul.hashicorp.com/transparent-proxy": "0"`), false,
			`a.json:1: annotations.consul.hashicorp.com/transparent-proxy: must be "true" or "false", not "0"`},
		{"missing upstream port", ann(`"consul.hashicorp.com/connect-service-upstreams": "db"`), false,
			`a.json:1: annotations.consul.hashicorp.com/connect-service-upstreams: upstream 1 ("db"): missing local port (write name:port)`},
		{"empty upstream port", ann(`"consul.hashicorp.com/connect-service-upstreams": "db:"`), false,
			`a.json:1: annotations.consul.hashicorp.com/connect-service-upstreams: upstream 1 ("db:"): not a port number: ""`},
		{"envoy args are not a shell", ann(`"consul.hashicorp.com/envoy-extra-args": "$(reboot); rm -rf /"`), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse("a.json", []byte(tt.in), Defaults{})
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v\nwant  %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Transparent != nil; got != tt.transparent {
				t.Errorf("transparent = %v, want %v", got, tt.transparent)
			}
		})
	}
	s, err := Parse("a.json", []byte(ann(`"consul.hashicorp.com/envoy-extra-args": "$(reboot); rm -rf /"`)), Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"$(reboot);", "rm", "-rf", "/"}; strings.Join(s.Proxy.ExtraArgs, "|") != strings.Join(want, "|") {
		t.Errorf("ExtraArgs = %q, want the words as data %q", s.Proxy.ExtraArgs, want)
	}
}

func TestParseUpstream(t *testing.T) {
	tests := []struct {
		in   string
		want Upstream
		err  string
	}{
		{in: "db:9191", want: Upstream{Name: "db", Port: 9191}},
		{in: "db:9191:dc2", want: Upstream{Name: "db", Port: 9191, Datacenter: "dc2"}},
		{in: "db.finance:9191", want: Upstream{Name: "db", Namespace: "finance", Port: 9191}},
		{in: "db.finance:9191:dc2", want: Upstream{Name: "db", Namespace: "finance", Port: 9191, Datacenter: "dc2"}},
		{in: "prepared_query:nearest:9191", want: Upstream{Name: "nearest", Type: "prepared_query", Port: 9191}},
		{in: "db:0", want: Upstream{Name: "db"}},
		{in: "db", err: "missing local port (write name:port)"},
		{in: "db:", err: `not a port number: ""`},
		{in: "db:http", err: `not a port number: "http"`},
		{in: ":9191", err: "missing upstream name"},
		{in: "a:1:dc:x", err: "too many ':' (write name:port or name:port:datacenter)"},
		{in: "prepared_query:q", err: "missing local port (write name:port)"},
		{in: "prepared_query:q:1:dc2", err: "a prepared query takes no datacenter"},
		{in: "prepared_query", err: "missing upstream name (write prepared_query:name:port)"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseUpstream(tt.in)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestUpstreamKey(t *testing.T) {
	tests := []struct {
		u    Upstream
		want string
	}{
		{Upstream{Name: "db", Type: "service"}, "db"},
		{Upstream{Name: "db", Type: "service", Datacenter: "dc2"}, "db@dc2"},
		{Upstream{Name: "db", Type: "service", Namespace: "ns"}, "db.ns"},
		{Upstream{Name: "q", Type: "prepared_query"}, "pq:q"},
	}
	for _, tt := range tests {
		if got := tt.u.Key(); got != tt.want {
			t.Errorf("%+v.Key() = %q, want %q", tt.u, got, tt.want)
		}
	}
}

// TestParseDefaults checks that a host's defaults fill what a file leaves out,
// and that the file's own values win.
func TestParseDefaults(t *testing.T) {
	d := Defaults{Check: Check{TTL: 30 * time.Second, Interval: 3 * time.Second, Probe: ProbeNone}, ProxyMode: ModeEnvoy,
		Registration: map[string]any{"Meta": map[string]any{"dc": "x"}}}
	tests := []struct {
		name string
		in   string
		want Service
	}{
		{"host defaults", "version: 1\nservice: {name: web}\n",
			Service{ID: DefaultIDTemplate, Check: Check{TTL: 30 * time.Second, Interval: 3 * time.Second, Probe: ProbeNone},
				Proxy: Proxy{Mode: ModeEnvoy, MaxRestarts: DefaultMaxRestarts}}},
		{"file wins", "version: 1\nservice: {name: web, id: web-1}\ncheck: {ttl: 4s, probe: tcp}\nproxy: {mode: none, max_restarts: 1}\n",
			Service{ID: "web-1", Check: Check{TTL: 4 * time.Second, Interval: 3 * time.Second, Probe: ProbeTCP},
				Proxy: Proxy{Mode: ModeNone, MaxRestarts: 1}}},
		{"host interval too long for the file's ttl", "version: 1\nservice: {name: web}\ncheck: {ttl: 2s}\n",
			Service{ID: DefaultIDTemplate, Check: Check{TTL: 2 * time.Second, Interval: time.Second, Probe: ProbeNone},
				Proxy: Proxy{Mode: ModeEnvoy, MaxRestarts: DefaultMaxRestarts}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse("a.yaml", []byte(tt.in), d)
			if err != nil {
				t.Fatal(err)
			}
			if s.ID != tt.want.ID || s.Check != tt.want.Check || s.Proxy.Mode != tt.want.Proxy.Mode ||
				s.Proxy.MaxRestarts != tt.want.Proxy.MaxRestarts {
				t.Errorf("got id %q check %+v mode %q max_restarts %d\nwant id %q check %+v mode %q max_restarts %d",
					s.ID, s.Check, s.Proxy.Mode, s.Proxy.MaxRestarts,
					tt.want.ID, tt.want.Check, tt.want.Proxy.Mode, tt.want.Proxy.MaxRestarts)
			}
			if s.Registration != nil {
				t.Errorf("the host's default registration was copied into the service: plan merges it, under the service's own")
			}
		})
	}
	// Without host defaults: the built-in ones.
	s, err := Parse("a.yaml", []byte("version: 1\nservice: {name: web}\n"), Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	want := Check{TTL: DefaultTTL, Interval: DefaultTTL / 2, Probe: ProbeTCP}
	if s.Check != want || s.Proxy.Mode != ModeConnect || s.Proxy.MaxRestarts != DefaultMaxRestarts || s.Transparent != nil {
		t.Errorf("built-in defaults: check %+v mode %q max_restarts %d transparent %v", s.Check, s.Proxy.Mode, s.Proxy.MaxRestarts, s.Transparent)
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"web", true},
		{"web-2", true},
		{"0", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"Web", false},
		{"web_api", false},
		{"web.api", false},
		{"-web", false},
		{"web-", false},
		{"web;rm -rf /", false},
		{"$(x)", false},
		{"`id`", false},
		{"web\n", false},
		{"wéb", false},
	}
	for _, tt := range tests {
		if got := ValidName(tt.name); got != tt.ok {
			t.Errorf("ValidName(%q) = %v, want %v", tt.name, got, tt.ok)
		}
	}
}

// TestServiceLoc checks where problems about fields a file does not hold are reported.
func TestServiceLoc(t *testing.T) {
	s, err := Parse("a.yaml", []byte("version: 1\nservice:\n  name: web\nregistration:\n  Meta:\n    owner: x\n"), Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		field string
		want  Loc
	}{
		{"service.name", Loc{3, "service.name"}},
		{"registration.Meta.owner", Loc{6, "registration.Meta.owner"}},
		{"registration.Meta.other", Loc{5, "registration.Meta.other"}},
		{"registration.Checks[0].HTTP", Loc{4, "registration.Checks[0].HTTP"}},
		{"proxy.command[1]", Loc{1, "proxy.command[1]"}},
		{"", Loc{1, ""}},
	}
	for _, tt := range tests {
		if got := s.Loc(tt.field); got != tt.want {
			t.Errorf("Loc(%q) = %+v, want %+v", tt.field, got, tt.want)
		}
	}
	flat, err := Parse("b.json", []byte("{\n\"port\": 80,\n\"name\": \"web\",\n\"meta\": {\n\"a\": \"b\"}}"), Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		field string
		want  Loc
	}{
		{"service.name", Loc{3, "name"}},
		{"service.port", Loc{2, "port"}},
		{"service.meta.a", Loc{5, "meta.a"}},
		{"service.id", Loc{1, "id"}},
	} {
		if got := flat.Loc(tt.field); got != tt.want {
			t.Errorf("flat Loc(%q) = %+v, want %+v", tt.field, got, tt.want)
		}
	}
}
