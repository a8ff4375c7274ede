package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/meshx/meshx/internal/atomicfile"
)

// Dir is where `ip netns` mounts named namespaces; systemd units join them
// from there (NetworkNamespacePath=).
const Dir = "/run/netns"

// Options configure a Manager. The zero value is what meshx-init uses.
type Options struct {
	// CNIPath lists the directories holding the CNI plugins; nil means
	// /usr/lib/cni (Debian) then /opt/cni/bin.
	CNIPath []string
	// RunDir holds host-local's address store and libcni's result cache. It
	// must be cleared when the namespaces are (a reboot): "" means
	// /run/meshx/cni.
	RunDir string
	// EtcDir is where each namespace's resolv.conf is kept
	// (<EtcDir>/netns/<name>/resolv.conf); "" means /etc.
	EtcDir string
	// Log gets one line per change; nil discards.
	Log *slog.Logger
	// HostNetns is the path of the network namespace that plays the host
	// (where links, routes and nat rules go); "" means this process's own.
	// Tests set up their services inside a namespace of their own.
	HostNetns string
}

// Manager sets up and removes service namespaces.
type Manager struct {
	o   Options
	cni *libcni.CNIConfig
}

// New returns a Manager with the defaults filled in.
func New(o Options) *Manager {
	if len(o.CNIPath) == 0 {
		o.CNIPath = []string{"/usr/lib/cni", "/opt/cni/bin"}
	}
	if o.RunDir == "" {
		o.RunDir = "/run/meshx/cni"
	}
	if o.EtcDir == "" {
		o.EtcDir = "/etc"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Manager{o: o, cni: libcni.NewCNIConfigWithCacheDir(o.CNIPath, filepath.Join(o.RunDir, "cache"), nil)}
}

// Result says what Up did.
type Result string

const (
	Unchanged Result = "unchanged" // the namespace was there and passed CNI CHECK
	Created   Result = "created"   // a new namespace, set up with CNI ADD
	Repaired  Result = "repaired"  // an existing namespace failed CHECK: CNI DEL, then ADD
)

func (m *Manager) list(s Spec) (*libcni.NetworkConfigList, error) {
	return libcni.NetworkConfFromBytes(ConfList(s.Subnet, filepath.Join(m.o.RunDir, "ipam")))
}

func (m *Manager) runtime(s Spec) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: Name(s.Service), NetNS: Path(Dir, s.Service), IfName: ifName,
		CapabilityArgs: s.capabilityArgs()}
}

// Up makes the service's namespace exist with its address, route out and
// published ports. An intact namespace is left as it is (CNI CHECK passes),
// so units that joined it keep running.
func (m *Manager) Up(ctx context.Context, s Spec) (res Result, err error) {
	err = Run(m.o.HostNetns, func() error {
		res, err = m.up(ctx, s)
		return err
	})
	return res, err
}

func (m *Manager) up(ctx context.Context, s Spec) (Result, error) {
	if err := s.validate(); err != nil {
		return "", err
	}
	start := time.Now()
	list, err := m.list(s)
	if err != nil {
		return "", fmt.Errorf("cni config: %w", err)
	}
	rt := m.runtime(s)
	if err := m.writeResolvConf(s); err != nil {
		return "", err
	}
	res := Created
	if Exists(s.Service) {
		if err := m.check(ctx, s, list, rt); err == nil {
			return Unchanged, nil
		} else {
			m.o.Log.Info("namespace not as wanted; setting it up again", "netns", Name(s.Service), "err", err)
		}
		// Half set up, changed, or broken: DEL while the namespace is there
		// (ptp removes its masquerade rules only then), then ADD again.
		if err := m.cni.DelNetworkList(ctx, list, rt); err != nil {
			return "", fmt.Errorf("cni del %s: %w", Name(s.Service), err)
		}
		res = Repaired
	} else if err := ipNetns(ctx, "add", Name(s.Service)); err != nil {
		return "", err
	}
	if _, err := m.cni.AddNetworkList(ctx, list, rt); err != nil {
		// Leave nothing half done: the next Up starts from scratch.
		_ = m.cni.DelNetworkList(ctx, list, rt)
		return "", fmt.Errorf("cni add %s: %w", Name(s.Service), err)
	}
	if err := m.saveSpec(s); err != nil {
		return "", err
	}
	m.o.Log.Info("namespace set up", "netns", Name(s.Service), "address", s.Address, "did", res, "took", time.Since(start))
	return res, nil
}

