package sidecar

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/agenttest"
	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/register"
	"github.com/meshx/meshx/internal/state"
	"github.com/meshx/meshx/internal/testutil"
)

// fakeProxy is a Proxy that notes its steps among the agent's calls.
type fakeProxy struct {
	ag      *agenttest.Agent
	n       int // which start this is (1 = first)
	plan    *plan.Plan
	params  ProxyParams
	ports   []int // the public ports Accepting was told
	exited  chan error
	mu      sync.Mutex
	refuse  error // Accepting's answer
	stopped bool
}

func (p *fakeProxy) Start(context.Context) error {
	p.ag.Note(fmt.Sprintf("proxy start %d", p.n))
	p.params.OnState(ProxyState{State: "running", PID: 4240 + p.n})
	return nil
}
func (p *fakeProxy) Exited() <-chan error { return p.exited }
func (p *fakeProxy) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped {
		p.stopped = true
		p.ag.Note(fmt.Sprintf("proxy stop %d", p.n))
	}
}
func (p *fakeProxy) Accepting(ctx context.Context) error {
	port, err := p.params.PublicPort(ctx)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		return err
	}
	p.ports = append(p.ports, port)
	return p.refuse
}

// harness runs Run against a fake agent and fake proxies.
type harness struct {
	t        *testing.T
	ag       *agenttest.Agent
	dirs     state.Dirs
	o        Options
	cancel   context.CancelFunc
	done     chan error
	reload   chan struct{}
	mu       sync.Mutex
	proxies  []*fakeProxy
	notes    []string
	startErr error // the next NewProxy fails with it
	refuse   error // new proxies refuse with it
}

func lifecyclePlan(upstreams ...string) *plan.Plan {
	pl := &plan.Plan{Name: "web", ID: "web-h1", SidecarID: "web-h1-sidecar-proxy", SidecarPort: 21000,
		CheckID: "meshx-ttl:web-h1", Interval: plan.Duration(100 * time.Millisecond), Probe: "none",
		Proxy: plan.Proxy{Mode: config.ModeConnect, Argv: []string{"consul", "connect", "proxy", "-sidecar-for", "web-h1"}}}
	for _, u := range upstreams {
		pl.Upstreams = append(pl.Upstreams, plan.Upstream{Key: u, Name: u, Address: "127.0.0.1", Port: 9000 + len(pl.Upstreams)})
	}
	reg := &api.AgentServiceRegistration{ID: pl.ID, Name: pl.Name, Port: 8080,
		Meta:    map[string]string{plan.MetaManaged: "true", plan.MetaHost: "h1", plan.MetaName: "web"},
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{Port: 21000}},
		Checks:  api.AgentServiceChecks{{CheckID: pl.CheckID, Name: "meshx heartbeat", TTL: "1s"}}}
	pl.Hash = plan.Hash(reg)
	reg.Meta[plan.MetaHash] = pl.Hash
	pl.Registration = reg
	return pl
}

func newHarness(t *testing.T, pl *plan.Plan) *harness {
	t.Helper()
	h := &harness{t: t, ag: agenttest.New(), dirs: testDirs(t), reload: make(chan struct{}), done: make(chan error, 1)}
	h.savePlan(pl)
	h.o = Options{Dirs: h.dirs, Global: &config.Global{}, Service: pl.Name, Logger: testutil.Logger(t),
		Notify: h.notify, Reload: h.reload, Poll: 20 * time.Millisecond, StopTimeout: 2 * time.Second,
		Connect:  func(config.Consul) (register.Agent, error) { return h.ag.Client(""), nil },
		NewProxy: h.newProxy}
	return h
}

func (h *harness) savePlan(pl *plan.Plan) {
	h.t.Helper()
	if _, err := h.dirs.SavePlan(pl); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) notify(s string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notes = append(h.notes, s)
}

func (h *harness) newProxy(p ProxyParams) (Proxy, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.startErr; err != nil {
		h.startErr = nil
		return nil, err
	}
	fp := &fakeProxy{ag: h.ag, n: len(h.proxies) + 1, plan: p.Plan, params: p, exited: make(chan error, 1), refuse: h.refuse}
	h.proxies = append(h.proxies, fp)
	return fp, nil
}

func (h *harness) proxy(n int) *fakeProxy {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n > len(h.proxies) {
		return nil
	}
	return h.proxies[n-1]
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- Run(ctx, h.o) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			h.t.Error("Run did not return")
		}
	})
}

