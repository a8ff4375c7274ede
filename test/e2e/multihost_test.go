package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

const (
	// The client's upstream port for web (vagrant/user-data/client.yaml) and
	// what web's app answers (vagrant/user-data/web.yaml).
	upstreamAddr = "127.0.0.1:9191"
	upstreamURL  = "http://" + upstreamAddr + "/"
	meshWebBody  = "hello from web on mesh-web"
	meshWebID    = "web-mesh-web"
	meshClientID = "client-mesh-client"

	// Bounds of every wait; a request is one curl of at most requestTimeout.
	multiBootTimeout = 4 * time.Minute // first boot, cloud-init included, to a request answered
	multiStepTimeout = 90 * time.Second
	requestTimeout   = 5 * time.Second
	allowTimeout     = 20 * time.Second // an intention change reaches the agents in well under a second
)

// TestMultiHost boots the three hosts of vagrant/ as systemd-nspawn containers on
// a private bridge, each provisioned by cloud-init from its Vagrant user-data,
// and proves the mesh across hosts step by step, with no command typed inside a
// container before the faults the steps inject themselves.
//
// The two figures of docs/multihost.md are logged as "bench: multihost ..."
// lines (scripts/bench-multihost.sh collects them); nothing here depends on them.
func TestMultiHost(t *testing.T) {
	t.Parallel()
	top := newTopology(t)
	top.boot(top.server)
	clientsBoot := time.Now()
	top.boot(top.web, top.client)

	step(t, "a request from the client host is answered by web on the other host", func(t *testing.T) {
		testutil.Eventually(t, multiBootTimeout, func() error {
			body, code, err := top.request()
			if code != 0 || !strings.Contains(body, meshWebBody) {
				return fmt.Errorf("GET %s on %s: exit %d %v %q", upstreamURL, top.client.Hostname, code, err, body)
			}
			return nil
		})
		t.Logf("bench: multihost boot-to-first-request %.2fs (client hosts booted to the first answer through the mesh)",
			time.Since(clientsBoot).Seconds())
	})

	step(t, "cloud-init applied every user-data without an error", func(t *testing.T) {
		for _, h := range []*meshHost{top.server, top.web, top.client} {
			testutil.Eventually(t, multiStepTimeout, func() error {
				out, _ := h.Exec("cloud-init", "status", "--long")
				switch {
				case strings.Contains(out, "status: done"):
					return nil
				case strings.Contains(out, "status: error"):
					t.Fatalf("cloud-init on %s:\n%s", h.Hostname, out)
				}
				return fmt.Errorf("cloud-init on %s: %s", h.Hostname, out)
			})
			if got := strings.TrimSpace(h.MustExec("hostname")); got != h.Hostname {
				t.Errorf("hostname %q, want %q (set by the user-data)", got, h.Hostname)
			}
		}
	})

	step(t, "the server elected itself leader and both clients joined", func(t *testing.T) {
		leader, err := top.consulAPI("GET", "/v1/status/leader", "")
		if err != nil || strings.Trim(strings.TrimSpace(leader), `"`) != serverAddr+":8300" {
			t.Errorf("leader %s (%v), want the server %s:8300", leader, err, serverAddr)
		}
		members := top.members(t)
		for _, r := range meshRoles {
			if members[r.Hostname] != r.Addr+" alive" {
				t.Errorf("member %s: %q, want %q", r.Hostname, members[r.Hostname], r.Addr+" alive")
			}
		}
	})

	step(t, "the request crossed the bridge through both sidecars and mTLS", func(t *testing.T) {
		top.checkMeshPath(t)
	})

	step(t, "systemctl stop meshx-proxy@web fails the request cleanly; start restores it, client untouched", func(t *testing.T) {
		before := top.clientState(t)
		top.web.MustExec("systemctl", "stop", "meshx-proxy@web.service")
		testutil.Eventually(t, multiStepTimeout, func() error {
			n, err := top.healthyWeb()
			if err != nil || n != 0 {
				return fmt.Errorf("healthy web instances seen from the client host: %d %v", n, err)
			}
			return nil
		})
		top.waitRequestFails(t, "with meshx-proxy@web stopped")
		top.web.MustExec("systemctl", "start", "meshx-proxy@web.service")
		top.waitRequestOK(t, "after systemctl start meshx-proxy@web")
		if after := top.clientState(t); after != before {
			t.Errorf("client host's proxy changed across web's stop/start:\nbefore %s\nafter  %s", before, after)
		}
	})

	// Consul 1.22.5 client agents may keep serving the first intention
	// decision they cached (hashicorp/consul#23368, see docs/multihost.md): a
	// deny is seen at once, the allow after it sometimes not at all. When the
	// web host's agent is caught at exactly that, the allow is proven by the
	// reboot step below, whose fresh agent has no stale cache.
	allowSeen := true
	step(t, "a deny intention client->web makes the request fail", func(t *testing.T) {
		top.intention(t, "deny")
		top.waitRequestFails(t, "with a deny intention")
	})

	step(t, "with an allow intention client->web the request succeeds", func(t *testing.T) {
		top.intention(t, "allow")
		if err := top.pollRequestOK(allowTimeout); err == nil {
			return
		}
		authz, err := top.webAuthorizes()
		if err != nil || authz {
			t.Fatalf("allow intention in place, web's agent authorizes client (%v, %v), yet the request fails", authz, err)
		}
		allowSeen = false
		t.Logf("KNOWN CONSUL BUG (hashicorp/consul#23368): after %s web's agent still denies client from its stale cache "+
			"while the server holds the allow intention; the reboot step proves the allow", allowTimeout)
	})

	step(t, "rebooting the web host brings web back into the mesh unaided", func(t *testing.T) {
		before := top.clientState(t)
		top.web.PowerOff()
		top.waitRequestFails(t, "with the web host powered off")
		top.lan.replug(top.web.Name, lanIfname, top.web.Addr+lanBits)
		rebooted := time.Now()
		top.web.Boot()
		top.waitRequestOK(t, "after the web host's reboot")
		t.Logf("bench: multihost web-reboot-to-first-request %.2fs (web host booted again to the first answer through the mesh)",
			time.Since(rebooted).Seconds())
		if !allowSeen {
			t.Log("the allow intention client -> web is in effect after the reboot")
		}
		if after := top.clientState(t); after != before {
			t.Errorf("client host's proxy changed across web's reboot:\nbefore %s\nafter  %s", before, after)
		}
		var inst []struct{ ServiceID, Node, Address string }
		out, err := top.consulAPI("GET", "/v1/catalog/service/web", "")
		if err == nil {
			err = json.Unmarshal([]byte(out), &inst)
		}
		if err != nil || len(inst) != 1 || inst[0].ServiceID != meshWebID || inst[0].Node != top.web.Hostname {
			t.Errorf("web in the catalog after the reboot: %+v %v, want exactly %s on %s", inst, err, meshWebID, top.web.Hostname)
		}
	})

	step(t, "a second web instance, on the client host, joins the mesh", top.addSecondWeb)

	step(t, "zero failed requests while a web host's meshx-proxy@web stops and starts, then the host reboots", top.zeroLoss)

	step(t, "the Consul server lost and back: established paths serve, nothing deregistered or restarted, converges", top.serverLost)

	step(t, "the second web instance leaves: its config removed, systemctl reload meshx-init", top.removeSecondWeb)

	step(t, "native data plane with transparent proxy on both clients", func(t *testing.T) {
		top.goNative(t)
		top.waitByNameOK(t, "after switching both clients to proxy.mode native")
	})

	step(t, "native: intentions deny and allow take effect at once, in both directions, three times", func(t *testing.T) {
		for range 3 {
			top.intention(t, "deny")
			testutil.Eventually(t, allowTimeout, func() error {
				if body, code, _ := top.requestByName(); code == 0 {
					return fmt.Errorf("denied, yet answered %q", body)
				}
				return nil
			})
			top.intention(t, "allow")
			testutil.Eventually(t, allowTimeout, func() error {
				if body, code, err := top.requestByName(); code != 0 || !strings.Contains(body, meshWebBody) {
					return fmt.Errorf("allowed, yet: exit %d %v %q", code, err, body)
				}
				return nil
			})
		}
	})

	step(t, "native: rebooting the web host brings web back by name unaided", func(t *testing.T) {
		top.web.PowerOff()
		top.lan.replug(top.web.Name, lanIfname, top.web.Addr+lanBits)
		rebooted := time.Now()
		top.web.Boot()
		top.waitByNameOK(t, "after the web host's reboot in native mode")
		t.Logf("bench: multihost native web-reboot-to-first-request %.2fs", time.Since(rebooted).Seconds())
	})
}

