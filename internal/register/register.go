package register

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/plan"
)

// ErrNotOwned: the agent holds a service with this id that meshx on this host
// did not register. meshx refuses to touch it unless forced.
var ErrNotOwned = errors.New("service not owned by meshx on this host")

// Registrar registers plans with one agent, as one host.
type Registrar struct {
	Agent    Agent
	Hostname string // the owner recorded in each service's meta
}

// Result says what Ensure did.
type Result string

const (
	Registered Result = "registered" // was absent
	Updated    Result = "updated"    // present, but its registration changed or a part was missing
	Unchanged  Result = "unchanged"  // present and identical: nothing sent
)

// Owned reports whether a service in the agent was registered by meshx on this host.
func (r *Registrar) Owned(s *api.AgentService) bool {
	return s != nil && s.Meta[plan.MetaManaged] == "true" && s.Meta[plan.MetaHost] == r.Hostname
}

// Ensure registers pl unless the agent already holds exactly it. status is the
// TTL check's status to register with; "" keeps the check's current status
// (critical when it has none), so a changed registration does not flap the
// check. force takes over a service meshx does not own.
func (r *Registrar) Ensure(ctx context.Context, pl *plan.Plan, status string, force bool) (Result, error) {
	res, _, err := r.EnsureCheck(ctx, pl, status, force)
	return res, err
}

// EnsureCheck is Ensure that also says the TTL check's status in the agent
// afterwards ("" when unknown): the agent keeps an existing check's status
// across a registration, so a caller that needs it critical can tell whether
// it must write it.
func (r *Registrar) EnsureCheck(ctx context.Context, pl *plan.Plan, status string, force bool) (Result, string, error) {
	res, check, err := r.decide(ctx, pl, force)
	if err != nil {
		return "", "", err
	}
	if res == Unchanged {
		return Unchanged, check.Status, nil
	}
	if status == "" {
		status = api.HealthCritical
		if check != nil {
			status = check.Status
		}
	}
	after := status // a new check takes it; an existing one keeps its own
	if check != nil {
		after = check.Status
	}
	if err := r.Register(ctx, pl, status); err != nil {
		return "", "", err
	}
	return res, after, nil
}

// Would says what Ensure would do for pl (ErrNotOwned included), changing
// nothing: `meshx-init render --diff`.
func (r *Registrar) Would(ctx context.Context, pl *plan.Plan, force bool) (Result, error) {
	res, _, err := r.decide(ctx, pl, force)
	return res, err
}

// decide says what Ensure does for pl, and returns the TTL check the agent
// holds (nil when none).
func (r *Registrar) decide(ctx context.Context, pl *plan.Plan, force bool) (Result, *api.AgentCheck, error) {
	q := (&api.QueryOptions{}).WithContext(ctx)
	// Ask for this service, its sidecar and its check only: listing everything
	// for each of N services would cost O(N^2) at boot.
	cur, err := r.service(pl.ID, q)
	if err != nil {
		return "", nil, err
	}
	if cur == nil {
		return Registered, nil, nil
	}
	if !r.Owned(cur) && !force {
		return "", nil, fmt.Errorf("register %s: %w (meta %s=%q, %s=%q); use --force to take it over",
			pl.ID, ErrNotOwned, plan.MetaManaged, cur.Meta[plan.MetaManaged], plan.MetaHost, cur.Meta[plan.MetaHost])
	}
	checks, err := r.Agent.ChecksWithFilterOpts(fmt.Sprintf("CheckID == %q", pl.CheckID), q)
	if err != nil {
		return "", nil, fmt.Errorf("read check %s: %w", pl.CheckID, err)
	}
	check := checks[pl.CheckID]
	if check != nil && r.Owned(cur) && cur.Meta[plan.MetaHash] == pl.Hash {
		side, err := r.service(pl.SidecarID, q)
		if err != nil {
			return "", nil, err
		}
		if side != nil {
			return Unchanged, check, nil
		}
	}
	return Updated, check, nil
}

// Register sends pl to the agent whatever it holds, its TTL check with the
// given status (a new check takes it; the agent keeps an existing check's).
// Ensure is the idempotent form; this one is for when the registration must
// be renewed although unchanged (a rotated ACL token).
func (r *Registrar) Register(ctx context.Context, pl *plan.Plan, status string) error {
	reg := *pl.Registration
	reg.Checks = append(api.AgentServiceChecks{}, pl.Registration.Checks...)
	for i, c := range reg.Checks {
		if c.CheckID == pl.CheckID {
			cc := *c
			cc.Status = status
			reg.Checks[i] = &cc
		}
	}
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := r.Agent.ServiceRegisterOpts(&reg, opts); err != nil {
		return fmt.Errorf("register %s: %w", pl.ID, err)
	}
	return nil
}

// DeregisterOwned deregisters id (and its sidecar) only if the agent holds
// it as meshx's on this host: a stop must never remove what someone else
// registered under the same id.
func (r *Registrar) DeregisterOwned(ctx context.Context, id, sidecarID string) error {
	cur, err := r.service(id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	if cur != nil && !r.Owned(cur) {
		return nil
	}
	return r.Deregister(ctx, id, sidecarID)
}

// Lookup returns the agent's service id, or nil when it has none.
func (r *Registrar) Lookup(ctx context.Context, id string) (*api.AgentService, error) {
	return r.service(id, (&api.QueryOptions{}).WithContext(ctx))
}

// service returns the agent's service id, or nil when it has none.
func (r *Registrar) service(id string, q *api.QueryOptions) (*api.AgentService, error) {
	s, _, err := r.Agent.Service(id, q)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read agent service %s: %w", id, err)
	}
	return s, nil
}

// Deregister removes a service and its sidecar; absent ones are fine.
func (r *Registrar) Deregister(ctx context.Context, id, sidecarID string) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	for _, sid := range []string{sidecarID, id} {
		if sid == "" {
			continue
		}
		if err := r.Agent.ServiceDeregisterOpts(sid, q); err != nil && !IsNotFound(err) {
			return fmt.Errorf("deregister %s: %w", sid, err)
		}
	}
	return nil
}

// OwnedServices lists the (non-sidecar) services meshx on this host registered.
func (r *Registrar) OwnedServices(ctx context.Context) (map[string]*api.AgentService, error) {
	q := (&api.QueryOptions{}).WithContext(ctx)
	svcs, err := r.Agent.ServicesWithFilterOpts("", q)
	if err != nil {
		return nil, fmt.Errorf("list agent services: %w", err)
	}
	out := map[string]*api.AgentService{}
	for id, s := range svcs {
		if s.Kind == api.ServiceKindTypical && r.Owned(s) {
			out[id] = s
		}
	}
	return out, nil
}

// IsNotFound reports a 404 from the agent (unknown service or check).
func IsNotFound(err error) bool {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code == http.StatusNotFound
	}
	return false
}
