package iptables

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The behaviour tests send real TCP (and UDP DNS) traffic through the rules:
// an "app" namespace holds the rules, the proxy's listeners and some plain
// listeners; a "peer" namespace, joined by a veth pair, plays the rest of
// the network. A connection's landing place is whichever listener accepted
// it; the outbound and inbound listeners also read SO_ORIGINAL_DST.

// helperEnv makes the test binary act as a one-shot TCP client: it is how a
// socket is opened as another UID (the test re-executes itself with
// SysProcAttr.Credential inside the namespace).
const helperEnv = "MESHX_IPTABLES_TEST_DIAL"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		if err := dialOnce(addr, os.Getenv(helperEnv+"_TOKEN")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dialOnce connects, sends the token and waits for the listener's "ok".
func dialOnce(addr, token string) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, token+"\n"); err != nil {
		return err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read reply from %s: %w", addr, err)
	}
	if reply != "ok\n" {
		return fmt.Errorf("reply %q from %s", reply, addr)
	}
	return nil
}

// landing is where a connection arrived.
type landing struct {
	listener string
	origDst  string // SO_ORIGINAL_DST, or the error reading it
}

// sinks are the listeners of a behaviour test, recording each token.
type sinks struct {
	mu  sync.Mutex
	got map[string]landing
	wg  sync.WaitGroup
}

func newSinks(t *testing.T) *sinks {
	s := &sinks{got: map[string]landing{}}
	t.Cleanup(s.wg.Wait)
	return s
}

func (s *sinks) record(token string, l landing) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got[token] = l
}

func (s *sinks) landing(token string) (landing, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.got[token]
	return l, ok
}

// listenTCP opens a TCP listener inside ns and serves it until cleanup.
func (s *sinks) listenTCP(t *testing.T, ns netns, name, network, addr string) {
	t.Helper()
	var l net.Listener
	if err := inNetns(ns.path, func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns.name, err)
	}
	t.Cleanup(func() { l.Close() })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(name, c.(*net.TCPConn))
			}()
		}
	}()
}

func (s *sinks) serve(name string, c *net.TCPConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	token, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	orig, err := originalDst(c)
	l := landing{listener: name, origDst: orig.String()}
	if err != nil {
		l.origDst = "error: " + err.Error()
	}
	s.record(strings.TrimSpace(token), l)
	io.WriteString(c, "ok\n")
}

// listenUDP opens a UDP socket inside ns that answers each datagram.
func (s *sinks) listenUDP(t *testing.T, ns netns, name, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := inNetns(ns.path, func() (err error) {
		pc, err = net.ListenPacket("udp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.record(string(buf[:n]), landing{listener: name})
			pc.WriteTo([]byte("ok"), from)
		}
	}()
}

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (same value as SO_ORIGINAL_DST,
// at level SOL_IPV6).
const ip6tSOOriginalDst = 80

// originalDst reads the destination a connection had before NAT.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	v4 := c.LocalAddr().(*net.TCPAddr).IP.To4() != nil
	var ap netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		var buf [28]byte // sockaddr_in6; sockaddr_in fits too
		size := uint32(len(buf))
		level, opt := uintptr(unix.SOL_IP), uintptr(unix.SO_ORIGINAL_DST)
		if !v4 {
			level, opt = unix.SOL_IPV6, ip6tSOOriginalDst
		}
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, level, opt,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			serr = errno
			return
		}
		port := binary.BigEndian.Uint16(buf[2:4])
		if v4 {
			ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port)
		} else {
			ap = netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])), port)
		}
	})
	if err == nil {
		err = serr
	}
	return ap, err
}

// topology is the app and peer namespaces of a behaviour test.
type topology struct {
	app, peer netns
	sinks     *sinks
	helper    string // test binary copy every UID can execute
	seq       atomic.Int64
}

