package systemd

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

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"

	"github.com/meshx/meshx/internal/atomicfile"
)

// fakeBus is a tiny systemd: units have an ActiveState, start/stop/restart jobs
// finish at once with result[unit] (default "done"), or never when that is "hang".
type fakeBus struct {
	mu      sync.Mutex
	state   map[string]string   // ActiveState; missing = inactive
	after   map[string][]string // After= of a unit
	result  map[string]string
	enabled map[string]bool
	self    string // unit of the calling PID
	calls   []string
}

func newFakeBus() *fakeBus {
	return &fakeBus{state: map[string]string{}, after: map[string][]string{}, result: map[string]string{}, enabled: map[string]bool{}}
}

func (b *fakeBus) log(format string, a ...any) { b.calls = append(b.calls, fmt.Sprintf(format, a...)) }

func (b *fakeBus) ListUnitsByPatternsContext(_ context.Context, states, patterns []string) ([]sdbus.UnitStatus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []sdbus.UnitStatus
	for u, s := range b.state {
		if ok, _ := filepath.Match(patterns[0], u); ok {
			out = append(out, sdbus.UnitStatus{Name: u, ActiveState: s})
		}
	}
	return out, nil
}

func (b *fakeBus) GetUnitPropertyContext(_ context.Context, u, p string) (*sdbus.Property, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch p {
	case "ActiveState":
		s := b.state[u]
		if s == "" {
			s = "inactive"
		}
		return &sdbus.Property{Name: p, Value: dbus.MakeVariant(s)}, nil
	case "After":
		return &sdbus.Property{Name: p, Value: dbus.MakeVariant(append([]string{}, b.after[u]...))}, nil
	}
	return nil, fmt.Errorf("fake has no property %s", p)
}

func (b *fakeBus) GetUnitNameByPID(context.Context, uint32) (string, error) {
	if b.self == "" {
		return "", errors.New("no unit for pid")
	}
	return b.self, nil
}

func (b *fakeBus) EnableUnitFilesContext(_ context.Context, files []string, runtime, force bool) (bool, []sdbus.EnableUnitFileChange, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ch []sdbus.EnableUnitFileChange
	for _, f := range files {
		if !b.enabled[f] {
			b.enabled[f] = true
			ch = append(ch, sdbus.EnableUnitFileChange{Type: "symlink", Filename: f})
		}
	}
	b.log("enable %s", strings.Join(files, ","))
	return true, ch, nil
}

func (b *fakeBus) DisableUnitFilesContext(_ context.Context, files []string, runtime bool) ([]sdbus.DisableUnitFileChange, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range files {
		delete(b.enabled, f)
	}
	b.log("disable %s", strings.Join(files, ","))
	return nil, nil
}

func (b *fakeBus) ReloadContext(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log("reload")
	return nil
}

func (b *fakeBus) job(verb, u string, ch chan<- string, final string) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log("%s %s", verb, u)
	res := b.result[u]
	if res == "" {
		res = "done"
	}
	if res == "hang" {
		return 1, nil
	}
	if res == "done" && !(verb == "stop" && b.state[u] == "failed") { // stop leaves "failed" as is
		b.state[u] = final
	} else if verb != "stop" {
		b.state[u] = "failed"
	}
	ch <- res
	return 1, nil
}

func (b *fakeBus) StartUnitContext(_ context.Context, u, mode string, ch chan<- string) (int, error) {
	return b.job("start", u, ch, "active")
}

func (b *fakeBus) StopUnitContext(_ context.Context, u, mode string, ch chan<- string) (int, error) {
	return b.job("stop", u, ch, "inactive")
}

func (b *fakeBus) ReloadOrRestartUnitContext(_ context.Context, u, mode string, ch chan<- string) (int, error) {
	return b.job("reload-or-restart", u, ch, "active")
}

func (b *fakeBus) RestartUnitContext(_ context.Context, u, mode string, ch chan<- string) (int, error) {
	return b.job("restart", u, ch, "active")
}

func (b *fakeBus) ResetFailedUnitContext(_ context.Context, u string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.log("reset-failed %s", u)
	if b.state[u] == "failed" {
		b.state[u] = "inactive"
	}
	return nil
}

