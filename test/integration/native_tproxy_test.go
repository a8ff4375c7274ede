package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

func nsRun(t *testing.T, ns string, argv ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", ns, strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// nsApp runs nsapp (an HTTP server answering body) on addr inside ns.
func nsApp(t *testing.T, ns, addr, body string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, filepath.Join(binDir, "nsapp"), addr, body)
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testutil.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(nsRun(t, ns, "ss", "-Hltn"), addr) {
			return fmt.Errorf("nsapp not listening on %s yet: %s", addr, out.String())
		}
		return nil
	})
}

// curlIn fetches url from inside ns as user ("" = root).
func curlIn(t *testing.T, ns, user, url string) (string, error) {
	t.Helper()
	argv := []string{"netns", "exec", ns}
	if user != "" {
		argv = append(argv, "setpriv", "--reuid="+user, "--regid="+user, "--clear-groups")
	}
	argv = append(argv, "curl", "-sS", "-g", "--max-time", "5", url)
	out, err := exec.Command("ip", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("curl %s: %v: %s", url, err, out)
	}
	return string(out), nil
}

// redirected counts the connections the outbound REDIRECT rules caught in ns.
func redirected(t *testing.T, ns string) int {
	t.Helper()
	n := 0
	for _, tool := range []string{"iptables", "ip6tables"} {
		out := nsRun(t, ns, tool, "-t", "nat", "-L", "CONSUL_PROXY_REDIRECT", "-n", "-v", "-x")
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) > 2 && f[2] == "REDIRECT" {
				v, _ := strconv.Atoi(f[0])
				n += v
			}
		}
	}
	return n
}