// goNative switches web and client to the native data plane with
// transparent proxy, as an operator would: new service-configs, then
// systemctl reload meshx-init. The client host resolves through Consul DNS
// (the DNS redirect of its transparent-proxy rules).
func (top *topology) goNative(t *testing.T) {
	t.Helper()
	top.web.WriteFile("/etc/meshx/services.d/web.yaml", `version: 1
service: {name: web, port: 8080}
check: {ttl: 10s, probe: tcp}
proxy: {mode: native}
transparent_proxy: {enabled: true}
`)
	top.client.WriteFile("/etc/meshx/services.d/client.yaml", `version: 1
service: {name: client}
check: {probe: none}
upstreams: [{name: web, port: 9191}]
proxy: {mode: native}
transparent_proxy: {enabled: true, dns: {enabled: true}}
`)
	top.client.MustExec("sh", "-c", "umount /etc/resolv.conf 2>/dev/null; echo 'nameserver 127.0.0.1' >/etc/resolv.conf")
	// A VM has a default route (its gateway); the app's connect() to a
	// virtual IP needs a route before the redirect rules see it.
	top.client.MustExec("ip", "route", "replace", "default", "dev", lanIfname)
	for _, h := range []*meshHost{top.web, top.client} {
		// systemd in these containers sometimes fails to place the reload's
		// control process in its cgroup (exit 219/CGROUP, before meshx-init
		// runs at all): try again then.
		testutil.Eventually(t, multiStepTimeout, func() error {
			out, err := h.Exec("systemctl", "reload", "meshx-init.service")
			if err != nil {
				status, _ := h.Exec("systemctl", "status", "--no-pager", "meshx-init.service")
				if !strings.Contains(status, "219/CGROUP") {
					t.Fatalf("systemctl reload meshx-init on %s: %v\n%s\n%s", h.Hostname, err, out, status)
				}
				return fmt.Errorf("reload on %s: %v (219/CGROUP)", h.Hostname, err)
			}
			return nil
		})
	}
}

