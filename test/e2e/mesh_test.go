package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// The two baked services: web with a real HTTP app, client with upstream web.
const (
	webYAML = `version: 1
service: {name: web, port: 8080}
check: {ttl: 10s, probe: tcp}
`
	clientYAML = `version: 1
service: {name: client, port: 8081}
upstreams: [{name: web, port: 9191}]
`
	// Line 3 has a field the parser does not know.
	brokenClientYAML = `version: 1
service: {name: client, port: 8081}
upstreams: [{name: web, prot: 9191}]
`
	webID    = "web-meshx-vm"
	clientID = "client-meshx-vm"
	webBody  = "hello from web"
)

// httpApp is a unit serving dir on 127.0.0.1:port.
func httpApp(desc string, port int, dir string) string {
	return fmt.Sprintf(`[Unit]
Description=%s
[Service]
ExecStart=/usr/bin/python3 -m http.server %d --bind 127.0.0.1 --directory %s
DynamicUser=yes
[Install]
WantedBy=multi-user.target
`, desc, port, dir)
}

// gatedApp follows the README's pattern: it may only start once web's mesh path
// is ready. At its start it records web's health as the agent sees it.
const gatedApp = `[Unit]
Description=app that needs web's mesh path
Requires=meshx-proxy@web.service
After=meshx-proxy@web.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'curl -s --max-time 5 http://127.0.0.1:8500/v1/health/checks/web >/run/gated-app.health'
[Install]
WantedBy=multi-user.target
`

// meshLayout is the standard machine: Consul at boot, web and client baked, both
// apps, the gated app.
func meshLayout(clientConfig string) Layout {
	return Layout{
		ConsulAtBoot: true,
		Files: map[string]string{
			"/etc/meshx/services.d/web.yaml":         webYAML,
			"/etc/meshx/services.d/client.yaml":      clientConfig,
			"/srv/web/index.html":                    webBody + "\n",
			"/srv/client/index.html":                 "hello from client\n",
			"/etc/systemd/system/web-app.service":    httpApp("web app", 8080, "/srv/web"),
			"/etc/systemd/system/client-app.service": httpApp("client app", 8081, "/srv/client"),
			"/etc/systemd/system/gated-app.service":  gatedApp,
		},
		Enable: []string{"web-app.service", "client-app.service", "gated-app.service"},
	}
}

const (
	meshTimeout = 2 * time.Minute // boot to "everything passing"
	stepTimeout = 60 * time.Second
)

