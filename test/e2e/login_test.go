package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// loginRoot is the booted agent's management (and agent) token.
const loginRoot = "8a9f1c34-5b1e-4c55-9d3e-meshx00000e2"

// TestBootedLogin: on a booted machine whose agent has ACLs on (default
// deny) and whose meshx.yaml logs in through a JWT auth method, the units
// do under their sandbox what the integration tests prove: meshx-init fails
// clearly while the auth method is missing, then registers once it exists;
// meshx-proxy@web keeps its token in a 0600 root-owned file of the runtime
// dir, its service passes, and systemctl stop logs it out.
func TestBootedLogin(t *testing.T) {
	t.Parallel()
	iss := testutil.NewJWTIssuer(t)
	jwt := iss.ServiceJWT(t, "web", time.Now().Add(24*time.Hour))
	m := NewMachine(t, Layout{
		ConsulAtBoot: true,
		Files: map[string]string{
			"/etc/consul.d/acl.hcl": fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = %q
    agent = %q
  }
}
`, loginRoot, loginRoot),
			"/etc/meshx/meshx.yaml": `version: 1
consul:
  address: "http://127.0.0.1:8500"
  login: {method: meshx-jwt, bearer_token_file: /var/lib/identity/jwt}
proxy_user: meshx
`,
			"/var/lib/identity/jwt":               jwt + "\n",
			"/etc/meshx/services.d/web.yaml":      webYAML,
			"/srv/web/index.html":                 webBody + "\n",
			"/etc/systemd/system/web-app.service": httpApp("web app", 8080, "/srv/web"),
		},
		Enable: []string{"web-app.service"},
	})
	m.Boot()
	m.WaitSystemRunning(meshTimeout)
	api := func(method, path, body string) (string, error) {
		args := []string{"curl", "-fsS", "--max-time", "5", "-X", method, "-H", "X-Consul-Token: " + loginRoot}
		if body != "" {
			args = append(args, "--data-binary", body)
		}
		return m.Exec(append(args, "http://127.0.0.1:8500"+path)...)
	}

	step(t, "without the auth method meshx-init fails, naming it", func(t *testing.T) {
		out, _ := m.Exec("journalctl", "-b", "--no-pager", "-o", "cat", "-u", "meshx-init.service")
		if s := m.Show("meshx-init.service", "ActiveState"); s != "failed" || !strings.Contains(out, `auth method "meshx-jwt"`) {
			t.Errorf("meshx-init.service is %s; its journal:\n%s", s, out)
		}
	})

	step(t, "with the auth method meshx-init registers and meshx-proxy@web logs in", func(t *testing.T) {
		method, _ := json.Marshal(map[string]any{"Name": "meshx-jwt", "Type": "jwt", "Config": map[string]any{
			"JWTValidationPubKeys": []string{iss.PublicKeyPEM(t)}, "BoundAudiences": []string{"meshx"},
			"ClaimMappings": map[string]string{"service": "service"}}})
		testutil.Eventually(t, stepTimeout, func() error { // the new server may refuse ACL writes for a moment
			_, err := api("PUT", "/v1/acl/auth-method", string(method))
			return err
		})
		if out, err := api("PUT", "/v1/acl/binding-rule",
			`{"AuthMethod": "meshx-jwt", "BindType": "service", "BindName": "${value.service}"}`); err != nil {
			t.Fatalf("binding rule: %v %s", err, out)
		}
		m.MustExec("systemctl", "restart", "meshx-init.service")
		testutil.Eventually(t, meshTimeout, func() error {
			out, err := api("GET", "/v1/agent/health/service/id/"+webID+"?format=text", "")
			if err != nil || strings.TrimSpace(out) != "passing" {
				return fmt.Errorf("web: %v %q", err, out)
			}
			return nil
		})
		if s := m.MustExec("stat", "-c", "%a %U", "/run/meshx/proxies/web.token"); strings.TrimSpace(s) != "600 root" {
			t.Errorf("token file: %s, want mode 600 owned by root", s)
		}
		toks, _ := api("GET", "/v1/acl/tokens?authmethod=meshx-jwt", "")
		if n := strings.Count(toks, `"AccessorID"`); n != 1 {
			t.Errorf("%d login tokens live, want meshx-proxy@web's one:\n%s", n, toks)
		}
	})

	step(t, "systemctl stop logs meshx-proxy@web out", func(t *testing.T) {
		secret := strings.TrimSpace(m.MustExec("cat", "/run/meshx/proxies/web.token"))
		m.MustExec("systemctl", "stop", "meshx-proxy@web.service")
		if _, err := m.Exec("test", "-e", "/run/meshx/proxies/web.token"); err == nil {
			t.Error("token file left after stop")
		}
		toks, _ := api("GET", "/v1/acl/tokens?authmethod=meshx-jwt", "")
		if n := strings.Count(toks, `"AccessorID"`); n != 0 {
			t.Errorf("%d login tokens left after stop:\n%s", n, toks)
		}
		journal := m.MustExec("journalctl", "-b", "--no-pager", "-o", "cat", "-u", "meshx-proxy@web.service", "-u", "meshx-init.service")
		if strings.Contains(journal, secret) || strings.Contains(journal, jwt) {
			t.Error("a token or the JWT appears in the journal")
		}
	})
}
