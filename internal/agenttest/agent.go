// Package agenttest is an in-memory Consul agent for unit tests: it keeps
// services and checks as the agent does, records every call in order, can
// fail calls and can forget everything (a restarted dev agent does).
package agenttest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"
)

// Agent is the fake agent's state; its Clients are register.Agents. The zero
// value is not usable: use New.
type Agent struct {
	mu       sync.Mutex
	services map[string]*api.AgentService
	checks   map[string]*api.AgentCheck
	calls    []string
	down     error            // every call fails with it while set
	fail     map[string]error // one call kind fails with it
}

// New returns an empty, answering agent.
func New() *Agent {
	return &Agent{services: map[string]*api.AgentService{}, checks: map[string]*api.AgentCheck{}, fail: map[string]error{}}
}

// Client returns a connection to the agent (a register.Agent) whose calls
// are recorded with token as a label ("" = none): a test of token rotation
// gives each client its own.
func (a *Agent) Client(token string) *Client { return &Client{a: a, token: token} }

// Client is a connection to an Agent.
type Client struct {
	a     *Agent
	token string
}

// NotFound is the agent's 404 answer.
func NotFound(what string) error {
	return api.StatusError{Code: http.StatusNotFound, Body: what + " not found"}
}

// SetDown makes every call fail with err (nil: answer again).
func (a *Agent) SetDown(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.down = err
}

// Fail makes calls of one kind ("register", "deregister", "ttl", "service",
// "services", "checks", "ping") fail with err (nil: succeed again).
func (a *Agent) Fail(kind string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fail[kind] = err
}

// Forget drops every service and check: the agent restarted.
func (a *Agent) Forget() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.services)
	clear(a.checks)
}

// Calls returns the calls made so far, in order, as "kind arg" strings
// (with "@token" appended for a Client with a token), e.g.
// "register web-h1 critical", "ttl meshx-ttl:web-h1 passing",
// "deregister web-h1-sidecar-proxy".
func (a *Agent) Calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.calls...)
}

// Note records an event of the test's own (a proxy stopped) among the
// calls, so that a test can assert the order across both.
func (a *Agent) Note(event string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, event)
}

// ServiceByID returns a copy of a registered service, or nil.
func (a *Agent) ServiceByID(id string) *api.AgentService {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.services[id]; ok {
		c := *s
		return &c
	}
	return nil
}

// Check returns a copy of a check, or nil.
func (a *Agent) Check(id string) *api.AgentCheck {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.checks[id]; ok {
		cc := *c
		return &cc
	}
	return nil
}

// Register puts a service into the agent directly, as someone else would.
func (a *Agent) Register(s *api.AgentServiceRegistration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.register(s)
}

// call records a call and returns the error it fails with, if any. a.mu is held.
func (a *Agent) call(token, kind string, args ...string) error {
	rec := strings.TrimSpace(kind + " " + strings.Join(args, " "))
	if token != "" {
		rec += " @" + token
	}
	a.calls = append(a.calls, rec)
	if a.down != nil {
		return a.down
	}
	return a.fail[kind]
}

func (a *Agent) register(r *api.AgentServiceRegistration) {
	kind := r.Kind
	if kind == "" {
		kind = api.ServiceKindTypical
	}
	port := r.Port
	s := &api.AgentService{ID: r.ID, Service: r.Name, Kind: kind, Port: port, Address: r.Address,
		Tags: append([]string(nil), r.Tags...), Meta: map[string]string{}, Proxy: r.Proxy}
	for k, v := range r.Meta {
		s.Meta[k] = v
	}
	if s.ID == "" {
		s.ID = r.Name
	}
	a.services[s.ID] = s
	if r.Connect != nil && r.Connect.SidecarService != nil {
		sc := *r.Connect.SidecarService
		if sc.ID == "" {
			sc.ID = s.ID + "-sidecar-proxy"
		}
		if sc.Name == "" {
			sc.Name = r.Name + "-sidecar-proxy"
		}
		sc.Kind = api.ServiceKindConnectProxy
		if sc.Port == 0 {
			sc.Port = 21000
		}
		if len(sc.Tags) == 0 { // as Consul does: the sidecar takes the service's tags
			sc.Tags = r.Tags
		}
		a.register(&sc)
	}
	for _, c := range append(api.AgentServiceChecks{r.Check}, r.Checks...) {
		if c == nil || c.CheckID == "" {
			continue
		}
		if old, ok := a.checks[c.CheckID]; ok {
			old.ServiceID = s.ID
			continue // the agent keeps an existing check's status
		}
		status := c.Status
		if status == "" {
			status = api.HealthCritical
		}
		a.checks[c.CheckID] = &api.AgentCheck{CheckID: c.CheckID, Name: c.Name, Status: status, ServiceID: s.ID}
	}
}

