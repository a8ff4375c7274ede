package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// faultInit is where a meshx-init built with its fault points armed
// (-tags meshx_faults, see internal/fault) lives inside the machine.
const faultInit = "/usr/local/sbin/meshx-init-faults"

// flakyProxy runs the real proxy only once /etc/flaky-ok exists: a proxy that
// keeps crashing until the cause is fixed.
const flakyProxy = `#!/bin/sh
[ -e /etc/flaky-ok ] || { echo "flaky-proxy: /etc/flaky-ok missing" >&2; exit 1; }
exec "$@"
`

// extraYAML is a service with allocated ports (its own, its sidecar's, an
// upstream's) and no app of its own.
func extraYAML(name string) string {
	return fmt.Sprintf("version: 1\nservice: {name: %s}\ncheck: {probe: none}\nupstreams: [{name: web}]\n", name)
}

const flakyYAML = `version: 1
service: {name: flaky}
check: {probe: none}
proxy:
  command: ["/usr/local/bin/flaky-proxy", "{{consul}}", "connect", "proxy", "-sidecar-for", "{{id}}"]
  max_restarts: 2
`

// buildFaultInit builds meshx-init with -tags meshx_faults from this tree.
func buildFaultInit(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "meshx-init-faults")
	cmd := exec.Command("go", "build", "-tags", "meshx_faults", "-o", out, "./cmd/meshx-init")
	cmd.Dir = repoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags meshx_faults: %v\n%s", err, b)
	}
	return out
}

