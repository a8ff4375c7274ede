// Package version is the version meshx's binaries report. A packaging build
// sets Version with the linker:
//
//	go build -ldflags "-X github.com/meshx/meshx/internal/version.Version=1.2.3" ./cmd/...
//
// (mk/package.mk does, with MESHX_VERSION). Any other build reports a
// development version derived from the VCS information Go embeds.
package version

import (
	"runtime/debug"
)

// Version is set by the linker in a packaging build; empty otherwise.
var Version string

// devVersion is what a build without -X reports, before any VCS suffix.
const devVersion = "0.0.0-dev"

// String is the version to print: Version when the build set it, else
// "0.0.0-dev", with "+<commit>" (and ".dirty" for a modified tree) when the
// build embedded VCS information (go build in a checkout; not go test).
func String() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return devVersion
	}
	return dev(bi.Settings)
}

// dev renders the development version from a build's settings.
func dev(settings []debug.BuildSetting) string {
	var rev string
	var dirty bool
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return devVersion
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := devVersion + "+" + rev
	if dirty {
		v += ".dirty"
	}
	return v
}
