package integration

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// TestUnixSocketAgent: meshx and its proxies reach an agent through a unix
// socket (consul.address: unix:///...), as MeshxConsul's documented setup does.
func TestUnixSocketAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "http.sock")
	c := testutil.StartConsul(t, fmt.Sprintf(`addresses { http = "127.0.0.1 unix://%s" }`, sock))
	h := newHost(t, c, "")
	h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: \"unix://%s\", binary: %q}\nhostname: testhost\nports: {range: \"20950-20999\"}\n",
		sock, testutil.ConsulBinary(t)))
	web := startApp(t, "hello over a socket")
	h.service("web.yaml", fmt.Sprintf(webYAML, web))
	h.service("client.yaml", clientYAML)
	h.foreground()
	h.waitPassing(30*time.Second, "web-testhost", "client-testhost")
	waitBody(t, 30*time.Second, h.plan("client").Upstreams[0].Port, "hello over a socket")
}
