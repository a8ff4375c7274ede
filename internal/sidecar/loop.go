package sidecar

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/metrics"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/ttl"
)

// fastBeat is the beat interval until ready.
const fastBeat = 50 * time.Millisecond

// loop runs until ctx ends (nil) or a step fails (its error): it heartbeats
// (every fastBeat until ready, then every Interval), checks the token file
// every Poll, reloads the plan on request, and ends when the data plane gives
// up.
func (d *daemon) loop(ctx context.Context, hb *ttl.Heartbeat) error {
	beat := time.NewTimer(0)
	defer beat.Stop()
	poll := time.NewTicker(d.o.Poll)
	defer poll.Stop()
	token := newTokenWatch(register.APIConfig(d.o.Global.Consul).TokenFile)
	for {
		var err error
		select {
		case <-ctx.Done():
			return nil
		case <-poll.C:
			var beatNow bool
			if beatNow, err = d.onPoll(ctx, token); beatNow {
				beat.Reset(0) // the check says so now, not at the next beat
			}
		case <-d.o.Reload:
			err = d.reload(ctx)
		case perr := <-d.proxyExited():
			err = proxyGaveUp(perr)
		case <-beat.C:
			beat.Reset(d.beat(ctx, hb))
		}
		if err != nil {
			return err
		}
	}
}

// onPoll keeps the watchdog's progress fresh, rotates a changed token and
// records a broken token file; beatNow when the health changed.
func (d *daemon) onPoll(ctx context.Context, token *tokenWatch) (beatNow bool, err error) {
	d.touch()
	d.maybeRelogin(ctx)
	changed, problem := token.poll()
	beatNow = d.setTokenProblem(problem)
	if changed {
		err = d.rotateToken(ctx)
	}
	return beatNow, err
}

// proxyExited yields when the data plane gave up (never when there is none).
func (d *daemon) proxyExited() <-chan error {
	if d.proxy == nil {
		return nil
	}
	return d.proxy.Exited()
}

func proxyGaveUp(err error) error {
	if err == nil {
		err = errors.New("proxy exited")
	}
	return fmt.Errorf("proxy: %w", err)
}

// beat heartbeats once and returns when the next beat is due.
func (d *daemon) beat(ctx context.Context, hb *ttl.Heartbeat) time.Duration {
	d.touch()
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	hl, err := hb.Beat(bctx)
	cancel()
	d.maybeReady(ctx, hl, err)
	next := time.Duration(d.pl.Interval)
	if !d.isReady() && next > fastBeat {
		next = fastBeat
	}
	return next
}

// probe computes the service's health from the parts traffic needs.
func (d *daemon) probe(ctx context.Context) ttl.Health {
	d.mu.Lock()
	tokenProblem := d.tokenProblem
	d.mu.Unlock()
	if tokenProblem != nil {
		return ttl.Health{Status: api.HealthCritical, Output: tokenProblem.Error()}
	}
	if d.proxy != nil {
		if err := d.proxy.Accepting(ctx); err != nil {
			return ttl.Health{Status: api.HealthCritical, Output: err.Error()}
		}
	}
	if d.pl.Probe == "tcp" {
		if err := dial(ctx, d.pl.Address, d.pl.Port); err != nil {
			return ttl.Health{Status: api.HealthCritical, Output: fmt.Sprintf("app not reachable at %s:%d: %v", d.pl.Address, d.pl.Port, err)}
		}
		return ttl.Health{Status: api.HealthPassing, Output: fmt.Sprintf("proxy running, app reachable at %s:%d", d.pl.Address, d.pl.Port)}
	}
	return ttl.Health{Status: api.HealthPassing, Output: "proxy running"}
}

// publicPort is the sidecar's public (mTLS) port: pinned in the plan, else
// (a plan from an older meshx) as the agent assigned it.
func (d *daemon) publicPort(ctx context.Context) (int, error) {
	if d.pl.SidecarPort != 0 {
		return d.pl.SidecarPort, nil
	}
	d.mu.Lock()
	p := d.sidecarPort
	d.mu.Unlock()
	if p != 0 {
		return p, nil
	}
	s, _, err := d.agent.Service(d.pl.SidecarID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	d.sidecarPort = s.Port
	d.mu.Unlock()
	return s.Port, nil
}

func upstreamRemoved(old, cur *plan.Plan) bool {
	have := map[string]bool{}
	for _, u := range cur.Upstreams {
		have[u.Key] = true
	}
	for _, u := range old.Upstreams {
		if !have[u.Key] {
			return true
		}
	}
	return false
}

var errIDChanged = errors.New("service id changed")

// reload re-reads the plan meshx-init rendered (after a config change or
// connect/disconnect). An error ends the run (exit 1): systemd or the
// foreground fleet restarts meshx-proxy, which then starts from the new plan.
func (d *daemon) reload(ctx context.Context) error {
	pl, err := d.o.Dirs.LoadPlan(d.o.Service)
	if err != nil {
		d.log.Error("reload plan", "err", err)
		return nil
	}
	old := d.pl
	if pl.ID != old.ID {
		// The heartbeat, the rules and the registration all hang on the id:
		// retire the old one and start again under the new one.
		d.log.Info("service id changed; deregistering the old id and restarting", "old_id", old.ID, "new_id", pl.ID)
		if err := d.reg.DeregisterOwned(ctx, old.ID, old.SidecarID); err != nil {
			d.log.Error("deregister old id", "err", err)
		}
		return errIDChanged
	}
	if (old.Transparent == nil) != (pl.Transparent == nil) {
		// Turning transparent proxy on or off changes the unit's capabilities:
		// meshx-init restarts the unit for it, and the new run applies it.
		d.log.Info("transparent proxy turned on or off: takes effect when the unit restarts")
		pl.Transparent = old.Transparent
	}
	d.pl = pl
	d.mu.Lock()
	d.sidecarPort = 0
	d.mu.Unlock()
	d.log.Info("plan reloaded", "upstreams", len(pl.Upstreams))
	if d.rulesIn && !reflect.DeepEqual(old.Transparent, pl.Transparent) {
		if err := d.applyRules(ctx); err != nil {
			d.log.Error("update transparent-proxy rules", "err", err)
		}
	}
	res, err := d.reg.Ensure(ctx, pl, "", false)
	if err == nil {
		err = d.ownRegistration(ctx, pl, res, d.health())
	}
	if err != nil {
		d.m.AgentError("register")
		d.log.Error("register after reload", "err", err)
	} else {
		d.m.Resync(metrics.ResyncReload)
	}
	r, inPlace := d.proxy.(Reloader)
	switch {
	case old.Proxy.Mode != pl.Proxy.Mode:
		d.log.Info("proxy mode changed; restarting the data plane", "old", old.Proxy.Mode, "new", pl.Proxy.Mode)
	case inPlace:
		if err := r.Reload(pl); err != nil {
			d.log.Error("update upstream listeners", "err", err)
		}
		return nil
	case !slices.Equal(old.Proxy.Argv, pl.Proxy.Argv) || old.Proxy.User != pl.Proxy.User:
		d.log.Info("proxy command changed; restarting the proxy")
	case upstreamRemoved(old, pl):
		// Consul's built-in proxy adds listeners for new upstreams on the fly
		// but never closes those of removed ones: a restart does.
		d.log.Info("an upstream was removed; restarting the proxy to close its listener")
	default:
		return nil
	}
	return d.restartProxy(ctx)
}
