package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/cli"
	"github.com/meshx/meshx/internal/testutil"
)

// bashCompletion is Debian's bash-completion, which the generated scripts
// build on (as they do on an installed host).
const bashCompletion = "/usr/share/bash-completion/bash_completion"

// completeScript completes the command line $LINE in a real bash with the
// generated script $SCRIPT sourced, and prints one candidate per line.
const completeScript = `
source ` + bashCompletion + `
source "$SCRIPT"
compopt() { :; } # display options; the builtin works only under real completion
fn=$(complete -p "$BIN" | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
COMP_LINE=$LINE
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<<"$LINE"
if [[ $LINE == *" " ]]; then COMP_WORDS+=(""); fi
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMPREPLY=()
"$fn" "$BIN" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
`

// TestBashCompletion: the completion scripts the package installs, generated
// from the command definitions, complete commands, flags and the service
// names meshx has plans for, asking the real binaries.
func TestBashCompletion(t *testing.T) {
	_, err := os.Stat(bashCompletion)
	testutil.Need(t, err == nil, "bash-completion (apt-get install bash-completion)")
	docs := t.TempDir()
	if err := cli.WriteDocs(docs, time.Now(), "test"); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	if err := os.MkdirAll(filepath.Join(state, "services"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"web", "client", "db"} { // what meshx-init run leaves: one plan per service
		if err := os.WriteFile(filepath.Join(state, "services", n+".json"), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		bin, line string
		want      []string
	}{
		{"meshx-init", "meshx-init st", []string{"status", "stop"}},
		{"meshx-init", "meshx-init va", []string{"validate"}},
		{"meshx-init", "meshx-init status --j", []string{"--json"}},
		{"meshx-init", "meshx-init --state-dir " + state + " stop ", []string{"client", "db", "web"}},
		{"meshx-init", "meshx-init --state-dir " + state + " stop w", []string{"web"}},
		{"meshx-init", "meshx-init --state-dir " + state + " stop web ", nil},
		{"meshx-init", "meshx-init --state-dir " + state + " render web ", []string{"client", "db", "web"}},
		{"meshx-proxy", "meshx-proxy --state-dir " + state + " c", []string{"client"}},
		{"meshx-proxy", "meshx-proxy --cl", []string{"--cleanup"}},
	}
	for _, tc := range cases {
		t.Run(tc.line, func(t *testing.T) {
			cmd := exec.Command("bash", "-c", completeScript)
			cmd.Env = append(os.Environ(), "SCRIPT="+filepath.Join(docs, cli.CompletionDir, tc.bin), "BIN="+tc.bin,
				"LINE="+tc.line, "PATH="+binDir+":"+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			var got []string
			for _, l := range strings.Split(string(out), "\n") {
				if f := strings.Fields(l); len(f) > 0 { // a candidate, then its description
					got = append(got, f[0])
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("completing %q: %q, want %q", tc.line, got, tc.want)
			}
		})
	}
}
