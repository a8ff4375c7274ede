package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// overstrike is man's bold and underline when it writes to no terminal.
var overstrike = regexp.MustCompile(".\x08")

// TestWriteDocs: one man page per command of both binaries, each rendered by
// man(1) without a warning, with its synopsis, every visible flag and no
// hidden one; and one bash completion per binary.
func TestWriteDocs(t *testing.T) {
	dir := t.TempDir()
	date := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	if err := WriteDocs(dir, date, "1.4.2"); err != nil {
		t.Fatal(err)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, ManDir, "*"))
	var names []string
	for _, p := range pages {
		names = append(names, filepath.Base(p))
	}
	want := []string{"meshx-init-connect.8", "meshx-init-disconnect.8", "meshx-init-netns-down.8", "meshx-init-netns-up.8",
		"meshx-init-netns.8", "meshx-init-render.8", "meshx-init-run.8",
		"meshx-init-status.8", "meshx-init-stop.8", "meshx-init-validate.8", "meshx-init-version.8",
		"meshx-init.8", "meshx-proxy.8"}
	if !slices.Equal(names, want) {
		t.Errorf("man pages %v, want %v", names, want)
	}
	for _, bin := range []string{"meshx-init", "meshx-proxy"} {
		b, err := os.ReadFile(filepath.Join(dir, CompletionDir, bin))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "complete -o default -F __start_"+bin+" "+bin) {
			t.Errorf("bash completion of %s does not register for it:\n%.300s", bin, b)
		}
	}

	_, err := exec.LookPath("man")
	testutil.Need(t, err == nil, "man (apt-get install man-db)")
	cases := []struct {
		page    string
		has     []string
		hasNot  []string
		heading string
	}{
		{"meshx-init.8", []string{"meshx-init reads every service-config in <config-dir>/services.d", "--config-dir",
			"--version", "meshx-init-status(8)"}, nil, "MESHX-INIT(8)"},
		{"meshx-proxy.8", []string{"meshx-proxy <service> [flags]", "--cleanup <service> is the unit's ExecStopPost",
			"--cleanup", "--log-level", "--version"}, []string{"--netns"}, "MESHX-PROXY(8)"},
		{"meshx-init-stop.8", []string{"meshx-init stop <service> [flags]", "--state-dir", "meshx-init(8)"}, nil, "MESHX-INIT-STOP(8)"},
		{"meshx-init-status.8", []string{"--json"}, nil, "MESHX-INIT-STATUS(8)"},
	}
	for _, tc := range cases {
		t.Run(tc.page, func(t *testing.T) {
			cmd := exec.Command("man", "--warnings", "-l", filepath.Join(dir, ManDir, tc.page))
			cmd.Env = append(os.Environ(), "MANWIDTH=200", "MAN_KEEP_FORMATTING=0", "LC_ALL=C.UTF-8")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || stderr.Len() > 0 {
				t.Fatalf("man: %v\n%s", err, stderr.String())
			}
			// Without bold and underline (for a terminal) and justification.
			text := strings.Join(strings.Fields(overstrike.ReplaceAllString(string(out), "")), " ")
			for _, s := range append(tc.has, tc.heading, "meshx 1.4.2", "Nov 2026") {
				if !strings.Contains(text, s) {
					t.Errorf("rendered page lacks %q:\n%s", s, text)
				}
			}
			for _, s := range tc.hasNot {
				if strings.Contains(text, s) {
					t.Errorf("rendered page has %q", s)
				}
			}
		})
	}
}
