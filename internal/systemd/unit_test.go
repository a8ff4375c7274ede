package systemd

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func TestUnitName(t *testing.T) {
	tests := []struct {
		name, service, unit string
	}{
		{"plain", "web", "meshx-proxy@web.service"},
		{"dash is escaped", "my-svc", `meshx-proxy@my\x2dsvc.service`},
		{"dot kept", "api.v2", "meshx-proxy@api.v2.service"},
		{"slash becomes dash", "a/b", "meshx-proxy@a-b.service"},
		{"leading dot escaped", ".x", `meshx-proxy@\x2ex.service`},
		{"space escaped", "a b", `meshx-proxy@a\x20b.service`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := UnitName(tc.service); got != tc.unit {
				t.Errorf("UnitName(%q) = %q, want %q", tc.service, got, tc.unit)
			}
			got, ok := ServiceOf(tc.unit)
			if !ok || got != tc.service {
				t.Errorf("ServiceOf(%q) = %q, %v; want %q, true", tc.unit, got, ok, tc.service)
			}
		})
	}
}

func TestServiceOfRejects(t *testing.T) {
	for _, u := range []string{"meshx-proxy@.service", "meshx-init.service", "meshx-proxy@web.socket", "web.service", ""} {
		if s, ok := ServiceOf(u); ok {
			t.Errorf("ServiceOf(%q) = %q, true; want false", u, s)
		}
	}
}

func TestDropIn(t *testing.T) {
	if name, content := DropIn(Instance{Service: "web"}); name != "" || content != "" {
		t.Errorf("DropIn without transparent proxy = %q, %q; want nothing", name, content)
	}
	name, content := DropIn(Instance{Service: "web", TransparentProxy: true})
	if name != "50-meshx-transparent-proxy.conf" {
		t.Errorf("drop-in name %q", name)
	}
	golden(t, "transparent-proxy.conf", content)
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		want []Instance
		ok   bool
	}{
		{"none", nil, true},
		{"two", []Instance{{Service: "a"}, {Service: "b"}}, true},
		{"empty name", []Instance{{Service: ""}}, false},
		{"duplicate", []Instance{{Service: "a"}, {Service: "a", TransparentProxy: true}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := validate(tc.want); (err == nil) != tc.ok {
				t.Errorf("validate = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// golden compares got with testdata/<name>.golden, rewriting it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}
