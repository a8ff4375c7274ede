package e2e

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/netns"
	"github.com/meshx/meshx/internal/testutil"
)

const (
	// What every web instance's answer starts with.
	webBodyPrefix = "hello from web on "
	// The second web instance's answer: web on the client host.
	secondWebBody = webBodyPrefix + "mesh-client"

	loadStreams = 3                     // requests in flight at most
	loadEvery   = 50 * time.Millisecond // pause between two requests of a stream
	loadMax     = 5000                  // bound of one stream, in requests
)

// load is a steady, bounded stream of requests from the client host through
// its upstream port for web: loadStreams streams, each sending one request
// at a time with a pause between two. The requests are made by this
// process, from a thread inside the client host's network namespace (no
// process per request), so the load is dense and cheap.
type load struct {
	top  *topology
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	sent, ok int
	bodies   map[string]int
	failures []string
}

func (top *topology) startLoad() *load {
	l := &load{top: top, stop: make(chan struct{}), bodies: map[string]int{}}
	for range loadStreams {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			if err := netns.Run("/run/netns/"+top.client.Name, l.stream); err != nil {
				l.record(time.Now(), "", err)
			}
		}()
	}
	return l
}

// stream sends requests until the load stops; it runs inside the client
// host's network namespace.
func (l *load) stream() error {
	for range loadMax {
		select {
		case <-l.stop:
			return nil
		default:
		}
		start := time.Now()
		body, err := meshGet(upstreamAddr)
		l.record(start, body, err)
		select {
		case <-l.stop:
			return nil
		case <-time.After(loadEvery):
		}
	}
	return nil
}

func (l *load) record(start time.Time, body string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent++
	if err == nil && strings.HasPrefix(body, webBodyPrefix) {
		l.ok++
		l.bodies[strings.TrimSpace(body)]++
		return
	}
	l.failures = append(l.failures, fmt.Sprintf("%s: %v %q", start.Format("15:04:05.000"), err, strings.TrimSpace(body)))
}

// meshGet is `curl http://addr/` done by hand over one connection: an
// HTTP/1.0 GET, the whole answer read, at most requestTimeout in all.
func meshGet(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, requestTimeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: web\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("HTTP %s", resp.Status)
	}
	return string(body), err
}

// answered waits until n more requests than now have been answered by the
// instance whose answer is body ("": by any).
func (l *load) answered(t *testing.T, body string, n int) {
	t.Helper()
	count := func() int {
		if body == "" {
			return l.ok
		}
		return l.bodies[body]
	}
	l.mu.Lock()
	want := count() + n
	l.mu.Unlock()
	testutil.Eventually(t, multiStepTimeout, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if got := count(); got < want {
			return fmt.Errorf("%d answers by %q, waiting for %d (%d sent)", got, body, want, l.sent)
		}
		return nil
	})
}

// finish stops the load and returns its counts.
func (l *load) finish() (sent, failed int, failures []string, bodies map[string]int) {
	close(l.stop)
	l.wg.Wait()
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
	top.client.WriteFile("/srv/web/big", bigFile)
	top.web.WriteFile("/srv/web/big", bigFile)
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
	waitWeb := func(n int) {
		testutil.Eventually(t, multiStepTimeout, func() error {
			if got, err := top.healthyWeb(); err != nil || got != n {
				return fmt.Errorf("healthy web instances: %d %v, want %d", got, err, n)
			}
			return nil
		})
	}
	// Before each stop, the web host's instance is carrying its share.
	l.answered(t, meshWebBody, 30)
	stopped := time.Now()
	top.web.MustExec("systemctl", "stop", "meshx-proxy@web.service")
	stopTook := time.Since(stopped)
	waitWeb(1)
	l.answered(t, "", 20)
	top.web.MustExec("systemctl", "start", "meshx-proxy@web.service")
	waitWeb(2)
	l.answered(t, meshWebBody, 30)

	top.web.PowerOff()
	waitWeb(1)
	l.answered(t, "", 20)
	top.lan.replug(top.web.Name, lanIfname, top.web.Addr+lanBits)
	top.web.Boot()
	waitWeb(2)
	l.answered(t, meshWebBody, 30)
	r := loadResult{stopTook: stopTook}
	r.sent, r.failed, r.failures, r.bodies = l.finish()
	return r
}

// bigFile is what a slow download fetches: 12 s at downloadRate.
var bigFile = strings.Repeat("meshx ", 50_000)

