package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/metrics"
	"github.com/meshx/meshx/internal/plan"
)

// Proxy is the data plane of one service: what carries its traffic. The
// daemon drives it through four steps and knows nothing else about it.
// execProxy supervises an external proxy process (Consul's built-in proxy,
// Envoy); an in-process data plane implements the same steps.
type Proxy interface {
	// Start starts the data plane and returns without waiting for it to
	// accept. It keeps running (restarting itself as it sees fit) until
	// Stop, or until it gives up.
	Start(ctx context.Context) error
	// Exited yields once when the data plane ended by itself (it gave up);
	// the error says why. After Stop it never yields.
	Exited() <-chan error
	// Stop stops the data plane and returns once it has stopped. Calling it
	// again does nothing.
	Stop()
	// Accepting returns nil when traffic can flow through the data plane
	// now (its public listener and every upstream listener accept), else
	// why not, for the TTL check's output.
	Accepting(ctx context.Context) error
}

// Reloader is a Proxy that takes a changed plan in place (new upstream
// listeners, closed old ones). A reload gives it the new plan instead of
// restarting it, unless the mode changed.
type Reloader interface {
	Reload(pl *plan.Plan) error
}

// TokenFollower is a Proxy that takes a new ACL token in place: its next
// requests to the agent carry it, its open connections carry on. A token
// rotation gives it the token instead of restarting it.
type TokenFollower interface {
	TokenChanged(c config.Consul) error
}

// ProxyParams is what a Proxy is made from.
type ProxyParams struct {
	Plan   *plan.Plan
	Logger *slog.Logger
	// Consul is how to reach the agent, with the token current when the
	// Proxy is made (an exec proxy gets it in its environment).
	Consul config.Consul
	// PublicPort returns the sidecar's public (mTLS) port: pinned in the
	// plan, else as the agent assigned it.
	PublicPort func(ctx context.Context) (int, error)
	// OnState is called when the data plane's state changes; it must not
	// block for long.
	OnState func(ProxyState)
	// Metrics receives an in-process data plane's counters (connections,
	// bytes, refusals...). nil: metrics are off.
	Metrics *metrics.Metrics
}

// ProxyState is the data plane's state, as published in the status file.
type ProxyState struct {
	State    string // "starting", "running", "backoff", ...
	PID      int    // the proxy process's pid; 0 for none (in-process)
	Restarts int    // restarts since the counter was last reset
}

// Listening checks that the data plane's listeners accept: the public port
// on loopback, then each upstream's local address. Any data plane can use it
// as the second half of Accepting.
func Listening(ctx context.Context, pl *plan.Plan, publicPort func(context.Context) (int, error)) error {
	port, err := publicPort(ctx)
	if err != nil {
		return fmt.Errorf("sidecar %s: %v", pl.SidecarID, err)
	}
	if err := dial(ctx, "127.0.0.1", port); err != nil {
		return fmt.Errorf("proxy not accepting on port %d: %v", port, err)
	}
	for _, u := range pl.Upstreams {
		if err := dial(ctx, u.Address, u.Port); err != nil {
			return fmt.Errorf("upstream %s listener %s:%d not accepting: %v", u.Name, u.Address, u.Port, err)
		}
	}
	return nil
}

func dial(ctx context.Context, host string, port int) error {
	if host == "" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			return oe.Err
		}
		return err
	}
	return c.Close()
}