// TestBootedMesh is the main proof of issue 3 on one machine, step after step:
// boot with nothing typed, the gated app, stop/start, kill -9 of meshx-proxy and
// of its proxy, reboot, a config removed before reboot, package removal.
func TestBootedMesh(t *testing.T) {
	t.Parallel()
	m := NewMachine(t, meshLayout(clientYAML))
	start := time.Now()
	m.Boot()
	state := m.WaitSystemRunning(meshTimeout)
	t.Logf("first boot finished in %s: %s", time.Since(start).Round(time.Millisecond), state)

	step(t, "after boot, with no command typed, everything is up", func(t *testing.T) {
		if state != "running" {
			t.Errorf("system %s after boot, want running; failed units:\n%s", state, m.MustExec("systemctl", "--failed", "--no-legend"))
		}
		waitMeshUp(t, m, webID, clientID)
		for _, u := range []string{"meshx-init.service", "meshx-proxy@web.service", "meshx-proxy@client.service"} {
			if s := m.Show(u, "ActiveState"); s != "active" {
				t.Errorf("%s is %s, want active", u, s)
			}
		}
		for _, u := range []string{"meshx-proxy@web.service", "meshx-proxy@client.service"} {
			if s := m.Show(u, "UnitFileState"); s != "enabled" {
				t.Errorf("%s is %s, want enabled (meshx-init enables what it starts)", u, s)
			}
		}
	})

	step(t, "meshx-init run by hand is a no-op that reports each unit", func(t *testing.T) {
		t.Logf("meshx-init at boot:\n%s", m.MustExec("journalctl", "-b", "--no-pager", "-o", "cat", "-u", "meshx-init.service"))
		out := m.MustExec("meshx-init", "run")
		for _, want := range []string{"meshx-proxy@web.service\talready active", "meshx-proxy@client.service\talready active"} {
			if !strings.Contains(out, want) {
				t.Errorf("meshx-init run does not report %q:\n%s", want, out)
			}
		}
	})

	step(t, "an app ordered after meshx-proxy@web starts only once the mesh is ready", func(t *testing.T) {
		proxyReady := mono(t, m, "meshx-proxy@web.service", "ActiveEnterTimestampMonotonic")
		appStart := mono(t, m, "gated-app.service", "ExecMainStartTimestampMonotonic")
		if appStart == 0 || proxyReady == 0 || appStart < proxyReady {
			t.Errorf("gated-app started at %d µs, meshx-proxy@web ready at %d µs", appStart, proxyReady)
		}
		var checks []struct{ CheckID, Status, ServiceID string }
		raw := m.MustExec("cat", "/run/gated-app.health")
		if err := json.Unmarshal([]byte(raw), &checks); err != nil || len(checks) == 0 {
			t.Fatalf("web's health as seen by the gated app at its start: %v %q", err, raw)
		}
		for _, c := range checks {
			if c.Status != "passing" {
				t.Errorf("when the gated app started, check %s of %s was %s", c.CheckID, c.ServiceID, c.Status)
			}
		}
	})

	step(t, "systemctl status shows what meshx-proxy is doing", func(t *testing.T) {
		for _, u := range []string{"meshx-proxy@web.service", "meshx-proxy@client.service"} {
			if s := m.Show(u, "StatusText"); s == "" {
				t.Errorf("%s has no STATUS= text", u)
			}
		}
	})

	step(t, "each meshx-proxy serves its metrics from inside the unit's sandbox", func(t *testing.T) {
		var rows []struct{ Service, Metrics string }
		if err := json.Unmarshal([]byte(m.MustExec("meshx-init", "status", "--json")), &rows); err != nil || len(rows) != 2 {
			t.Fatalf("meshx-init status --json: %v %v", rows, err)
		}
		for _, r := range rows {
			if r.Metrics == "" {
				t.Errorf("%s has no metrics address", r.Service)
				continue
			}
			out, err := m.Exec("curl", "-fsS", "--max-time", "5", "http://"+r.Metrics+"/metrics")
			if err != nil || !strings.Contains(out, "\nmeshx_ready 1\n") || !strings.Contains(out, `meshx_proxy_state{state="running"} 1`) {
				t.Errorf("%s's metrics at %s: %v\n%.2000s", r.Service, r.Metrics, err, out)
			}
		}
	})

	step(t, "logs go to the journal with structured fields and no second timestamp", func(t *testing.T) {
		checkJournal(t, m, "meshx-proxy@web.service")
		checkJournal(t, m, "meshx-init.service")
	})

	step(t, "systemctl stop deregisters and leaves nothing; start brings the same ports back", func(t *testing.T) {
		before := ports(t, m)
		m.MustExec("systemctl", "stop", "meshx-proxy@web.service")
		svcs := services(t, m)
		if _, ok := svcs[webID]; ok {
			t.Errorf("%s still registered after systemctl stop", webID)
		}
		if _, ok := svcs[webID+"-sidecar-proxy"]; ok {
			t.Errorf("web's sidecar still registered after systemctl stop")
		}
		if pids := proxyPIDs(t, m, webID); len(pids) > 0 {
			t.Errorf("web's proxy left running after stop: pids %v", pids)
		}
		if s := m.Show("meshx-proxy@web.service", "ActiveState"); s != "inactive" {
			t.Errorf("meshx-proxy@web is %s after stop, want inactive", s)
		}
		m.MustExec("systemctl", "start", "meshx-proxy@web.service")
		waitMeshUp(t, m, webID, clientID)
		if after := ports(t, m); !maps.Equal(before, after) {
			t.Errorf("ports changed across stop/start:\nbefore %v\nafter  %v", before, after)
		}
	})

	step(t, "kill -9 of meshx-proxy: systemd restarts it, no orphaned proxy", func(t *testing.T) {
		u := "meshx-proxy@client.service"
		mainPID := m.Show(u, "MainPID")
		restarts := atoi(m.Show(u, "NRestarts"))
		oldProxies := proxyPIDs(t, m, clientID)
		if len(oldProxies) != 1 {
			t.Fatalf("client proxies before the kill: %v, want exactly one", oldProxies)
		}
		m.MustExec("kill", "-9", mainPID)
		testutil.Eventually(t, stepTimeout, func() error {
			if n := atoi(m.Show(u, "NRestarts")); n != restarts+1 {
				return fmt.Errorf("NRestarts %d, want %d", n, restarts+1)
			}
			if s := m.Show(u, "ActiveState"); s != "active" {
				return fmt.Errorf("%s is %s", u, s)
			}
			return nil
		})
		if p := m.Show(u, "MainPID"); p == mainPID {
			t.Errorf("MainPID still %s", p)
		}
		waitMeshUp(t, m, webID, clientID)
		now := proxyPIDs(t, m, clientID)
		if len(now) != 1 || slices.Contains(now, oldProxies[0]) {
			t.Errorf("client proxies after the restart: %v (before: %v), want one new one", now, oldProxies)
		}
	})

	step(t, "kill -9 of the proxy: meshx-proxy restarts it, the unit stays active", func(t *testing.T) {
		u := "meshx-proxy@web.service"
		mainPID := m.Show(u, "MainPID")
		restarts := m.Show(u, "NRestarts")
		old := proxyPIDs(t, m, webID)
		if len(old) != 1 {
			t.Fatalf("web proxies: %v, want exactly one", old)
		}
		m.MustExec("kill", "-9", old[0])
		testutil.Eventually(t, stepTimeout, func() error {
			now := proxyPIDs(t, m, webID)
			if len(now) != 1 || now[0] == old[0] {
				return fmt.Errorf("web proxies %v (killed %s)", now, old[0])
			}
			return nil
		})
		waitMeshUp(t, m, webID, clientID)
		if p, n, s := m.Show(u, "MainPID"), m.Show(u, "NRestarts"), m.Show(u, "ActiveState"); p != mainPID || n != restarts || s != "active" {
			t.Errorf("unit after a proxy crash: MainPID %s (was %s), NRestarts %s (was %s), %s", p, mainPID, n, restarts, s)
		}
	})

	// Not a step: what it may leave behind (rules) does not affect the steps
	// after it, which then still run.
	t.Run("transparent proxy: CAP_NET_ADMIN and rules only while it is on", func(t *testing.T) {
		defer noPanics(t, m)
		u := "meshx-proxy@web.service"
		dropIn := "/run/systemd/system/meshx-proxy@web.service.d/50-meshx.conf"
		// Consul's built-in proxy has no transparent listener, so meshx wants an
		// explicit proxy command with transparent proxy; this one is the default
		// command written out. No traffic here leaves loopback, which the rules
		// never redirect, so the mesh keeps working.
		m.WriteFile("/etc/meshx/services.d/web.yaml", webYAML+
			`proxy: {command: ["{{consul}}", "connect", "proxy", "-sidecar-for", "{{id}}"]}`+"\n"+
			"transparent_proxy: {enabled: true}\n")
		// On through the unit (meshx-init's own sandbox writes the drop-in), off
		// by hand below.
		m.MustExec("systemctl", "restart", "meshx-init.service")
		out := m.MustExec("journalctl", "--no-pager", "-o", "cat", "-u", "meshx-init.service", "-n", "20")
		if !strings.Contains(out, u+"\trestarted") {
			t.Errorf("turning transparent proxy on: meshx-init.service says\n%s", out)
		}
		waitMeshUp(t, m, webID, clientID)
		if _, err := m.Exec("test", "-f", dropIn); err != nil {
			t.Errorf("no drop-in %s", dropIn)
		}
		if !hasNetAdmin(t, m, u) {
			t.Errorf("meshx-proxy@web runs without CAP_NET_ADMIN with transparent proxy on")
		}
		if rules := m.MustExec("iptables-save", "-t", "nat"); !strings.Contains(rules, "CONSUL_PROXY_INBOUND") {
			t.Errorf("no redirect rules with transparent proxy on:\n%s", rules)
		}

		m.WriteFile("/etc/meshx/services.d/web.yaml", webYAML)
		out = m.MustExec("meshx-init", "run")
		if !strings.Contains(out, u+"\trestarted") {
			t.Errorf("turning transparent proxy off: meshx-init run says\n%s", out)
		}
		waitMeshUp(t, m, webID, clientID)
		if _, err := m.Exec("test", "-e", dropIn); err == nil {
			t.Errorf("drop-in %s left with transparent proxy off", dropIn)
		}
		if hasNetAdmin(t, m, u) {
			t.Errorf("meshx-proxy@web keeps CAP_NET_ADMIN with transparent proxy off")
		}
		if rules := m.MustExec("iptables-save", "-t", "nat"); strings.Contains(rules, "CONSUL_PROXY") {
			t.Errorf("redirect rules left with transparent proxy off:\n%s", rules)
		}
	})

	step(t, "reboot: same ids and ports, no duplicates, passing again unaided", func(t *testing.T) {
		backIntact(t, m, "reboot", m.Reboot)
	})

	step(t, "a service-config removed before reboot: deregistered, unit gone", func(t *testing.T) {
		m.MustExec("rm", "/etc/meshx/services.d/client.yaml")
		m.Reboot()
		m.WaitSystemRunning(meshTimeout)
		waitMeshUp(t, m, webID)
		testutil.Eventually(t, stepTimeout, func() error {
			svcs, err := agentServices(m)
			if err != nil {
				return err
			}
			for id := range svcs {
				if strings.HasPrefix(id, "client") {
					return fmt.Errorf("%s still registered", id)
				}
			}
			return nil
		})
		u := "meshx-proxy@client.service"
		if s := m.Show(u, "ActiveState"); s != "inactive" {
			t.Errorf("%s is %s", u, s)
		}
		if out, _ := m.Exec("systemctl", "is-enabled", u); strings.TrimSpace(out) == "enabled" {
			t.Errorf("%s still enabled", u)
		}
		if out := m.MustExec("systemctl", "--failed", "--no-legend"); strings.TrimSpace(out) != "" {
			t.Errorf("failed units:\n%s", out)
		}
	})

	step(t, "no meshx process panicked in this boot", func(t *testing.T) { noPanics(t, m) })

	step(t, "unit files verify and their sandbox exposure is within target", func(t *testing.T) {
		verifyAndScore(t, m)
	})

	step(t, "reinstalling the package (the upgrade path) keeps the mesh up", func(t *testing.T) {
		before := ports(t, m)
		m.copyFile(Deb(t), "/var/tmp/meshx.deb", 0o644)
		t.Logf("dpkg -i:\n%s", m.MustExec("dpkg", "-i", "/var/tmp/meshx.deb"))
		m.MustExec("rm", "/var/tmp/meshx.deb")
		m.WaitSystemRunning(stepTimeout)
		waitMeshUp(t, m, webID)
		if s := m.Show("meshx-init.service", "ActiveState"); s != "active" {
			t.Errorf("meshx-init is %s after the upgrade", s)
		}
		if after := ports(t, m); !maps.Equal(before, after) {
			t.Errorf("ids/ports changed across the upgrade:\nbefore %v\nafter  %v", before, after)
		}
	})

	step(t, "dpkg -r stops and deregisters everything; purge removes the state", func(t *testing.T) {
		out := m.MustExec("dpkg", "-r", "meshx")
		t.Logf("dpkg -r:\n%s", out)
		testutil.Eventually(t, stepTimeout, func() error {
			svcs, err := agentServices(m)
			if err != nil {
				return err
			}
			if len(svcs) != 0 {
				return fmt.Errorf("still registered: %v", slices.Sorted(maps.Keys(svcs)))
			}
			return nil
		})
		if pids := proxyPIDs(t, m, webID); len(pids) > 0 {
			t.Errorf("proxy left running after dpkg -r: %v", pids)
		}
		if out, _ := m.Sh("ls /etc/systemd/system/*.wants/ | grep meshx"); strings.TrimSpace(out) != "" {
			t.Errorf("enablement links left after dpkg -r:\n%s", out)
		}
		m.MustExec("dpkg", "-P", "meshx")
		for _, p := range []string{"/etc/meshx", "/var/lib/meshx", "/run/meshx"} {
			if _, err := m.Exec("test", "-e", p); err == nil {
				t.Errorf("%s left after purge", p)
			}
		}
		if out, _ := m.Exec("getent", "passwd", "meshx"); !strings.HasPrefix(out, "meshx:") {
			t.Errorf("system user meshx missing (it is kept on purge): %q", out)
		}
	})
}

