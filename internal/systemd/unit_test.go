package systemd

import (
	"path/filepath"
	"testing"

	"github.com/meshx/meshx/internal/testutil"
)

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
	for _, tc := range []struct {
		golden string
		in     Instance
	}{
		{"transparent-proxy.conf", Instance{Service: "web", TransparentProxy: true}},
		{"namespace.conf", Instance{Service: "my-web", Namespace: true}},
		{"namespace-transparent-proxy.conf", Instance{Service: "web", Namespace: true, TransparentProxy: true}},
	} {
		name, content := DropIn(tc.in)
		if name != "50-meshx.conf" {
			t.Errorf("drop-in name %q", name)
		}
		testutil.Golden(t, filepath.Join("testdata", tc.golden+".golden"), []byte(content))
	}
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
