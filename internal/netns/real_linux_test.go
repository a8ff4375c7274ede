package netns

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// The tests against the real CNI plugins play the host inside a namespace
// of their own ("host"), joined by a veth pair to a second one ("peer")
// that stands for another machine on the LAN. Nothing touches the real
// host's links, routes or nat table.

const (
	hostIP = "192.0.2.1" // TEST-NET-1, on the host's end of the LAN link
	peerIP = "192.0.2.2"
)

func needCNI(t *testing.T) {
	t.Helper()
	testutil.NeedRoot(t)
	for _, tool := range []string{"ip", "iptables-save"} {
		_, err := exec.LookPath(tool)
		testutil.Need(t, err == nil, tool+" (apt-get install iproute2 iptables)")
	}
	for _, p := range []string{"loopback", "ptp", "host-local", "portmap"} {
		_, err := os.Stat(filepath.Join("/usr/lib/cni", p))
		testutil.Need(t, err == nil, "CNI plugin "+p+" (apt-get install containernetworking-plugins)")
	}
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// lan makes the host and peer namespaces with a link between them.
func lan(t *testing.T) (host, peer string) {
	t.Helper()
	id := fmt.Sprintf("mxcni%d", os.Getpid()%100000)
	host, peer = id+"h", id+"p"
	for _, n := range []string{host, peer} {
		sh(t, "ip", "netns", "add", n)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
		sh(t, "ip", "-n", n, "link", "set", "lo", "up")
	}
	sh(t, "ip", "-n", host, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0", "netns", peer)
	sh(t, "ip", "-n", host, "addr", "add", hostIP+"/24", "dev", "lan0")
	sh(t, "ip", "-n", peer, "addr", "add", peerIP+"/24", "dev", "lan0")
	sh(t, "ip", "-n", host, "link", "set", "lan0", "up")
	sh(t, "ip", "-n", peer, "link", "set", "lan0", "up")
	return filepath.Join(Dir, host), filepath.Join(Dir, peer)
}

// listen opens a TCP listener inside the namespace at path; each connection
// is answered with what its remote address was, then closed.
func listen(t *testing.T, path, addr string) {
	t.Helper()
	var l net.Listener
	if err := Run(path, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "from %s\n", c.RemoteAddr())
			c.Close()
		}
	}()
}

// dial connects from the namespace at path and returns the line it got.
func dial(path, addr string) (string, error) {
	var line string
	err := Run(path, func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(line), err
}

func natOf(t *testing.T, path string) string {
	t.Helper()
	var out []byte
	if err := Run(path, func() (err error) {
		out, err = exec.Command("iptables-save", "-t", "nat").CombinedOutput()
		return err
	}); err != nil {
		t.Fatalf("iptables-save: %v\n%s", err, out)
	}
	var rules []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "-A ") {
			rules = append(rules, l)
		}
	}
	return strings.Join(rules, "\n")
}

