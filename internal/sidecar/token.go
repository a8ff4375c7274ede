package sidecar

import (
	"bytes"
	"context"
	"os"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/register"
)

// tokenWatch notices when the ACL token file is rewritten (rotation): the
// agent client reads the file once, and the proxy got the token in its
// environment at its start, so both must be renewed.
type tokenWatch struct {
	path string
	last []byte
}

func newTokenWatch(path string) *tokenWatch {
	w := &tokenWatch{path: path}
	if path != "" {
		w.last, _ = os.ReadFile(path)
	}
	return w
}

// changed reports whether the file's content differs from the last seen;
// an unreadable or empty file is not a change (a rotation in progress).
func (w *tokenWatch) changed() bool {
	if w.path == "" {
		return false
	}
	b, err := os.ReadFile(w.path)
	if err != nil || len(bytes.TrimSpace(b)) == 0 || bytes.Equal(b, w.last) {
		return false
	}
	w.last = b
	return true
}

// rotateToken renews the agent client with the new token, registers the
// service again with it (the agent syncs a service to the servers with the
// token it was registered with, so the old token must stop being that one
// before it is deleted), and restarts the proxy so it gets the token too.
func (d *daemon) rotateToken(ctx context.Context) error {
	cl, err := register.NewClient(d.o.Global.Consul)
	if err != nil {
		d.log.Error("ACL token file changed, but a client with it failed", "err", err)
		return nil
	}
	d.cl = cl
	d.reg.Agent = cl.Agent()
	d.log.Info("ACL token file changed: using the new token; registering again and restarting the proxy with it")
	d.mu.Lock()
	status := d.st.Health
	d.mu.Unlock()
	if err := d.reg.Register(ctx, d.pl, status); err != nil {
		d.log.Error("register with the new token", "err", err)
	}
	if d.sup == nil {
		return nil
	}
	return d.restartProxy(ctx)
}

// agentRef lets the heartbeat follow d.cl across token rotations.
type agentRef struct{ d *daemon }

func (a agentRef) UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error {
	return a.d.cl.Agent().UpdateTTLOpts(checkID, output, status, q)
}