// TestConsulLate: the Consul agent starts 30 s after meshx-init; everything
// still comes up without help.
func TestConsulLate(t *testing.T) {
	t.Parallel()
	l := meshLayout(clientYAML)
	l.ConsulAtBoot = false
	m := NewMachine(t, l)
	m.Boot()
	testutil.Eventually(t, stepTimeout, func() error {
		if s := m.Show("meshx-init.service", "ActiveState"); s != "activating" {
			return fmt.Errorf("meshx-init is %s, want activating (waiting for the agent)", s)
		}
		return nil
	})
	initStart := mono(t, m, "meshx-init.service", "ExecMainStartTimestampMonotonic")
	m.MustExec("systemd-run", "--quiet", "--on-active=30s", "--unit=consul-late", "systemctl", "start", "consul.service")
	if s := m.WaitSystemRunning(meshTimeout + 30*time.Second); s != "running" {
		t.Errorf("system %s", s)
	}
	waitMeshUp(t, m, webID, clientID)
	consulStart := mono(t, m, "consul.service", "ExecMainStartTimestampMonotonic")
	if d := time.Duration(consulStart-initStart) * time.Microsecond; d < 30*time.Second {
		t.Errorf("consul started %s after meshx-init, want >= 30s", d)
	} else {
		t.Logf("consul started %s after meshx-init", d.Round(time.Millisecond))
	}
	if s := m.Show("meshx-init.service", "ActiveState"); s != "active" {
		t.Errorf("meshx-init is %s", s)
	}
}

