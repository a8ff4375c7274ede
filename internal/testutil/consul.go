package testutil

import (
	"context"
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
	HTTPAddr string // 127.0.0.1:PORT (inside NetNS, when set)
	// NetNS, when set, is the network namespace the agent runs in; its API
	// is then reached from outside through Socket.
	NetNS    string
	Socket   string // a unix socket serving the HTTP API too; "" = none
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
	return startConsul(t, "", extraHCL, args...)
}

// StartConsulIn starts a dev agent inside the network namespace netns. Its
// HTTP API also listens on a unix socket (Socket, Address), which is how
// the test and meshx reach it from any namespace.
func StartConsulIn(t testing.TB, netns, extraHCL string, args ...string) *Consul {
	t.Helper()
	return startConsul(t, netns, extraHCL, args...)
}

// Address is the agent's address as meshx.yaml's consul.address takes it.
func (c *Consul) Address() string {
	if c.Socket != "" {
		return "unix://" + c.Socket
	}
	return "http://" + c.HTTPAddr
}

// Port is the agent's port of a kind (http, grpc, dns, serf_lan, serf_wan, server).
func (c *Consul) Port(kind string) int { return c.ports[kind] }

// HTTPClient reaches the agent's HTTP API from the test's namespace.
func (c *Consul) HTTPClient() *http.Client {
	if c.Socket == "" {
		return &http.Client{Timeout: 5 * time.Second}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", c.Socket)
		}}}
}

func startConsul(t testing.TB, netns, extraHCL string, args ...string) *Consul {
	t.Helper()
	c := &Consul{Bin: ConsulBinary(t), ports: map[string]int{}, extraHCL: extraHCL, args: args,
		logFile: filepath.Join(t.TempDir(), "consul.log"), NetNS: netns}
	if netns != "" {
		c.Socket = filepath.Join(t.TempDir(), "http.sock")
		c.extraHCL += fmt.Sprintf("\naddresses { http = \"127.0.0.1 unix://%s\" }\n", c.Socket)
	}
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
	if c.NetNS != "" {
		args = append([]string{"netns", "exec", c.NetNS, c.Bin}, args...)
		c.cmd = exec.Command("ip", args...)
	} else {
		c.cmd = exec.Command(c.Bin, args...)
	}
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
		resp, err := c.HTTPClient().Get("http://" + c.HTTPAddr + "/v1/status/leader")
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
