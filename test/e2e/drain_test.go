package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

const (
	// What every web instance's answer starts with.
	webBodyPrefix = "hello from web on "
	// The second web instance's answer: web on the client host.
	secondWebBody = webBodyPrefix + "mesh-client"

	loadEvery = 100 * time.Millisecond // pause between two requests of the load
	loadMax   = 3000                   // bound of one load, in requests
)

// load is a steady, bounded stream of requests from the client host through
// its upstream port for web: one at a time, a pause between two.
type load struct {
	top  *topology
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	sent, ok int
	bodies   map[string]int
	failures []string
}

func (top *topology) startLoad() *load {
	l := &load{top: top, stop: make(chan struct{}), done: make(chan struct{}), bodies: map[string]int{}}
	go l.run()
	return l
}

func (l *load) run() {
	defer close(l.done)
	for i := 0; i < loadMax; i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		start := time.Now()
		body, code, err := l.top.request()
		l.mu.Lock()
		l.sent++
		if code == 0 && strings.HasPrefix(body, webBodyPrefix) {
			l.ok++
			l.bodies[strings.TrimSpace(body)]++
		} else {
			l.failures = append(l.failures, fmt.Sprintf("%s: curl exit %d %v %q",
				start.Format("15:04:05.000"), code, err, strings.TrimSpace(body)))
		}
		l.mu.Unlock()
		select {
		case <-l.stop:
			return
		case <-time.After(loadEvery):
		}
	}
}

// answered waits until n more requests than now have been answered.
func (l *load) answered(t *testing.T, n int) {
	t.Helper()
	l.mu.Lock()
	want := l.ok + n
	l.mu.Unlock()
	testutil.Eventually(t, multiStepTimeout, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.ok < want {
			return fmt.Errorf("%d requests answered, waiting for %d (%d sent)", l.ok, want, l.sent)
		}
		return nil
	})
}

// finish stops the load and returns its counts.
func (l *load) finish() (sent, failed int, failures []string, bodies map[string]int) {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent, len(l.failures), l.failures, l.bodies
}

// addSecondWeb puts a second instance of web on the client host, from the web
// host's own user-data (its app unit, its service-config), and waits until
// the client's requests reach both.
func (top *topology) addSecondWeb(t *testing.T) {
	t.Helper()
	_, ud := readUserData(t, "web")
	for _, p := range []string{"/etc/systemd/system/web-app.service", "/etc/meshx/services.d/web.yaml"} {
		content, ok := ud.file(p)
		if !ok {
			t.Fatalf("web's user-data writes no %s", p)
		}
		top.client.WriteFile(p, content)
	}
	top.client.WriteFile("/srv/web/index.html", secondWebBody+"\n")
	top.client.MustExec("systemctl", "daemon-reload")
	top.client.MustExec("systemctl", "enable", "--now", "web-app.service")
	top.client.MustExec("systemctl", "reload", "meshx-init.service")
	testutil.Eventually(t, multiStepTimeout, func() error {
		if n, err := top.healthyWeb(); err != nil || n != 2 {
			return fmt.Errorf("healthy web instances seen from the client host: %d %v", n, err)
		}
		return nil
	})
	seen := map[string]bool{}
	testutil.Eventually(t, multiStepTimeout, func() error {
		body, code, err := top.request()
		if code == 0 {
			seen[strings.TrimSpace(body)] = true
		}
		if !seen[meshWebBody] || !seen[secondWebBody] {
			return fmt.Errorf("answers seen %v (last: exit %d %v)", seen, code, err)
		}
		return nil
	})
}

// removeSecondWeb takes web off the client host again, as an operator
// would: its service-config removed, then systemctl reload meshx-init. The
// client host's requests then reach the web host's instance only.
func (top *topology) removeSecondWeb(t *testing.T) {
	t.Helper()
	top.client.MustExec("rm", "/etc/meshx/services.d/web.yaml")
	top.client.MustExec("systemctl", "reload", "meshx-init.service")
	top.client.MustExec("systemctl", "disable", "--now", "web-app.service")
	testutil.Eventually(t, multiStepTimeout, func() error {
		if n, err := top.healthyWeb(); err != nil || n != 1 {
			return fmt.Errorf("healthy web instances seen from the client host: %d %v, want 1", n, err)
		}
		svcs, err := agentServices(top.client.Machine)
		if err != nil {
			return err
		}
		if _, ok := svcs["web-"+top.client.Hostname]; ok {
			return fmt.Errorf("web still registered on %s", top.client.Hostname)
		}
		return nil
	})
	top.waitRequestOK(t, "with web on the web host only")
}