// TestMalformedConfig: one broken service-config blocks only that service.
func TestMalformedConfig(t *testing.T) {
	t.Parallel()
	m := NewMachine(t, meshLayout(brokenClientYAML))
	m.Boot()
	if s := m.WaitSystemRunning(meshTimeout); s != "degraded" {
		t.Errorf("system %s, want degraded (meshx-init failed)", s)
	}
	waitMeshUp(t, m, webID)
	if s := m.Show("meshx-init.service", "ActiveState"); s != "failed" {
		t.Errorf("meshx-init is %s, want failed", s)
	}
	if out := m.MustExec("systemctl", "--failed", "--no-legend", "--plain"); !strings.Contains(out, "meshx-init.service") {
		t.Errorf("systemctl --failed does not show meshx-init:\n%s", out)
	}
	journal := m.MustExec("journalctl", "-b", "--no-pager", "-o", "cat", "-u", "meshx-init.service")
	if !strings.Contains(journal, "/etc/meshx/services.d/client.yaml:3") {
		t.Errorf("the journal does not name client.yaml and line 3:\n%s", journal)
	}
	if s := m.Show("meshx-proxy@client.service", "ActiveState"); s == "active" {
		t.Errorf("meshx-proxy@client is active with a broken config")
	}
	svcs := services(t, m)
	if _, ok := svcs[clientID]; ok {
		t.Errorf("client registered from a broken config")
	}
}

