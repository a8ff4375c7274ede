// Package login gets meshx an ACL token by logging in to Consul through an
// auth method (/v1/acl/login) with a bearer token read from a file (a JWT
// from a workload identity system, a cloud identity document), instead of a
// static token. The token is kept in memory and, for the proxy meshx-proxy
// supervises, in a 0600 file under the runtime dir; it never appears in argv,
// a log line or an error message. Logout (/v1/acl/logout) deletes it.
package login

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/atomicfile"
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/register"
)

// ACL is the part of *api.ACL a Session uses.
type ACL interface {
	Login(auth *api.ACLLoginParams, q *api.WriteOptions) (*api.ACLToken, *api.WriteMeta, error)
	Logout(q *api.WriteOptions) (*api.WriteMeta, error)
}

// Options configure a Session. Required: ACL, Method, BearerTokenFile.
type Options struct {
	// ACL is the ACL endpoint of a client that carries no token of its own.
	ACL    ACL
	Method string // the auth method's name
	// BearerTokenFile holds the bearer token presented to the auth method.
	BearerTokenFile string
	// Meta is set on the tokens the logins create (for operators to find them).
	Meta map[string]string
	// TokenFile, if set, is where the token is written (0600, atomically) for
	// whoever must read it from a file; Logout removes it. "": memory only.
	TokenFile string
	Logger    *slog.Logger // nil: discard
}

// ErrMissingOption reports a required option left empty.
var ErrMissingOption = errors.New("login: missing required option")

// Session is one identity logged in through an auth method.
type Session struct {
	o Options

	mu       sync.Mutex
	secret   string // the token's SecretID; "" when logged out
	accessor string
	bearer   []byte // the bearer file's content at the last login attempt
}

// New checks the options; it does not log in.
func New(o Options) (*Session, error) {
	switch {
	case o.ACL == nil:
		return nil, fmt.Errorf("%w: ACL", ErrMissingOption)
	case o.Method == "":
		return nil, fmt.Errorf("%w: Method", ErrMissingOption)
	case o.BearerTokenFile == "":
		return nil, fmt.Errorf("%w: BearerTokenFile", ErrMissingOption)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Session{o: o}, nil
}

// Token returns the current token's SecretID ("" when logged out).
func (s *Session) Token() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.secret
}