// stop cancels Run and returns its result.
func (h *harness) stop() error {
	h.t.Helper()
	h.cancel()
	return h.wait()
}

func (h *harness) wait() error {
	h.t.Helper()
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		h.t.Fatal("Run did not return")
		return nil
	}
}

// sendReload hands the loop a reload request (SIGHUP).
func (h *harness) sendReload() {
	h.t.Helper()
	select {
	case h.reload <- struct{}{}:
	case err := <-h.done:
		h.done <- err
		h.t.Fatalf("Run ended before a reload: %v", err)
	case <-time.After(10 * time.Second):
		h.t.Fatal("the loop took no reload")
	}
}

func (h *harness) waitReady() {
	h.t.Helper()
	testutil.Eventually(h.t, 10*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if !slices.Contains(h.notes, "READY=1") {
			return fmt.Errorf("no READY=1 in %q", h.notes)
		}
		return nil
	})
}

// waitCall waits for a call (or note) at or after index from.
func (h *harness) waitCall(from int, want string) int {
	h.t.Helper()
	var at int
	testutil.Eventually(h.t, 10*time.Second, func() error {
		calls := h.ag.Calls()
		for i := from; i < len(calls); i++ {
			if calls[i] == want {
				at = i
				return nil
			}
		}
		return fmt.Errorf("no %q after call %d in %q", want, from, calls)
	})
	return at
}

// events filters the calls down to those that change something (no reads,
// no pings), in order.
func events(calls []string) []string {
	var out []string
	for _, c := range calls {
		k, _, _ := strings.Cut(c, " ")
		if k != "service" && k != "services" && k != "checks" && k != "ping" {
			out = append(out, c)
		}
	}
	return out
}

// dedupe collapses runs of the same event (repeated heartbeats).
func dedupe(ev []string) []string { return slices.Compact(ev) }

func TestRunStartAndShutdownOrder(t *testing.T) {
	h := newHarness(t, lifecyclePlan())
	h.start()
	h.waitReady()
	st, ok := h.dirs.LoadStatus("web")
	if !ok || !st.Ready || st.Health != api.HealthPassing || st.ProxyPID != 4241 || st.ProxyState != "running" {
		t.Errorf("published status %+v, %v; want ready, passing, and the proxy's pid and state", st, ok)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil after a stop", err)
	}
	want := []string{
		"register web-h1 critical",        // registered with the check critical
		"proxy start 1",                   // then the data plane
		"ttl meshx-ttl:web-h1 passing",    // health written once it accepts
		"ttl meshx-ttl:web-h1 critical",   // stop: critical first,
		"proxy stop 1",                    // then the proxy,
		"deregister web-h1-sidecar-proxy", // then the sidecar
		"deregister web-h1",               // and the service
	}
	if got := dedupe(events(h.ag.Calls())); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}
	if c := h.ag.Check("meshx-ttl:web-h1"); c != nil {
		t.Errorf("check left in the agent: %+v", c)
	}
	if _, ok := h.dirs.LoadStatus("web"); ok {
		t.Error("status file left after stop")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	iReady, iStop := slices.Index(h.notes, "READY=1"), slices.Index(h.notes, "STOPPING=1")
	if iReady < 0 || iStop < iReady {
		t.Errorf("notifications %q: want READY=1 then STOPPING=1", h.notes)
	}
}

// TestRunHoldsReadyWhileNotAccepting: no READY and no passing write while
// the data plane does not accept.
func TestRunHoldsReadyWhileNotAccepting(t *testing.T) {
	h := newHarness(t, lifecyclePlan())
	h.refuse = errors.New("proxy not accepting on port 21000: connection refused")
	h.start()
	// Some beats go by (each asks the proxy), none of them passing.
	testutil.Eventually(t, 5*time.Second, func() error {
		st, _ := h.dirs.LoadStatus("web")
		if !strings.Contains(st.Output, "not accepting") {
			return fmt.Errorf("status output %q", st.Output)
		}
		return nil
	})
	for _, c := range h.ag.Calls() {
		if strings.HasPrefix(c, "ttl ") {
			t.Errorf("a health was written while starting and not accepting: %q (critical is held back)", c)
		}
	}
	p := h.proxy(1)
	p.mu.Lock()
	p.refuse = nil
	p.mu.Unlock()
	h.waitReady()
}

