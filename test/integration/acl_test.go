package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

// TestACLAgent: against an agent with ACLs on and default deny, meshx and its
// proxies work with the token from consul.token_file, and without it the
// registration is refused and nothing is left behind.
func TestACLAgent(t *testing.T) {
	const root = "8a9f1c34-5b1e-4c55-9d3e-meshx0000001"
	c := testutil.StartConsul(t, fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  tokens { initial_management = %q }
}`, root))
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(root+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, c, "")
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = c.HTTPAddr, root
	admin, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Default deny covers intentions too: allow client -> web.
	if _, _, err := admin.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "web",
		Sources: []*api.SourceIntention{{Name: "client", Action: api.IntentionActionAllow}}}, nil); err != nil {
		t.Fatal(err)
	}
	web := startApp(t, "hello with acls")
	h.service("web.yaml", fmt.Sprintf(webYAML, web))
	h.service("client.yaml", clientYAML)

	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: %q, binary: %q, wait: 2s}\nhostname: testhost\nports: {range: \"20950-20999\"}\n",
		"http://"+c.HTTPAddr, testutil.ConsulBinary(t)))
	r := h.init("run", "--systemd=no")
	if r.code != 1 || !strings.Contains(r.stderr, "Permission denied") {
		t.Errorf("without a token: exit %d, want 1 with the agent's refusal:\n%s", r.code, r.stderr)
	}
	if svcs, _ := admin.Agent().Services(); len(svcs) != 0 {
		t.Errorf("registered without a token: %v", svcs)
	}

	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: %q, binary: %q, token_file: %q}\nhostname: testhost\nports: {range: \"20950-20999\"}\n",
		"http://"+c.HTTPAddr, testutil.ConsulBinary(t), tokenFile))
	f := h.foreground()
	testutil.Eventually(t, 30*time.Second, func() error {
		checks, err := admin.Agent().Checks()
		if err != nil {
			return err
		}
		for _, id := range []string{"web-testhost", "client-testhost"} {
			if c := checks["meshx-ttl:"+id]; c == nil || c.Status != api.HealthPassing {
				return fmt.Errorf("%s not passing: %+v", id, c)
			}
		}
		return nil
	})
	waitBody(t, 30*time.Second, h.plan("client").Upstreams[0].Port, "hello with acls")
	f.stop(t)
	if strings.Contains(f.out.String(), root) {
		t.Errorf("the token appears in the logs")
	}
}