// Login reads the bearer token and logs in. On success the new token
// replaces the old one (in memory and in TokenFile), and the old one is
// logged out. Errors name the method and the file, never a token.
func (s *Session) Login(ctx context.Context) error {
	bearer, err := os.ReadFile(s.o.BearerTokenFile)
	if err != nil {
		return fmt.Errorf("ACL login with auth method %q: read bearer token: %w", s.o.Method, err)
	}
	s.mu.Lock()
	s.bearer = bearer
	s.mu.Unlock()
	jwt := strings.TrimSpace(string(bearer))
	if jwt == "" {
		return fmt.Errorf("ACL login with auth method %q: bearer token file %s is empty", s.o.Method, s.o.BearerTokenFile)
	}
	tok, _, err := s.o.ACL.Login(&api.ACLLoginParams{AuthMethod: s.o.Method, BearerToken: jwt, Meta: s.o.Meta},
		(&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("ACL login with auth method %q (bearer token from %s): %s", s.o.Method, s.o.BearerTokenFile,
			redact(err.Error(), jwt))
	}
	if s.o.TokenFile != "" {
		if _, err := atomicfile.WriteVolatile(s.o.TokenFile, []byte(tok.SecretID+"\n"), 0o600); err != nil {
			s.logout(ctx, tok.SecretID)
			return fmt.Errorf("ACL login with auth method %q: keep the token: %s", s.o.Method, redact(err.Error(), tok.SecretID))
		}
	}
	s.mu.Lock()
	old := s.secret
	s.secret, s.accessor = tok.SecretID, tok.AccessorID
	s.mu.Unlock()
	s.o.Logger.Info("ACL login", "auth_method", s.o.Method, "accessor_id", tok.AccessorID)
	if old != "" {
		s.logout(ctx, old)
	}
	return nil
}

// Logout deletes the current token and removes TokenFile; a no-op when
// logged out.
func (s *Session) Logout(ctx context.Context) error {
	s.mu.Lock()
	secret, accessor := s.secret, s.accessor
	s.secret, s.accessor = "", ""
	s.mu.Unlock()
	if s.o.TokenFile != "" {
		if err := os.Remove(s.o.TokenFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.o.Logger.Warn("remove token file", "err", err)
		}
	}
	if secret == "" {
		return nil
	}
	if err := s.logoutErr(ctx, secret); err != nil {
		return err
	}
	s.o.Logger.Info("ACL logout", "auth_method", s.o.Method, "accessor_id", accessor)
	return nil
}

func (s *Session) logout(ctx context.Context, secret string) {
	if err := s.logoutErr(ctx, secret); err != nil && !Refused(err) { // a deleted token needs no logout
		s.o.Logger.Warn("ACL logout of the previous token", "err", err)
	}
}

func (s *Session) logoutErr(ctx context.Context, secret string) error {
	_, err := s.o.ACL.Logout((&api.WriteOptions{Token: secret}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("ACL logout (auth method %q): %s", s.o.Method, redact(err.Error(), secret))
	}
	return nil
}

// BearerChanged reports whether the bearer token file now holds something
// other than what the last login attempt read (a renewed JWT). An unreadable
// or empty file is not a change: it may be half-way through being rewritten.
func (s *Session) BearerChanged() bool {
	b, err := os.ReadFile(s.o.BearerTokenFile)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !bytes.Equal(b, s.bearer)
}

// Refused reports whether err is the agent refusing a token it does not know
// (deleted, expired, logged out): the cue to log in again.
func Refused(err error) bool {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code == http.StatusForbidden && strings.Contains(se.Body, "ACL not found")
	}
	// consul/api returns most errors as text: "Unexpected response code: 403 (ACL not found)".
	return err != nil && strings.Contains(err.Error(), "403") && strings.Contains(err.Error(), "ACL not found")
}

// redact removes secret from s (an agent may echo what it was given).
func redact(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "[redacted]")
}

// ForConsul makes the Session of meshx.yaml's consul.login (c.Login must be
// set): its client presents no token. tokenFile is Options.TokenFile.
func ForConsul(c config.Consul, tokenFile string, log *slog.Logger) (*Session, error) {
	cl, err := register.NewClient(c)
	if err != nil {
		return nil, err
	}
	return New(Options{ACL: cl.ACL(), Method: c.Login.Method, BearerTokenFile: c.Login.BearerTokenFile,
		Meta: c.Login.Meta, TokenFile: tokenFile, Logger: log})
}

// Consul returns c as it is used once logged in: with the token file when
// the session keeps one, else with the token in memory.
func (s *Session) Consul(c config.Consul) config.Consul {
	c.Login = nil
	if s.o.TokenFile != "" {
		c.TokenFile, c.Token = s.o.TokenFile, ""
	} else {
		c.TokenFile, c.Token = "", config.Secret(s.Token())
	}
	return c
}

// Recover is the crash-only start: a token that a killed run left in
// TokenFile is logged out and the file removed. A token the agent no longer
// knows is not an error.
func (s *Session) Recover(ctx context.Context) {
	if s.o.TokenFile == "" {
		return
	}
	b, err := os.ReadFile(s.o.TokenFile)
	if err != nil {
		return
	}
	if secret := strings.TrimSpace(string(b)); secret != "" {
		if err := s.logoutErr(ctx, secret); err != nil && !Refused(err) {
			s.o.Logger.Warn("ACL logout of a token a previous run left", "err", err)
		} else {
			s.o.Logger.Info("ACL logout of a token a previous run left")
		}
	}
	_ = os.Remove(s.o.TokenFile)
}

// Method is the auth method's name.
func (s *Session) Method() string { return s.o.Method }