// TestFaults injects, one after the other on one booted machine, the faults a
// host meets: two meshx-init runs at once, meshx-init killed at several points
// of a run, a service-config removed while its service runs, a panic, a proxy
// that keeps crashing, a port held by a foreign process, a full state disk
// and a hard power loss. After each the mesh must be whole again.
func TestFaults(t *testing.T) {
	t.Parallel()
	m := NewMachine(t, meshLayout(clientYAML))
	m.copyFile(buildFaultInit(t), faultInit, 0o755)
	m.WriteFile("/usr/local/bin/flaky-proxy", flakyProxy)
	if err := os.Chmod(filepath.Join(m.Root, "usr/local/bin/flaky-proxy"), 0o755); err != nil {
		t.Fatal(err)
	}
	m.Boot()
	m.WaitSystemRunning(meshTimeout)
	waitMeshUp(t, m, webID, clientID)

	step(t, "two meshx-init runs at once take turns: one registration, one proxy", func(t *testing.T) {
		m.WriteFile("/etc/meshx/services.d/extra.yaml", extraYAML("extra"))
		// The first run stops itself (SIGSTOP) right after its first
		// registration, holding its lock.
		m.background("r1", "env MESHX_FAULT=registered:stop "+faultInit+" run")
		var pid string
		testutil.Eventually(t, stepTimeout, func() error {
			out, _ := m.Exec("pgrep", "-f", "^"+faultInit+" run")
			pid = strings.TrimSpace(out)
			st, err := m.Exec("sh", "-c", "cut -d' ' -f3 /proc/"+pid+"/stat")
			if pid == "" || err != nil || strings.TrimSpace(st) != "T" {
				return fmt.Errorf("first run %q not stopped yet: %q %v", pid, st, err)
			}
			return nil
		})
		m.background("r2", "meshx-init run")
		testutil.Eventually(t, stepTimeout, func() error {
			if log, _ := m.Exec("cat", "/tmp/r2.log"); !strings.Contains(log, "another meshx-init run is in progress") {
				return fmt.Errorf("second run does not say it waits: %q", log)
			}
			return nil
		})
		if code, done := m.bgExit("r2"); done {
			t.Fatalf("the second run finished (exit %d) while the first held the lock", code)
		}
		m.MustExec("kill", "-CONT", pid)
		for _, r := range []string{"r1", "r2"} {
			testutil.Eventually(t, stepTimeout, func() error {
				if code, done := m.bgExit(r); !done || code != 0 {
					log, _ := m.Exec("cat", "/tmp/"+r+".log")
					return fmt.Errorf("%s: done %v exit %d:\n%s", r, done, code, log)
				}
				return nil
			})
		}
		waitMeshUp(t, m, "extra-meshx-vm")
		m.wantOne(t, "extra")
	})

	step(t, "meshx-init killed at several points: the next run converges, nothing leaks", func(t *testing.T) {
		for _, at := range []string{"locked", "allocated", "registered", "saved", "units"} {
			m.WriteFile("/etc/meshx/services.d/extra2.yaml", extraYAML("extra2"))
			m.killedAt(t, at)
			m.MustExec("rm", "/etc/meshx/services.d/extra2.yaml")
			m.MustExec("meshx-init", "run")
			m.wantGone(t, "extra2")
		}
		m.WriteFile("/etc/meshx/services.d/extra2.yaml", extraYAML("extra2"))
		m.killedAt(t, "saved")
		m.MustExec("meshx-init", "run")
		waitMeshUp(t, m, "extra2-meshx-vm", webID, clientID)
		m.wantOne(t, "extra2")
	})

	step(t, "service-configs removed, then systemctl reload meshx-init: units stopped, deregistered, ports released", func(t *testing.T) {
		m.MustExec("rm", "/etc/meshx/services.d/extra.yaml", "/etc/meshx/services.d/extra2.yaml")
		m.MustExec("systemctl", "reload", "meshx-init.service")
		m.wantGone(t, "extra")
		m.wantGone(t, "extra2")
		waitMeshUp(t, m, webID, clientID)
	})

	step(t, "meshx-init panicking exits 1 with the panic, never 2", func(t *testing.T) {
		for _, at := range []string{"allocated", "registered"} { // the main goroutine, a worker
			out, err := m.Exec("env", "MESHX_FAULT="+at+":panic", faultInit, "run")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "panic: fault injected at "+at) {
				t.Errorf("panic at %s: %v, want exit 1 and the panic:\n%s", at, err, out)
			}
		}
		m.MustExec("meshx-init", "run")
		waitMeshUp(t, m, webID, clientID)
	})

	step(t, "a proxy that keeps crashing: the unit ends failed, the check says why, systemctl restart recovers", func(t *testing.T) {
		u := "meshx-proxy@flaky.service"
		m.WriteFile("/etc/meshx/services.d/flaky.yaml", flakyYAML)
		out, _ := m.Exec("meshx-init", "run") // fails: the unit's start job fails
		testutil.Eventually(t, stepTimeout, func() error {
			if s, r, c := m.Show(u, "ActiveState"), m.Show(u, "Result"), m.Show(u, "ExecMainStatus"); s != "failed" || r != "exit-code" || c != "3" {
				return fmt.Errorf("%s: %s, result %s, exit status %s; meshx-init run said:\n%s", u, s, r, c, out)
			}
			return nil
		})
		if n := m.Show(u, "NRestarts"); n != "0" {
			t.Errorf("systemd restarted %s %s times after meshx-proxy gave up", u, n)
		}
		c := m.check(t, "flaky-meshx-vm")
		if c.Status != "critical" || !strings.Contains(c.Output, "gave up restarting after 2 restarts") ||
			!strings.Contains(c.Output, "exit status 1") {
			t.Errorf("check of flaky: %s %q, want critical saying it gave up after 2 restarts", c.Status, c.Output)
		}
		if failed := m.MustExec("systemctl", "--failed", "--no-legend", "--plain"); !strings.Contains(failed, u) {
			t.Errorf("systemctl --failed does not list %s:\n%s", u, failed)
		}
		m.MustExec("touch", "/etc/flaky-ok")
		m.restart(t, u)
		waitMeshUp(t, m, "flaky-meshx-vm")
		m.MustExec("rm", "/etc/meshx/services.d/flaky.yaml")
		m.MustExec("meshx-init", "run")
		m.wantGone(t, "flaky")
	})

	step(t, "a port held by a foreign process at proxy start: the check says so, no tight loop, recovery", func(t *testing.T) {
		u := "meshx-proxy@web.service"
		port := services(t, m)[webID+"-sidecar-proxy"].Port
		m.MustExec("systemctl", "stop", u)
		m.MustExec("systemd-run", "--unit=squatter", "python3", "-m", "http.server", fmt.Sprint(port), "--bind", "0.0.0.0")
		testutil.Eventually(t, stepTimeout, func() error {
			_, err := m.Exec("curl", "-fsS", "--max-time", "2", "-o", "/dev/null", fmt.Sprintf("http://127.0.0.1:%d/", port))
			return err
		})
		started := time.Now()
		m.MustExec("systemctl", "start", "--no-block", u)
		want := fmt.Sprintf("port %d (public mTLS listener) is in use by another process", port)
		testutil.Eventually(t, stepTimeout, func() error {
			if s := m.Show(u, "ActiveState"); s != "failed" {
				return fmt.Errorf("%s is %s", u, s)
			}
			return nil
		})
		took := time.Since(started)
		c := m.check(t, webID)
		t.Logf("meshx-proxy@web gave up after %s; check %s: %s", took.Round(time.Millisecond), c.Status, c.Output)
		if c.Status != "critical" || !strings.Contains(c.Output, want) || !strings.Contains(c.Output, "gave up") {
			t.Errorf("check of web: %s %q, want critical saying %q", c.Status, c.Output, want)
		}
		// Five restarts with backoff (0.5 s doubling, less 20% jitter) take
		// at least 0.4+0.8+1.6+3.2+6.4 s.
		if took < 12*time.Second {
			t.Errorf("meshx-proxy gave up after %s: restarts too fast", took.Round(time.Millisecond))
		}
		if n := m.Show(u, "NRestarts"); n != "0" {
			t.Errorf("systemd restarted %s %s times", u, n)
		}
		m.MustExec("systemctl", "stop", "squatter.service")
		m.restart(t, u)
		waitMeshUp(t, m, webID, clientID)
	})

	step(t, "disk full on the state directory: a clear error, the previous state intact, then recovery", func(t *testing.T) {
		// A small tmpfs holding a copy of the state, filled up.
		m.MustExec("sh", "-c", "mkdir -p /run/small && mount -t tmpfs -o size=512k tmpfs /run/small && "+
			"cp -a /var/lib/meshx/. /run/small/ && mount --bind /run/small /var/lib/meshx")
		defer m.Exec("sh", "-c", "umount /var/lib/meshx; umount /run/small")
		before := m.stateFiles(t)
		m.Exec("dd", "if=/dev/zero", "of=/var/lib/meshx/filler", "bs=4k") // until the disk is full
		m.WriteFile("/etc/meshx/services.d/extra3.yaml", extraYAML("extra3"))
		out, err := m.Exec("meshx-init", "run")
		t.Logf("meshx-init run on a full state disk: %v\n%s", err, out)
		if err == nil || !strings.Contains(out, "write /var/lib/meshx/ports.json: no space left on device") {
			t.Errorf("meshx-init run on a full state disk: %v, want a failure naming the file and the cause:\n%s", err, out)
		}
		m.MustExec("rm", "/var/lib/meshx/filler")
		after := m.stateFiles(t)
		if !maps.Equal(before, after) {
			t.Errorf("state changed by the failed run:\nbefore %v\nafter  %v", before, after)
		}
		if svcs := services(t, m); len(svcs) != 4 {
			t.Errorf("registrations after the failed run: %v, want web, client and their sidecars", mapsKeys(svcs))
		}
		m.MustExec("meshx-init", "run")
		waitMeshUp(t, m, "extra3-meshx-vm", webID, clientID)
		m.MustExec("rm", "/etc/meshx/services.d/extra3.yaml")
		m.MustExec("meshx-init", "run")
		m.wantGone(t, "extra3")
	})

	step(t, "hard power loss: state intact, the mesh back unaided", func(t *testing.T) {
		files := m.stateFiles(t)
		backIntact(t, m, "power loss", m.PowerLoss)
		if after := m.stateFiles(t); !maps.Equal(files, after) {
			t.Errorf("state files changed across the power loss:\nbefore %v\nafter  %v", files, after)
		}
	})

	step(t, "no meshx unit panicked in this boot", func(t *testing.T) { noPanics(t, m) })
}