const downloadRate = "25k"

// serverLost stops the Consul server (killed: no leave, no goodbye) while a
// slow download is in flight through the mesh and holds it down for two TTLs:
// the download completes over its established path, nothing is deregistered
// from the client agents, no meshx-proxy or proxy restarts. With the server
// back, everything converges and requests flow again.
func (top *topology) serverLost(t *testing.T) {
	t.Helper()
	hosts := []*meshHost{top.web, top.client}
	type snap struct{ units, services string }
	take := func() map[string]snap {
		out := map[string]snap{}
		for _, h := range hosts {
			var units []string
			for _, svc := range []string{"web", "client"} {
				u := "meshx-proxy@" + svc + ".service"
				if h.Show(u, "ActiveState") == "inactive" {
					continue
				}
				units = append(units, fmt.Sprintf("%s %s MainPID=%s NRestarts=%s proxy=%v", u, h.Show(u, "ActiveState"),
					h.Show(u, "MainPID"), h.Show(u, "NRestarts"), sortedPIDs(t, h.Machine, svc+"-"+h.Hostname)))
			}
			svcs, err := agentServices(h.Machine)
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]string, 0, len(svcs))
			for id := range svcs {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			out[h.Hostname] = snap{strings.Join(units, "; "), strings.Join(ids, " ")}
		}
		return out
	}
	before := take()

	type result struct {
		out  string
		code int
		err  error
	}
	dl := make(chan result, 1)
	go func() {
		out, code, err := nsExec(top.client.Name, 2*time.Minute, "curl", "-sS", "--limit-rate", downloadRate,
			"-o", "/dev/null", "-w", "%{http_code} %{size_download}", upstreamURL+"big")
		dl <- result{out, code, err}
	}()
	// The download is under way (an app logged it) before the server goes.
	testutil.Eventually(t, multiStepTimeout, func() error {
		for _, h := range hosts {
			if out, _ := h.Exec("journalctl", "-b", "-u", "web-app.service", "--no-pager", "-o", "cat"); strings.Contains(out, "GET /big") {
				return nil
			}
		}
		return fmt.Errorf("no web app has logged GET /big yet")
	})
	top.server.kill()
	lost := time.Now()
	// Two TTLs without a server: every meshx-proxy heartbeats its local agent
	// meanwhile, and nothing may restart or deregister.
	consistently(t, 20*time.Second, func() error {
		if now := take(); !maps.Equal(now, before) {
			return fmt.Errorf("with the server gone %s, the client hosts changed:\nbefore %v\nnow    %v",
				time.Since(lost).Round(time.Second), before, now)
		}
		return nil
	})
	for _, h := range hosts {
		for _, id := range strings.Fields(before[h.Hostname].services) {
			if !strings.HasSuffix(id, "-sidecar-proxy") {
				if err := passing(h.Machine, id); err != nil {
					t.Errorf("with the server gone, on %s: %v", h.Hostname, err)
				}
			}
		}
	}
	r := <-dl
	if want := fmt.Sprintf("200 %d", len(bigFile)); r.code != 0 || strings.TrimSpace(r.out) != want {
		t.Errorf("download through the mesh across the server's loss: exit %d %v %q, want %q", r.code, r.err, r.out, want)
	}

	top.lan.replug(top.server.Name, lanIfname, top.server.Addr+lanBits)
	top.server.Boot()
	top.waitRequestOK(t, "after the server came back")
	testutil.Eventually(t, multiStepTimeout, func() error {
		if n, err := top.healthyWeb(); err != nil || n != 2 {
			return fmt.Errorf("healthy web instances after the server came back: %d %v", n, err)
		}
		return nil
	})
	if after := take(); !maps.Equal(after, before) {
		t.Errorf("client hosts changed across the server's loss:\nbefore %v\nafter  %v", before, after)
	}
}

func sortedPIDs(t *testing.T, m *Machine, id string) []string {
	pids := proxyPIDs(t, m, id)
	slices.SortFunc(pids, func(a, b string) int { return atoi(a) - atoi(b) })
	return pids
}

// consistently fails the test as soon as cond fails, checking it for the whole
// of period.
func consistently(t *testing.T, period time.Duration, cond func() error) {
	t.Helper()
	for end := time.Now().Add(period); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if err := cond(); err != nil {
			t.Fatal(err)
		}
	}
}