// requestByName is the seed's request: the client host's app asks
// http://web.virtual.consul/ (Consul DNS, web's virtual IP, redirected into
// the client's native plane), from inside the client host.
func (top *topology) requestByName() (string, int, error) {
	out, err := top.client.Exec("curl", "-sS", "--max-time", strconv.Itoa(int(requestTimeout.Seconds())), "http://web.virtual.consul/")
	code := 0
	if err != nil {
		code = 1
	}
	return out, code, err
}

func (top *topology) waitByNameOK(t *testing.T, when string) {
	t.Helper()
	testutil.Eventually(t, multiStepTimeout, func() error {
		body, code, err := top.requestByName()
		if code != 0 || !strings.Contains(body, meshWebBody) {
			return fmt.Errorf("%s: GET http://web.virtual.consul/: exit %d %v %q", when, code, err, body)
		}
		return nil
	})
}

// request asks the client's local upstream port from the client host's
// namespace; it returns the body and curl's exit code.
func (top *topology) request() (string, int, error) {
	return nsExec(top.client.Name, requestTimeout+5*time.Second,
		"curl", "-sS", "--max-time", strconv.Itoa(int(requestTimeout.Seconds())), upstreamURL)
}

func (top *topology) waitRequestOK(t *testing.T, when string) {
	t.Helper()
	testutil.Eventually(t, multiStepTimeout, func() error {
		body, code, err := top.request()
		if code != 0 || !strings.Contains(body, meshWebBody) {
			return fmt.Errorf("%s: GET %s: exit %d %v %q", when, upstreamURL, code, err, body)
		}
		return nil
	})
}

