package netns

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/testutil"
)

func TestConfList(t *testing.T) {
	testutil.Golden(t, "testdata/conflist.json.golden", ConfList(netip.MustParsePrefix("198.19.240.0/24"), "/run/meshx/cni/ipam"))
}

func TestCapabilityArgs(t *testing.T) {
	s := Spec{Service: "web", Subnet: netip.MustParsePrefix("198.19.240.0/24"), Address: netip.MustParseAddr("198.19.240.2"),
		HostAddress: netip.MustParseAddr("192.0.2.1"), Publish: []Port{{HostPort: 20001, ContainerPort: 20001}}}
	got, _ := jsonOf(s.capabilityArgs())
	want := `{"ips":["198.19.240.2/24"],"portMappings":[{"containerPort":20001,"hostIP":"192.0.2.1","hostPort":20001,"protocol":"tcp"}]}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	s.HostAddress = netip.Addr{}
	if got, _ := jsonOf(s.capabilityArgs()); strings.Contains(got, "hostIP") {
		t.Errorf("no host address, yet %s", got)
	}
}

func TestSpecValidate(t *testing.T) {
	good := Spec{Service: "web", Subnet: netip.MustParsePrefix("198.19.240.0/24"), Address: netip.MustParseAddr("198.19.240.2")}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for name, a := range map[string]string{"network": "198.19.240.0", "gateway": "198.19.240.1", "outside": "198.19.241.2"} {
		s := good
		s.Address = netip.MustParseAddr(a)
		if err := s.validate(); err == nil {
			t.Errorf("%s address %s accepted", name, a)
		}
	}
}

func TestAddr(t *testing.T) {
	sub := netip.MustParsePrefix("198.19.240.0/24")
	if a, err := Addr(sub, 2); err != nil || a != netip.MustParseAddr("198.19.240.2") {
		t.Errorf("Addr(2) = %v, %v", a, err)
	}
	if a, err := Addr(netip.MustParsePrefix("10.9.0.0/16"), 300); err != nil || a != netip.MustParseAddr("10.9.1.44") {
		t.Errorf("Addr(300) = %v, %v", a, err)
	}
	for _, n := range []int{0, 1, 255} {
		if _, err := Addr(sub, n); err == nil {
			t.Errorf("Addr(%d) accepted", n)
		}
	}
	if Hosts(sub) != 253 {
		t.Errorf("Hosts(/24) = %d", Hosts(sub))
	}
}

func TestParseRoutes(t *testing.T) {
	in := "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n" +
		"eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" +
		"eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
		"veth1\t07F013C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n"
	got, err := parseRoutes(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{{netip.MustParsePrefix("0.0.0.0/0"), "eth0"}, {netip.MustParsePrefix("10.0.2.0/24"), "eth0"},
		{netip.MustParsePrefix("198.19.240.7/32"), "veth1"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestCollisions(t *testing.T) {
	sub := netip.MustParsePrefix("198.19.240.0/24")
	r := func(p string) Route { return Route{Dst: netip.MustParsePrefix(p), Device: "x"} }
	routes := []Route{r("0.0.0.0/0"), r("10.0.0.0/8"), r("198.19.240.7/32"), r("198.19.0.0/16"), r("198.19.240.128/25"), r("198.19.241.0/24")}
	got := Collisions(sub, routes)
	want := []Route{r("198.19.0.0/16"), r("198.19.240.128/25")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}
