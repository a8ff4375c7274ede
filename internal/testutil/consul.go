package testutil

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Consul is a real `consul agent -dev` on loopback with its own ports.
type Consul struct {
	Bin      string
	HTTPAddr string // 127.0.0.1:PORT
	ports    map[string]int
	logFile  string
	extraHCL string
	args     []string
	cmd      *exec.Cmd
	done     chan struct{}
}

// FreePort returns a loopback TCP port nobody listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartConsul starts a dev agent and waits until it has a leader; it is
// stopped when the test ends. extraHCL is appended to its configuration and
// args to its command line (flags win over the configuration).
func StartConsul(t testing.TB, extraHCL string, args ...string) *Consul {
	t.Helper()
	c := &Consul{Bin: ConsulBinary(t), ports: map[string]int{}, extraHCL: extraHCL, args: args,
		logFile: filepath.Join(t.TempDir(), "consul.log")}
	for _, k := range []string{"http", "grpc", "dns", "serf_lan", "serf_wan", "server"} {
		c.ports[k] = FreePort(t)
	}
	c.HTTPAddr = "127.0.0.1:" + strconv.Itoa(c.ports["http"])
	c.start(t)
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			log := c.Log()
			if len(log) > 8000 {
				log = "...\n" + log[len(log)-8000:]
			}
			t.Logf("consul agent log (end):\n%s", log)
		}
	})
	return c
}

func (c *Consul) start(t testing.TB) {
	t.Helper()
	hcl := fmt.Sprintf(`ports { http = %d, grpc = %d, grpc_tls = -1, dns = %d, serf_lan = %d, serf_wan = %d, server = %d }
%s`, c.ports["http"], c.ports["grpc"], c.ports["dns"], c.ports["serf_lan"], c.ports["serf_wan"], c.ports["server"], c.extraHCL)
	log, err := os.OpenFile(c.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", "meshx-test", "-log-level", "warn", "-hcl", hcl}, c.args...)
	c.cmd = exec.Command(c.Bin, args...)
	c.cmd.Stdout, c.cmd.Stderr = log, log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start consul: %v", err)
	}
	c.done = make(chan struct{})
	go func() { _ = c.cmd.Wait(); log.Close(); close(c.done) }()
	Eventually(t, 30*time.Second, func() error {
		select {
		case <-c.done:
			b, _ := os.ReadFile(c.logFile)
			t.Fatalf("consul exited at start:\n%s", b)
		default:
		}
		resp, err := http.Get("http://" + c.HTTPAddr + "/v1/status/leader")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var b [64]byte
		n, _ := resp.Body.Read(b[:])
		if n <= 2 {
			return fmt.Errorf("no leader yet")
		}
		return nil
	})
}

// Stop ends the agent (SIGINT, then SIGKILL after 10s); idempotent.
func (c *Consul) Stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	Interrupt(c.cmd.Process, c.done, 10*time.Second)
}

// Restart stops the agent and starts a new one on the same ports. A dev agent
// keeps nothing: every registration is gone, as after a crash.
func (c *Consul) Restart(t testing.TB) {
	t.Helper()
	c.Stop()
	c.start(t)
}

// Log returns what the agent printed so far.
func (c *Consul) Log() string {
	b, _ := os.ReadFile(c.logFile)
	return string(b)
}
