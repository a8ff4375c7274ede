package integration

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// TestTLSAgent: meshx and its proxies reach an agent over HTTPS only, with
// the CA given as consul.ca_file (the proxy gets it as CONSUL_CACERT).
func TestTLSAgent(t *testing.T) {
	dir := t.TempDir()
	bin := testutil.ConsulBinary(t)
	for _, args := range [][]string{{"tls", "ca", "create"}, {"tls", "cert", "create", "-server", "-additional-ipaddress", "127.0.0.1"}} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("consul %v: %v\n%s", args, err, out)
		}
	}
	ca := filepath.Join(dir, "consul-agent-ca.pem")
	https := testutil.FreePort(t)
	c := testutil.StartConsul(t, fmt.Sprintf(`tls { defaults { ca_file = %q, cert_file = %q, key_file = %q, verify_incoming = false } }`,
		ca, filepath.Join(dir, "dc1-server-consul-0.pem"), filepath.Join(dir, "dc1-server-consul-0-key.pem")),
		"-https-port", fmt.Sprint(https))
	h := newHost(t, c, "")
	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: \"https://127.0.0.1:%d\", ca_file: %q, tls_server_name: server.dc1.consul, binary: %q}\nhostname: testhost\nports: {range: \"20950-20999\"}\n",
		https, ca, bin))
	web := startApp(t, "hello over https")
	h.service("web.yaml", fmt.Sprintf(webYAML, web))
	h.service("client.yaml", clientYAML)
	h.foreground()
	h.waitPassing(30*time.Second, "web-testhost", "client-testhost")
	waitBody(t, 30*time.Second, h.plan("client").Upstreams[0].Port, "hello over https")

	// Without the CA the agent's certificate is refused: the TLS settings are
	// really in use, not bypassed.
	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: \"https://127.0.0.1:%d\", wait: 2s}\nhostname: testhost\n", https))
	if r := h.init("run", "--systemd=no"); r.code != 1 {
		t.Errorf("without ca_file: exit %d, want 1 (certificate refused)", r.code)
	}
}
