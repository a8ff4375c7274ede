package cli

import (
	"bytes"
	"context"
	"testing"

	"github.com/meshx/meshx/internal/version"
)

// TestVersion: --version (both binaries) and `meshx-init version` print the
// version the build was linked with, need no configuration, and change nothing.
func TestVersion(t *testing.T) {
	old := version.Version
	t.Cleanup(func() { version.Version = old })
	version.Version = "1.4.2~rc1" // what the packaging build sets with -X
	h := newHost(t)
	cases := []struct {
		name string
		main func(context.Context, []string, *bytes.Buffer, *bytes.Buffer) int
		args []string
		want string
	}{
		{"init --version", initMain, []string{"--version"}, "meshx-init 1.4.2~rc1\n"},
		{"init -v", initMain, []string{"-v"}, "meshx-init 1.4.2~rc1\n"},
		{"init version", initMain, []string{"version"}, "meshx-init 1.4.2~rc1\n"},
		{"init version with broken config", initMain, []string{"--config-dir", "/nonexistent", "version"}, "meshx-init 1.4.2~rc1\n"},
		{"proxy --version", proxyMain, []string{"--version"}, "meshx-proxy 1.4.2~rc1\n"},
		{"proxy --version with a service", proxyMain, append(h.flags(), "--version", "web"), "meshx-proxy 1.4.2~rc1\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, tc.main, tc.args...)
			if r.code != ExitOK || r.stdout != tc.want || r.stderr != "" {
				t.Errorf("got exit %d, stdout %q, stderr %q; want 0, %q, nothing", r.code, r.stdout, r.stderr, tc.want)
			}
		})
	}
	if r := run(t, initMain, "version", "extra"); r.code != ExitInvalid {
		t.Errorf("version with an argument: exit %d, want %d", r.code, ExitInvalid)
	}
}