func TestRunReregistersWhenTheAgentLostIt(t *testing.T) {
	h := newHarness(t, lifecyclePlan())
	h.start()
	h.waitReady()
	from := len(h.ag.Calls())
	h.ag.Forget() // the agent restarted
	i := h.waitCall(from, "register web-h1 passing")
	h.waitCall(i, "ttl meshx-ttl:web-h1 passing")
	if s := h.ag.ServiceByID("web-h1-sidecar-proxy"); s == nil {
		t.Error("the sidecar was not registered again")
	}
	if c := h.ag.Check("meshx-ttl:web-h1"); c == nil || c.Status != api.HealthPassing {
		t.Errorf("check after re-registration: %+v, want passing", c)
	}
}

// useTokenFile gives h a token file holding "old", and an agent whose calls
// carry the token the file holds when meshx-proxy connects; it returns the
// file.
func useTokenFile(t *testing.T, h *harness) string {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.o.Global.Consul.TokenFile = tokenFile
	h.o.Connect = func(c config.Consul) (register.Agent, error) {
		b, err := os.ReadFile(c.TokenFile)
		return h.ag.Client(strings.TrimSpace(string(b))), err
	}
	return tokenFile
}

func TestRunRotatesToken(t *testing.T) {
	pl := lifecyclePlan()
	h := newHarness(t, pl)
	tokenFile := useTokenFile(t, h)
	h.start()
	h.waitReady()
	from := len(h.ag.Calls())
	if err := os.WriteFile(tokenFile, []byte("new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered again with the new token, then the proxy restarted (it got
	// the old token at its start), then heartbeats with the new token.
	i := h.waitCall(from, "register web-h1 passing @new")
	i = h.waitCall(i, "proxy stop 1")
	i = h.waitCall(i, "proxy start 2")
	h.waitCall(i, "ttl meshx-ttl:web-h1 passing @new")
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	tail := h.ag.Calls()[i:]
	for _, c := range tail {
		if strings.HasSuffix(c, "@old") {
			t.Errorf("a call with the old token after the rotation: %q", c)
		}
	}
	if !slices.Contains(tail, "deregister web-h1 @new") {
		t.Errorf("no deregistration with the new token in %q", tail)
	}
}

func TestRunTokenFileEmptiedIsNoRotation(t *testing.T) {
	h := newHarness(t, lifecyclePlan())
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.o.Global.Consul.TokenFile = tokenFile
	h.start()
	h.waitReady()
	if err := os.WriteFile(tokenFile, nil, 0o600); err != nil { // a rotation in progress
		t.Fatal(err)
	}
	// Polls go by (every 20ms; beats every 100ms) with no rotation.
	from := len(h.ag.Calls())
	i := h.waitCall(from, "ttl meshx-ttl:web-h1 passing")
	h.waitCall(i+1, "ttl meshx-ttl:web-h1 passing")
	if h.proxy(2) != nil {
		t.Error("an empty token file restarted the proxy")
	}
}

func TestRunReloadUpstreams(t *testing.T) {
	h := newHarness(t, lifecyclePlan("db", "cache"))
	h.start()
	h.waitReady()

	t.Run("added: registered, proxy kept", func(t *testing.T) {
		pl := lifecyclePlan("db", "cache", "billing")
		pl.Registration.Tags = []string{"v2"} // a changed registration
		pl.Hash = plan.Hash(pl.Registration)
		pl.Registration.Meta[plan.MetaHash] = pl.Hash
		from := len(h.ag.Calls()) // before the save: an earlier reload may already see it
		h.savePlan(pl)
		h.sendReload()
		h.waitCall(from, "register web-h1 passing")
		if got := h.ag.ServiceByID("web-h1"); got == nil || !slices.Equal(got.Tags, []string{"v2"}) {
			t.Errorf("agent holds %+v, want the reloaded registration", got)
		}
		h.sendReload() // taking a second reload means the first was handled
		if h.proxy(2) != nil {
			t.Error("adding an upstream restarted the proxy")
		}
	})
	t.Run("removed: proxy restarted", func(t *testing.T) {
		from := len(h.ag.Calls())
		h.savePlan(lifecyclePlan("db"))
		h.sendReload()
		i := h.waitCall(from, "proxy stop 1")
		h.waitCall(i, "proxy start 2")
		if p := h.proxy(2); len(p.plan.Upstreams) != 1 {
			t.Errorf("restarted proxy got upstreams %+v, want db only", p.plan.Upstreams)
		}
	})
	t.Run("command changed: proxy restarted", func(t *testing.T) {
		pl := lifecyclePlan("db")
		pl.Proxy.Argv = append(pl.Proxy.Argv, "-log-level", "debug")
		from := len(h.ag.Calls()) // before the save: an earlier reload may already see it
		h.savePlan(pl)
		h.sendReload()
		h.waitCall(from, "proxy start 3")
	})
	t.Run("unreadable plan: kept running", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(h.dirs.State, "services", "web.json"), []byte("{"), 0o644); err != nil {
			t.Fatal(err)
		}
		h.sendReload()
		h.sendReload()
		select {
		case err := <-h.done:
			t.Fatalf("Run ended: %v", err)
		default:
		}
	})
	t.Run("id changed: old id deregistered, run ends", func(t *testing.T) {
		pl := lifecyclePlan("db")
		pl.ID = "web-h2"
		h.savePlan(pl)
		select { // the previous subtest's last reload may already have read it
		case h.reload <- struct{}{}:
		case err := <-h.done:
			h.done <- err
		}
		if err := h.wait(); !errors.Is(err, errIDChanged) {
			t.Fatalf("Run = %v, want errIDChanged", err)
		}
		if h.ag.ServiceByID("web-h1") != nil {
			t.Error("old id still registered")
		}
	})
}

