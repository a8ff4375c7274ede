package testutil

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// StartACLConsul starts a dev agent with ACLs on and default deny; root is
// both its management token and its agent token (the agent syncs
// deregistrations, and its node, with its own token). It returns the agent
// and a client holding root.
func StartACLConsul(t testing.TB, root string) (*Consul, *api.Client) {
	t.Helper()
	c := StartConsul(t, fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = %q
    agent = %q
  }
}`, root, root))
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = c.HTTPAddr, root
	admin, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, admin
}

// JWTAuthMethod creates a JWT auth method named name that trusts issuer's
// key and the audience "meshx", with a binding rule that gives a login the
// service identity named by the JWT's "service" claim.
func JWTAuthMethod(t testing.TB, admin *api.Client, name string, issuer *JWTIssuer) {
	t.Helper()
	// A new server may refuse ACL writes for a moment while it bootstraps.
	Eventually(t, 30*time.Second, func() error {
		_, _, err := admin.ACL().AuthMethodCreate(&api.ACLAuthMethod{Name: name, Type: "jwt",
			Config: map[string]any{
				"JWTValidationPubKeys": []string{issuer.PublicKeyPEM(t)},
				"BoundAudiences":       []string{"meshx"},
				"ClaimMappings":        map[string]string{"service": "service"},
			}}, nil)
		return err
	})
	if _, _, err := admin.ACL().BindingRuleCreate(&api.ACLBindingRule{AuthMethod: name,
		BindType: api.BindingRuleBindTypeService, BindName: "${value.service}"}, nil); err != nil {
		t.Fatal(err)
	}
}

// ServiceJWT is a JWT for the auth method of JWTAuthMethod, naming service,
// valid from a minute ago until exp.
func (j *JWTIssuer) ServiceJWT(t testing.TB, service string, exp time.Time) string {
	t.Helper()
	now := time.Now()
	return j.Sign(t, map[string]any{"sub": "meshx-test", "aud": "meshx", "service": service,
		"iat": now.Add(-time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": exp.Unix()})
}
