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

// loginHost is a meshx host whose meshx.yaml logs in through a JWT auth
// method of an ACL agent (default deny): no static token anywhere.
type loginHost struct {
	*host
	admin  *api.Client
	iss    *testutil.JWTIssuer
	bearer string // the bearer token file
}

func newLoginHost(t *testing.T) *loginHost {
	t.Helper()
	const root = "8a9f1c34-5b1e-4c55-9d3e-meshx0000003"
	c, admin := testutil.StartACLConsul(t, root)
	iss := testutil.NewJWTIssuer(t)
	testutil.JWTAuthMethod(t, admin, "meshx-jwt", iss)
	bearer := filepath.Join(t.TempDir(), "jwt")
	lh := &loginHost{admin: admin, iss: iss, bearer: bearer}
	lh.writeJWT(t, iss.ServiceJWT(t, "web", time.Now().Add(time.Hour)))
	lh.host = newHost(t, c, fmt.Sprintf("metrics: {enabled: false}\n"))
	lh.write("meshx.yaml", fmt.Sprintf(`version: 1
consul:
  address: %q
  binary: %q
  login: {method: meshx-jwt, bearer_token_file: %q, meta: {host: testhost}}
hostname: testhost
ports: {range: "20950-20999"}
`, "http://"+c.HTTPAddr, testutil.ConsulBinary(t), bearer))
	return lh
}

func (lh *loginHost) writeJWT(t *testing.T, jwt string) {
	t.Helper()
	tmp := lh.bearer + ".tmp"
	if err := os.WriteFile(tmp, []byte(jwt+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, lh.bearer); err != nil {
		t.Fatal(err)
	}
}

// loginTokens lists the tokens the auth method's logins created and still live.
func (lh *loginHost) loginTokens(t *testing.T) []*api.ACLTokenListEntry {
	t.Helper()
	toks, _, err := lh.admin.ACL().TokenListFiltered(api.ACLTokenFilterOptions{AuthMethod: "meshx-jwt"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

// TestACLLoginInit: meshx-init logs in through the auth method for its run,
// registers with the token and logs out when done; a refused bearer token is
// a clear error that names the method and the file and shows no token.
func TestACLLoginInit(t *testing.T) {
	lh := newLoginHost(t)
	web := startApp(t, "hello via login")
	lh.service("web.yaml", fmt.Sprintf(webYAML, web))

	r := lh.init("run", "--systemd=no")
	if r.code != 0 {
		t.Fatalf("meshx-init run with consul.login: exit %d", r.code)
	}
	svcs, err := lh.admin.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if svcs["web-testhost"] == nil || svcs["web-testhost-sidecar-proxy"] == nil {
		t.Errorf("not registered through the login's token: %v", svcs)
	}
	if toks := lh.loginTokens(t); len(toks) != 0 {
		t.Errorf("meshx-init left %d login token(s) behind", len(toks))
	}

	expired := lh.iss.ServiceJWT(t, "web", time.Now().Add(-10*time.Minute))
	lh.writeJWT(t, expired)
	r = lh.init("run", "--systemd=no")
	if r.code != 1 || !strings.Contains(r.stderr, `auth method "meshx-jwt"`) || !strings.Contains(r.stderr, lh.bearer) ||
		!strings.Contains(r.stderr, "expired") {
		t.Errorf("expired bearer token: exit %d, want 1 naming the method, the file and why:\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr+r.stdout, expired) {
		t.Error("the bearer token appears in meshx-init's output")
	}
}
