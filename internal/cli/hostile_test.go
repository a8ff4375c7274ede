package cli

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/config/configtest"
	"github.com/meshx/meshx/internal/testutil"
)

// TestHostileCorpus: every hostile input of the corpus makes `meshx-init
// validate` exit 2 with the problem located at its file, line and field,
// echoes no secret, and writes nothing (the state dir is never created).
// test/integration runs the same corpus through `meshx-init run` against a
// real Consul agent.
func TestHostileCorpus(t *testing.T) {
	cases := configtest.Cases()
	if len(cases) < 150 {
		t.Fatalf("the corpus holds %d cases, want at least 150", len(cases))
	}
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.Name] {
			t.Fatalf("two cases named %q", c.Name)
		}
		seen[c.Name] = true
		t.Run(c.Name, func(t *testing.T) {
			h := newHost(t)
			h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: \"http://127.0.0.1:%d\", wait: 1s}\nhostname: h1\nports: {range: 20000-20049}\n",
				testutil.FreePort(t)))
			if err := c.Write(h.config); err != nil {
				t.Fatal(err)
			}
			r := run(t, initMain, h.flags("validate")...)
			if r.code != ExitInvalid {
				t.Errorf("exit %d, want %d", r.code, ExitInvalid)
			}
			want := c.Path(h.config) + strings.ReplaceAll(c.Want, "{{dir}}", h.config)
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
			}
			if c.Secret != "" && strings.Contains(r.stdout+r.stderr, c.Secret) {
				t.Errorf("the output echoes the secret %q", c.Secret)
			}
			if _, err := os.Stat(h.state); !os.IsNotExist(err) {
				t.Errorf("the state dir was created (%v)", err)
			}
		})
	}
}
