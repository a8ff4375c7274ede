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
	c, admin := testutil.StartACLConsul(t, root)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(root+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, c, "")
	// Default deny covers intentions too: allow client -> web.
	// A new server refuses intention writes for a moment ("read only while
	// being upgraded to config entries"): retry until it takes them.
	testutil.Eventually(t, 30*time.Second, func() error {
		_, _, err := admin.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "web",
			Sources: []*api.SourceIntention{{Name: "client", Action: api.IntentionActionAllow}}}, nil)
		return err
	})
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

	// The services are registered with token a, which the rotation below
	// replaces with b and then deletes.
	mk := func() *api.ACLToken {
		tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: "meshx test",
			Policies: []*api.ACLTokenPolicyLink{{ID: "00000000-0000-0000-0000-000000000001"}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	a, b := mk(), mk()
	if err := os.WriteFile(tokenFile, []byte(a.SecretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: %q, binary: %q, token_file: %q}\nhostname: testhost\nports: {range: \"20950-20999\"}\n",
		"http://"+c.HTTPAddr, testutil.ConsulBinary(t), tokenFile))
	f := h.foreground()
	passing := func(timeout time.Duration, ids ...string) {
		t.Helper()
		testutil.Eventually(t, timeout, func() error {
			checks, err := admin.Agent().Checks()
			if err != nil {
				return err
			}
			for _, id := range ids {
				if c := checks["meshx-ttl:"+id]; c == nil || c.Status != api.HealthPassing {
					return fmt.Errorf("%s not passing: %+v", id, c)
				}
			}
			return nil
		})
	}
	passing(30*time.Second, "web-testhost", "client-testhost")
	waitBody(t, 30*time.Second, h.plan("client").Upstreams[0].Port, "hello with acls")

	t.Run("rotation: a rewritten token file is picked up, the old token can go", func(t *testing.T) {
		rotate := func(tok *api.ACLToken) {
			t.Helper()
			if err := os.WriteFile(tokenFile, []byte(tok.SecretID+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 30*time.Second, func() error {
				st := h.status("web")
				env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st.ProxyPID))
				if err != nil || !strings.Contains(string(env), "CONSUL_HTTP_TOKEN="+tok.SecretID) {
					return fmt.Errorf("web's proxy (pid %d) does not have the new token yet", st.ProxyPID)
				}
				return nil
			})
		}
		rotate(b)
		if _, err := admin.ACL().TokenDelete(a.AccessorID, nil); err != nil {
			t.Fatal(err)
		}
		// meshx-proxy's own client uses the new token: knock the check down
		// and see its heartbeat put it back.
		if err := admin.Agent().UpdateTTL("meshx-ttl:web-testhost", "knocked down by the test", api.HealthCritical); err != nil {
			t.Fatal(err)
		}
		passing(15*time.Second, "web-testhost")
		// The servers see it too: the agent syncs the service with the token it
		// was registered with, so rotation must have registered it again.
		testutil.Eventually(t, 15*time.Second, func() error {
			hc, _, err := admin.Health().Checks("web", nil)
			if err != nil {
				return err
			}
			for _, c := range hc {
				if c.CheckID == "meshx-ttl:web-testhost" && c.Status == api.HealthPassing && c.Output != "knocked down by the test" {
					return nil
				}
			}
			return fmt.Errorf("catalog checks of web: %s", mustJSON(hc))
		})
		waitBody(t, 30*time.Second, h.plan("client").Upstreams[0].Port, "hello with acls")
		if strings.Contains(f.out.String(), a.SecretID) || strings.Contains(f.out.String(), b.SecretID) {
			t.Errorf("a token appears in the logs")
		}
	})
	t.Run("token file emptied, unreadable or removed: critical with the reason, back when fixed", func(t *testing.T) {
		for _, c := range []struct {
			name, reason string
			breakIt      func() error
		}{
			{"emptied", "empty", func() error { return os.WriteFile(tokenFile, nil, 0o600) }},
			// Unreadable to root, which reads any mode: a directory in its place.
			{"unreadable", "is a directory", func() error {
				if err := os.Remove(tokenFile); err != nil {
					return err
				}
				return os.Mkdir(tokenFile, 0o700)
			}},
			{"removed", "no such file or directory", func() error { return os.Remove(tokenFile) }},
		} {
			want := "ACL token file " + tokenFile + ": " + c.reason
			if err := c.breakIt(); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 15*time.Second, func() error {
				checks, err := admin.Agent().Checks()
				if err != nil {
					return err
				}
				for _, id := range []string{"web-testhost", "client-testhost"} {
					if ch := checks["meshx-ttl:"+id]; ch == nil || ch.Status != api.HealthCritical || ch.Output != want {
						return fmt.Errorf("token file %s: check of %s %+v, want critical %q", c.name, id, ch, want)
					}
				}
				return nil
			})
			if !strings.Contains(f.out.String(), want) {
				t.Errorf("token file %s: no log line says %q", c.name, want)
			}
			if err := os.RemoveAll(tokenFile); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(tokenFile, []byte(b.SecretID+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			passing(15*time.Second, "web-testhost", "client-testhost")
		}
		waitBody(t, 30*time.Second, h.plan("client").Upstreams[0].Port, "hello with acls")
	})
	f.stop(t)
	if strings.Contains(f.out.String(), root) {
		t.Errorf("the token appears in the logs")
	}
	// No ghost in the catalog: the deregistration synced with the live token.
	testutil.Eventually(t, 15*time.Second, func() error {
		svcs, _, err := admin.Catalog().Services(nil)
		if err != nil {
			return err
		}
		if _, ok := svcs["web"]; ok {
			return fmt.Errorf("web still in the catalog after stop: %v", svcs)
		}
		return nil
	})
}
