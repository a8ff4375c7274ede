package netns

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"
)

// checkDNAT reports a published port of s that has no DNAT rule to the
// namespace in the nat table of this network namespace.
func checkDNAT(s Spec) error {
	ipt, err := goipt.New()
	if err != nil {
		return err
	}
	chains, err := ipt.ListChains("nat")
	if err != nil {
		return err
	}
	var rules []string
	for _, c := range chains {
		if strings.HasPrefix(c, "CNI-DN-") {
			rs, err := ipt.List("nat", c)
			if err != nil {
				return err
			}
			rules = append(rules, rs...)
		}
	}
	for _, p := range s.Publish {
		to := "--to-destination " + netip.AddrPortFrom(s.Address, uint16(p.ContainerPort)).String()
		port := "--dport " + strconv.Itoa(p.HostPort)
		found := false
		for _, r := range rules {
			if strings.Contains(r, to) && strings.Contains(r, port) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("no DNAT rule for published port %d", p.HostPort)
		}
	}
	return nil
}
