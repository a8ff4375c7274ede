package boot

import (
	"log/slog"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/register"
)

// The agent's default limits.http_max_conns_per_client.
const defaultConnLimit = 200

// Long-lived HTTP connections to the agent, by what holds them.
const (
	builtinProxyConns = 4 // a `consul connect proxy`: config, leaf, roots watches and a health query
	meshxProxyConns   = 1 // meshx-proxy's own: heartbeat and registration
	nativeConns       = 3 // the native plane: leaf, roots and intentions watches
)

// sharedConns is how many connections the host's proxies hold to the agent
// from one client address, the budget limits.http_max_conns_per_client caps.
// Built-in proxies always share the host's address. meshx-proxy and the
// native plane share it only when the agent is not on loopback IPv4 (there
// each service connects from a loopback address of its own).
func sharedConns(plans []*plan.Plan, agentAddress string) int {
	own := register.LoopbackAgent(agentAddress)
	n := 0
	for _, pl := range plans {
		if pl.Proxy.Mode == config.ModeConnect {
			n += builtinProxyConns
		}
		if own {
			continue
		}
		n += meshxProxyConns
		if pl.Proxy.Mode == config.ModeNative {
			n += nativeConns + len(pl.Upstreams)
			if pl.Transparent != nil {
				n++ // the mesh config entry
			}
		}
	}
	return n
}

// connLimit is the agent's limits.http_max_conns_per_client, or its default
// when the agent does not say (agent:read is needed to ask).
func connLimit(ag register.Agent) int {
	s, ok := ag.(interface {
		Self() (map[string]map[string]any, error)
	})
	if !ok {
		return defaultConnLimit
	}
	self, err := s.Self()
	if err != nil {
		return defaultConnLimit
	}
	if dc, ok := self["DebugConfig"]; ok {
		if v, ok := dc["HTTPMaxConnsPerClient"].(float64); ok && v > 0 {
			return int(v)
		}
	}
	return defaultConnLimit
}

// warnConnBudget says, before any proxy starts, when the host's proxies
// would need more connections from one address than the agent allows: the
// ones past the limit would never become ready.
func warnConnBudget(log *slog.Logger, cl register.Agent, agentAddress string, plans []*plan.Plan) {
	need := sharedConns(plans, agentAddress)
	if need == 0 {
		return
	}
	if limit := connLimit(cl); need > limit {
		log.Warn("the proxies need more connections to the consul agent than it allows one client address: "+
			"some will never become ready; raise limits.http_max_conns_per_client in the agent's configuration "+
			"(or use proxy.mode native with the agent on loopback, where each service connects from an address of its own)",
			"connections_needed", need, "http_max_conns_per_client", limit)
	}
}
