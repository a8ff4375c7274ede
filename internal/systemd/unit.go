package systemd

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/meshx/meshx/internal/netns"
)

const (
	// ProxyTemplate is the template unit meshx-init instantiates, one per service.
	ProxyTemplate = "meshx-proxy@.service"
	// InitUnit is the oneshot unit that runs `meshx-init run` at boot.
	InitUnit = "meshx-init.service"

	proxyPrefix = "meshx-proxy@"
	netnsPrefix = "meshx-netns@"
	unitSuffix  = ".service"
)

// ErrNoService is returned for an instance without a service name.
var ErrNoService = errors.New("empty service name")

// UnitName is the meshx-proxy@ instance of a service: the service name escaped
// with systemd's rules (so "my.svc-1" becomes "meshx-proxy@my.svc\x2d1.service").
func UnitName(service string) string {
	return proxyPrefix + unit.UnitNameEscape(service) + unitSuffix
}

// ServiceOf is the inverse of UnitName: the service name of a meshx-proxy@
// instance, and false for any other unit name (including the template itself).
func ServiceOf(unitName string) (string, bool) {
	inst, ok := strings.CutPrefix(unitName, proxyPrefix)
	if !ok {
		return "", false
	}
	inst, ok = strings.CutSuffix(inst, unitSuffix)
	if !ok || inst == "" {
		return "", false
	}
	return unit.UnitNameUnescape(inst), true
}

// Available reports whether this process runs on a host whose init is the systemd
// system manager (sd_booted: /run/systemd/system is a directory).
func Available() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// dropInHeader opens the runtime drop-in meshx-init writes for an instance
// that needs one, and removes when it needs none.
const dropInHeader = `# Written by meshx-init for this service's settings; removed when they are
# off. Do not edit: the next meshx-init run rewrites or removes it.
`

// transparentProxyDropIn is the part of the drop-in for an instance whose
// service has transparent proxy on. The unit file grants meshx-proxy only
// CAP_SETUID, CAP_SETGID and CAP_KILL and only the inet and unix socket
// families; this adds what installing and removing iptables rules needs
// (iptables-nft talks netlink and needs CAP_NET_ADMIN). Both settings merge
// with (OR) the unit file's own lists.
const transparentProxyDropIn = `
[Service]
CapabilityBoundingSet=CAP_NET_ADMIN
RestrictAddressFamilies=AF_NETLINK
`

// namespaceDropIn is the part of the drop-in for an instance whose service
// runs in a network namespace of its own: it joins the namespace that
// meshx-netns@<service> sets up (and stops when that unit does), and sees
// the namespace's resolv.conf as /etc/resolv.conf.
const namespaceDropIn = `
[Unit]
BindsTo=%[1]s
After=%[1]s

[Service]
NetworkNamespacePath=%[2]s
BindReadOnlyPaths=%[3]s:/etc/resolv.conf
`

// dropInName is the file name of meshx's drop-in inside <unit>.d/.
const dropInName = "50-meshx.conf"

// legacyDropInName is what meshx called it while it held the transparent-proxy
// settings only; it is removed wherever meshx's drop-in is written or removed,
// so an upgrade under running instances leaves no stale copy.
const legacyDropInName = "50-meshx-transparent-proxy.conf"

// DropIn returns the runtime drop-in meshx-init keeps for an instance, as file
// name and content, or empty strings when the instance needs none.
func DropIn(in Instance) (name, content string) {
	if !in.TransparentProxy && !in.Namespace {
		return "", ""
	}
	var b strings.Builder
	b.WriteString(dropInHeader)
	if in.TransparentProxy {
		b.WriteString(transparentProxyDropIn)
	}
	if in.Namespace {
		fmt.Fprintf(&b, namespaceDropIn, NetnsUnitName(in.Service), netns.Path(netns.Dir, in.Service),
			netns.ResolvConf("/etc", in.Service))
	}
	return dropInName, b.String()
}

// NetnsUnitName is the meshx-netns@ instance that sets up a service's
// network namespace.
func NetnsUnitName(service string) string {
	return netnsPrefix + unit.UnitNameEscape(service) + unitSuffix
}

func validate(want []Instance) error {
	seen := make(map[string]bool, len(want))
	var errs []error
	for _, in := range want {
		switch {
		case in.Service == "":
			errs = append(errs, ErrNoService)
		case seen[in.Service]:
			errs = append(errs, fmt.Errorf("service %q wanted twice", in.Service))
		}
		seen[in.Service] = true
	}
	return errors.Join(errs...)
}