// background starts a shell command inside the machine and returns at once;
// its output goes to /tmp/<name>.log and its exit code to /tmp/<name>.rc.
func (m *Machine) background(name, cmd string) {
	m.t.Helper()
	m.MustExec("sh", "-c", fmt.Sprintf("rm -f /tmp/%[1]s.rc; (%[2]s >/tmp/%[1]s.log 2>&1; echo $? >/tmp/%[1]s.rc) </dev/null >/dev/null 2>&1 &", name, cmd))
}

// restart is `systemctl restart unit` on a unit that just failed. In the
// test containers systemd sometimes cannot reuse the cgroup of a unit that
// failed a moment ago (status 219/CGROUP, "Failed to kill control group:
// Input/output error" before it); a later restart works, so this retries.
func (m *Machine) restart(t *testing.T, unit string) {
	t.Helper()
	testutil.Eventually(t, stepTimeout, func() error {
		if out, err := m.Exec("systemctl", "restart", unit); err != nil {
			t.Logf("systemctl restart %s: %v %s", unit, err, out)
			return fmt.Errorf("systemctl restart %s: %v %s", unit, err, out)
		}
		return nil
	})
}

// bgExit returns the exit code of a background command once it has finished.
func (m *Machine) bgExit(name string) (int, bool) {
	out, err := m.Exec("cat", "/tmp/"+name+".rc")
	if err != nil {
		return 0, false
	}
	return atoi(strings.TrimSpace(out)), true
}

