package register

import (
	"context"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
)

// Agent is the part of the Consul agent's HTTP API that meshx uses: the
// seam where unit tests put an in-memory agent (internal/agenttest). API is
// the real one.
type Agent interface {
	// Ping returns nil when the agent answers at all.
	Ping(ctx context.Context) error
	Service(id string, q *api.QueryOptions) (*api.AgentService, *api.QueryMeta, error)
	ServicesWithFilterOpts(filter string, q *api.QueryOptions) (map[string]*api.AgentService, error)
	ChecksWithFilterOpts(filter string, q *api.QueryOptions) (map[string]*api.AgentCheck, error)
	ServiceRegisterOpts(s *api.AgentServiceRegistration, o api.ServiceRegisterOpts) error
	ServiceDeregisterOpts(id string, q *api.QueryOptions) error
	UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error
	// ConnectHealthy returns the ids of service's Connect endpoints
	// (sidecars) that the servers list as passing: what callers' proxies
	// are told.
	ConnectHealthy(service string, q *api.QueryOptions) ([]string, error)
}

// API is the Agent of a consul/api client.
type API struct {
	*api.Agent
	client *api.Client
}

// NewAPI wraps a consul/api client.
func NewAPI(cl *api.Client) API { return API{Agent: cl.Agent(), client: cl} }

// Ping asks for /v1/status/leader, the lightest call there is; its answer
// does not matter, only that there is one.
func (a API) Ping(ctx context.Context) error {
	_, err := a.client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	return err
}

// ConnectHealthy asks the servers (through the agent, not its cache).
func (a API) ConnectHealthy(service string, q *api.QueryOptions) ([]string, error) {
	entries, _, err := a.client.Health().Connect(service, "", true, q)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Service != nil {
			ids = append(ids, e.Service.ID)
		}
	}
	return ids, nil
}

// Connect returns the Agent for meshx.yaml's consul section.
func Connect(c config.Consul) (Agent, error) {
	cl, err := NewClient(c)
	if err != nil {
		return nil, err
	}
	return NewAPI(cl), nil
}
