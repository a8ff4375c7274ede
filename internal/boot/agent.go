package boot

import (
	"context"
	"sync"
	"time"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/login"
	"github.com/meshx/meshx/internal/register"
)

// agentClient connects to the local agent for one command; wait > 0 first
// waits that long for an unreachable agent. With consul.login it logs in
// through the auth method and keeps the token in memory only (each
// meshx-proxy logs in for itself); done logs out once the command no longer
// needs the agent. done is idempotent and never nil.
func agentClient(ctx context.Context, env Env, c config.Consul, wait time.Duration) (cl register.Agent, done func(), err error) {
	done = func() {}
	if cl, err = env.connect(c); err != nil {
		return nil, done, err
	}
	if wait > 0 {
		if err := register.WaitAgent(ctx, cl, register.Address(c), wait, env.Log); err != nil {
			return nil, done, err
		}
	}
	if c.Login == nil {
		return cl, done, nil
	}
	s, err := login.ForConsul(c, "", env.Log)
	if err != nil {
		return nil, done, err
	}
	if err := s.Login(ctx); err != nil {
		return nil, done, err
	}
	var once sync.Once
	done = func() {
		once.Do(func() {
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := s.Logout(lctx); err != nil {
				env.Log.Warn("ACL logout", "err", err)
			}
		})
	}
	if cl, err = env.connect(s.Consul(c)); err != nil {
		done()
		return nil, func() {}, err
	}
	return cl, done, nil
}
