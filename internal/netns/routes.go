package netns

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Route is one IPv4 route of the host's main table.
type Route struct {
	Dst    netip.Prefix
	Device string
}

// RouteFile is where the kernel lists the IPv4 routes of this namespace.
const RouteFile = "/proc/net/route"

// HostRoutes reads the host's IPv4 routes.
func HostRoutes() ([]Route, error) {
	f, err := os.Open(RouteFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseRoutes(f)
}

// parseRoutes reads /proc/net/route: a header, then Iface, Destination,
// Gateway, Flags, RefCnt, Use, Metric, Mask, ... with addresses in
// little-endian hex.
func parseRoutes(r io.Reader) ([]Route, error) {
	var out []Route
	sc := bufio.NewScanner(r)
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 8 {
			continue
		}
		dst, err1 := hexAddr(f[1])
		mask, err2 := hexAddr(f[7])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s: bad line %q", RouteFile, sc.Text())
		}
		m := mask.As4()
		bits := 0
		for _, b := range m {
			for ; b&0x80 != 0; b <<= 1 {
				bits++
			}
		}
		out = append(out, Route{Dst: netip.PrefixFrom(dst, bits).Masked(), Device: f[0]})
	}
	return out, sc.Err()
}

func hexAddr(h string) (netip.Addr, error) {
	v, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return netip.Addr{}, err
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(v))
	return netip.AddrFrom4(b), nil
}

// Collisions returns the routes that overlap subnet, other than the default
// route and the host routes (/32) inside it that ptp adds for each namespace.
func Collisions(subnet netip.Prefix, routes []Route) []Route {
	var out []Route
	for _, r := range routes {
		switch {
		case r.Dst.Bits() == 0, !r.Dst.Overlaps(subnet):
		case r.Dst.Bits() == 32 && subnet.Contains(r.Dst.Addr()):
		default:
			out = append(out, r)
		}
	}
	return out
}