func TestRunProxyGivesUp(t *testing.T) {
	h := newHarness(t, lifecyclePlan())
	h.start()
	h.waitReady()
	gaveUp := errors.New("supervise proxy: gave up restarting after 5 restarts")
	h.proxy(1).exited <- gaveUp
	err := h.wait()
	if !errors.Is(err, gaveUp) {
		t.Fatalf("Run = %v, want the proxy's error", err)
	}
	calls := dedupe(events(h.ag.Calls()))
	tail := calls[slices.Index(calls, "ttl meshx-ttl:web-h1 passing")+1:]
	// The check goes critical, the proxy is stopped, and the registration
	// stays (critical) for the restarted unit to pick up.
	if want := []string{"ttl meshx-ttl:web-h1 critical", "proxy stop 1"}; !slices.Equal(tail, want) {
		t.Errorf("after giving up:\n got %q\nwant %q", tail, want)
	}
	if c := h.ag.Check("meshx-ttl:web-h1"); c == nil || c.Status != api.HealthCritical || !strings.Contains(c.Output, "gave up") {
		t.Errorf("check %+v, want critical saying why", c)
	}
}

func TestRunProxyFailsToStart(t *testing.T) {
	h := newHarness(t, lifecyclePlan())
	boom := fmt.Errorf("%w: proxy.user: unknown user", ErrConfig)
	h.startErr = boom
	h.start()
	if err := h.wait(); !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the start error", err)
	}
}

// TestRunResetsALeftPassingCheck: a check a killed meshx-proxy left passing
// is made critical before anything else is written.
func TestRunResetsALeftPassingCheck(t *testing.T) {
	pl := lifecyclePlan()
	h := newHarness(t, pl)
	reg := *pl.Registration
	reg.Checks = api.AgentServiceChecks{{CheckID: pl.CheckID, TTL: "1s", Status: api.HealthPassing}}
	h.ag.Register(&reg)
	h.start()
	h.waitReady()
	got := dedupe(events(h.ag.Calls()))
	if want := []string{"ttl meshx-ttl:web-h1 critical", "proxy start 1", "ttl meshx-ttl:web-h1 passing"}; !slices.Equal(got[:3], want) {
		t.Errorf("calls %q, want them to begin %q", got, want)
	}
}

// TestRunStoppedWhileWaitingForTheAgent: a stop while the agent is down
// still ends cleanly, with nothing started.
func TestRunStoppedWhileWaitingForTheAgent(t *testing.T) {
	h := newHarness(t, lifecyclePlan())
	h.ag.SetDown(agenttest.ErrDown)
	h.start()
	h.waitCall(0, "ping")
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if h.proxy(1) != nil {
		t.Error("a proxy was started with no agent")
	}
}

