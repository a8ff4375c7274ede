package login

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

// TestAgainstConsulJWTAuthMethod logs in to a real agent with ACLs on,
// through a JWT auth method whose signing key the test made: the token it
// gets can register its service, a logout deletes it (the agent then refuses
// it, and Refused says so), and an expired or foreign JWT is refused with an
// error that carries neither the JWT nor a token.
func TestAgainstConsulJWTAuthMethod(t *testing.T) {
	const root = "8a9f1c34-5b1e-4c55-9d3e-meshx0000002"
	c, admin := testutil.StartACLConsul(t, root)
	iss := testutil.NewJWTIssuer(t)
	testutil.JWTAuthMethod(t, admin, "meshx-jwt", iss)

	dir := t.TempDir()
	bearer := filepath.Join(dir, "jwt")
	good := iss.ServiceJWT(t, "web", time.Now().Add(time.Hour))
	if err := os.WriteFile(bearer, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token, cfg.TokenFile = c.HTTPAddr, "", ""
	anon, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{ACL: anon.ACL(), Method: "meshx-jwt", BearerTokenFile: bearer,
		Meta: map[string]string{"meshx-host": "testhost"}, TokenFile: filepath.Join(dir, "web.token")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(t.Context()); err != nil {
		t.Fatal(err)
	}
	tok, _, err := admin.ACL().TokenReadSelf(&api.QueryOptions{Token: s.Token()})
	if err != nil {
		t.Fatal(err)
	}
	if len(tok.ServiceIdentities) != 1 || tok.ServiceIdentities[0].ServiceName != "web" || tok.AuthMethod != "meshx-jwt" {
		t.Errorf("token from login: %+v", tok)
	}
	cfg.Token = s.Token()
	as, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := as.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "web", Port: 8080}); err != nil {
		t.Errorf("the login's token cannot register its service: %v", err)
	}
	if err := as.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "db", Port: 5432}); err == nil {
		t.Error("the login's token registered another service")
	}
	if err := s.Logout(t.Context()); err != nil {
		t.Fatal(err)
	}
	err = as.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "web", Port: 8080})
	if !Refused(err) {
		t.Errorf("after logout the agent answered %v, want a refusal Refused recognises", err)
	}

	for name, jwt := range map[string]string{
		"expired": iss.ServiceJWT(t, "web", time.Now().Add(-10*time.Minute)),
		"foreign": testutil.NewJWTIssuer(t).ServiceJWT(t, "web", time.Now().Add(time.Hour)),
	} {
		if err := os.WriteFile(bearer, []byte(jwt), 0o600); err != nil {
			t.Fatal(err)
		}
		err := s.Login(t.Context())
		switch {
		case err == nil:
			t.Errorf("%s JWT: login succeeded", name)
		case strings.Contains(err.Error(), jwt):
			t.Errorf("%s JWT: the error carries the JWT", name)
		case !strings.Contains(err.Error(), "meshx-jwt") || !strings.Contains(err.Error(), bearer):
			t.Errorf("%s JWT: error names neither method nor file: %v", name, err)
		}
		t.Logf("%s JWT: %v", name, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "web.token")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a refused login left a token file")
	}
}
