package iptables

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// Helpers for the tests against real iptables, inside network namespaces
// the tests create and delete. Nothing here touches the host's namespace.

var netnsSeq atomic.Int64

// netns is a network namespace created for one test.
type netns struct {
	name string
	path string // /var/run/netns/<name>
}

// needNetns skips (or fails under CI) unless the test can create network
// namespaces and run iptables in them.
func needNetns(t testing.TB) {
	t.Helper()
	testutil.NeedRoot(t)
	for _, tool := range []string{"ip", "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		_, err := exec.LookPath(tool)
		testutil.Need(t, err == nil, tool+" (apt-get install iptables iproute2)")
	}
}

// newNetns creates a namespace with lo up, deleted in t.Cleanup.
func newNetns(t testing.TB, role string) netns {
	t.Helper()
	needNetns(t)
	name := fmt.Sprintf("mxipt-%d-%d-%s", os.Getpid(), netnsSeq.Add(1), role)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return netns{name: name, path: filepath.Join("/var/run/netns", name)}
}

// run runs a command on the host side and fails the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// exec runs a command inside the namespace.
func (n netns) exec(t testing.TB, name string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// save returns iptables-save (or ip6tables-save) of the nat table.
func (n netns) save(t testing.TB, f Family) string {
	t.Helper()
	tool := "iptables-save"
	if f == IPv6 {
		tool = "ip6tables-save"
	}
	return n.exec(t, tool, "-t", "nat")
}

// restore commits an iptables-restore --noflush payload (test set-up only).
func (n netns) restore(t testing.TB, f Family, payload string) {
	t.Helper()
	tool := "iptables-restore"
	if f == IPv6 {
		tool = "ip6tables-restore"
	}
	cmd := exec.Command("ip", "netns", "exec", n.name, tool, "--noflush")
	cmd.Stdin = strings.NewReader(payload)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s\n%s", tool, err, out, payload)
	}
}

func (n netns) manager(t testing.TB) *Manager {
	t.Helper()
	m, err := New(Options{NetNS: n.path})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// natTable is an iptables-save nat table parsed into chains and rules.
type natTable struct {
	chains []string            // user chains, sorted
	rules  map[string][]string // chain -> "-A chain ..." lines in order
}

func parseSave(text string) natTable {
	nt := natTable{rules: map[string][]string{}}
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, ":"):
			name := strings.Fields(l[1:])[0]
			if !isBuiltin(name) {
				nt.chains = append(nt.chains, name)
			}
		case strings.HasPrefix(l, "-A "):
			c := strings.Fields(l)[1]
			nt.rules[c] = append(nt.rules[c], l)
		}
	}
	slices.Sort(nt.chains)
	return nt
}

// only keeps what belongs to meshx: its chains and the jumps into them.
func (nt natTable) only() natTable {
	out := natTable{rules: map[string][]string{}}
	for _, c := range nt.chains {
		if isOurChain(c) {
			out.chains = append(out.chains, c)
		}
	}
	for c, rs := range nt.rules {
		for _, r := range rs {
			if isOurChain(c) || jumpsToOurs(strings.TrimPrefix(r, "-A "+c+" ")) {
				out.rules[c] = append(out.rules[c], r)
			}
		}
	}
	return out
}

// without removes meshx's chains and jumps: what belongs to others.
func (nt natTable) without() natTable {
	out := natTable{rules: map[string][]string{}}
	for _, c := range nt.chains {
		if !isOurChain(c) {
			out.chains = append(out.chains, c)
		}
	}
	for c, rs := range nt.rules {
		for _, r := range rs {
			if !isOurChain(c) && !jumpsToOurs(strings.TrimPrefix(r, "-A "+c+" ")) {
				out.rules[c] = append(out.rules[c], r)
			}
		}
	}
	return out
}

func (nt natTable) String() string {
	var b strings.Builder
	for _, c := range nt.chains {
		fmt.Fprintf(&b, ":%s\n", c)
	}
	for _, c := range append([]string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}, nt.chains...) {
		for _, r := range nt.rules[c] {
			b.WriteString(r + "\n")
		}
	}
	return b.String()
}

