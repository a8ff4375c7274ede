package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// lan is a private layer-2 network for booted machines: a bridge living in a
// network namespace of its own, and one veth pair per host from that bridge
// into the host's namespace (which its container then joins). Nothing is
// created in the test runner's own namespace; every address exists only inside
// these namespaces, and deleting them (t.Cleanup) removes it all.
type lan struct {
	t  *testing.T
	ns string // the bridge's namespace
}

const lanBridge = "br0"

// newLAN creates the bridge namespace named name.
func newLAN(t *testing.T, name string) *lan {
	t.Helper()
	l := &lan{t: t, ns: name}
	l.ip("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	l.ip("-n", name, "link", "add", lanBridge, "type", "bridge")
	l.ip("-n", name, "link", "set", lanBridge, "up")
	return l
}

// attach creates the namespace hostNS (deleted in t.Cleanup, so register it
// before the machine that will live in it) and plugs it into the bridge: its
// end of the veth is called ifname and gets addr (CIDR notation); loopback is up.
func (l *lan) attach(hostNS, ifname, addr string) {
	l.t.Helper()
	l.ip("netns", "add", hostNS)
	l.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", hostNS).Run() })
	l.plug(hostNS, ifname, addr)
}

// plug plugs the existing namespace hostNS into the bridge (see attach).
func (l *lan) plug(hostNS, ifname, addr string) {
	l.t.Helper()
	port := portName(hostNS)
	l.ip("-n", l.ns, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", hostNS)
	l.ip("-n", l.ns, "link", "set", port, "master", lanBridge, "up")
	l.ip("-n", hostNS, "addr", "add", addr, "dev", ifname)
	l.ip("-n", hostNS, "link", "set", ifname, "up")
	l.ip("-n", hostNS, "link", "set", "lo", "up")
}

// replug gives a powered-off host a new network namespace, plugged in again
// with the same name and address: as across a VM's reboot, the kernel's network
// state (sockets, routes, iptables rules) does not survive, the NIC and its
// address do.
func (l *lan) replug(hostNS, ifname, addr string) {
	l.t.Helper()
	// The kernel dismantles a deleted namespace (and so the veth) later, on
	// its own time: delete the bridge's end now, or the new one's name may
	// still be taken ("File exists").
	_ = exec.Command("ip", "-n", l.ns, "link", "del", portName(hostNS)).Run()
	l.ip("netns", "del", hostNS)
	l.attach(hostNS, ifname, addr)
}

// portName is the bridge's end of a host's veth, named after the host
// namespace's last part (<= 15 bytes).
func portName(hostNS string) string { return "p-" + hostNS[max(0, len(hostNS)-12):] }

func (l *lan) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// nsExec runs a command of the test runner inside network namespace ns (not in
// any container: the host's curl and openssl, on the namespace's addresses),
// bounded by timeout. It returns the combined output and the exit code (-1 when
// it could not run or timed out).
func nsExec(ns string, timeout time.Duration, args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), -1, fmt.Errorf("%s: timed out after %s", strings.Join(args, " "), timeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode(), err
	}
	if err != nil {
		return string(out), -1, err
	}
	return string(out), 0, nil
}
