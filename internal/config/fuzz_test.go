package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse, as YAML and as JSON. It must never
// panic; a file is either a valid Service or an error whose every line is
// located (file:line: ...); and the result must not depend on map order.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"good", "bad"} {
		entries, err := os.ReadDir(filepath.Join("testdata", "services", dir))
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range entries {
			if !IsServiceFile(e.Name()) {
				continue
			}
			data, err := os.ReadFile(filepath.Join("testdata", "services", dir, e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data, strings.HasSuffix(e.Name(), ".json"))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		name := "fuzz.yaml"
		if asJSON {
			name = "fuzz.json"
		}
		s, err := Parse(name, data, Defaults{})
		if err == nil {
			if s == nil || !ValidName(s.Name) || s.File != name || s.Check.Interval < MinInterval || s.Check.Interval >= s.Check.TTL ||
				s.Check.TTL > MaxTTL || len(s.Tags) > MaxTags || len(s.Meta) > MaxMetaPairs || len(s.Upstreams) > MaxUpstreams ||
				s.Port < 0 || s.Port > 65535 {
				t.Fatalf("accepted an invalid service: %+v", s)
			}
			return
		}
		if s != nil {
			t.Fatalf("a service along with an error: %v", err)
		}
		msg := err.Error()
		for _, line := range strings.Split(msg, "\n") {
			m := locatedRE.FindStringSubmatch(line)
			if m == nil || m[1] != name {
				t.Fatalf("problem not located: %q in\n%s", line, msg)
			}
		}
		if _, err2 := Parse(name, data, Defaults{}); err2 == nil || err2.Error() != msg {
			t.Fatalf("not deterministic:\n%s\nthen:\n%v", msg, err2)
		}
	})
}

// FuzzParseGlobal feeds arbitrary bytes to ParseGlobal (meshx.yaml): it must
// never panic, and every problem is located in the file.
func FuzzParseGlobal(f *testing.F) {
	for _, seed := range []string{
		"version: 1\nconsul: {address: \"http://127.0.0.1:8500\", token_file: /etc/meshx/token, wait: 30s}\n",
		"version: 1\nports: {ip: 127.0.0.1, range: \"20000-20999\"}\nproxy_user: meshx\nhostname: vm1\n",
		"version: 1\ndefaults:\n  check: {ttl: 10s, interval: 5s, probe: tcp}\n  proxy: {mode: envoy}\n  registration:\n    Meta: {rack: r1}\n",
		"version: 1\nconsul:\n  login: {method: jwt, bearer_token_file: /run/jwt}\nmetrics: {enabled: true, ip: 0.0.0.0}\n",
		"version: 1\nconsul: {address: \"unix:///run/consul.sock\", grpc_address: \"127.0.0.1:8502\"}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "meshx.yaml"
		g, err := ParseGlobal(name, data)
		if err == nil {
			if g == nil || !g.Ports.IP.IsValid() || g.Ports.Low < 1 || g.Ports.High > 65535 || g.Ports.Low > g.Ports.High ||
				g.Consul.Wait <= 0 || g.Consul.Wait > MaxWait {
				t.Fatalf("accepted an invalid meshx.yaml: %+v", g)
			}
			return
		}
		for _, line := range strings.Split(err.Error(), "\n") {
			if m := locatedRE.FindStringSubmatch(line); m == nil || m[1] != name {
				t.Fatalf("problem not located: %q in\n%v", line, err)
			}
		}
	})
}

// FuzzParseUpstream feeds arbitrary text to ParseUpstream (the
// connect-service-upstreams annotation's items, `meshx-init connect`'s
// arguments): it must never panic, and what it accepts has a name and a
// port number.
func FuzzParseUpstream(f *testing.F) {
	for _, seed := range []string{"db:9191", "db:9191:dc2", "db.ns:9191", "prepared_query:q:9000", "db", ":1", "a:b:c:d"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, item string) {
		u, err := ParseUpstream(item)
		if err != nil {
			return
		}
		if u.Name == "" || (u.Type != "" && u.Type != "prepared_query") {
			t.Fatalf("accepted %q as %+v", item, u)
		}
	})
}