type env struct {
	bus     *fakeBus
	unitDir string
	runDir  string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	return &env{bus: newFakeBus(), unitDir: filepath.Join(root, "etc"), runDir: filepath.Join(root, "run")}
}

func (e *env) reconcile(t *testing.T, want ...Instance) ([]Action, error) {
	t.Helper()
	e.bus.calls = nil
	return ReconcileWith(context.Background(), want, Options{
		Bus: e.bus, UnitDir: e.unitDir, RuntimeDir: e.runDir, JobTimeout: 2 * time.Second,
	})
}

func (e *env) dropIn(service string) string {
	return filepath.Join(e.runDir, UnitName(service)+".d", dropInName)
}

func did(actions []Action) []string {
	var out []string
	for _, a := range actions {
		out = append(out, a.Service+": "+a.Did)
	}
	return out
}

func wantCalls(t *testing.T, b *fakeBus, want ...string) {
	t.Helper()
	if !slices.Equal(b.calls, want) {
		t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(b.calls, "\n  "), strings.Join(want, "\n  "))
	}
}

func wantDid(t *testing.T, actions []Action, want ...string) {
	t.Helper()
	if got := did(actions); !slices.Equal(got, want) {
		t.Errorf("actions %q, want %q", got, want)
	}
}

func TestReconcileFreshStart(t *testing.T) {
	e := newEnv(t)
	actions, err := e.reconcile(t, Instance{Service: "web"}, Instance{Service: "client", TransparentProxy: true})
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "client: started", "web: started")
	wantCalls(t, e.bus,
		`enable meshx-proxy@client.service,meshx-proxy@web.service`,
		"reload",
		"start meshx-proxy@client.service",
		"start meshx-proxy@web.service")
	got, err := os.ReadFile(e.dropIn("client"))
	if err != nil || string(got) != tpDropIn() {
		t.Errorf("client drop-in: %q, %v", got, err)
	}
	if _, err := os.Stat(e.dropIn("web")); !os.IsNotExist(err) {
		t.Errorf("web has a drop-in without transparent proxy: %v", err)
	}
}

func TestReconcileIsANoopTheSecondTime(t *testing.T) {
	e := newEnv(t)
	want := []Instance{{Service: "web"}, {Service: "client", TransparentProxy: true}}
	if _, err := e.reconcile(t, want...); err != nil {
		t.Fatal(err)
	}
	actions, err := e.reconcile(t, want...)
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "client: already active", "web: already active")
	wantCalls(t, e.bus, `enable meshx-proxy@client.service,meshx-proxy@web.service`)
}

