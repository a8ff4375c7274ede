package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/register"
)

// Diff is `meshx-init render --diff`: what `meshx-init run` would change in
// the agent, against what the agent holds now. For each rendered service (of
// names, or all) its action (register, update, unchanged, refused) and, for
// register and update, each field that differs; then the owned registrations
// a run would deregister. It changes nothing.
func Diff(ctx context.Context, env Env, names []string) error {
	l, err := Load(env, true)
	if err != nil {
		return err
	}
	cl, logout, err := agentClient(ctx, env, l.Global.Consul, 0)
	if err != nil {
		return err
	}
	defer logout()
	r := &register.Registrar{Agent: cl, Hostname: l.Hostname}
	for _, pl := range l.Plans {
		if len(names) > 0 && !slices.Contains(names, pl.Name) {
			continue
		}
		if err := diffPlan(ctx, env.Stdout, r, pl); err != nil {
			return err
		}
	}
	stale, err := staleServices(ctx, env, l, r)
	if err != nil {
		return err
	}
	for _, s := range stale {
		if len(names) == 0 || slices.Contains(names, s.Name) {
			fmt.Fprintf(env.Stdout, "%s (%s): deregister: an owned service %s\n", s.Name, s.ID, s.Reason)
		}
	}
	if len(l.Set.Broken) > 0 {
		for _, f := range slices.Sorted(maps.Keys(l.Set.Broken)) {
			fmt.Fprintf(env.Stdout, "%s: invalid; a run leaves its service as the agent has it\n", f)
		}
		return l.Set.Err()
	}
	return nil
}

// diffVerbs name what a run does for each Ensure result.
var diffVerbs = map[register.Result]string{
	register.Registered: "register",
	register.Updated:    "update",
	register.Unchanged:  "unchanged",
}

// diffPlan writes one service's action and changed fields.
func diffPlan(ctx context.Context, w io.Writer, r *register.Registrar, pl *plan.Plan) error {
	res, err := r.Would(ctx, pl, false)
	if errors.Is(err, register.ErrNotOwned) {
		fmt.Fprintf(w, "%s (%s): refused: registered by someone else (run --force takes it over)\n", pl.Name, pl.ID)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s (%s): %s\n", pl.Name, pl.ID, diffVerbs[res])
	if res == register.Unchanged {
		return nil
	}
	svc, err := r.Lookup(ctx, pl.ID)
	if err != nil {
		return err
	}
	side, err := r.Lookup(ctx, pl.SidecarID)
	if err != nil {
		return err
	}
	checks, err := r.Agent.ChecksWithFilterOpts(fmt.Sprintf("CheckID == %q", pl.CheckID), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("read check %s: %w", pl.CheckID, err)
	}
	have := agentView(svc, side, checks[pl.CheckID])
	want := planView(pl)
	if maps.Equal(have, want) {
		// The hash differs in what the view leaves out (the check's TTL or
		// notes, the proxy's expose paths, ...).
		fmt.Fprintf(w, "  ~ registration: differs in fields not listed here (meshx-init render shows it whole)\n")
		return nil
	}
	for _, k := range slices.Sorted(maps.Keys(mergeKeys(have, want))) {
		old, inAgent := have[k]
		now, inPlan := want[k]
		switch {
		case !inAgent:
			fmt.Fprintf(w, "  + %s: %s\n", k, now)
		case !inPlan:
			fmt.Fprintf(w, "  - %s: %s\n", k, old)
		case old != now:
			fmt.Fprintf(w, "  ~ %s: %s -> %s\n", k, old, now)
		}
	}
	return nil
}

func mergeKeys(a, b map[string]string) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// planView is what a run registers for pl, as the fields render --diff compares.
func planView(pl *plan.Plan) map[string]string {
	reg := pl.Registration
	v := map[string]string{"check": pl.CheckID}
	serviceView(v, "service", reg.Address, reg.Port, reg.Tags, reg.Meta)
	if reg.Connect != nil && reg.Connect.SidecarService != nil {
		sc := reg.Connect.SidecarService
		// The agent gives a sidecar without tags or meta its parent's.
		tags, meta := sc.Tags, sc.Meta
		if len(tags) == 0 {
			tags = reg.Tags
		}
		if len(meta) == 0 {
			meta = reg.Meta
		}
		serviceView(v, "sidecar", sc.Address, sc.Port, tags, meta)
		proxyView(v, sc.Proxy)
	}
	return v
}

// agentView is what the agent holds of a service, its sidecar and its check
// (each nil when absent), as the same fields.
func agentView(svc, side *api.AgentService, check *api.AgentCheck) map[string]string {
	v := map[string]string{}
	if check != nil {
		v["check"] = check.CheckID
	}
	if svc != nil {
		serviceView(v, "service", svc.Address, svc.Port, svc.Tags, svc.Meta)
	}
	if side != nil {
		serviceView(v, "sidecar", side.Address, side.Port, side.Tags, side.Meta)
		proxyView(v, side.Proxy)
	}
	return v
}

// serviceView adds one service's fields under prefix. meshx's hash of the
// registration is left out: it differs whenever anything else does.
func serviceView(v map[string]string, prefix, address string, port int, tags []string, meta map[string]string) {
	if address != "" {
		v[prefix+".address"] = address
	}
	v[prefix+".port"] = strconv.Itoa(port)
	if len(tags) > 0 {
		v[prefix+".tags"] = strings.Join(tags, ",")
	}
	for k, val := range meta {
		if k != plan.MetaHash {
			v[prefix+".meta."+k] = val
		}
	}
}

// proxyView adds a sidecar's proxy fields: the local service, the mode, the
// opaque config and one line per upstream.
func proxyView(v map[string]string, p *api.AgentServiceConnectProxyConfig) {
	if p == nil {
		return
	}
	v["sidecar.proxy.local_service"] = p.LocalServiceAddress + ":" + strconv.Itoa(p.LocalServicePort)
	if p.Mode != "" {
		v["sidecar.proxy.mode"] = string(p.Mode)
	}
	if len(p.Config) > 0 {
		b, _ := json.Marshal(p.Config) // map keys sorted: stable
		v["sidecar.proxy.config"] = string(b)
	}
	for _, u := range p.Upstreams {
		k := "sidecar.upstream." + u.DestinationName
		if u.Datacenter != "" {
			k += "@" + u.Datacenter
		}
		v[k] = u.LocalBindAddress + ":" + strconv.Itoa(u.LocalBindPort)
	}
}