// TestNamespaceLifecycle: Up gives the service its namespace with its own
// address and lo, a route out masqueraded behind the host's address, and its
// port published on the host's address (reached from another machine); a
// second Up changes nothing; a broken link is repaired; Down removes the
// namespace and every rule of it from the host's nat table; Up again gives
// the same address back.
func TestNamespaceLifecycle(t *testing.T) {
	needCNI(t)
	host, peer := lan(t)
	run := t.TempDir()
	m := New(Options{RunDir: run, EtcDir: t.TempDir(), HostNetns: host, Log: testutil.Logger(t)})
	svc := fmt.Sprintf("t%d", os.Getpid()%100000)
	s := Spec{Service: svc, Subnet: netip.MustParsePrefix("198.19.240.0/24"), Address: netip.MustParseAddr("198.19.240.7"),
		HostAddress: netip.MustParseAddr(hostIP), Publish: []Port{{HostPort: 21001, ContainerPort: 21001}},
		DNS: []netip.Addr{netip.MustParseAddr("198.19.240.1")}}
	ctx := context.Background()
	t.Cleanup(func() { _ = m.Down(ctx, s) })
	ns := Path(Dir, svc)

	if res, err := m.Up(ctx, s); err != nil || res != Created {
		t.Fatalf("Up: %v, %v", res, err)
	}
	if got, ok := m.Spec(svc); !ok || got.Address != s.Address || len(got.Publish) != 1 {
		t.Errorf("recorded spec: %+v, %v", got, ok)
	}
	if out := sh(t, "ip", "-n", Name(svc), "-4", "addr"); !strings.Contains(out, "inet 198.19.240.7/") || !strings.Contains(out, "inet 127.0.0.1/8") {
		t.Errorf("namespace addresses:\n%s", out)
	}
	resolv, err := os.ReadFile(ResolvConf(m.o.EtcDir, svc))
	if err != nil || !strings.Contains(string(resolv), "nameserver 198.19.240.1\n") {
		t.Errorf("resolv.conf: %q, %v", resolv, err)
	}

	// Published: the peer reaches the service through the host's address.
	listen(t, ns, "0.0.0.0:21001")
	if got, err := dial(peer, hostIP+":21001"); err != nil || !strings.HasPrefix(got, "from "+peerIP+":") {
		t.Errorf("peer -> %s:21001 published port: %q, %v", hostIP, got, err)
	}
	// Out: the service reaches the peer, masqueraded behind the host.
	listen(t, peer, peerIP+":9000")
	if got, err := dial(ns, peerIP+":9000"); err != nil || !strings.HasPrefix(got, "from "+hostIP+":") {
		t.Errorf("namespace -> peer: %q, %v (want it masqueraded as %s)", got, err, hostIP)
	}

	rules := natOf(t, host)
	for _, want := range []string{"198.19.240.7", "21001"} {
		if !strings.Contains(rules, want) {
			t.Errorf("host nat table has no rule for %s:\n%s", want, rules)
		}
	}
	if res, err := m.Up(ctx, s); err != nil || res != Unchanged {
		t.Errorf("second Up: %v, %v", res, err)
	}
	if again := natOf(t, host); again != rules {
		t.Errorf("second Up changed the nat table:\nbefore:\n%s\nafter:\n%s", rules, again)
	}

	// Broken from outside: the namespace's link is gone. Up repairs it in
	// the same namespace (a unit that joined it stays in it).
	sh(t, "ip", "-n", Name(svc), "link", "del", "eth0")
	if res, err := m.Up(ctx, s); err != nil || res != Repaired {
		t.Fatalf("Up after the link was deleted: %v, %v", res, err)
	}
	if got, err := dial(peer, hostIP+":21001"); err != nil || !strings.HasPrefix(got, "from "+peerIP+":") {
		t.Errorf("after repair, peer -> published port: %q, %v", got, err)
	}

	if err := m.Down(ctx, s); err != nil {
		t.Fatal(err)
	}
	if Exists(svc) {
		t.Errorf("namespace %s left after Down", Name(svc))
	}
	left := natOf(t, host)
	for _, gone := range []string{"198.19.240.7", "21001", Name(svc)} {
		if strings.Contains(left, gone) {
			t.Errorf("Down left %s in the host's nat table:\n%s", gone, left)
		}
	}
	if _, err := os.Stat(ResolvConf(m.o.EtcDir, svc)); !os.IsNotExist(err) {
		t.Errorf("resolv.conf left after Down: %v", err)
	}
	if _, ok := m.Spec(svc); ok {
		t.Errorf("spec still recorded after Down")
	}
	if err := m.Down(ctx, s); err != nil {
		t.Errorf("second Down: %v", err)
	}

	// Back (as after a reboot): the same address.
	if res, err := m.Up(ctx, s); err != nil || res != Created {
		t.Fatalf("Up after Down: %v, %v", res, err)
	}
	if out := sh(t, "ip", "-n", Name(svc), "-4", "addr"); !strings.Contains(out, "inet 198.19.240.7/") {
		t.Errorf("address after Up again:\n%s", out)
	}
}
