package login

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

// fakeACL is an auth method in memory: it accepts one bearer token.
type fakeACL struct {
	accept string
	n      int
	live   map[string]bool
}

func (f *fakeACL) Login(p *api.ACLLoginParams, q *api.WriteOptions) (*api.ACLToken, *api.WriteMeta, error) {
	if p.BearerToken != f.accept {
		// A careless server echoing what it was given.
		return nil, nil, api.StatusError{Code: 403, Body: "Permission denied: invalid token " + p.BearerToken}
	}
	f.n++
	secret := "secret-" + strings.Repeat("x", f.n)
	f.live[secret] = true
	return &api.ACLToken{SecretID: secret, AccessorID: "acc"}, nil, nil
}

func (f *fakeACL) Logout(q *api.WriteOptions) (*api.WriteMeta, error) {
	if !f.live[q.Token] {
		return nil, api.StatusError{Code: 403, Body: "ACL not found"}
	}
	delete(f.live, q.Token)
	return nil, nil
}

func newSession(t *testing.T, acl ACL) (*Session, string, string) {
	t.Helper()
	dir := t.TempDir()
	bearer := filepath.Join(dir, "jwt")
	s, err := New(Options{ACL: acl, Method: "m", BearerTokenFile: bearer, TokenFile: filepath.Join(dir, "run", "web.token")})
	if err != nil {
		t.Fatal(err)
	}
	return s, bearer, filepath.Join(dir, "run", "web.token")
}

func TestLoginKeepsTokenIn0600FileAndLogsOutTheOldOne(t *testing.T) {
	acl := &fakeACL{accept: "jwt-1", live: map[string]bool{}}
	s, bearer, tokFile := newSession(t, acl)
	if err := os.WriteFile(bearer, []byte("jwt-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Login(t.Context()); err != nil {
		t.Fatal(err)
	}
	first := s.Token()
	fi, err := os.Stat(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(tokFile); strings.TrimSpace(string(b)) != first {
		t.Errorf("token file holds %q, want the token", b)
	}
	if s.BearerChanged() {
		t.Error("bearer changed right after login")
	}
	if err := os.WriteFile(bearer, []byte("jwt-1 renewed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !s.BearerChanged() {
		t.Error("a rewritten bearer file is not a change")
	}
	acl.accept = "jwt-1 renewed"
	if err := s.Login(t.Context()); err != nil {
		t.Fatal(err)
	}
	if acl.live[first] || !acl.live[s.Token()] || s.Token() == first {
		t.Errorf("after the second login: live tokens %v, current %q", acl.live, s.Token())
	}
	if err := s.Logout(t.Context()); err != nil {
		t.Fatal(err)
	}
	if len(acl.live) != 0 {
		t.Errorf("tokens left after logout: %v", acl.live)
	}
	if _, err := os.Stat(tokFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("token file left after logout: %v", err)
	}
	if err := s.Logout(t.Context()); err != nil {
		t.Errorf("a second logout: %v", err)
	}
}

func TestLoginErrorNamesMethodAndFileNeverTheToken(t *testing.T) {
	acl := &fakeACL{accept: "good", live: map[string]bool{}}
	s, bearer, tokFile := newSession(t, acl)
	err := s.Login(context.Background())
	if err == nil || !strings.Contains(err.Error(), bearer) || !strings.Contains(err.Error(), `"m"`) {
		t.Errorf("missing bearer file: %v", err)
	}
	if err := os.WriteFile(bearer, []byte("the-wrong-jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = s.Login(context.Background())
	if err == nil || strings.Contains(err.Error(), "the-wrong-jwt") || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("wrong bearer: %v", err)
	}
	if _, err := os.Stat(tokFile); !errors.Is(err, os.ErrNotExist) {
		t.Error("a failed login wrote a token file")
	}
	if err := os.WriteFile(bearer, []byte("  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Login(context.Background()); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty bearer: %v", err)
	}
}

func TestRefused(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{api.StatusError{Code: 403, Body: "ACL not found"}, true},
		{errors.New("Unexpected response code: 403 (ACL not found)"), true},
		{api.StatusError{Code: 403, Body: "Permission denied"}, false},
		{errors.New("connection refused"), false},
		{nil, false},
	} {
		if got := Refused(c.err); got != c.want {
			t.Errorf("Refused(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestNewRequiresOptions(t *testing.T) {
	for _, o := range []Options{{}, {ACL: &fakeACL{}}, {ACL: &fakeACL{}, Method: "m"}} {
		if _, err := New(o); !errors.Is(err, ErrMissingOption) {
			t.Errorf("New(%+v) = %v, want ErrMissingOption", o, err)
		}
	}
}

func TestRecoverLogsOutWhatACrashedRunLeft(t *testing.T) {
	acl := &fakeACL{accept: "jwt", live: map[string]bool{"left-behind": true}}
	s, _, tokFile := newSession(t, acl)
	if err := os.MkdirAll(filepath.Dir(tokFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokFile, []byte("left-behind\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Recover(t.Context())
	if acl.live["left-behind"] {
		t.Error("the token a crashed run left is still live")
	}
	if _, err := os.Stat(tokFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("token file still there: %v", err)
	}
	s.Recover(t.Context()) // nothing left: a no-op
}