// zeroLoss sends a steady stream of requests through the mesh while one web
// host's meshx-proxy@web stops and starts, then while that host reboots:
// first with proxy.drain 0s on that host (the baseline: the stop of old),
// then with the default drain, under which not one request may fail. The
// counts are logged as a bench line.
func (top *topology) zeroLoss(t *testing.T) {
	t.Helper()
	top.setWebDrain(t, "0s")
	base := top.stopStartReboot(t)
	top.setWebDrain(t, "")
	got := top.stopStartReboot(t)
	t.Logf("bench: multihost zero-loss drain default sent %d failed %d; baseline drain 0s sent %d failed %d "+
		"(answers %v; systemctl stop meshx-proxy@web took %s, %s with drain 0s)",
		got.sent, got.failed, base.sent, base.failed, got.bodies, got.stopTook.Round(time.Millisecond), base.stopTook.Round(time.Millisecond))
	if base.failed > 0 {
		t.Logf("baseline failures (drain 0s):\n%s", strings.Join(base.failures, "\n"))
	}
	if got.failed > 0 {
		t.Errorf("%d of %d requests failed across web's stop, start and reboot:\n%s", got.failed, got.sent, strings.Join(got.failures, "\n"))
	}
	if got.bodies[meshWebBody] == 0 || got.bodies[secondWebBody] == 0 {
		t.Errorf("answers %v: the load did not reach both web instances", got.bodies)
	}
	if out := top.web.MustExec("journalctl", "-b", "-1", "--no-pager", "-o", "cat", "-u", "meshx-proxy@web.service"); !strings.Contains(out, "drained") {
		t.Errorf("meshx-proxy@web did not drain at the reboot:\n%s", out)
	}
}

// setWebDrain writes the web host's service-config of web as its user-data
// has it, with proxy.drain set to drain ("" = the default), and runs
// meshx-init there, which hands the new plan to meshx-proxy@web (SIGHUP).
func (top *topology) setWebDrain(t *testing.T, drain string) {
	t.Helper()
	_, ud := readUserData(t, "web")
	cfg, _ := ud.file("/etc/meshx/services.d/web.yaml")
	if drain != "" {
		cfg += "proxy:\n  drain: " + drain + "\n"
	}
	top.web.WriteFile("/etc/meshx/services.d/web.yaml", cfg)
	top.web.MustExec("meshx-init", "run")
	want := `"drain": "5s"`
	if drain != "" {
		want = `"drain": "` + drain + `"`
	}
	if plan := top.web.MustExec("cat", "/var/lib/meshx/services/web.json"); !strings.Contains(plan, want) {
		t.Fatalf("web's plan does not say %s:\n%s", want, plan)
	}
}

type loadResult struct {
	sent, failed int
	failures     []string
	bodies       map[string]int
	stopTook     time.Duration
}

// stopStartReboot runs the load across a stop and start of the web host's
// meshx-proxy@web, then a reboot of the web host.
func (top *topology) stopStartReboot(t *testing.T) loadResult {
	t.Helper()
	l := top.startLoad()
	l.answered(t, 20)
	waitWeb := func(n int) {
		testutil.Eventually(t, multiStepTimeout, func() error {
			if got, err := top.healthyWeb(); err != nil || got != n {
				return fmt.Errorf("healthy web instances: %d %v, want %d", got, err, n)
			}
			return nil
		})
	}
	stopped := time.Now()
	top.web.MustExec("systemctl", "stop", "meshx-proxy@web.service")
	stopTook := time.Since(stopped)
	waitWeb(1)
	l.answered(t, 20)
	top.web.MustExec("systemctl", "start", "meshx-proxy@web.service")
	waitWeb(2)
	l.answered(t, 20)

	top.web.PowerOff()
	waitWeb(1)
	l.answered(t, 20)
	top.lan.replug(top.web.Name, lanIfname, top.web.Addr+lanBits)
	top.web.Boot()
	waitWeb(2)
	l.answered(t, 20)
	r := loadResult{stopTook: stopTook}
	r.sent, r.failed, r.failures, r.bodies = l.finish()
	return r
}