// consulAgent is a `consul agent -dev` whose HTTP API listens on a unix
// socket only, so that it is reachable from inside any network namespace.
type consulAgent struct {
	bin    string
	socket string
}

// startConsulAgent starts a dev agent bound to bind (127.0.0.1, or ::1 to
// make `consul connect redirect-traffic` program IPv6 too), on free ports,
// stopped in t.Cleanup. redirect-traffic needs an agent: it asks
// /v1/agent/self whether the agent is dual-stack.
func startConsulAgent(t testing.TB, bind string) consulAgent {
	t.Helper()
	bin := testutil.ConsulBinary(t)
	dir, err := os.MkdirTemp("", "mxipt-consul-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "http.sock")
	ports := freePorts(t, 2)
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "-dev", "-bind", bind,
		"-hcl", fmt.Sprintf(`addresses { http = "unix://%s" }`, sock),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-serf-wan-port", "-1",
		"-serf-lan-port", fmt.Sprint(ports[0]), "-server-port", fmt.Sprint(ports[1]))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil && len(b) > 4000 {
				t.Logf("consul agent log (tail):\n%s", b[len(b)-4000:])
			}
		}
	})
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	testutil.Eventually(t, 30*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("consul agent exited: %v (log %s)", err, logf.Name())
		default:
		}
		resp, err := client.Get("http://consul/v1/agent/self")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("agent/self: %s", resp.Status)
		}
		return nil
	})
	return consulAgent{bin: bin, socket: sock}
}

// freePorts returns n TCP ports the kernel reports free on loopback.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// redirectTraffic runs `consul connect redirect-traffic` for ns with the
// flags args; netnsFlag chooses between Consul's -netns flag (one nsenter
// per rule) and starting Consul inside the namespace.
func (a consulAgent) redirectTraffic(ns netns, netnsFlag bool, args ...string) (string, error) {
	full := append([]string{"connect", "redirect-traffic", "-http-addr", "unix://" + a.socket}, args...)
	if netnsFlag {
		full = append(full, "-netns", ns.path)
		out, err := exec.Command(a.bin, full...).CombinedOutput()
		return string(out), err
	}
	var out []byte
	err := inNetns(ns.path, func() (err error) {
		out, err = exec.Command(a.bin, full...).CombinedOutput()
		return err
	})
	return string(out), err
}

// consulFlags translates a Config into redirect-traffic flags for the same
// settings. Protected ports are meshx's own addition and are not passed.
func consulFlags(c Config, dualStack bool) []string {
	args := []string{"-proxy-uid", fmt.Sprint(c.ProxyUID), "-proxy-inbound-port", fmt.Sprint(c.InboundPort)}
	if c.OutboundPort != 0 {
		args = append(args, "-proxy-outbound-port", fmt.Sprint(c.OutboundPort))
	}
	for _, p := range c.ExcludeInboundPorts {
		args = append(args, "-exclude-inbound-port", fmt.Sprint(p))
	}
	for _, p := range c.ExcludeOutboundPorts {
		args = append(args, "-exclude-outbound-port", fmt.Sprint(p))
	}
	for _, p := range c.ExcludeOutboundCIDRs {
		// Consul's IPv4-only mode programs iptables alone: give it the IPv4
		// prefixes. In dual-stack mode it sends every prefix to both
		// iptables and ip6tables and fails half-way, so the dual-stack
		// cases compared with it have none.
		if p.Addr().Is4() && !dualStack {
			args = append(args, "-exclude-outbound-cidr", p.String())
		}
	}
	for _, u := range c.ExcludeUIDs {
		args = append(args, "-exclude-uid", fmt.Sprint(u))
	}
	if c.DNS != nil {
		args = append(args, "-consul-dns-ip", c.DNS.Address.Addr().String(), "-consul-dns-port", fmt.Sprint(c.DNS.Address.Port()))
	}
	return args
}
