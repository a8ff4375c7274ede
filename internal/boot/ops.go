package boot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/netns"
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
	// Netns is the service's network namespace (network.namespace), with
	// its address and whether it is there now.
	Netns *NetnsRow `json:"netns,omitempty"`
}

// NetnsRow is a service's network namespace in `meshx-init status`.
type NetnsRow struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	Published []int  `json:"published"`
	Present   bool   `json:"present"`
}

func (n *NetnsRow) String() string {
	if n == nil {
		return "-"
	}
	s := n.Name + "/" + n.Address
	if !n.Present {
		s += " (absent)"
	}
	return s
}

// StatusOptions say how `meshx-init status` shows the services.
type StatusOptions struct {
	JSON  bool // JSON instead of a table
	Color bool // colour each check's status (the output is a terminal that wants it)
	// Watch, when positive, refreshes the output at this interval until ctx
	// ends; zero shows it once.
	Watch time.Duration
	// Clear clears the screen before each refresh (the output is a
	// terminal); otherwise refreshes follow each other, a blank line apart.
	Clear bool
}

// Status shows every service meshx owns here: its ports, its check in the
// agent and its meshx-proxy's published state; with o.Watch, again and again
// until ctx ends (which is no error).
func Status(ctx context.Context, env Env, o StatusOptions) error {
	var ag statusAgent // one login for every refresh, logged out at the end
	defer ag.close()
	for first := true; ; first = false {
		rows, err := ag.rows(ctx, env)
		if err != nil {
			return err
		}
		switch {
		case o.Watch > 0 && o.Clear:
			fmt.Fprintf(env.Stdout, "%s%s every %s (Ctrl-C ends)\n\n", clearScreen, time.Now().Format(time.TimeOnly), o.Watch)
		case o.Watch > 0 && !first:
			fmt.Fprintln(env.Stdout)
		}
		if err := WriteStatus(env.Stdout, rows, o); err != nil {
			return err
		}
		if o.Watch <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.Watch):
		}
	}
}

// clearScreen moves the cursor home and clears a terminal (ECMA-48).
const clearScreen = "\x1b[H\x1b[2J"

// statusAgent keeps Status's agent client across refreshes while meshx.yaml's
// consul section stays the same: with consul.login, --watch logs in once,
// not at every refresh.
type statusAgent struct {
	c      config.Consul
	cl     register.Agent
	logout func()
}

func (a *statusAgent) get(ctx context.Context, env Env, c config.Consul) (register.Agent, error) {
	if a.cl != nil && reflect.DeepEqual(a.c, c) {
		return a.cl, nil
	}
	a.close()
	cl, logout, err := agentClient(ctx, env, c, 0)
	if err != nil {
		return nil, err
	}
	a.c, a.cl, a.logout = c, cl, logout
	return cl, nil
}

func (a *statusAgent) close() {
	if a.logout != nil {
		a.logout()
	}
	a.cl, a.logout = nil, nil
}

// StatusRows reads the status of every service meshx owns here.
func StatusRows(ctx context.Context, env Env) ([]Row, error) {
	var ag statusAgent
	defer ag.close()
	return ag.rows(ctx, env)
}

func (a *statusAgent) rows(ctx context.Context, env Env) ([]Row, error) {
	g, err := config.LoadGlobal(config.ConfigPath(env.Dirs.Config))
	if err != nil {
		return nil, err
	}
	names, err := env.Dirs.PlanNames()
	if err != nil {
		return nil, err
	}
	checks := map[string]*api.AgentCheck{}
	agentErr := ""
	if cl, err := a.get(ctx, env, g.Consul); err != nil {
		agentErr = err.Error()
	} else if checks, err = CheckStatus(ctx, cl); err != nil {
		agentErr = err.Error()
		checks = map[string]*api.AgentCheck{}
		a.close() // a refused token: log in again next time
	}
	rows := []Row{} // "[]", not "null", in JSON when meshx owns nothing
	for _, n := range names {
		pl, err := env.Dirs.LoadPlan(n)
		if err != nil {
			return nil, err
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
		if n := pl.Netns; n != nil {
			r.Netns = &NetnsRow{Name: netns.Name(pl.Name), Address: n.Address.String(), Present: netns.Exists(pl.Name)}
			for _, p := range n.Publish {
				r.Netns.Published = append(r.Netns.Published, p.HostPort)
			}
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// checkColors are the SGR colours of the check states: green, yellow, red.
var checkColors = map[string]string{
	api.HealthPassing:  "\x1b[32m",
	api.HealthWarning:  "\x1b[33m",
	api.HealthCritical: "\x1b[31m",
}

const colorReset = "\x1b[0m"

// WriteStatus writes rows as JSON or as a table, its CHECK column coloured
// when o.Color.
func WriteStatus(w io.Writer, rows []Row, o StatusOptions) error {
	if o.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	var buf bytes.Buffer
	// The NETNS column shows only on hosts with a namespaced service.
	withNetns := slices.ContainsFunc(rows, func(r Row) bool { return r.Netns != nil })
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	head := "SERVICE\tID\tPORT\tUPSTREAMS\tMETRICS\tCHECK\tMESHX-PROXY\tPROXY PID\tRESTARTS"
	if withNetns {
		head += "\tNETNS"
	}
	fmt.Fprintln(tw, head)
	for _, r := range rows {
		ups := make([]string, len(r.Upstreams))
		for i, u := range r.Upstreams {
			ups[i] = u.Name + "=" + strconv.Itoa(u.Port)
		}
		line := fmt.Sprintf("%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d", r.Service, r.ID, r.Port, orDash(strings.Join(ups, ",")),
			orDash(r.Metrics), r.Check, pidText(r.PID), pidText(r.ProxyPID), r.Restarts)
		if withNetns {
			line += "\t" + r.Netns.String()
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	table := buf.String()
	if o.Color {
		table = colorChecks(table, rows)
	}
	_, err := io.WriteString(w, table)
	return err
}

// colorChecks colours each row's check state in a laid-out table, after the
// layout, so the escape codes do not count as width.
func colorChecks(table string, rows []Row) string {
	lines := strings.SplitAfter(table, "\n")
	col := strings.Index(lines[0], "CHECK")
	for i, r := range rows {
		l := lines[i+1]
		c, ok := checkColors[r.Check]
		if !ok || !strings.HasPrefix(l[min(col, len(l)):], r.Check+" ") {
			continue
		}
		lines[i+1] = l[:col] + c + r.Check + colorReset + l[col+len(r.Check):]
	}
	return strings.Join(lines, "")
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
