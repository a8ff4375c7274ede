package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
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
	lh.host = newHost(t, c, "")
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

	// status --watch logs in once for all its refreshes, and out at Ctrl-C.
	var out testutil.SyncBuffer
	watch := exec.Command(filepath.Join(binDir, "meshx-init"), append(lh.flags(), "status", "--watch", "--interval", "100ms")...)
	watch.Stdout, watch.Stderr = &out, &out
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = watch.Wait(); close(done) }()
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := strings.Count(out.String(), "SERVICE"); n < 10 {
			return fmt.Errorf("%d refreshes so far", n)
		}
		return nil
	})
	if toks := lh.loginTokens(t); len(toks) != 1 || !strings.Contains(out.String(), "passing") && !strings.Contains(out.String(), "critical") {
		t.Errorf("status --watch: %d login tokens after 10 refreshes, want 1; output:\n%.1000s", len(toks), out.String())
	}
	if !testutil.Interrupt(watch.Process, done, 10*time.Second) {
		t.Fatal("status --watch did not stop at SIGINT")
	}
	if toks := lh.loginTokens(t); len(toks) != 0 {
		t.Errorf("status --watch left %d login token(s) behind", len(toks))
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

// TestACLLoginProxy: meshx-proxy logs in through the auth method, keeps the
// token in a 0600 file of the runtime dir from which its proxy gets it, logs
// in again when the bearer token file changes and when the agent refuses the
// token, says critical (and stays up) while the bearer token is refused, and
// logs out at stop. No token or JWT ever reaches its output.
func TestACLLoginProxy(t *testing.T) {
	lh := newLoginHost(t)
	web := startApp(t, "hello via login")
	lh.service("web.yaml", fmt.Sprintf(webYAML, web))
	if r := lh.init("run", "--systemd=no"); r.code != 0 {
		t.Fatalf("meshx-init run: exit %d", r.code)
	}
	tokenFile := filepath.Join(lh.dirs.Runtime, "proxies", "web.token")
	var secrets []string // every token and JWT the test saw
	secrets = append(secrets, lh.jwt(t))

	// A bearer token the auth method refuses at start: critical, not a crash.
	foreign := testutil.NewJWTIssuer(t).ServiceJWT(t, "web", time.Now().Add(time.Hour))
	good := lh.jwt(t)
	lh.writeJWT(t, foreign)
	secrets = append(secrets, foreign)
	p := lh.startProxy(t, "", "web")
	lh.criticalStillUp(t, p, `auth method "meshx-jwt"`, "no known key")
	lh.writeJWT(t, good)

	passing := func() {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, func() error {
			c, err := lh.admin.Agent().Checks()
			if err != nil {
				return err
			}
			if ck := c["meshx-ttl:web-testhost"]; ck == nil || ck.Status != api.HealthPassing {
				return fmt.Errorf("web's check: %+v", ck)
			}
			return nil
		})
	}
	// current waits until the token file holds a token other than old whose
	// proxy got it too, and returns it.
	current := func(old string) *api.ACLToken {
		t.Helper()
		var tok *api.ACLToken
		testutil.Eventually(t, 30*time.Second, func() error {
			fi, err := os.Stat(tokenFile)
			if err != nil {
				return err
			}
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("token file mode %v, want 0600", fi.Mode().Perm())
			}
			b, _ := os.ReadFile(tokenFile)
			secret := strings.TrimSpace(string(b))
			if secret == "" || secret == old {
				return fmt.Errorf("token file holds no new token")
			}
			if tok, _, err = lh.admin.ACL().TokenReadSelf(&api.QueryOptions{Token: secret}); err != nil {
				return err
			}
			pid := lh.status("web").ProxyPID
			env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if !strings.Contains(string(env), "CONSUL_HTTP_TOKEN="+secret) {
				return fmt.Errorf("the proxy (pid %d) does not have the token yet", pid)
			}
			return nil
		})
		if tok.AuthMethod != "meshx-jwt" || !strings.Contains(tok.Description, "testhost") {
			t.Errorf("token %+v is not the auth method's with meshx.yaml's meta", tok)
		}
		secrets = append(secrets, tok.SecretID)
		return tok
	}
	gone := func(tok *api.ACLToken) {
		t.Helper()
		testutil.Eventually(t, 15*time.Second, func() error {
			if _, _, err := lh.admin.ACL().TokenRead(tok.AccessorID, nil); err == nil {
				return fmt.Errorf("token %s still exists", tok.AccessorID)
			}
			return nil
		})
	}
	first := current("")
	passing()
	lh.waitReady(t, p)

	t.Run("a renewed bearer token: log in again, log the old token out", func(t *testing.T) {
		renewed := lh.iss.ServiceJWT(t, "web", time.Now().Add(2*time.Hour))
		secrets = append(secrets, renewed)
		lh.writeJWT(t, renewed)
		second := current(first.SecretID)
		gone(first)
		first = second
		passing()
	})

	t.Run("meshx-init re-registers a changed service: meshx-proxy takes it over with its own token", func(t *testing.T) {
		// meshx-init registers with a login token it deletes when done; the
		// agent would sync the service with that dead token from then on.
		lh.service("web.yaml", fmt.Sprintf(webYAML, web)+"registration: {Tags: [v2]}\n")
		if r := lh.init("run", "--systemd=no"); r.code != 0 {
			t.Fatalf("meshx-init run: exit %d", r.code)
		}
		// The servers follow the agent: the new tag, then a check knocked
		// down on the agent and put back by the heartbeat.
		synced := func(what string, ok func(*api.HealthCheck) bool) {
			t.Helper()
			testutil.Eventually(t, 30*time.Second, func() error {
				hc, _, err := lh.admin.Health().Checks("web", nil)
				if err != nil {
					return err
				}
				for _, c := range hc {
					if c.CheckID == "meshx-ttl:web-testhost" && ok(c) {
						return nil
					}
				}
				return fmt.Errorf("catalog checks of web (want %s): %s", what, mustJSON(hc))
			})
		}
		synced("the tag v2", func(c *api.HealthCheck) bool { return slices.Contains(c.ServiceTags, "v2") })
		if err := lh.admin.Agent().UpdateTTL("meshx-ttl:web-testhost", "knocked down by the test", api.HealthCritical); err != nil {
			t.Fatal(err)
		}
		synced("knocked down", func(c *api.HealthCheck) bool { return c.Output == "knocked down by the test" })
		synced("passing again", func(c *api.HealthCheck) bool {
			return c.Status == api.HealthPassing && c.Output != "knocked down by the test"
		})
	})

	t.Run("the agent refuses the token: log in again", func(t *testing.T) {
		if _, err := lh.admin.ACL().TokenDelete(first.AccessorID, nil); err != nil {
			t.Fatal(err)
		}
		first = current(first.SecretID)
		// Its heartbeat writes with the new token.
		if err := lh.admin.Agent().UpdateTTL("meshx-ttl:web-testhost", "knocked down by the test", api.HealthCritical); err != nil {
			t.Fatal(err)
		}
		passing()
	})

	t.Run("expired bearer token and refused token: critical, still up; a good one brings it back", func(t *testing.T) {
		expired := lh.iss.ServiceJWT(t, "web", time.Now().Add(-10*time.Minute))
		secrets = append(secrets, expired)
		lh.writeJWT(t, expired)
		if _, err := lh.admin.ACL().TokenDelete(first.AccessorID, nil); err != nil {
			t.Fatal(err)
		}
		lh.criticalStillUp(t, p, `auth method "meshx-jwt"`, "expired")
		lh.writeJWT(t, lh.jwt(t))
		first = current(first.SecretID)
		passing()
	})

	// Stop: logged out, the file gone, deregistered.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t)
	if _, err := os.Stat(tokenFile); !os.IsNotExist(err) {
		t.Errorf("token file left after stop: %v", err)
	}
	if toks := lh.loginTokens(t); len(toks) != 0 {
		t.Errorf("%d login token(s) left after stop", len(toks))
	}
	if svcs, _ := lh.admin.Agent().Services(); svcs["web-testhost"] != nil {
		t.Error("web still registered after stop")
	}
	for _, s := range secrets {
		if strings.Contains(p.out.String(), s) {
			t.Errorf("a token or JWT appears in meshx-proxy's output")
		}
	}
}

// jwt is a fresh, valid JWT for web.
func (lh *loginHost) jwt(t *testing.T) string {
	t.Helper()
	return lh.iss.ServiceJWT(t, "web", time.Now().Add(time.Hour+time.Duration(time.Now().UnixNano()%1000)*time.Millisecond))
}

// waitReady waits for meshx-proxy p to say it is ready.
func (h *host) waitReady(t *testing.T, p *proxyProc) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() error {
		if st := h.status("web"); !st.Ready || st.PID != p.cmd.Process.Pid {
			return fmt.Errorf("not ready: %+v", st)
		}
		return nil
	})
}

// criticalStillUp waits until web's published status is critical with an
// output holding every one of want, and fails if meshx-proxy p exited.
func (lh *loginHost) criticalStillUp(t *testing.T, p *proxyProc, want ...string) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() error {
		st := lh.status("web")
		for _, w := range want {
			if st.Health != api.HealthCritical || !strings.Contains(st.Output, w) {
				return fmt.Errorf("status %+v, want critical saying %q", st, w)
			}
		}
		return nil
	})
	select {
	case <-p.done:
		t.Fatalf("meshx-proxy exited instead of staying up, critical:\n%s", p.out.String())
	default:
	}
}
