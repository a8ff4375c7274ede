package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/systemd"
)

// Row is one service in `meshx-init status`.
type Row struct {
	Service   string          `json:"service"`
	ID        string          `json:"id"`
	Port      int             `json:"port"`
	Upstreams []plan.Upstream `json:"upstreams,omitempty"`
	Metrics   string          `json:"metrics,omitempty"` // where meshx-proxy serves Prometheus metrics
	Check     string          `json:"check"`
	Output    string          `json:"output,omitempty"`
	PID       int             `json:"meshx_proxy_pid,omitempty"`
	ProxyPID  int             `json:"proxy_pid,omitempty"`
	Restarts  int             `json:"restarts"`
	Ready     bool            `json:"ready"`
}

// Status lists every service meshx owns here: its ports, its check in the
// agent and its meshx-proxy's published state.
func Status(ctx context.Context, env Env, asJSON bool) error {
	g, err := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
	if err != nil {
		return err
	}
	names, err := env.Dirs.PlanNames()
	if err != nil {
		return err
	}
	checks := map[string]*api.AgentCheck{}
	agentErr := ""
	if cl, logout, err := agentClient(ctx, env, g.Consul, 0); err != nil {
		agentErr = err.Error()
	} else {
		if checks, err = CheckStatus(ctx, cl); err != nil {
			agentErr = err.Error()
			checks = map[string]*api.AgentCheck{}
		}
		logout()
	}
	rows := []Row{} // "[]", not "null", in JSON when meshx owns nothing
	for _, n := range names {
		pl, err := env.Dirs.LoadPlan(n)
		if err != nil {
			return err
		}
		r := Row{Service: pl.Name, ID: pl.ID, Port: pl.Port, Upstreams: pl.Upstreams, Metrics: pl.MetricsAddress, Check: "absent"}
		if c := checks[pl.CheckID]; c != nil {
			r.Check, r.Output = c.Status, c.Output
		} else if agentErr != "" {
			r.Check = "unknown (agent: " + agentErr + ")"
		}
		if st, ok := env.Dirs.LoadStatus(pl.Name); ok {
			r.PID, r.ProxyPID, r.Restarts, r.Ready = st.PID, st.ProxyPID, st.Restarts, st.Ready
		}
		rows = append(rows, r)
	}
	if asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tID\tPORT\tUPSTREAMS\tMETRICS\tCHECK\tMESHX-PROXY\tPROXY PID\tRESTARTS")
	for _, r := range rows {
		ups := make([]string, len(r.Upstreams))
		for i, u := range r.Upstreams {
			ups[i] = u.Name + "=" + strconv.Itoa(u.Port)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\n", r.Service, r.ID, r.Port, orDash(strings.Join(ups, ",")),
			orDash(r.Metrics), r.Check, pidText(r.PID), pidText(r.ProxyPID), r.Restarts)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func pidText(p int) string {
	if p == 0 {
		return "-"
	}
	return strconv.Itoa(p)
}

// ErrUnknownService: no plan for that name.
var ErrUnknownService = errors.New("unknown service")

// Stop stops one service: its unit (systemd) or its meshx-proxy (foreground)
// stops the proxy and deregisters; if none runs, meshx deregisters it here.
// Its ports stay allocated, so the next run brings it back on the same ports.
func Stop(ctx context.Context, env Env, name string) error {
	pl, err := env.Dirs.LoadPlan(name)
	if err != nil {
		return fmt.Errorf("%w %q: %v", ErrUnknownService, name, err)
	}
	if systemd.Available() {
		if err := systemd.StopUnit(ctx, name); err != nil {
			return err
		}
	} else {
		stopProxy(ctx, env, name)
	}
	g, err := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
	if err != nil {
		return err
	}
	cl, logout, err := agentClient(ctx, env, g.Consul, 0)
	if err != nil {
		return err
	}
	defer logout()
	r := &register.Registrar{Agent: cl, Hostname: pl.Registration.Meta[plan.MetaHost]}
	if err := r.Deregister(ctx, pl.ID, pl.SidecarID); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s\t%s\tstopped and deregistered\n", pl.Name, pl.ID)
	return nil
}