// newTopology builds:
//
//	app:  lo, veth0 192.0.2.1/24 2001:db8::1/64 and 198.51.100.1/24 (a
//	      subnet with nobody else in it)
//	peer: veth1 192.0.2.2/24 192.0.2.3/24 2001:db8::2/64 2001:db8::3/64
//
// with listeners: in app the proxy's outbound (15001) and inbound (21000)
// ports, an app port 8080, SSH 22, Consul HTTP 8500, an excluded port 9100,
// a loopback service 7777 and Consul DNS 127.0.0.1:8600 (TCP and UDP); in
// peer ports 80 and 5432. Neither namespace has a route anywhere else. (A
// dummy interface would do for the empty subnet, but not every kernel here
// has the dummy module.)
func newTopology(t *testing.T) *topology {
	t.Helper()
	tp := &topology{app: newNetns(t, "app"), peer: newNetns(t, "peer"), sinks: newSinks(t)}
	a, p := tp.app.name, tp.peer.name
	run(t, "ip", "-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", p)
	for _, c := range [][]string{
		{a, "addr", "add", "198.51.100.1/24", "dev", "veth0"},
		{a, "addr", "add", "192.0.2.1/24", "dev", "veth0"},
		{a, "addr", "add", "2001:db8::1/64", "dev", "veth0", "nodad"},
		{p, "addr", "add", "192.0.2.2/24", "dev", "veth1"},
		{p, "addr", "add", "192.0.2.3/24", "dev", "veth1"},
		{p, "addr", "add", "2001:db8::2/64", "dev", "veth1", "nodad"},
		{p, "addr", "add", "2001:db8::3/64", "dev", "veth1", "nodad"},
		{a, "link", "set", "veth0", "up"},
		{p, "link", "set", "veth1", "up"},
	} {
		run(t, "ip", append([]string{"-n"}, c...)...)
	}
	both := func(ns netns, name string, port int) {
		tp.sinks.listenTCP(t, ns, name, "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		tp.sinks.listenTCP(t, ns, name, "tcp6", fmt.Sprintf("[::]:%d", port))
	}
	both(tp.app, "outbound", 15001)
	both(tp.app, "inbound", 21000)
	both(tp.app, "app", 8080)
	both(tp.app, "ssh", 22)
	both(tp.app, "consul-http", 8500)
	both(tp.app, "excluded-inbound", 9100)
	both(tp.app, "local", 7777)
	tp.sinks.listenTCP(t, tp.app, "dns-tcp", "tcp4", "127.0.0.1:8600")
	tp.sinks.listenUDP(t, tp.app, "dns-udp", "127.0.0.1:8600")
	both(tp.peer, "peer", 80)
	both(tp.peer, "peer", 5432)
	tp.helper = helperBinary(t)
	return tp
}

// helperBinary copies the test binary where any UID may execute it.
func helperBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mxipt-helper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "iptables.test")
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// dial opens a TCP connection from ns as uid (0: this process) and returns
// where it landed.
func (tp *topology) dial(t *testing.T, from netns, uid int, addr string) (landing, error) {
	t.Helper()
	token := fmt.Sprintf("tok-%d", tp.seq.Add(1))
	var err error
	if uid == 0 {
		err = inNetns(from.path, func() error { return dialOnce(addr, token) })
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, tp.helper, "-test.run=^$")
		cmd.Dir = "/"
		cmd.Env = []string{helperEnv + "=" + addr, helperEnv + "_TOKEN=" + token}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err = inNetns(from.path, cmd.Start); err == nil {
			err = cmd.Wait()
		}
		if err != nil {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(out.String()))
		}
	}
	if err != nil {
		return landing{}, err
	}
	l, ok := tp.sinks.landing(token)
	if !ok {
		return landing{}, errors.New("connection answered but not recorded")
	}
	return l, nil
}

// dnsUDP sends a datagram from app to addr and returns the listener that got it.
func (tp *topology) dnsUDP(t *testing.T, addr string) (landing, error) {
	t.Helper()
	token := fmt.Sprintf("udp-%d", tp.seq.Add(1))
	err := inNetns(tp.app.path, func() error {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte(token)); err != nil {
			return err
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:n]) != "ok" {
			return fmt.Errorf("reply %q", buf[:n])
		}
		return nil
	})
	if err != nil {
		return landing{}, err
	}
	l, ok := tp.sinks.landing(token)
	if !ok {
		return landing{}, errors.New("datagram answered but not recorded")
	}
	return l, nil
}

// UIDs used by the behaviour tests.
const (
	uidProxy    = 995  // the proxy
	uidExcluded = 996  // e.g. the Consul agent
	uidApp      = 1000 // an ordinary application user
)

