package version

import (
	"runtime/debug"
	"testing"
)

func TestDev(t *testing.T) {
	cases := []struct {
		name     string
		settings []debug.BuildSetting
		want     string
	}{
		{"no vcs information", nil, "0.0.0-dev"},
		{"clean checkout", []debug.BuildSetting{{Key: "vcs.revision", Value: "c5436d9f0a1b2c3d4e5f60718293a4b5c6d7e8f9"},
			{Key: "vcs.modified", Value: "false"}}, "0.0.0-dev+c5436d9f0a1b"},
		{"modified tree", []debug.BuildSetting{{Key: "vcs.modified", Value: "true"},
			{Key: "vcs.revision", Value: "c5436d9f0a1b2c3d4e5f60718293a4b5c6d7e8f9"}}, "0.0.0-dev+c5436d9f0a1b.dirty"},
		{"short revision", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}}, "0.0.0-dev+abc"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := dev(c.settings); got != c.want {
				t.Errorf("dev() = %q, want %q", got, c.want)
			}
		})
	}
}

func TestStringPrefersTheLinkerVersion(t *testing.T) {
	old := Version
	t.Cleanup(func() { Version = old })
	Version = "1.2.3~rc1"
	if got := String(); got != "1.2.3~rc1" {
		t.Errorf("String() = %q with Version set, want it", got)
	}
	Version = ""
	// go test embeds no VCS information.
	if got := String(); got != "0.0.0-dev" {
		t.Errorf("String() = %q without Version under go test, want 0.0.0-dev", got)
	}
}