// backIntact restarts the machine with restart (a reboot, a power loss) and
// checks that it comes back running with the mesh passing, unaided, under the
// same ids and ports.
func backIntact(t *testing.T, m *Machine, what string, restart func()) {
	t.Helper()
	before := ports(t, m)
	restart()
	if s := m.WaitSystemRunning(meshTimeout); s != "running" {
		t.Errorf("system %s after the %s", s, what)
	}
	waitMeshUp(t, m, webID, clientID)
	if after := ports(t, m); !maps.Equal(before, after) {
		t.Errorf("ids/ports changed across the %s:\nbefore %v\nafter  %v", what, before, after)
	}
}

// step runs one step of a sequence on a shared machine; a failed step stops
// the sequence (later steps depend on the state it should have left).
func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

// waitMeshUp waits until every given service is registered with its sidecar and
// passing, and, when the client is among them, a request through its upstream
// port reaches web.
func waitMeshUp(t *testing.T, m *Machine, ids ...string) {
	t.Helper()
	testutil.Eventually(t, meshTimeout, func() error {
		for _, id := range ids {
			if err := passing(m, id); err != nil {
				return err
			}
			if err := passing(m, id+"-sidecar-proxy"); err != nil {
				return err
			}
		}
		if slices.Contains(ids, clientID) {
			out, err := m.Exec("curl", "-fsS", "--max-time", "3", "http://127.0.0.1:9191/")
			if err != nil || !strings.Contains(out, webBody) {
				return fmt.Errorf("request through client's upstream port 9191: %v %q", err, out)
			}
		}
		return nil
	})
}