// refused as a flow's listener means the connection must be refused.
const refused = "(refused)"

// flow is one connection and where it must land.
type flow struct {
	name     string
	inbound  bool // from peer to app; else from app
	uid      int
	addr     string
	listener string
	origDst  string // checked when set
}

func (tp *topology) check(t *testing.T, flows []flow) {
	t.Helper()
	for _, fl := range flows {
		t.Run(fl.name, func(t *testing.T) {
			from := tp.app
			if fl.inbound {
				from = tp.peer
			}
			got, err := tp.dial(t, from, fl.uid, fl.addr)
			if fl.listener == refused {
				if err == nil || !strings.Contains(err.Error(), "connection refused") {
					t.Fatalf("dial %s as uid %d: landed on %q, %v; want connection refused", fl.addr, fl.uid, got.listener, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial %s as uid %d: %v", fl.addr, fl.uid, err)
			}
			if got.listener != fl.listener {
				t.Fatalf("%s as uid %d landed on %q, want %q", fl.addr, fl.uid, got.listener, fl.listener)
			}
			if fl.origDst != "" && got.origDst != fl.origDst {
				t.Fatalf("SO_ORIGINAL_DST = %s, want %s", got.origDst, fl.origDst)
			}
		})
	}
}

func behaviourConfig() Config {
	return Config{
		InboundPort: 21000, ProxyUID: uidProxy, IPv6: true,
		ExcludeUIDs:          []int{uidExcluded},
		ExcludeInboundPorts:  []int{9100},
		ExcludeOutboundPorts: []int{5432},
		ExcludeOutboundCIDRs: mustPrefixes("192.0.2.3/32", "2001:db8::3/128"),
		DNS:                  &DNS{Address: netip.MustParseAddrPort("127.0.0.1:8600")},
	}
}

// TestRealBehaviour proves what the rules do to real connections, before
// Apply (nothing redirected), with meshx's rules, and after Remove.
func TestRealBehaviour(t *testing.T) {
	ctx := context.Background()
	tp := newTopology(t)
	direct := []flow{
		{name: "app to peer goes direct", uid: uidApp, addr: "192.0.2.2:80", listener: "peer"},
		{name: "peer to app port goes direct", inbound: true, addr: "192.0.2.1:8080", listener: "app"},
		{name: "ipv6 peer to app port goes direct", inbound: true, addr: "[2001:db8::1]:8080", listener: "app"},
	}
	t.Run("before", func(t *testing.T) { tp.check(t, direct) })

	m := tp.app.manager(t)
	rs, err := Rules(behaviourConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	t.Run("with rules", func(t *testing.T) {
		tp.check(t, []flow{
			// Outbound, IPv4.
			{name: "root to a non-local address is redirected", addr: "198.51.100.50:80", listener: "outbound", origDst: "198.51.100.50:80"},
			{name: "root to a peer is redirected", addr: "192.0.2.2:80", listener: "outbound", origDst: "192.0.2.2:80"},
			{name: "app user to a peer is redirected", uid: uidApp, addr: "192.0.2.2:80", listener: "outbound", origDst: "192.0.2.2:80"},
			{name: "proxy user is not redirected", uid: uidProxy, addr: "192.0.2.2:80", listener: "peer"},
			{name: "excluded UID is not redirected", uid: uidExcluded, addr: "192.0.2.2:80", listener: "peer"},
			{name: "excluded CIDR is not redirected", uid: uidApp, addr: "192.0.2.3:80", listener: "peer"},
			{name: "excluded outbound port is not redirected", uid: uidApp, addr: "192.0.2.2:5432", listener: "peer"},
			{name: "127.0.0.1 is not redirected", uid: uidApp, addr: "127.0.0.1:7777", listener: "local"},
			{name: "127.0.0.5 is not redirected", uid: uidApp, addr: "127.0.0.5:7777", listener: "local"},
			{name: "TCP DNS to 127.0.0.1:53 reaches Consul DNS", uid: uidApp, addr: "127.0.0.1:53", listener: "dns-tcp"},
			// Inbound, IPv4.
			{name: "inbound to the app port lands on the inbound port", inbound: true, addr: "192.0.2.1:8080", listener: "inbound", origDst: "192.0.2.1:8080"},
			{name: "inbound SSH is never redirected", inbound: true, addr: "192.0.2.1:22", listener: "ssh"},
			{name: "inbound Consul HTTP is never redirected", inbound: true, addr: "192.0.2.1:8500", listener: "consul-http"},
			{name: "excluded inbound port is not redirected", inbound: true, addr: "192.0.2.1:9100", listener: "excluded-inbound"},
			// IPv6.
			{name: "ipv6 root to a non-local address is redirected", addr: "[2001:db8::50]:80", listener: "outbound", origDst: "[2001:db8::50]:80"},
			{name: "ipv6 app user to a peer is redirected", uid: uidApp, addr: "[2001:db8::2]:80", listener: "outbound", origDst: "[2001:db8::2]:80"},
			{name: "ipv6 proxy user is not redirected", uid: uidProxy, addr: "[2001:db8::2]:80", listener: "peer"},
			{name: "ipv6 excluded UID is not redirected", uid: uidExcluded, addr: "[2001:db8::2]:80", listener: "peer"},
			{name: "ipv6 excluded CIDR is not redirected", uid: uidApp, addr: "[2001:db8::3]:80", listener: "peer"},
			{name: "ipv6 ::1 is not redirected", uid: uidApp, addr: "[::1]:7777", listener: "local"},
			{name: "ipv6 inbound to the app port lands on the inbound port", inbound: true, addr: "[2001:db8::1]:8080", listener: "inbound", origDst: "[2001:db8::1]:8080"},
			{name: "ipv6 inbound SSH is never redirected", inbound: true, addr: "[2001:db8::1]:22", listener: "ssh"},
		})
		t.Run("UDP DNS to 127.0.0.1:53 reaches Consul DNS", func(t *testing.T) {
			got, err := tp.dnsUDP(t, "127.0.0.1:53")
			if err != nil || got.listener != "dns-udp" {
				t.Fatalf("landed on %q, %v", got.listener, err)
			}
		})
	})

	// The same rules pointing at ports nobody listens on: a proxy that is down.
	down := behaviourConfig()
	down.InboundPort, down.OutboundPort = 21999, 15999
	if rs, err = Rules(down); err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	t.Run("proxy down", func(t *testing.T) {
		tp.check(t, []flow{
			{name: "outbound is refused", uid: uidApp, addr: "192.0.2.2:80", listener: refused},
			{name: "inbound is refused", inbound: true, addr: "192.0.2.1:8080", listener: refused},
			{name: "ipv6 inbound is refused", inbound: true, addr: "[2001:db8::1]:8080", listener: refused},
		})
	})

	if err := m.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	t.Run("after remove", func(t *testing.T) { tp.check(t, direct) })
}

// TestRealBehaviourConsulDifferences runs the same topology under Consul's
// own rules for the same settings and shows the two documented behavioural
// differences: Consul redirects 127.0.0.5 and captures inbound SSH.
func TestRealBehaviourConsulDifferences(t *testing.T) {
	tp := newTopology(t)
	a := startConsulAgent(t, "127.0.0.1")
	cfg := behaviourConfig()
	cfg.IPv6, cfg.DNS = false, nil
	if out, err := a.redirectTraffic(tp.app, true, consulFlags(cfg, false)...); err != nil {
		t.Fatalf("consul connect redirect-traffic: %v\n%s", err, out)
	}
	tp.check(t, []flow{
		{name: "consul: 127.0.0.1 is not redirected", uid: uidApp, addr: "127.0.0.1:7777", listener: "local"},
		{name: "consul: 127.0.0.5 IS redirected", uid: uidApp, addr: "127.0.0.5:7777", listener: "outbound", origDst: "127.0.0.5:7777"},
		{name: "consul: inbound SSH IS captured", inbound: true, addr: "192.0.2.1:22", listener: "inbound", origDst: "192.0.2.1:22"},
		{name: "consul: proxy user is not redirected", uid: uidProxy, addr: "192.0.2.2:80", listener: "peer"},
		{name: "consul: app user is redirected", uid: uidApp, addr: "192.0.2.2:80", listener: "outbound", origDst: "192.0.2.2:80"},
	})
}
