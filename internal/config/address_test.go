package config

import (
	"net/netip"
	"testing"
)

// TestAddressRules: what is an address at all, what may be told to other
// hosts through the catalog, and what may be dialed or bound locally.
func TestAddressRules(t *testing.T) {
	for _, tc := range []struct {
		in          string
		valid, adv  bool
		localRefuse bool // refused as the app's or a listener's address
	}{
		{"127.0.0.1", true, false, false},
		{"127.1.2.3", true, false, false},
		{"::1", true, false, false},
		{"localhost", true, false, false},
		{"LOCALHOST.", false, false, false},
		{"169.254.1.1", true, false, false},
		{"fe80::1", true, false, false},
		{"10.0.0.5", true, true, false},
		{"192.168.56.11", true, true, false},
		{"2001:db8::1", true, true, false},
		{"web.internal", true, true, false},
		{"vm-1.example.com", true, true, false},
		{"0.0.0.0", true, false, true},
		{"::", true, false, true},
		{"224.0.0.1", true, false, true},
		{"ff02::1", true, false, true},
		{"255.255.255.255", true, false, true},
		{"::ffff:255.255.255.255", true, false, true},
		{"999.1.1.1", false, false, false},
		{"1.2.3.4.5", false, false, false},
		{"10.0.0.1:80", false, false, false},
		{"fe80::1%eth0", false, false, false},
		{"web..local", false, false, false},
		{"-web", false, false, false},
		{"web-.local", false, false, false},
		{"", false, false, false},
	} {
		if got := validHost(tc.in); got != tc.valid {
			t.Errorf("validHost(%q) = %v, want %v", tc.in, got, tc.valid)
		}
		if got := tc.valid && CheckAdvertised(tc.in) == nil; got != tc.adv {
			t.Errorf("CheckAdvertised(%q) accepts: %v, want %v", tc.in, got, tc.adv)
		}
		if got := Advertisable(tc.in); tc.valid && got != tc.adv {
			t.Errorf("Advertisable(%q) = %v, want %v", tc.in, got, tc.adv)
		}
		if _, err := netip.ParseAddr(tc.in); err == nil && tc.valid {
			if got := CheckLocalAddr("address", tc.in, false) != ""; got != tc.localRefuse {
				t.Errorf("CheckLocalAddr(%q) refuses: %v, want %v", tc.in, got, tc.localRefuse)
			}
		}
	}
}