// passing: the service instance is registered and all its checks pass.
func passing(m *Machine, id string) error {
	out, err := m.Exec("curl", "-sS", "--max-time", "5", "http://127.0.0.1:8500/v1/agent/health/service/id/"+id+"?format=text")
	if err != nil {
		return fmt.Errorf("health of %s: %v %s", id, err, out)
	}
	if strings.TrimSpace(out) != "passing" {
		return fmt.Errorf("%s: %q", id, strings.TrimSpace(out))
	}
	return nil
}

type agentService struct {
	ID, Service, Kind string
	Port              int
	Proxy             *struct {
		DestinationServiceID string
		Upstreams            []struct {
			DestinationName string
			LocalBindPort   int
		}
	}
}

func agentServices(m *Machine) (map[string]agentService, error) {
	var svcs map[string]agentService
	err := m.GetJSON("/v1/agent/services", &svcs)
	return svcs, err
}

func services(t *testing.T, m *Machine) map[string]agentService {
	t.Helper()
	svcs, err := agentServices(m)
	if err != nil {
		t.Fatal(err)
	}
	return svcs
}

// ports is every registered id with its port and upstream ports: the identity a
// stop/start or reboot must keep. Registering twice under a new id shows too.
func ports(t *testing.T, m *Machine) map[string]string {
	t.Helper()
	out := map[string]string{}
	for id, s := range services(t, m) {
		v := fmt.Sprintf("%s port %d", s.Service, s.Port)
		if s.Proxy != nil {
			var ups []string
			for _, u := range s.Proxy.Upstreams {
				ups = append(ups, fmt.Sprintf("%s:%d", u.DestinationName, u.LocalBindPort))
			}
			sort.Strings(ups)
			v += " upstreams " + strings.Join(ups, ",")
		}
		out[id] = v
	}
	return out
}

// proxyPIDs lists the Connect proxy processes of one service id.
func proxyPIDs(t *testing.T, m *Machine, id string) []string {
	t.Helper()
	out, err := m.Exec("pgrep", "-f", "connect proxy -sidecar-for "+id+"( |$)")
	if err != nil && strings.TrimSpace(out) != "" {
		t.Fatalf("pgrep: %v %s", err, out)
	}
	return strings.Fields(out)
}

// noPanics fails when a Go panic of a meshx binary is in this boot's journal:
// one Go's runtime reported ("panic: ", exit 2) or one cli.Guard recovered
// ("<command>: internal error: panic: ", exit 1).
func noPanics(t *testing.T, m *Machine) {
	t.Helper()
	out := m.MustExec("journalctl", "-b", "--no-pager", "-o", "short-monotonic",
		"-u", "meshx-init.service", "-u", "meshx-proxy@*.service")
	for line := range strings.SplitSeq(out, "\n") {
		i := strings.Index(line, "]: ")
		if i >= 0 && (strings.HasPrefix(line[i+3:], "panic: ") || strings.Contains(line[i+3:], ": internal error: panic: ")) {
			t.Errorf("a meshx process panicked:\n%s", line)
		}
	}
}

// hasNetAdmin: the unit's configured bounding set and its running main process
// both hold CAP_NET_ADMIN (they must agree).
func hasNetAdmin(t *testing.T, m *Machine, unit string) bool {
	t.Helper()
	conf := strings.Contains(m.Show(unit, "CapabilityBoundingSet"), "cap_net_admin")
	status := m.MustExec("cat", "/proc/"+m.Show(unit, "MainPID")+"/status")
	var live bool
	for line := range strings.SplitSeq(status, "\n") {
		if hex, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				t.Fatalf("CapBnd %q: %v", hex, err)
			}
			live = v&(1<<12) != 0 // CAP_NET_ADMIN
		}
	}
	if conf != live {
		t.Errorf("%s: CapabilityBoundingSet says net_admin=%v, the running process %v", unit, conf, live)
	}
	return live
}