// pollRequestOK polls the request until it is answered by web or timeout
// passes; it does not fail the test.
func (top *topology) pollRequestOK(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		body, code, err := top.request()
		if code == 0 && strings.Contains(body, meshWebBody) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s: exit %d %v %q", upstreamURL, code, err, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// webAuthorizes asks the web host's agent whether client may connect to web,
// the same question web's proxy asks for every connection.
func (top *topology) webAuthorizes() (bool, error) {
	var roots struct{ TrustDomain string }
	out, err := top.consulAPI("GET", "/v1/connect/ca/roots", "")
	if err == nil {
		err = json.Unmarshal([]byte(out), &roots)
	}
	if err != nil {
		return false, err
	}
	body := fmt.Sprintf(`{"Target":"web","ClientCertURI":"spiffe://%s/ns/default/dc/dc1/svc/client"}`, roots.TrustDomain)
	out, err = top.web.Exec("curl", "-fsS", "--max-time", "5", "-X", "POST", "--data", body,
		"http://127.0.0.1:8500/v1/agent/connect/authorize")
	var res struct {
		Authorized bool
		Reason     string
	}
	if err == nil {
		err = json.Unmarshal([]byte(out), &res)
	}
	if err != nil {
		return false, fmt.Errorf("authorize on %s: %v %s", top.web.Hostname, err, out)
	}
	return res.Authorized, nil
}

// waitRequestFails waits until the request fails, and fails cleanly: curl gets
// a closed or reset connection at once, it is not left hanging (exit 28) nor
// answered with anything.
func (top *topology) waitRequestFails(t *testing.T, when string) {
	t.Helper()
	testutil.Eventually(t, multiStepTimeout, func() error {
		start := time.Now()
		body, code, err := top.request()
		took := time.Since(start)
		switch {
		case code == 0:
			return fmt.Errorf("%s: the request still succeeds: %q", when, body)
		case code == 28 || code == -1:
			t.Fatalf("%s: the request hung for %s (curl exit %d %v), want a clean failure", when, took.Round(time.Millisecond), code, err)
		}
		t.Logf("%s: request fails with curl exit %d in %s: %s", when, code, took.Round(time.Millisecond), strings.TrimSpace(body))
		return nil
	})
}

// members maps each Consul member's name to "address status" as the server sees it.
func (top *topology) members(t *testing.T) map[string]string {
	t.Helper()
	var ms []struct {
		Name, Addr string
		Status     int
	}
	got := map[string]string{}
	testutil.Eventually(t, multiStepTimeout, func() error {
		out, err := top.consulAPI("GET", "/v1/agent/members", "")
		if err == nil {
			err = json.Unmarshal([]byte(out), &ms)
		}
		if err != nil {
			return err
		}
		clear(got)
		for _, m := range ms {
			status := map[int]string{1: "alive", 2: "leaving", 3: "left", 4: "failed"}[m.Status]
			got[m.Name] = m.Addr + " " + status
		}
		for _, r := range meshRoles {
			if got[r.Hostname] != r.Addr+" alive" {
				return fmt.Errorf("members %v", got)
			}
		}
		return nil
	})
	return got
}

// checkMeshPath shows the request could only have taken the mesh path:
// web's app listens on web's loopback only; the only way into the web host is
// web's sidecar, registered on the web host's private address, which speaks TLS
// only, presents web's SPIFFE identity from the mesh's CA and serves nothing
// to a caller without a client certificate; and web's app logged the request
// as coming from its own loopback (its sidecar).
func (top *topology) checkMeshPath(t *testing.T) {
	t.Helper()
	// web's service-config says address: 127.0.0.1 (where its app listens);
	// the catalog must give the web host's address for web and its sidecar.
	var addr string
	var port int
	for _, name := range []string{"web", "web-sidecar-proxy"} {
		var sc []struct {
			Address, ServiceAddress, ServiceID string
			ServicePort                        int
		}
		out, err := top.consulAPI("GET", "/v1/catalog/service/"+name, "")
		if err == nil {
			err = json.Unmarshal([]byte(out), &sc)
		}
		if err != nil || len(sc) != 1 {
			t.Fatalf("%s in the catalog: %v %s", name, err, out)
		}
		addr, port = sc[0].ServiceAddress, sc[0].ServicePort
		if addr == "" {
			addr = sc[0].Address
		}
		if addr != webAddr {
			t.Errorf("%s is advertised at %s (service address %q), want the web host's private address %s", name, addr, sc[0].ServiceAddress, webAddr)
		}
	}
	sidecar := fmt.Sprintf("%s:%d", addr, port)

	if _, code, _ := nsExec(top.client.Name, 10*time.Second, "curl", "-sS", "--max-time", "3", "http://"+webAddr+":8080/"); code == 0 {
		t.Errorf("web's app answers on %s:8080 from the client host: it must be reachable through its sidecar only", webAddr)
	}
	if body, code, _ := nsExec(top.client.Name, 10*time.Second, "curl", "-sS", "--max-time", "3", "http://"+sidecar+"/"); code == 0 {
		t.Errorf("web's sidecar %s answers plain HTTP: %q", sidecar, body)
	}
	if body, code, _ := nsExec(top.client.Name, 10*time.Second, "curl", "-sSk", "--max-time", "3", "https://"+sidecar+"/"); code == 0 {
		t.Errorf("web's sidecar %s answers TLS without a client certificate: %q", sidecar, body)
	}
	// The client host's own openssl (the image has it; the test runner may not).
	san, err := top.client.Exec("sh", "-c",
		"timeout 10 openssl s_client -connect "+sidecar+" </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName")
	if err != nil || !strings.Contains(san, "spiffe://") || !strings.Contains(san, "/svc/web") {
		t.Errorf("certificate of web's sidecar %s: %v %q, want web's SPIFFE id", sidecar, err, san)
	}

	// A fresh request, and web's app saw it from its own loopback.
	logged := func() int {
		out, _ := top.web.Exec("journalctl", "-b", "-u", "web-app.service", "--no-pager", "-o", "cat")
		return strings.Count(out, `127.0.0.1 - - `)
	}
	n := logged()
	if body, code, err := top.request(); code != 0 || !strings.Contains(body, meshWebBody) {
		t.Fatalf("GET %s: exit %d %v %q", upstreamURL, code, err, body)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if m := logged(); m <= n {
			return fmt.Errorf("web's app logged %d requests from 127.0.0.1, had %d before", m, n)
		}
		return nil
	})
	t.Logf("client host -> 127.0.0.1:9191 -> client's sidecar -> mTLS -> %s (web's sidecar, SAN %s) -> web's app", sidecar, strings.TrimSpace(san))
}

