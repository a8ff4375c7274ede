package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// netns creates a network namespace for the test and removes it after.
func netns(t *testing.T) string {
	t.Helper()
	testutil.NeedRoot(t)
	_, err := exec.LookPath("ip")
	testutil.Need(t, err == nil, "iproute2 (ip)")
	_, err = exec.LookPath("iptables-save")
	testutil.Need(t, err == nil, "iptables")
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "mxtp-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

func natRules(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "iptables-save", "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v\n%s", err, out)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":CONSUL") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// proxyProc runs meshx-proxy for one service with its rules in ns.
type proxyProc struct {
	cmd  *exec.Cmd
	out  *testutil.SyncBuffer
	done chan struct{}
}

// startProxy runs meshx-proxy for service name; ns "" = no --netns.
func (h *host) startProxy(t *testing.T, ns, name string) *proxyProc {
	t.Helper()
	p := &proxyProc{out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	args := h.flags()
	if ns != "" {
		args = append(args, "--netns", "/run/netns/"+ns)
	}
	p.cmd = exec.Command(filepath.Join(binDir, "meshx-proxy"), append(args, name)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
		}
		t.Logf("meshx-proxy output:\n%s", p.out.String())
	})
	return p
}

func (p *proxyProc) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("meshx-proxy did not exit")
	}
}

