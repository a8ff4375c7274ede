package integration

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

const webYAML = `version: 1
service: {name: web, port: %d, tags: [v1], meta: {team: a}}
check: {ttl: 10s}
`

const clientYAML = `version: 1
service: {name: client}
check: {probe: none}
upstreams: [{name: web}]
`

// TestMesh is the spine end to end: two services, a request through two
// built-in proxies (mTLS), proxy crash, agent restart, re-run, stop.
func TestMesh(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	webPort := startApp(t, "hello from web")
	h.service("web.yaml", fmt.Sprintf(webYAML, webPort))
	h.service("client.yaml", clientYAML)
	f := h.foreground()
	h.waitPassing(30*time.Second, "web-testhost", "client-testhost")
	up := h.plan("client").Upstreams[0]
	if up.Name != "web" || up.Port == 0 {
		t.Fatalf("client upstream = %+v", up)
	}

	t.Run("request through the mesh", func(t *testing.T) {
		waitBody(t, 30*time.Second, up.Port, "hello from web")
		// The request really crossed web's sidecar: its public listener is mTLS.
		side := h.services()["web-testhost-sidecar-proxy"]
		if side == nil || side.Proxy.DestinationServiceID != "web-testhost" {
			t.Fatalf("web's sidecar = %+v", side)
		}
		// Its only check is an alias of web (meshx's TTL), not Consul's
		// staggered TCP check.
		checks, err := h.client().Agent().Checks()
		if err != nil {
			t.Fatal(err)
		}
		var sideChecks []*api.AgentCheck
		for _, c := range checks {
			if c.ServiceID == "web-testhost-sidecar-proxy" {
				sideChecks = append(sideChecks, c)
			}
		}
		if len(sideChecks) != 1 || sideChecks[0].Type != "alias" || sideChecks[0].Status != api.HealthPassing {
			t.Errorf("sidecar checks = %s, want one passing alias", mustJSON(sideChecks))
		}
	})

	t.Run("proxy killed is restarted and traffic resumes", func(t *testing.T) {
		exited := map[string]string{"reason": "exited"}
		restarts := h.waitMetric(10*time.Second, "web", "meshx_proxy_restarts_total", exited, func(float64) bool { return true })
		before := h.status("web")
		if before.ProxyPID == 0 {
			t.Fatalf("no proxy pid published: %+v", before)
		}
		if err := syscall.Kill(before.ProxyPID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 20*time.Second, func() error {
			st := h.status("web")
			if st.ProxyPID == before.ProxyPID || st.ProxyPID == 0 || st.ProxyState != "running" {
				return fmt.Errorf("status %+v", st)
			}
			if st.Restarts != before.Restarts+1 {
				return fmt.Errorf("restarts %d, want %d", st.Restarts, before.Restarts+1)
			}
			return nil
		})
		waitBody(t, 30*time.Second, up.Port, "hello from web")
		// The scrape saw it too.
		h.waitMetric(10*time.Second, "web", "meshx_proxy_restarts_total", exited, equals(restarts+1))
		h.waitMetric(10*time.Second, "web", "meshx_proxy_state", map[string]string{"state": "running"}, equals(1))
	})

	t.Run("agent restart: registrations and checks back within an interval plus a second", func(t *testing.T) {
		lost := map[string]string{"reason": "agent_lost"}
		resyncs := h.waitMetric(10*time.Second, "web", "meshx_registration_resyncs_total", lost, func(float64) bool { return true })
		c.Restart(t)
		// Restart returns once the new agent has a leader; the heartbeat
		// interval is ttl/2 = 5s.
		h.waitPassing(6*time.Second, "web-testhost", "client-testhost")
		for _, id := range []string{"web-testhost", "web-testhost-sidecar-proxy", "client-testhost", "client-testhost-sidecar-proxy"} {
			if h.services()[id] == nil {
				t.Errorf("%s not registered again", id)
			}
		}
		waitBody(t, 60*time.Second, up.Port, "hello from web")
		h.waitMetric(10*time.Second, "web", "meshx_registration_resyncs_total", lost, func(v float64) bool { return v >= resyncs+1 })
	})

	t.Run("re-run with unchanged config changes nothing", func(t *testing.T) {
		before := h.services()
		r := h.init("run", "--systemd=no")
		if r.code != 0 {
			t.Fatalf("exit %d", r.code)
		}
		for _, n := range []string{"web", "client"} {
			if !strings.Contains(r.stdout, n+"-testhost\tport") || !strings.Contains(r.stdout, "unchanged") {
				t.Errorf("run output does not say %s is unchanged:\n%s", n, r.stdout)
			}
		}
		after := h.services()
		for id, s := range before {
			if a := after[id]; a == nil || a.ModifyIndex != s.ModifyIndex || a.ContentHash != s.ContentHash {
				t.Errorf("%s changed: %+v -> %+v", id, s, a)
			}
		}
		if h.checks()["web-testhost"] != api.HealthPassing {
			t.Errorf("web's check flapped: %v", h.checks())
		}
	})

	t.Run("stop deregisters and removes the proxy; re-run keeps the ports", func(t *testing.T) {
		st := h.status("web")
		webPlan := h.plan("web")
		r := h.init("stop", "web")
		if r.code != 0 {
			t.Fatalf("stop exit %d", r.code)
		}
		for id := range h.services() {
			if strings.HasPrefix(id, "web-") {
				t.Errorf("%s still registered after stop", id)
			}
		}
		testutil.Eventually(t, 15*time.Second, func() error {
			for _, pid := range []int{st.PID, st.ProxyPID} {
				if procAlive(pid) {
					return fmt.Errorf("pid %d still running", pid)
				}
			}
			return nil
		})
		clientPort := h.plan("client").Upstreams[0].Port
		if r := h.init("run", "--systemd=no"); r.code != 0 {
			t.Fatalf("re-run exit %d", r.code)
		}
		if got := h.plan("web"); got.Port != webPlan.Port {
			t.Errorf("web port %d after re-run, was %d", got.Port, webPlan.Port)
		}
		if got := h.plan("client").Upstreams[0].Port; got != clientPort {
			t.Errorf("client upstream port %d after re-run, was %d", got, clientPort)
		}
		if h.services()["web-testhost"] == nil {
			t.Errorf("web not registered again by re-run")
		}
	})

	t.Run("SIGINT stops every meshx-proxy, which deregisters", func(t *testing.T) {
		// web was only re-registered by a plain run above (no meshx-proxy):
		// client is the one the foreground process still supervises.
		pids := []int{h.status("client").PID, h.status("client").ProxyPID}
		f.stop(t)
		for id := range h.services() {
			if strings.HasPrefix(id, "client-") {
				t.Errorf("%s still registered after SIGINT", id)
			}
		}
		for _, pid := range pids {
			if procAlive(pid) {
				t.Errorf("pid %d outlived meshx-init", pid)
			}
		}
	})
}