// intention sets the intention client -> web on the server.
func (top *topology) intention(t *testing.T, action string) {
	t.Helper()
	if out, err := top.consulAPI("PUT", "/v1/connect/intentions/exact?source=client&destination=web",
		fmt.Sprintf(`{"Action":%q}`, action)); err != nil {
		t.Fatalf("intention client -> web %s: %v %s", action, err, out)
	}
}

// healthyWeb counts web's passing mesh instances as the client host's agent sees them.
func (top *topology) healthyWeb() (int, error) {
	out, err := top.client.Exec("curl", "-fsS", "--max-time", "5", "http://127.0.0.1:8500/v1/health/connect/web?passing=1")
	if err != nil {
		return -1, fmt.Errorf("%v: %s", err, out)
	}
	var inst []json.RawMessage
	if err := json.Unmarshal([]byte(out), &inst); err != nil {
		return -1, fmt.Errorf("%v: %s", err, out)
	}
	return len(inst), nil
}

// clientState is what must not change on the client host while web has trouble:
// its meshx-proxy@client process, restart count and Connect proxy.
func (top *topology) clientState(t *testing.T) string {
	t.Helper()
	u := "meshx-proxy@client.service"
	pids := proxyPIDs(t, top.client.Machine, meshClientID)
	slices.Sort(pids)
	return fmt.Sprintf("%s %s MainPID=%s NRestarts=%s proxy=%v", u, top.client.Show(u, "ActiveState"),
		top.client.Show(u, "MainPID"), top.client.Show(u, "NRestarts"), pids)
}