// TestTransparentProxyLifecycle: meshx-proxy installs the rules once the proxy
// accepts, a SIGKILLed meshx-proxy's rules are replaced (one rule set) on its
// next start, SIGTERM removes them, and --cleanup (ExecStopPost) removes what
// a crash left.
func TestTransparentProxyLifecycle(t *testing.T) {
	ns := netns(t)
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	side := testutil.FreePort(t)
	out := testutil.FreePort(t)
	app := startApp(t, "app")
	h.service("web.yaml", fmt.Sprintf(`version: 1
service: {name: web, port: %d}
proxy:
  user: nobody
  command: [%q, -listen, "127.0.0.1:%d", -listen, "127.0.0.1:%d"]
transparent_proxy: {enabled: true, outbound_port: %d, exclude_inbound_ports: [8080]}
registration:
  Connect: {SidecarService: {Port: %d}}
`, app, filepath.Join(binDir, "fakeproxy"), side, out, out, side))
	if r := h.init("run", "--systemd=no"); r.code != 0 {
		t.Fatalf("run: %d", r.code)
	}
	if reg := h.services()["web-testhost-sidecar-proxy"]; reg == nil || string(reg.Proxy.Mode) != "transparent" {
		t.Fatalf("sidecar not registered in transparent mode: %+v", reg)
	}
	// ready waits for the status of meshx-proxy p itself: a killed one's file
	// may still say ready until the new one publishes.
	ready := func(p *proxyProc) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, func() error {
			if st := h.status("web"); !st.Ready || st.PID != p.cmd.Process.Pid {
				return fmt.Errorf("not ready: %+v", st)
			}
			return nil
		})
	}
	oneSet := func() {
		t.Helper()
		rules := natRules(t, ns)
		for _, want := range []string{
			"-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND",
			"-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT",
			fmt.Sprintf("-A CONSUL_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports %d", side),
			fmt.Sprintf("-A CONSUL_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports %d", out),
			"-A CONSUL_PROXY_OUTPUT -m owner --uid-owner 65534 -j RETURN",
			"-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8080 -j RETURN",
		} {
			if n := strings.Count(rules, want+"\n") + boolInt(strings.HasSuffix(rules, want)); n != 1 {
				t.Errorf("%q appears %d times, want once; rules:\n%s", want, n, rules)
			}
		}
	}
	none := func(when string) {
		t.Helper()
		if rules := natRules(t, ns); strings.Contains(rules, "CONSUL_") {
			t.Errorf("%s: meshx rules left:\n%s", when, rules)
		}
	}

	none("before start")
	p := h.startProxy(t, ns, "web")
	ready(p)
	oneSet()

	// A crash leaves the rules; the next start replaces them: one set.
	_ = p.cmd.Process.Kill()
	p.wait(t)
	if !strings.Contains(natRules(t, ns), "CONSUL_PROXY_INBOUND") {
		t.Fatalf("rules gone after SIGKILL: the crash case is not exercised")
	}
	p = h.startProxy(t, ns, "web")
	ready(p)
	oneSet()

	// SIGTERM: rules removed, service deregistered.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t)
	none("after SIGTERM")
	if h.services()["web-testhost"] != nil {
		t.Errorf("web still registered after SIGTERM")
	}

	// Crash, then ExecStopPost's --cleanup: nothing left, no proxy left.
	p = h.startProxy(t, ns, "web")
	ready(p)
	proxyPID := h.status("web").ProxyPID
	_ = p.cmd.Process.Kill()
	p.wait(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := exec.CommandContext(ctx, filepath.Join(binDir, "meshx-proxy"), append(h.flags(), "--netns", "/run/netns/"+ns, "--cleanup", "web")...)
	if b, err := cl.CombinedOutput(); err != nil {
		t.Fatalf("--cleanup: %v\n%s", err, b)
	}
	none("after --cleanup")
	testutil.Eventually(t, 10*time.Second, func() error {
		if procAlive(proxyPID) {
			return fmt.Errorf("proxy %d outlived meshx-proxy and --cleanup", proxyPID)
		}
		return nil
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestEnvoyBootstrap proves the Envoy path up to Envoy itself (no Envoy binary
// can be installed here): Consul accepts the registration, `consul connect
// envoy -bootstrap` renders a bootstrap for that sidecar with meshx's admin
// port, and the argv meshx would run is the one rendered.
func TestEnvoyBootstrap(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	h.service("api.yaml", `version: 1
service: {name: api, port: 18090}
proxy: {mode: envoy, extra_args: [-l, error], prometheus_scrape_path: /metrics}
upstreams: [{name: db}]
`)
	h.service("edge.yaml", `version: 1
service: {name: edge, port: 18091}
proxy: {mode: envoy}
transparent_proxy: {enabled: true}
`)
	if r := h.init("run", "--systemd=no"); r.code != 0 {
		t.Fatalf("run: %d", r.code)
	}
	for _, name := range []string{"api", "edge"} {
		pl := h.plan(name)
		if pl.Proxy.AdminPort == 0 {
			t.Fatalf("%s: no admin port allocated", name)
		}
		argv := pl.Proxy.Argv
		wantPrefix := []string{testutil.ConsulBinary(t), "connect", "envoy", "-sidecar-for", pl.ID, "-admin-bind", fmt.Sprintf("127.0.0.1:%d", pl.Proxy.AdminPort)}
		if len(argv) < len(wantPrefix) || strings.Join(argv[:len(wantPrefix)], " ") != strings.Join(wantPrefix, " ") {
			t.Errorf("%s argv = %q, want prefix %q", name, argv, wantPrefix)
		}
		// Envoy's own flags go after "--"; -bootstrap goes before them.
		args := append([]string{}, argv[1:]...)
		cut := len(args)
		for i, a := range args {
			if a == "--" {
				cut = i
			}
		}
		args = append(append(append([]string{}, args[:cut]...), "-bootstrap"), args[cut:]...)
		cmd := exec.Command(argv[0], args...)
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+c.HTTPAddr, "CONSUL_GRPC_ADDR="+grpcAddr(t, h))
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: consul connect envoy -bootstrap: %v", name, err)
		}
		var boot struct {
			Admin struct {
				Address struct {
					SocketAddress struct {
						PortValue int `json:"port_value"`
					} `json:"socket_address"`
				} `json:"address"`
			} `json:"admin"`
			Node struct {
				ID string `json:"id"`
			} `json:"node"`
		}
		if err := json.Unmarshal(b, &boot); err != nil {
			t.Fatalf("%s: bootstrap is not JSON: %v\n%s", name, err, b)
		}
		if boot.Admin.Address.SocketAddress.PortValue != pl.Proxy.AdminPort || boot.Node.ID != pl.SidecarID {
			t.Errorf("%s: bootstrap admin port %d node %q, want %d %q", name,
				boot.Admin.Address.SocketAddress.PortValue, boot.Node.ID, pl.Proxy.AdminPort, pl.SidecarID)
		}
		if name == "api" && !strings.Contains(string(b), "/metrics") {
			t.Errorf("api: the prometheus scrape path did not reach the bootstrap")
		}
	}
	if a, e := h.plan("api").Proxy.AdminPort, h.plan("edge").Proxy.AdminPort; a == e {
		t.Errorf("two Envoys share admin port %d", a)
	}
	if reg := h.services()["edge-testhost-sidecar-proxy"]; reg == nil || string(reg.Proxy.Mode) != "transparent" {
		t.Errorf("edge's sidecar not transparent: %+v", reg)
	}
}

// grpcAddr is the dev agent's gRPC address (envoy's bootstrap names it).
func grpcAddr(t *testing.T, h *host) string {
	self, err := h.client().Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	ports, _ := self["DebugConfig"]["GRPCPort"].(float64)
	return fmt.Sprintf("127.0.0.1:%d", int(ports))
}