// killedAt runs meshx-init with a SIGKILL armed at a fault point.
func (m *Machine) killedAt(t *testing.T, at string) {
	t.Helper()
	out, err := m.Exec("env", "MESHX_FAULT="+at+":kill", faultInit, "run")
	if err == nil || !strings.Contains(out, "fault: kill at "+at) {
		t.Fatalf("meshx-init with a kill at %s: %v, want it killed there:\n%s", at, err, out)
	}
}

// wantOne: the service is registered exactly once with one sidecar, its unit
// is active and one proxy runs for it.
func (m *Machine) wantOne(t *testing.T, name string) {
	t.Helper()
	id := name + "-meshx-vm"
	n := 0
	for _, s := range services(t, m) {
		if s.Service == name || s.Service == name+"-sidecar-proxy" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d registrations of %s and its sidecar, want 2", n, name)
	}
	if s := m.Show("meshx-proxy@"+name+".service", "ActiveState"); s != "active" {
		t.Errorf("meshx-proxy@%s is %s", name, s)
	}
	testutil.Eventually(t, stepTimeout, func() error {
		if pids := proxyPIDs(t, m, id); len(pids) != 1 {
			return fmt.Errorf("proxies of %s: %v, want one", id, pids)
		}
		return nil
	})
}

// wantGone: nothing of the service is left: registration, plan, allocated
// ports, unit (stopped and disabled), proxy.
func (m *Machine) wantGone(t *testing.T, name string) {
	t.Helper()
	id := name + "-meshx-vm"
	testutil.Eventually(t, stepTimeout, func() error {
		svcs, err := agentServices(m)
		if err != nil {
			return err
		}
		for sid, s := range svcs {
			if strings.HasPrefix(s.Service, name) {
				return fmt.Errorf("%s still registered", sid)
			}
		}
		if pids := proxyPIDs(t, m, id); len(pids) > 0 {
			return fmt.Errorf("proxy of %s still running: %v", id, pids)
		}
		return nil
	})
	if out, _ := m.Exec("cat", "/var/lib/meshx/ports.json"); strings.Contains(out, id) {
		t.Errorf("ports of %s still allocated:\n%s", id, out)
	}
	if _, err := m.Exec("test", "-e", "/var/lib/meshx/services/"+name+".json"); err == nil {
		t.Errorf("plan of %s left behind", name)
	}
	u := "meshx-proxy@" + name + ".service"
	if s := m.Show(u, "ActiveState"); s == "active" || s == "activating" {
		t.Errorf("%s is %s", u, s)
	}
	if out, _ := m.Exec("systemctl", "is-enabled", u); strings.TrimSpace(out) == "enabled" {
		t.Errorf("%s still enabled", u)
	}
}

type agentCheck struct{ Status, Output string }

// check is the TTL check of a service id as the agent has it.
func (m *Machine) check(t *testing.T, id string) agentCheck {
	t.Helper()
	var checks map[string]agentCheck
	if err := m.GetJSON("/v1/agent/checks", &checks); err != nil {
		t.Fatal(err)
	}
	return checks["meshx-ttl:"+id]
}

// stateFiles maps each file of the state dir (lock files aside: taking a lock
// writes its holder's pid) to its checksum; a temporary file left behind shows.
func (m *Machine) stateFiles(t *testing.T) map[string]string {
	t.Helper()
	out := m.MustExec("sh", "-c", "cd /var/lib/meshx && find . -type f ! -name '*.lock' ! -name filler -exec sha256sum {} +")
	files := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if sum, name, ok := strings.Cut(line, "  "); ok {
			files[name] = sum[:12]
		}
	}
	if len(files) == 0 {
		t.Fatalf("no state files:\n%s", out)
	}
	for name := range files {
		if strings.HasSuffix(name, ".json") {
			raw := m.MustExec("cat", "/var/lib/meshx/"+name)
			if !json.Valid([]byte(raw)) {
				t.Errorf("state file %s is not valid JSON:\n%s", name, raw)
			}
		}
	}
	return files
}

func mapsKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range maps.Keys(m) {
		ks = append(ks, k)
	}
	return ks
}
