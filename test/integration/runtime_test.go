package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// TestConnectDisconnect adds an upstream to a running service and removes it,
// as MeshxConsul's connect/disconnect do: one address per item, in order.
func TestConnectDisconnect(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	webPort := startApp(t, "hello from web")
	h.service("web.yaml", fmt.Sprintf(webYAML, webPort))
	h.service("client.yaml", "version: 1\nservice: {name: client}\ncheck: {probe: none}\n")
	h.foreground()
	h.waitPassing(30*time.Second, "web-testhost", "client-testhost")

	r := h.init("connect", "client", "web", "db:"+strconv.Itoa(testutil.FreePort(t)), "web")
	if r.code != 0 {
		t.Fatalf("connect: exit %d\n%s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 {
		t.Fatalf("want one line per item, got:\n%s", r.stdout)
	}
	_, addr, _ := strings.Cut(lines[0], "\t")
	if _, again, _ := strings.Cut(lines[2], "\t"); again != addr {
		t.Errorf("an upstream already present answers with its address: %q vs %q", again, addr)
	}
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("bad address %q: %v", addr, err)
	}
	port, _ := strconv.Atoi(portText)
	waitBody(t, 30*time.Second, port, "hello from web")
	if ups := h.services()["client-testhost-sidecar-proxy"].Proxy.Upstreams; len(ups) != 2 {
		t.Errorf("sidecar upstreams = %+v, want web and db", ups)
	}
	// The running meshx-proxy reloaded its plan: its check watches the new
	// listeners (db has no instances but its local listener is bound).
	h.waitPassing(15*time.Second, "client-testhost")

	if r := h.init("disconnect", "client", "web", "nosuch"); r.code == 0 || !strings.Contains(r.stderr, "nosuch: not connected") {
		t.Errorf("disconnect of an unknown upstream: exit %d\n%s", r.code, r.stderr)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if _, err := get(port); err == nil {
			return fmt.Errorf("upstream listener on %d still answers", port)
		}
		return nil
	})
	if ups := h.services()["client-testhost-sidecar-proxy"].Proxy.Upstreams; len(ups) != 1 || ups[0].DestinationName != "db" {
		t.Errorf("sidecar upstreams after disconnect = %+v, want db only", ups)
	}
}

// TestTokenStaysSecret: an ACL token given as a file reaches the proxy only
// through its environment: never in argv, the plan, status files or logs.
func TestTokenStaysSecret(t *testing.T) {
	c := testutil.StartConsul(t, "")
	const token = "3f0c1b7e-meshx-secret-token"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, c, "")
	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: %q, binary: %q, token_file: %q}\nhostname: testhost\nports: {range: \"20900-20949\"}\n",
		"http://"+c.HTTPAddr, testutil.ConsulBinary(t), tokenFile))
	h.service("web.yaml", fmt.Sprintf(webYAML, startApp(t, "hi")))
	f := h.foreground()
	h.waitPassing(30*time.Second, "web-testhost")
	st := h.status("web")
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.ProxyPID))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cmdline), token) {
		t.Errorf("token in the proxy's argv")
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st.ProxyPID))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(environ), "CONSUL_HTTP_TOKEN="+token) {
		t.Errorf("the proxy did not get the token in its environment")
	}
	for _, pid := range []int{st.PID} {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(b), token) {
			t.Errorf("token in meshx-proxy's argv")
		}
	}
	_ = filepath.WalkDir(filepath.Dir(h.dirs.Config), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if b, _ := os.ReadFile(p); strings.Contains(string(b), token) {
			t.Errorf("token written to %s", p)
		}
		return nil
	})
	f.stop(t)
	if strings.Contains(f.out.String(), token) {
		t.Errorf("token in the logs")
	}
}
