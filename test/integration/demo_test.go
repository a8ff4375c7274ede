package integration

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// TestDemo runs the README's main command, scripts/demo.sh, to its request
// through the mesh (--once) and checks it cleaned up after itself.
func TestDemo(t *testing.T) {
	testutil.ConsulBinary(t) // the demo builds it otherwise: minutes, not seconds
	for _, port := range []string{"8500", "8080", "9191"} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
			c.Close()
			testutil.Need(t, false, "ports 8500, 8080 and 9191 free for the demo (127.0.0.1:"+port+" is taken)")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./scripts/demo.sh", "--once")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "MESHX_CACHE="+cacheDir())
	out, err := cmd.CombinedOutput()
	t.Logf("demo output:\n%s", out)
	if err != nil {
		t.Fatalf("demo.sh --once: %v", err)
	}
	for _, want := range []string{"hello from web on", "(you asked for /hello)", "client   client-", "passing", "==> cleaning up"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if b, _ := exec.Command("pgrep", "-f", "/tmp/meshx-demo").Output(); len(b) > 0 {
		t.Errorf("demo left processes behind: %s", b)
	}
}