// specPath is where Up records the spec a namespace was set up with, so
// that it can be removed once the service's plan is gone.
func (m *Manager) specPath(service string) string {
	return filepath.Join(m.o.RunDir, "specs", service+".json")
}

func (m *Manager) saveSpec(s Spec) error {
	b, _ := json.MarshalIndent(s, "", "  ") // plain data: cannot fail
	_, err := atomicfile.WriteVolatile(m.specPath(s.Service), b, 0o644)
	return err
}

// Spec returns the spec the service's namespace was last set up with, and
// false when Up has not run since the last reboot or Down.
func (m *Manager) Spec(service string) (Spec, bool) {
	var s Spec
	b, err := os.ReadFile(m.specPath(service))
	if err != nil || json.Unmarshal(b, &s) != nil {
		return Spec{}, false
	}
	return s, true
}

// check reports why the namespace is not as s wants it, nil when it is: an
// attachment made with the same arguments (address, published ports) that
// passes CNI CHECK, and a DNAT rule for each published port. portmap's own
// CHECK (containernetworking-plugins 1.1.1) also demands IPv6 chains it
// never made, so its rules are checked here instead and the CNI CHECK runs
// the plugins before it.
func (m *Manager) check(ctx context.Context, s Spec, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	_, cached, err := m.cni.GetNetworkListCachedConfig(list, rt)
	if err != nil || cached == nil {
		return fmt.Errorf("no cached attachment (%v)", err)
	}
	a, _ := jsonOf(cached.CapabilityArgs)
	b, _ := jsonOf(rt.CapabilityArgs)
	if a != b {
		return fmt.Errorf("attached with %s, want %s", a, b)
	}
	head := *list
	head.Plugins = nil
	for _, p := range list.Plugins {
		if p.Network.Type != "portmap" {
			head.Plugins = append(head.Plugins, p)
		}
	}
	if err := m.cni.CheckNetworkList(ctx, &head, rt); err != nil {
		return err
	}
	return checkDNAT(s)
}

// Down removes the service's namespace: CNI DEL (address released, masquerade
// and published-port rules removed from the host), then the namespace and its
// resolv.conf. Nothing there is fine.
func (m *Manager) Down(ctx context.Context, s Spec) error {
	return Run(m.o.HostNetns, func() error { return m.down(ctx, s) })
}

func (m *Manager) down(ctx context.Context, s Spec) error {
	if err := s.validate(); err != nil {
		return err
	}
	list, err := m.list(s)
	if err != nil {
		return fmt.Errorf("cni config: %w", err)
	}
	if err := m.cni.DelNetworkList(ctx, list, m.runtime(s)); err != nil {
		return fmt.Errorf("cni del %s: %w", Name(s.Service), err)
	}
	if Exists(s.Service) {
		if err := ipNetns(ctx, "delete", Name(s.Service)); err != nil {
			return err
		}
	}
	dir := filepath.Dir(ResolvConf(m.o.EtcDir, s.Service))
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.Remove(m.specPath(s.Service)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	m.o.Log.Info("namespace removed", "netns", Name(s.Service))
	return nil
}

// Exists reports whether the service's namespace is mounted.
func Exists(service string) bool {
	_, err := os.Stat(Path(Dir, service))
	return err == nil
}

// ipNetns runs `ip netns add|delete NAME`: iproute2 creates the namespace
// and its mount point the way every tool expects (a shared /run/netns).
func ipNetns(ctx context.Context, verb, name string) error {
	out, err := exec.CommandContext(ctx, "ip", "netns", verb, name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip netns %s %s: %w: %s", verb, name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (m *Manager) writeResolvConf(s Spec) error {
	var b bytes.Buffer
	b.WriteString("# Written by meshx for the network namespace " + Name(s.Service) + ".\n")
	for _, a := range s.DNS {
		b.WriteString("nameserver " + a.String() + "\n")
	}
	_, err := atomicfile.Write(ResolvConf(m.o.EtcDir, s.Service), b.Bytes(), 0o644)
	return err
}

// Addr is the namespace address of host number n of subnet (n = 2 is the
// first after the gateway).
func Addr(subnet netip.Prefix, n int) (netip.Addr, error) {
	a := subnet.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	size := uint32(1) << (32 - subnet.Bits())
	if n < 2 || uint32(n) >= size-1 {
		return netip.Addr{}, fmt.Errorf("host number %d outside %s", n, subnet)
	}
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), nil
}

// Hosts is how many namespace addresses subnet holds (network, gateway and
// broadcast excluded).
func Hosts(subnet netip.Prefix) int { return 1<<(32-subnet.Bits()) - 3 }
