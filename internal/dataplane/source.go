package dataplane

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/register"
)

// Source is where the data plane learns its identity, its peers and its
// authorization decisions. Every method that takes an index is a blocking
// query: it returns when the data changed past index, or after a wait of
// about five minutes, with the index to pass next time. The deprecated agent
// endpoints (leaf, roots, authorize) sit only behind this interface, so that
// another source (xDS over the agent's gRPC port) can replace them.
type Source interface {
	// Leaf returns the service's leaf certificate (chain in CertPEM).
	Leaf(ctx context.Context, service string, index uint64) (*api.LeafCert, uint64, error)
	// Roots returns every CA root the cluster trusts, and the trust domain.
	Roots(ctx context.Context, index uint64) (*api.CARootList, uint64, error)
	// Intentions returns the intentions whose destination matches service,
	// highest precedence first, read from the servers (not a cache).
	Intentions(ctx context.Context, service string, index uint64) ([]*api.Intention, uint64, error)
	// Authorize asks the agent's default decision for a source no intention
	// matches (the default intention policy, or the ACL default).
	Authorize(ctx context.Context, target, clientURI string) (bool, string, error)
	// Instances returns the passing Connect-capable instances of a service.
	Instances(ctx context.Context, service, datacenter string, index uint64) ([]*api.ServiceEntry, uint64, error)
	// Query executes a prepared query for Connect-capable instances (not blocking).
	Query(ctx context.Context, name, datacenter string) ([]*api.ServiceEntry, error)
	// DialedDirectly reports the service-defaults' TransparentProxy.DialedDirectly
	// of a service (false when it has none).
	DialedDirectly(ctx context.Context, service string) (bool, error)
	// Services lists the names of every service in the local datacenter.
	Services(ctx context.Context) ([]string, error)
	// MeshDestinationsOnly reports the mesh config entry's
	// TransparentProxy.MeshDestinationsOnly (false when there is no entry).
	MeshDestinationsOnly(ctx context.Context, index uint64) (bool, uint64, error)
}

// AgentSource is a Source backed by the local Consul agent's HTTP API.
type AgentSource struct {
	client atomic.Pointer[api.Client]
	// Wait bounds each blocking query; 0 means the agent's default (5 min).
	Wait time.Duration
}

// NewAgentSource makes a Source of the agent cl talks to.
func NewAgentSource(cl *api.Client) *AgentSource {
	a := &AgentSource{}
	a.client.Store(cl)
	return a
}

// SetClient replaces the client (a new ACL token): queries from now on use it.
func (a *AgentSource) SetClient(cl *api.Client) { a.client.Store(cl) }

var _ Source = (*AgentSource)(nil)

func (a *AgentSource) q(ctx context.Context, index uint64) *api.QueryOptions {
	return (&api.QueryOptions{WaitIndex: index, WaitTime: a.Wait}).WithContext(ctx)
}

func (a *AgentSource) Leaf(ctx context.Context, service string, index uint64) (*api.LeafCert, uint64, error) {
	leaf, meta, err := a.client.Load().Agent().ConnectCALeaf(service, a.q(ctx, index))
	if err != nil {
		return nil, 0, fmt.Errorf("leaf certificate of %s: %w", service, err)
	}
	return leaf, meta.LastIndex, nil
}

func (a *AgentSource) Roots(ctx context.Context, index uint64) (*api.CARootList, uint64, error) {
	roots, meta, err := a.client.Load().Agent().ConnectCARoots(a.q(ctx, index))
	if err != nil {
		return nil, 0, fmt.Errorf("CA roots: %w", err)
	}
	return roots, meta.LastIndex, nil
}

func (a *AgentSource) Intentions(ctx context.Context, service string, index uint64) ([]*api.Intention, uint64, error) {
	m, meta, err := a.client.Load().Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination,
		Names: []string{service}}, a.q(ctx, index))
	if err != nil {
		return nil, 0, fmt.Errorf("intentions for %s: %w", service, err)
	}
	return m[service], meta.LastIndex, nil
}

func (a *AgentSource) Authorize(ctx context.Context, target, clientURI string) (bool, string, error) {
	// The api client's ConnectAuthorize takes no context; the request is
	// short (answered from the agent's cache), and bounded by the caller's
	// connection deadline.
	type result struct {
		r   *api.AgentAuthorize
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := a.client.Load().Agent().ConnectAuthorize(&api.AgentAuthorizeParams{Target: target, ClientCertURI: clientURI})
		ch <- result{r, err}
	}()
	select {
	case <-ctx.Done():
		return false, "", ctx.Err()
	case res := <-ch:
		if res.err != nil {
			return false, "", fmt.Errorf("authorize %s for %s: %w", clientURI, target, res.err)
		}
		return res.r.Authorized, res.r.Reason, nil
	}
}

func (a *AgentSource) Instances(ctx context.Context, service, dc string, index uint64) ([]*api.ServiceEntry, uint64, error) {
	q := a.q(ctx, index)
	q.Datacenter = dc
	es, meta, err := a.client.Load().Health().Connect(service, "", true, q)
	if err != nil {
		return nil, 0, fmt.Errorf("instances of %s: %w", service, err)
	}
	return es, meta.LastIndex, nil
}

func (a *AgentSource) Query(ctx context.Context, name, dc string) ([]*api.ServiceEntry, error) {
	q := (&api.QueryOptions{Datacenter: dc, Connect: true}).WithContext(ctx)
	res, _, err := a.client.Load().PreparedQuery().Execute(name, q)
	if err != nil {
		return nil, fmt.Errorf("prepared query %s: %w", name, err)
	}
	out := make([]*api.ServiceEntry, len(res.Nodes))
	for i := range res.Nodes {
		out[i] = &res.Nodes[i]
	}
	return out, nil
}

func (a *AgentSource) MeshDestinationsOnly(ctx context.Context, index uint64) (bool, uint64, error) {
	e, meta, err := a.client.Load().ConfigEntries().Get(api.MeshConfig, api.MeshConfigMesh, a.q(ctx, index))
	if register.IsNotFound(err) {
		return false, max(index, 1), nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("mesh config entry: %w", err)
	}
	m, ok := e.(*api.MeshConfigEntry)
	if !ok {
		return false, meta.LastIndex, nil
	}
	return m.TransparentProxy.MeshDestinationsOnly, meta.LastIndex, nil
}

func (a *AgentSource) Services(ctx context.Context) ([]string, error) {
	m, _, err := a.client.Load().Catalog().Services((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("catalog services: %w", err)
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	return names, nil
}

func (a *AgentSource) DialedDirectly(ctx context.Context, service string) (bool, error) {
	e, _, err := a.client.Load().ConfigEntries().Get(api.ServiceDefaults, service, (&api.QueryOptions{}).WithContext(ctx))
	if register.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("service-defaults of %s: %w", service, err)
	}
	sd, ok := e.(*api.ServiceConfigEntry)
	return ok && sd.TransparentProxy != nil && sd.TransparentProxy.DialedDirectly, nil
}
