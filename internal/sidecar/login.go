package sidecar

import (
	"context"
	"maps"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/login"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/register"
)

// With consul.login, meshx-proxy logs in itself. The token lives in memory
// and in a 0600 file of the runtime dir (state.Dirs.TokenPath); from the
// login on, d.o.Global.Consul names that file as its token_file, so the
// agent client, the proxy's environment and the token watch of rotation all
// follow each new login through it.

// setupLogin prepares the login of consul.login (none: nothing to do). The
// agent client made before it presents no token: waiting for the agent
// needs none.
func (d *daemon) setupLogin() error {
	c := d.o.Global.Consul
	if c.Login == nil {
		return nil
	}
	lc := *c.Login
	lc.Meta = maps.Clone(lc.Meta)
	if lc.Meta == nil {
		lc.Meta = map[string]string{}
	}
	if _, ok := lc.Meta["meshx-service"]; !ok {
		lc.Meta["meshx-service"] = d.pl.Name
	}
	c.Login = &lc
	s, err := login.ForConsul(c, d.o.Dirs.TokenPath(d.o.Service), d.log.With("component", "login"))
	if err != nil {
		return err
	}
	d.login = s
	g := *d.o.Global
	g.Consul = s.Consul(c)
	d.o.Global = &g
	return nil
}

// loginAtStart logs in before anything is registered, retrying (backoff 2s
// to 30s, at once when the bearer token file changes) while the auth method
// refuses: meshx-proxy then stays up and says critical, and why, instead of
// exiting into a restart loop.
func (d *daemon) loginAtStart(ctx context.Context) error {
	if d.login == nil {
		return nil
	}
	d.login.Recover(ctx)
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 2*time.Second, 30*time.Second
	for {
		d.status("logging in through ACL auth method " + d.login.Method())
		err := d.login.Login(ctx)
		d.m.Login(err)
		if err == nil {
			d.setLoginErr(nil)
			return d.useToken()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.m.AgentError("login")
		d.setLoginErr(err)
		d.log.Error("ACL login", "err", err)
		d.o.Notify("STATUS=critical: " + err.Error())
		deadline := time.Now().Add(b.NextBackOff())
		for time.Now().Before(deadline) && !d.login.BearerChanged() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
				d.touch()
			}
		}
	}
}

// useToken points the agent client at the token the login got.
func (d *daemon) useToken() error {
	ag, err := d.o.Connect(d.o.Global.Consul)
	if err != nil {
		return err
	}
	d.agent = ag
	d.reg.Agent = ag
	return nil
}

// minRelogin spaces logins the main loop retries.
const minRelogin = 5 * time.Second

// maybeRelogin logs in again when the bearer token file changed or the agent
// refused the token. The new token lands in the token file, where the token
// watch of rotation picks it up (registers again, restarts the proxy).
func (d *daemon) maybeRelogin(ctx context.Context) {
	if d.login == nil || time.Now().Before(d.nextLogin) {
		return
	}
	refused := d.refused.Load()
	if !refused && !d.login.BearerChanged() {
		return
	}
	d.nextLogin = time.Now().Add(minRelogin)
	if refused {
		d.log.Warn("the agent refused the ACL token; logging in again")
	} else {
		d.log.Info("the bearer token file changed; logging in again")
	}
	err := d.login.Login(ctx)
	d.m.Login(err)
	d.setLoginErr(err)
	if err != nil {
		d.m.AgentError("login")
		d.log.Error("ACL login", "err", err)
		return
	}
	d.refused.Store(false)
}

// setLoginErr records the last login's failure (nil: it worked) for the
// published status.
func (d *daemon) setLoginErr(err error) {
	d.mu.Lock()
	d.loginErr = ""
	if err != nil {
		d.loginErr = err.Error()
		d.st.Health, d.st.Output = api.HealthCritical, d.loginErr
	}
	d.mu.Unlock()
	if err != nil {
		d.publish()
	}
}

// noteRefused remembers that the agent refused the token, for the main loop
// to log in again.
func (d *daemon) noteRefused(err error) {
	if d.login != nil && login.Refused(err) {
		d.refused.Store(true)
	}
}

// logout ends the login at stop: the token is deleted and its file removed.
func (d *daemon) logout(ctx context.Context) {
	if d.login == nil {
		return
	}
	if err := d.login.Logout(ctx); err != nil {
		d.log.Warn("ACL logout", "err", err)
	}
}

// ownRegistration registers pl again, with meshx-proxy's own login token,
// when the agent kept it as it was (res Unchanged): meshx-init registers
// with a login token of its own that it deletes when done, and the agent
// syncs a service (and its check) to the servers with the token it was
// registered with. Without consul.login it does nothing.
func (d *daemon) ownRegistration(ctx context.Context, pl *plan.Plan, res register.Result, status string) error {
	if d.login == nil || res != register.Unchanged {
		return nil
	}
	return d.reg.Register(ctx, pl, status)
}

// health is the service's health as last published.
func (d *daemon) health() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.Health
}
