package config

import (
	"fmt"
	"net/netip"
	"strings"
)

// The rules for the addresses a config may hold, in one place. An address is
// either where something on this host is reached (the app, a listener) or what
// the catalog tells other hosts (advertised); only routable unicast addresses
// may be advertised.

// broadcast is IPv4's limited broadcast address.
var broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// notUnicast describes why a is no address to dial or listen on ("" when it is one).
func notUnicast(a netip.Addr) string {
	switch {
	case a.IsMulticast():
		return "a multicast address"
	case a.Unmap() == broadcast:
		return "the broadcast address"
	case a.IsUnspecified():
		return "the unspecified address (any address)"
	}
	return ""
}

// notAdvertisable describes why an address must never reach the catalog:
// other hosts dialing it would reach themselves or nothing ("" when it may).
func notAdvertisable(host string) string {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return "a loopback name"
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "" // a host name: the catalog holds it as written
	}
	switch {
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	}
	return notUnicast(a)
}

// Advertisable reports whether an address (an IP or a host name) may be told
// to other hosts through the catalog.
func Advertisable(host string) bool { return host != "" && notAdvertisable(host) == "" }

// CheckAdvertised returns why an address written into a registration (which
// the catalog gives to every other host) is refused, or nil.
func CheckAdvertised(host string) error {
	if !validHost(host) {
		return fmt.Errorf("invalid address %q: write an IP address or a host name", host)
	}
	if why := notAdvertisable(host); why != "" {
		return fmt.Errorf("%q is %s: other hosts would reach themselves, not this service; leave the address out and Consul advertises this node's address", host, why)
	}
	return nil
}

// validHost accepts an IP address (without a zone) or a DNS host name. A name
// whose last label is all digits is a mistyped IP address (999.1.1.1), not a
// host name (RFC 1123 section 2.1).
func validHost(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == ""
	}
	if !hostnameRE.MatchString(h) || strings.Contains(h, "..") {
		return false
	}
	labels := strings.Split(strings.TrimSuffix(h, "."), ".")
	for _, l := range labels {
		if len(l) > 63 || strings.HasPrefix(l, "-") || strings.HasSuffix(l, "-") {
			return false
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}

// CheckLocalAddr returns why an IP address is refused as a local address to
// dial or bind (the app, a listener), or ""; what names it in the message.
// With listenAll, the unspecified address (listen on all) is accepted.
func CheckLocalAddr(what, v string, listenAll bool) string {
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return fmt.Sprintf("invalid %s %q: write an IP address", what, v)
	}
	if listenAll && a.IsUnspecified() {
		return ""
	}
	if why := notUnicast(a); why != "" {
		return fmt.Sprintf("%s is %s: write one address of this host, like 127.0.0.1", v, why)
	}
	return ""
}
