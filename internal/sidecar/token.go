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

// rotateToken renews the agent client with the new token and restarts the
// proxy so it gets the token too.
func (d *daemon) rotateToken(ctx context.Context) {
	cl, err := register.NewClient(d.o.Global.Consul)
	if err != nil {
		d.log.Error("ACL token file changed, but a client with it failed", "err", err)
		return
	}
	d.cl = cl
	d.reg.Agent = cl.Agent()
	d.log.Info("ACL token file changed: using the new token; restarting the proxy with it")
	if d.sup != nil {
		d.stopProxy()
		if err := d.startProxy(ctx); err != nil {
			d.log.Error("start proxy", "err", err)
		}
	}
}

// agentRef lets the heartbeat follow d.cl across token rotations.
type agentRef struct{ d *daemon }

func (a agentRef) UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error {
	return a.d.cl.Agent().UpdateTTLOpts(checkID, output, status, q)
}
