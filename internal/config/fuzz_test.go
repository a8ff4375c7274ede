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
			if s == nil || !ValidName(s.Name) || s.File != name || s.Check.Interval <= 0 || s.Check.Interval >= s.Check.TTL {
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
