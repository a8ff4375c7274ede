package sidecar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/metrics"
)

// tokenWatch notices when the ACL token file is rewritten (rotation): the
// agent client reads the file once, and the proxy got the token in its
// environment at its start, so both must be renewed. It also notices a file
// that went empty, unreadable or missing: the next start of the proxy, or of
// meshx-proxy, would run without a token.
type tokenWatch struct {
	path     string
	last     []byte
	badSince time.Time // when the file was first seen empty or unreadable; zero when fine
}

// tokenGrace is how long the file may be empty or missing before it is a
// problem: a rotation that rewrites it in place or replaces it passes
// through both for a moment.
const tokenGrace = 2 * time.Second

func newTokenWatch(path string) *tokenWatch {
	w := &tokenWatch{path: path}
	if path != "" {
		w.last, _ = os.ReadFile(path)
	}
	return w
}

// poll reads the file: changed when it holds a token other than the last
// seen; problem (naming the file, never its content) when it has been empty
// or unreadable for tokenGrace.
func (w *tokenWatch) poll() (changed bool, problem error) {
	if w.path == "" {
		return false, nil
	}
	b, err := os.ReadFile(w.path)
	if err == nil && len(bytes.TrimSpace(b)) == 0 {
		err = errors.New("empty")
	}
	if err != nil {
		if w.badSince.IsZero() {
			w.badSince = time.Now()
		}
		if time.Since(w.badSince) < tokenGrace {
			return false, nil
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return false, fmt.Errorf("ACL token file %s: %w", w.path, err)
	}
	w.badSince = time.Time{}
	if bytes.Equal(b, w.last) {
		return false, nil
	}
	w.last = b
	return true, nil
}

// setTokenProblem records the token file's problem (nil: none) for the
// probe and logs each change; it reports whether anything changed.
func (d *daemon) setTokenProblem(problem error) bool {
	d.mu.Lock()
	prev := d.tokenProblem
	d.tokenProblem = problem
	d.mu.Unlock()
	switch {
	case problem != nil && (prev == nil || prev.Error() != problem.Error()):
		d.log.Error("the ACL token file is broken: the service is critical until it is fixed", "err", problem)
	case problem == nil && prev != nil:
		d.log.Info("the ACL token file is readable again", "was", prev.Error())
	default:
		return false
	}
	return true
}

// rotateToken renews the agent client with the new token, registers the
// service again with it (the agent syncs a service to the servers with the
// token it was registered with, so the old token must stop being that one
// before it is deleted), and restarts the proxy so it gets the token too.
func (d *daemon) rotateToken(ctx context.Context) error {
	ag, err := d.o.Connect(d.o.Global.Consul)
	if err != nil {
		d.log.Error("ACL token file changed, but a client with it failed", "err", err)
		return nil
	}
	d.agent = ag
	d.reg.Agent = ag
	d.log.Info("ACL token file changed: using the new token; registering again and giving the proxy the token")
	if err := d.reg.Register(ctx, d.pl, d.health()); err != nil {
		d.m.AgentError("register")
		d.log.Error("register with the new token", "err", err)
	} else {
		d.m.Resync(metrics.ResyncToken)
	}
	if d.proxy == nil {
		return nil
	}
	if tf, ok := d.proxy.(TokenFollower); ok {
		err := tf.TokenChanged(d.o.Global.Consul)
		if err == nil {
			return nil
		}
		d.log.Error("the data plane could not take the new token in place; restarting it", "err", err)
	}
	return d.restartProxy(ctx)
}

// agentRef lets the heartbeat follow d.agent across token rotations.
type agentRef struct{ d *daemon }

func (a agentRef) UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error {
	return a.d.agent.UpdateTTLOpts(checkID, output, status, q)
}