// connectHealthy lists the sidecars of service ("<id>-sidecar-proxy",
// named "<service>-sidecar-proxy") whose parent's checks all pass: the alias
// check Consul gives a sidecar, with the servers always up to date.
func (a *Agent) connectHealthy(token, service string) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.call(token, "health", service); err != nil {
		return nil, err
	}
	var ids []string
	for id, s := range a.services {
		parent, ok := strings.CutSuffix(id, "-sidecar-proxy")
		if s.Kind != api.ServiceKindConnectProxy || s.Service != service+"-sidecar-proxy" || !ok {
			continue
		}
		passing := true
		for _, c := range a.checks {
			if c.ServiceID == parent && c.Status != api.HealthPassing {
				passing = false
			}
		}
		if passing {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

func (a *Agent) ping(token string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.call(token, "ping")
}

func (a *Agent) service(token, id string) (*api.AgentService, *api.QueryMeta, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.call(token, "service", id); err != nil {
		return nil, nil, err
	}
	s, ok := a.services[id]
	if !ok {
		return nil, nil, NotFound("service " + id)
	}
	c := *s
	return &c, &api.QueryMeta{}, nil
}

func (a *Agent) servicesFiltered(token, filter string) (map[string]*api.AgentService, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if filter != "" {
		return nil, fmt.Errorf("agenttest: filter %q not supported", filter)
	}
	if err := a.call(token, "services"); err != nil {
		return nil, err
	}
	out := map[string]*api.AgentService{}
	for id, s := range a.services {
		c := *s
		out[id] = &c
	}
	return out, nil
}

func (a *Agent) checksFiltered(token, filter string) (map[string]*api.AgentCheck, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.call(token, "checks"); err != nil {
		return nil, err
	}
	want := ""
	if filter != "" {
		// Only the one filter meshx sends: CheckID == "<id>".
		if _, err := fmt.Sscanf(filter, "CheckID == %q", &want); err != nil {
			return nil, fmt.Errorf("agenttest: filter %q not supported", filter)
		}
	}
	out := map[string]*api.AgentCheck{}
	for id, c := range a.checks {
		if want == "" || id == want {
			cc := *c
			out[id] = &cc
		}
	}
	return out, nil
}

func (a *Agent) serviceRegister(token string, s *api.AgentServiceRegistration) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	status := ""
	for _, c := range s.Checks {
		if c != nil && c.CheckID != "" && strings.HasPrefix(c.CheckID, "meshx-ttl:") {
			status = c.Status
		}
	}
	if err := a.call(token, "register", s.ID, status); err != nil {
		return err
	}
	a.register(s)
	return nil
}

func (a *Agent) serviceDeregister(token, id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.call(token, "deregister", id); err != nil {
		return err
	}
	if _, ok := a.services[id]; !ok {
		return NotFound("service " + id)
	}
	delete(a.services, id)
	for cid, c := range a.checks {
		if c.ServiceID == id {
			delete(a.checks, cid)
		}
	}
	return nil
}

func (a *Agent) updateTTL(token, checkID, output, status string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.call(token, "ttl", checkID, status); err != nil {
		return err
	}
	c, ok := a.checks[checkID]
	if !ok {
		return NotFound("check " + checkID)
	}
	c.Status, c.Output = status, output
	return nil
}

// ErrDown is a ready-made error for SetDown.
var ErrDown = errors.New("agenttest: connection refused")

// The register.Agent methods.

func (c *Client) Ping(context.Context) error { return c.a.ping(c.token) }
func (c *Client) Service(id string, _ *api.QueryOptions) (*api.AgentService, *api.QueryMeta, error) {
	return c.a.service(c.token, id)
}
func (c *Client) ServicesWithFilterOpts(f string, _ *api.QueryOptions) (map[string]*api.AgentService, error) {
	return c.a.servicesFiltered(c.token, f)
}
func (c *Client) ChecksWithFilterOpts(f string, _ *api.QueryOptions) (map[string]*api.AgentCheck, error) {
	return c.a.checksFiltered(c.token, f)
}
func (c *Client) ServiceRegisterOpts(s *api.AgentServiceRegistration, _ api.ServiceRegisterOpts) error {
	return c.a.serviceRegister(c.token, s)
}
func (c *Client) ServiceDeregisterOpts(id string, _ *api.QueryOptions) error {
	return c.a.serviceDeregister(c.token, id)
}
func (c *Client) ConnectHealthy(service string, _ *api.QueryOptions) ([]string, error) {
	return c.a.connectHealthy(c.token, service)
}
func (c *Client) UpdateTTLOpts(checkID, output, status string, _ *api.QueryOptions) error {
	return c.a.updateTTL(c.token, checkID, output, status)
}