// TestNativeTransparent is the seed's scenario on one host: an app that
// dials http://web.virtual.consul (Consul DNS through the DNS redirect),
// or web's virtual IP on any port, reaches web over mTLS through the
// native plane's outbound listener; a destination outside the mesh passes
// through (IPv4 and IPv6) unless the mesh says mesh destinations only;
// root and unprivileged apps are redirected; the plane's own connections
// (to web's sidecar at a non-loopback address) are not.
func TestNativeTransparent(t *testing.T) {
	ns := netns(t)
	nsRun(t, ns, "ip", "link", "set", "lo", "up")
	// A veth pair inside the namespace stands for the host's NIC (this
	// kernel has no dummy devices).
	nsRun(t, ns, "ip", "link", "add", "mx0", "type", "veth", "peer", "name", "mx1")
	nsRun(t, ns, "ip", "link", "set", "mx1", "up")
	nsRun(t, ns, "ip", "link", "set", "mx0", "up")
	nsRun(t, ns, "ip", "addr", "add", "192.0.2.10/24", "dev", "mx0")
	nsRun(t, ns, "ip", "-6", "addr", "add", "2001:db8::10/64", "dev", "mx0", "nodad")
	nsRun(t, ns, "ip", "route", "add", "default", "dev", "mx0")
	// ip netns exec puts /etc/netns/NS/resolv.conf over /etc/resolv.conf.
	etc := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The node (and so every service without an address) is at 192.0.2.10.
	c := testutil.StartConsulIn(t, ns, "", "-bind", "192.0.2.10")
	h := newHost(t, c, "")
	h.netns = ns
	nsApp(t, ns, "127.0.0.1:8080", "hello from web")
	nsApp(t, ns, "192.0.2.10:9090", "outside the mesh")
	nsApp(t, ns, "[2001:db8::10]:9090", "outside the mesh over IPv6")
	h.service("web.yaml", "version: 1\nservice: {name: web, address: 127.0.0.1, port: 8080}\nproxy: {mode: native}\n")
	h.service("client.yaml", fmt.Sprintf(`version: 1
service: {name: client}
check: {probe: none}
proxy: {mode: native}
transparent_proxy: {enabled: true, dns: {enabled: true, address: "127.0.0.1:%d"}}
`, c.Port("dns")))
	h.foreground()
	h.waitPassing(30*time.Second, "web-testhost", "client-testhost")
	testutil.Eventually(t, 30*time.Second, func() error {
		if !h.status("client").Ready {
			return fmt.Errorf("client not ready (rules not installed yet)")
		}
		return nil
	})
	var vip, addr string
	testutil.Eventually(t, 10*time.Second, func() error {
		es, _, err := h.client().Health().Connect("web", "", true, nil)
		if err != nil || len(es) != 1 {
			return fmt.Errorf("web's instances: %d, %v", len(es), err)
		}
		vip, addr = es[0].Service.TaggedAddresses["consul-virtual"].Address, es[0].Service.Address
		if vip == "" {
			return fmt.Errorf("web's sidecar has no virtual IP: %+v", es[0].Service.TaggedAddresses)
		}
		return nil
	})
	t.Logf("web: virtual IP %s, advertised address %q", vip, addr)

	t.Run("the first connections, all at once, to a virtual IP never seen", func(t *testing.T) {
		errs := make(chan error, 8)
		for range 8 {
			go func() {
				out, err := curlIn(t, ns, "", "http://"+vip+"/")
				if err == nil && out != "hello from web" {
					err = fmt.Errorf("answered %q", out)
				}
				errs <- err
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})
	for _, user := range []string{"", "65534"} {
		who := map[string]string{"": "root", "65534": "nobody"}[user]
		t.Run("by name as "+who, func(t *testing.T) {
			before := redirected(t, ns)
			testutil.Eventually(t, 20*time.Second, func() error {
				out, err := curlIn(t, ns, user, "http://web.virtual.consul/")
				if err != nil || out != "hello from web" {
					return fmt.Errorf("%q, %v", out, err)
				}
				return nil
			})
			if redirected(t, ns) == before {
				t.Errorf("the request was not redirected to the outbound listener")
			}
		})
	}
	t.Run("an instance's own address and port, only when dialed directly", func(t *testing.T) {
		// web's app listens on loopback only: 192.0.2.10:8080 is reached
		// through the mesh or not at all. Without service-defaults'
		// dialed_directly the catalog's instance addresses are not trusted
		// (anyone who can register could claim any address).
		if out, err := curlIn(t, ns, "", "http://192.0.2.10:8080/"); err == nil {
			t.Fatalf("an instance address matched without dialed_directly: %q", out)
		}
		if _, _, err := h.client().ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "web",
			TransparentProxy: &api.TransparentProxyConfig{DialedDirectly: true}}, nil); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 20*time.Second, func() error {
			out, err := curlIn(t, ns, "", "http://192.0.2.10:8080/")
			if err != nil || out != "hello from web" {
				return fmt.Errorf("%q, %v", out, err)
			}
			return nil
		})
	})
	t.Run("a connection straight to the outbound port is refused, not looped", func(t *testing.T) {
		if out, err := curlIn(t, ns, "", "http://127.0.0.1:15001/"); err == nil {
			t.Fatalf("answered: %q", out)
		}
		if out, err := curlIn(t, ns, "", "http://web.virtual.consul/"); err != nil || out != "hello from web" {
			t.Fatalf("the plane after it: %q, %v", out, err)
		}
	})
	t.Run("virtual IP on an arbitrary port", func(t *testing.T) {
		out, err := curlIn(t, ns, "", "http://"+vip+":1234/")
		if err != nil || out != "hello from web" {
			t.Fatalf("%q, %v", out, err)
		}
	})
	for _, url := range []string{"http://192.0.2.10:9090/", "http://[2001:db8::10]:9090/"} {
		t.Run("passthrough "+url, func(t *testing.T) {
			before := redirected(t, ns)
			out, err := curlIn(t, ns, "", url)
			if err != nil || !strings.HasPrefix(out, "outside the mesh") {
				t.Fatalf("%q, %v", out, err)
			}
			if redirected(t, ns) != before+1 {
				t.Errorf("want exactly the app's connection redirected (the plane's own dial passes): %d -> %d", before, redirected(t, ns))
			}
		})
	}
	t.Run("mesh destinations only", func(t *testing.T) {
		_, _, err := h.client().ConfigEntries().Set(&api.MeshConfigEntry{
			TransparentProxy: api.TransparentProxyMeshConfig{MeshDestinationsOnly: true}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 20*time.Second, func() error {
			if out, err := curlIn(t, ns, "", "http://192.0.2.10:9090/"); err == nil {
				return fmt.Errorf("a destination outside the mesh passed: %q", out)
			}
			return nil
		})
		if out, err := curlIn(t, ns, "", "http://web.virtual.consul/"); err != nil || out != "hello from web" {
			t.Errorf("the mesh itself after mesh destinations only: %q, %v", out, err)
		}
	})
}
