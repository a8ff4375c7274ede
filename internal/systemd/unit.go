package systemd

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"
)

const (
	// ProxyTemplate is the template unit meshx-init instantiates, one per service.
	ProxyTemplate = "meshx-proxy@.service"
	// InitUnit is the oneshot unit that runs `meshx-init run` at boot.
	InitUnit = "meshx-init.service"

	proxyPrefix = "meshx-proxy@"
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

// transparentProxyDropIn is the runtime drop-in meshx-init writes for an instance
// whose service has transparent proxy on, and removes when it is off. The unit file
// grants meshx-proxy only CAP_SETUID, CAP_SETGID and CAP_KILL and only the inet and
// unix socket families; this adds what installing and removing iptables rules
// needs (iptables-nft talks netlink and needs CAP_NET_ADMIN). Both settings merge
// with (OR) the unit file's own lists.
const transparentProxyDropIn = `# Written by meshx-init because transparent proxy is on for this service;
# removed again when it is turned off. Do not edit: the next meshx-init run
# rewrites or removes it.
[Service]
CapabilityBoundingSet=CAP_NET_ADMIN
RestrictAddressFamilies=AF_NETLINK
`

// dropInName is the file name of the transparent-proxy drop-in inside
// <unit>.d/.
const dropInName = "50-meshx-transparent-proxy.conf"

// DropIn returns the runtime drop-in meshx-init keeps for an instance, as file
// name and content, or empty strings when the instance needs none.
func DropIn(in Instance) (name, content string) {
	if !in.TransparentProxy {
		return "", ""
	}
	return dropInName, transparentProxyDropIn
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