func mono(t *testing.T, m *Machine, unit, prop string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(m.Show(unit, prop), 10, 64)
	if err != nil {
		t.Fatalf("%s %s: %v", unit, prop, err)
	}
	return v
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// timestampRE matches a date or time of day at the start of a message: a second
// timestamp written by the program itself.
var timestampRE = regexp.MustCompile(`^(time=|\d{4}[-/]\d\d[-/]\d\d|\d\d:\d\d:\d\d)`)

// checkJournal: the unit's messages come through the native journal protocol
// with meshx's fields, and none starts with a timestamp of its own.
func checkJournal(t *testing.T, m *Machine, unit string) {
	t.Helper()
	out := m.MustExec("journalctl", "-b", "--no-pager", "-o", "json", "-u", unit)
	fields := map[string]bool{}
	n := 0
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			continue
		}
		if e["_COMM"] == "systemd" || e["_PID"] == "1" {
			continue // systemd's own lines about the unit
		}
		n++
		msg, _ := e["MESSAGE"].(string)
		if timestampRE.MatchString(msg) {
			t.Errorf("%s: a message carries its own timestamp: %q", unit, msg)
		}
		for k := range e {
			fields[k] = true
		}
	}
	if n == 0 {
		t.Fatalf("%s: no messages of its own in the journal", unit)
	}
	var mine []string
	for k := range fields {
		if !strings.HasPrefix(k, "_") && !strings.HasPrefix(k, "__") && k != "MESSAGE" && k != "PRIORITY" {
			mine = append(mine, k)
		}
	}
	sort.Strings(mine)
	t.Logf("%s: %d messages; fields: %s", unit, n, strings.Join(mine, " "))
	if !fields["SYSLOG_IDENTIFIER"] || !fields["MESHX_LEVEL"] {
		t.Errorf("%s: messages did not come through meshx's journal handler (fields %v)", unit, mine)
	}
	if unit != "meshx-init.service" && !fields["SERVICE_ID"] {
		t.Errorf("%s: no SERVICE_ID field", unit)
	}
}

// exposureRE reads systemd-analyze security's verdict line.
var exposureRE = regexp.MustCompile(`Overall exposure level for (\S+): ([0-9.]+)`)

// verifyAndScore runs systemd-analyze verify on every shipped unit and checks the
// sandbox exposure targets, also for an instance with the transparent-proxy
// drop-in in place.
func verifyAndScore(t *testing.T, m *Machine) {
	t.Helper()
	units := []string{"/lib/systemd/system/meshx-init.service", "/lib/systemd/system/meshx-proxy@.service",
		"/etc/systemd/system/consul.service", "meshx-proxy@web.service"}
	out, err := m.Exec(append([]string{"systemd-analyze", "verify"}, units...)...)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// An instance with transparent proxy on, as meshx-init would write it.
	dropIn := "/run/systemd/system/meshx-proxy@tp.service.d/50-meshx.conf"
	m.MustExec("mkdir", "-p", "/run/systemd/system/meshx-proxy@tp.service.d")
	m.MustExec("sh", "-c", "printf '[Service]\\nCapabilityBoundingSet=CAP_NET_ADMIN\\nRestrictAddressFamilies=AF_NETLINK\\n' >"+dropIn)
	m.MustExec("systemctl", "daemon-reload")
	defer func() {
		m.MustExec("rm", "-r", "/run/systemd/system/meshx-proxy@tp.service.d")
		m.MustExec("systemctl", "daemon-reload")
	}()
	if caps := m.Show("meshx-proxy@tp.service", "CapabilityBoundingSet"); !strings.Contains(caps, "cap_net_admin") || !strings.Contains(caps, "cap_setuid") {
		t.Errorf("transparent-proxy drop-in does not merge with the unit's capabilities: %s", caps)
	}

	targets := map[string]float64{"meshx-init.service": 3.0, "meshx-proxy@web.service": 4.0, "meshx-proxy@tp.service": 4.0}
	for _, u := range slices.Sorted(maps.Keys(targets)) {
		out := m.MustExec("systemd-analyze", "security", "--no-pager", u)
		mm := exposureRE.FindStringSubmatch(out)
		if mm == nil {
			t.Errorf("no exposure level for %s:\n%s", u, out)
			continue
		}
		score, _ := strconv.ParseFloat(mm[2], 64)
		t.Logf("systemd-analyze security %s: %.1f (target <= %.1f)", u, score, targets[u])
		if score > targets[u] {
			t.Errorf("%s exposure %.1f > %.1f", u, score, targets[u])
		}
	}
}