func TestReconcileRetiresWhatIsGone(t *testing.T) {
	e := newEnv(t)
	e.bus.state[UnitName("old")] = "active"
	e.bus.state[UnitName("dead")] = "inactive" // loaded, stopped, not enabled: nothing to do
	e.bus.state[UnitName("broken")] = "failed"
	// enabled on disk but not loaded, with a drop-in
	gone := filepath.Join(e.unitDir, "multi-user.target.wants", UnitName("gone-svc"))
	if err := os.MkdirAll(filepath.Dir(gone), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/lib/systemd/system/meshx-proxy@.service", gone); err != nil {
		t.Fatal(err)
	}
	if _, err := atomicfile.Write(e.dropIn("gone-svc"), []byte(tpDropIn()), 0o644); err != nil {
		t.Fatal(err)
	}
	actions, err := e.reconcile(t, Instance{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "broken: stopped+disabled", "gone-svc: stopped+disabled", "old: stopped+disabled", "web: started")
	wantCalls(t, e.bus,
		"stop meshx-proxy@broken.service", "disable meshx-proxy@broken.service", "reset-failed meshx-proxy@broken.service",
		`stop meshx-proxy@gone\x2dsvc.service`, `disable meshx-proxy@gone\x2dsvc.service`,
		"stop meshx-proxy@old.service", "disable meshx-proxy@old.service",
		"enable meshx-proxy@web.service", "reload", "start meshx-proxy@web.service")
	if _, err := os.Stat(filepath.Dir(e.dropIn("gone-svc"))); !os.IsNotExist(err) {
		t.Errorf("drop-in directory of a gone service still there: %v", err)
	}
}

func TestReconcileKeepsForeignDropIns(t *testing.T) {
	e := newEnv(t)
	e.bus.state[UnitName("old")] = "active"
	if _, err := atomicfile.Write(e.dropIn("old"), []byte(tpDropIn()), 0o644); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(filepath.Dir(e.dropIn("old")), "10-admin.conf")
	if err := os.WriteFile(mine, []byte("[Service]\nNice=5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reconcile(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("an administrator's drop-in was removed: %v", err)
	}
	if _, err := os.Stat(e.dropIn("old")); !os.IsNotExist(err) {
		t.Errorf("meshx drop-in kept: %v", err)
	}
}

func TestReconcileTransparentProxyOffStopsBeforeRemoving(t *testing.T) {
	e := newEnv(t)
	if _, err := e.reconcile(t, Instance{Service: "web", TransparentProxy: true}); err != nil {
		t.Fatal(err)
	}
	actions, err := e.reconcile(t, Instance{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "web: restarted")
	// stopped while the drop-in (CAP_NET_ADMIN for ExecStopPost) is still in force
	wantCalls(t, e.bus, "stop meshx-proxy@web.service", "enable meshx-proxy@web.service", "reload", "start meshx-proxy@web.service")
	if _, err := os.Stat(e.dropIn("web")); !os.IsNotExist(err) {
		t.Errorf("drop-in kept after transparent proxy turned off: %v", err)
	}
}

func TestReconcileTransparentProxyOnRestarts(t *testing.T) {
	e := newEnv(t)
	if _, err := e.reconcile(t, Instance{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	actions, err := e.reconcile(t, Instance{Service: "web", TransparentProxy: true})
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "web: restarted")
	wantCalls(t, e.bus, "enable meshx-proxy@web.service", "reload", "restart meshx-proxy@web.service")
}

func TestReconcileDoesNotWaitOnJobsOrderedAfterItsOwnStart(t *testing.T) {
	e := newEnv(t)
	e.bus.self = InitUnit
	e.bus.state[InitUnit] = "activating"
	e.bus.after[UnitName("web")] = []string{"network-online.target", InitUnit}
	e.bus.result[UnitName("web")] = "hang" // would block until meshx-init finished
	e.bus.result[UnitName("other")] = "done"
	start := time.Now()
	actions, err := e.reconcile(t, Instance{Service: "web"}, Instance{Service: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("Reconcile waited %s for a job ordered after its own start", time.Since(start))
	}
	// "other" is not ordered after meshx-init: its result is waited for
	wantDid(t, actions, "other: started", "web: start queued")
}

func TestReconcileWaitsWhenRunByHand(t *testing.T) {
	e := newEnv(t)
	e.bus.self = "session-1.scope"
	e.bus.state["session-1.scope"] = "active"
	e.bus.state[InitUnit] = "active"
	e.bus.after[UnitName("web")] = []string{InitUnit}
	e.bus.result[UnitName("web")] = "hang"
	actions, err := e.reconcile(t, Instance{Service: "web"})
	if err == nil || !strings.Contains(err.Error(), "not finished") {
		t.Fatalf("err = %v, want a job timeout", err)
	}
	if actions[0].Err == nil {
		t.Errorf("action carries no error: %+v", actions[0])
	}
}

func TestReconcileReportsFailedJobs(t *testing.T) {
	e := newEnv(t)
	e.bus.result[UnitName("web")] = "failed"
	actions, err := e.reconcile(t, Instance{Service: "web"}, Instance{Service: "client"})
	if err == nil || !strings.Contains(err.Error(), "start meshx-proxy@web.service: job failed") {
		t.Fatalf("err = %v", err)
	}
	if actions[0].Service != "client" || actions[0].Err != nil || actions[1].Err == nil {
		t.Errorf("actions %+v", actions)
	}
}

func TestReconcileResetsFailedBeforeStart(t *testing.T) {
	e := newEnv(t)
	e.bus.state[UnitName("web")] = "failed"
	actions, err := e.reconcile(t, Instance{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "web: started")
	wantCalls(t, e.bus, "enable meshx-proxy@web.service", "reload", "reset-failed meshx-proxy@web.service", "start meshx-proxy@web.service")
}

func TestReconcileRejectsBadInput(t *testing.T) {
	e := newEnv(t)
	if _, err := e.reconcile(t, Instance{Service: "a"}, Instance{Service: "a"}); err == nil {
		t.Fatal("duplicate service accepted")
	}
	if len(e.bus.calls) != 0 {
		t.Errorf("systemd was called for bad input: %v", e.bus.calls)
	}
}

// tpDropIn is the drop-in of an instance with transparent proxy only.
func tpDropIn() string {
	_, c := DropIn(Instance{Service: "x", TransparentProxy: true})
	return c
}

// TestReconcileNamespace: a namespaced instance gets its meshx-netns@ unit
// started (and waited for) before the instance itself; once it is no longer
// wanted, the instance is stopped and then its namespace unit.
func TestReconcileNamespace(t *testing.T) {
	e := newEnv(t)
	actions, err := e.reconcile(t, Instance{Service: "api", Namespace: true, TransparentProxy: true}, Instance{Service: "web"},
		Instance{Service: "db", Namespace: true})
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "api: started", "db: started", "web: started")
	wantCalls(t, e.bus,
		`enable meshx-proxy@api.service,meshx-proxy@db.service,meshx-proxy@web.service`,
		"reload",
		"reload-or-restart meshx-netns@api.service",
		"reload-or-restart meshx-netns@db.service",
		"start meshx-proxy@api.service",
		"start meshx-proxy@db.service",
		"start meshx-proxy@web.service")
	got, err := os.ReadFile(e.dropIn("api"))
	if err != nil || !strings.Contains(string(got), "NetworkNamespacePath=/run/netns/meshx-api\n") {
		t.Errorf("api drop-in: %q, %v", got, err)
	}

	actions, err = e.reconcile(t, Instance{Service: "web"}, Instance{Service: "db", Namespace: true})
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "api: stopped+disabled", "db: already active", "web: already active")
	wantCalls(t, e.bus,
		"stop meshx-proxy@api.service", "stop meshx-netns@api.service", "disable meshx-proxy@api.service",
		"enable meshx-proxy@db.service,meshx-proxy@web.service", "reload", "reload-or-restart meshx-netns@db.service")
	if _, err := os.Stat(e.dropIn("api")); !os.IsNotExist(err) {
		t.Errorf("api's drop-in left: %v", err)
	}
}

// TestReconcileReplacesLegacyDropIn: the drop-in an older meshx wrote under
// its old name goes when meshx writes or removes its own.
func TestReconcileReplacesLegacyDropIn(t *testing.T) {
	e := newEnv(t)
	legacy := func(svc string) string { return filepath.Join(filepath.Dir(e.dropIn(svc)), legacyDropInName) }
	for _, svc := range []string{"tp", "off"} {
		if _, err := atomicfile.Write(legacy(svc), []byte("[Service]\nCapabilityBoundingSet=CAP_NET_ADMIN\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.reconcile(t, Instance{Service: "tp", TransparentProxy: true}, Instance{Service: "off"}); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"tp", "off"} {
		if _, err := os.Stat(legacy(svc)); !os.IsNotExist(err) {
			t.Errorf("%s: legacy drop-in left: %v", svc, err)
		}
	}
	if _, err := os.Stat(e.dropIn("tp")); err != nil {
		t.Errorf("tp's drop-in: %v", err)
	}
}

// TestReconcileLeavesNamespace: a service that no longer has a namespace of
// its own runs again outside it, and its namespace unit is stopped after.
func TestReconcileLeavesNamespace(t *testing.T) {
	e := newEnv(t)
	if _, err := e.reconcile(t, Instance{Service: "api", Namespace: true, TransparentProxy: true}); err != nil {
		t.Fatal(err)
	}
	actions, err := e.reconcile(t, Instance{Service: "api", TransparentProxy: true})
	if err != nil {
		t.Fatal(err)
	}
	wantDid(t, actions, "api: restarted")
	wantCalls(t, e.bus, "enable meshx-proxy@api.service", "reload", "restart meshx-proxy@api.service", "stop meshx-netns@api.service")
	if got, _ := os.ReadFile(e.dropIn("api")); strings.Contains(string(got), "NetworkNamespacePath") {
		t.Errorf("drop-in still joins the namespace:\n%s", got)
	}
}