func TestRunNotOwned(t *testing.T) {
	pl := lifecyclePlan()
	h := newHarness(t, pl)
	h.ag.Register(&api.AgentServiceRegistration{ID: pl.ID, Name: "web", Meta: map[string]string{plan.MetaManaged: "true", plan.MetaHost: "other"}})
	h.start()
	if err := h.wait(); !errors.Is(err, register.ErrNotOwned) {
		t.Fatalf("Run = %v, want ErrNotOwned", err)
	}
	if h.proxy(1) != nil || h.ag.ServiceByID(pl.ID).Meta[plan.MetaHost] != "other" {
		t.Error("someone else's service was touched")
	}
}

func TestRunOptions(t *testing.T) {
	dirs := testDirs(t)
	cases := []struct {
		name string
		o    Options
		want []string
	}{
		{"empty", Options{}, []string{"Dirs.State", "Dirs.Runtime", "Global", "Service"}},
		{"no service", Options{Dirs: dirs, Global: &config.Global{}}, []string{"Service"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(context.Background(), tc.o)
			if !errors.Is(err, ErrMissingOption) || !errors.Is(err, ErrConfig) {
				t.Fatalf("Run = %v, want ErrMissingOption and ErrConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
	t.Run("no plan", func(t *testing.T) {
		err := Run(context.Background(), Options{Dirs: dirs, Global: &config.Global{}, Service: "web"})
		if !errors.Is(err, ErrConfig) || errors.Is(err, ErrMissingOption) {
			t.Errorf("Run = %v, want ErrConfig", err)
		}
	})
	t.Run("transparent without a rule backend", func(t *testing.T) {
		h := newHarness(t, func() *plan.Plan { pl := lifecyclePlan(); pl.Transparent = &config.Transparent{}; return pl }())
		if err := Run(context.Background(), h.o); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "rule backend") {
			t.Errorf("Run = %v, want ErrConfig about the rule backend", err)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		o, err := Options{Dirs: dirs, Global: &config.Global{}, Service: "web"}.withDefaults()
		if err != nil || o.Logger == nil || o.Notify == nil || o.Connect == nil || o.NewProxy == nil ||
			o.StopTimeout != 5*time.Second || o.ProxyStopTimeout != 10*time.Second || o.Poll != time.Second {
			t.Errorf("withDefaults = %+v, %v", o, err)
		}
	})
}

// TestRunPublicPortFromTheAgent: a plan without a pinned public port (from
// an older meshx) uses the port the agent assigned, asked once.
func TestRunPublicPortFromTheAgent(t *testing.T) {
	pl := lifecyclePlan()
	pl.SidecarPort = 0
	h := newHarness(t, pl)
	h.start()
	h.waitReady()
	p := h.proxy(1)
	p.mu.Lock()
	ports := slices.Clone(p.ports)
	p.mu.Unlock()
	if len(ports) == 0 || ports[0] != 21000 {
		t.Errorf("public ports %v, want the agent's 21000", ports)
	}
	if n := slices.Index(h.ag.Calls(), "service web-h1-sidecar-proxy"); n < 0 {
		t.Error("the agent was not asked for the sidecar's port")
	}
	asked := 0
	for _, c := range h.ag.Calls() {
		if c == "service web-h1-sidecar-proxy" {
			asked++
		}
	}
	// Once by the registration's check, once for the port: then cached.
	if asked > 2 {
		t.Errorf("the sidecar's port was asked %d times; want it cached", asked)
	}
}

// tokenFollowingProxy takes a new token in place, as the native plane does.
type tokenFollowingProxy struct{ *fakeProxy }

func (p tokenFollowingProxy) TokenChanged(c config.Consul) error {
	b, err := os.ReadFile(c.TokenFile)
	p.ag.Note("proxy token " + strings.TrimSpace(string(b)))
	return err
}

// TestRunTokenInPlace: a data plane that follows tokens in place (native)
// gets the new token and is not restarted.
func TestRunTokenInPlace(t *testing.T) {
	h := newHarness(t, lifecyclePlan())
	tokenFile := useTokenFile(t, h)
	h.o.NewProxy = func(p ProxyParams) (Proxy, error) {
		fp, err := h.newProxy(p)
		return tokenFollowingProxy{fp.(*fakeProxy)}, err
	}
	h.start()
	h.waitReady()
	from := len(h.ag.Calls())
	if err := os.WriteFile(tokenFile, []byte("new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	i := h.waitCall(from, "register web-h1 passing @new")
	i = h.waitCall(i, "proxy token new")
	h.waitCall(i, "ttl meshx-ttl:web-h1 passing @new")
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if h.proxy(2) != nil {
		t.Errorf("the data plane was restarted for a new token")
	}
}
