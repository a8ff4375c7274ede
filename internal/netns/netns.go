// Package netns gives a service a network namespace of its own, set up with
// the standard CNI plugins (Debian's containernetworking-plugins) driven
// through libcni: ptp with IP masquerade for an address and a route out,
// host-local IPAM for that address (always the one meshx asks for, so it is
// the same after every reboot), and portmap to publish the sidecar's public
// port on the host's address. Setup is idempotent (an intact namespace is
// checked with CNI CHECK and left alone) and removal is CNI DEL followed by
// deleting the namespace, so nothing is left in the host's nat table.
package netns

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
)

// Spec is the namespace of one service: a pure function of its plan.
type Spec struct {
	// Service names the namespace ("meshx-<service>") and the CNI attachment.
	Service string `json:"service"`
	// Subnet is the host-wide subnet for service namespaces.
	Subnet netip.Prefix `json:"subnet"`
	// Address is the namespace's address, inside Subnet.
	Address netip.Addr `json:"address"`
	// HostAddress is where Publish ports are published; the zero Addr means
	// every address of the host.
	HostAddress netip.Addr `json:"host_address,omitzero"`
	// Publish are the ports forwarded from the host into the namespace.
	Publish []Port `json:"publish,omitempty"`
	// DNS are the nameservers of the namespace's resolv.conf.
	DNS []netip.Addr `json:"dns,omitempty"`
}

// Port is one published port: HostPort on the host forwards to
// ContainerPort inside the namespace (TCP).
type Port struct {
	HostPort      int `json:"host_port"`
	ContainerPort int `json:"container_port"`
}

// NetworkName is the CNI network name of every meshx namespace.
const NetworkName = "meshx"

// ifName is the namespace's end of its link.
const ifName = "eth0"

// Name is the namespace of a service, as `ip netns` lists it.
func Name(service string) string { return "meshx-" + service }

// Path is where the namespace of a service is mounted under dir (/run/netns).
func Path(dir, service string) string { return filepath.Join(dir, Name(service)) }

// ResolvConf is the resolv.conf the namespace's units bind over
// /etc/resolv.conf (where `ip netns exec` looks for it, too).
func ResolvConf(etcDir, service string) string {
	return filepath.Join(etcDir, "netns", Name(service), "resolv.conf")
}

// ErrInvalidSpec is returned for a Spec that cannot be set up.
var ErrInvalidSpec = errors.New("invalid namespace spec")

func (s Spec) validate() error {
	switch {
	case s.Service == "":
		return fmt.Errorf("%w: no service", ErrInvalidSpec)
	case !s.Subnet.IsValid() || !s.Subnet.Addr().Is4():
		return fmt.Errorf("%w: subnet %s is not IPv4", ErrInvalidSpec, s.Subnet)
	case !s.Subnet.Contains(s.Address) || s.Address == s.Subnet.Addr() || s.Address == Gateway(s.Subnet):
		return fmt.Errorf("%w: address %s is not a host address of %s", ErrInvalidSpec, s.Address, s.Subnet)
	}
	return nil
}

// Gateway is the host's end of every namespace link: the subnet's first address.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// ConfList is the CNI network configuration list for the spec's subnet
// (the same for every service of the host; runtime arguments differ).
// dataDir is host-local's store, which must not outlive the namespaces
// (it lives under /run: a reboot clears both).
func ConfList(subnet netip.Prefix, dataDir string) []byte {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       NetworkName,
		"plugins": []any{
			map[string]any{"type": "loopback"},
			map[string]any{
				"type":   "ptp",
				"ipMasq": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  []any{[]any{map[string]any{"subnet": subnet.Masked().String(), "gateway": Gateway(subnet).String()}}},
					"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
					"dataDir": dataDir,
				},
				"capabilities": map[string]any{"ips": true},
			},
			map[string]any{
				"type":         "portmap",
				"snat":         true,
				"capabilities": map[string]any{"portMappings": true},
			},
		},
	}
	b, _ := json.MarshalIndent(conf, "", "  ") // maps of strings and slices: cannot fail
	return b
}

// capabilityArgs are the runtime arguments of one service's attachment.
func (s Spec) capabilityArgs() map[string]any {
	pm := []map[string]any{}
	for _, p := range s.Publish {
		m := map[string]any{"hostPort": p.HostPort, "containerPort": p.ContainerPort, "protocol": "tcp"}
		if s.HostAddress.IsValid() {
			m["hostIP"] = s.HostAddress.String()
		}
		pm = append(pm, m)
	}
	ip := netip.PrefixFrom(s.Address, s.Subnet.Bits()).String()
	return map[string]any{"ips": []string{ip}, "portMappings": pm}
}

func jsonOf(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}
