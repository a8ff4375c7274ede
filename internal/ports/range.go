package ports

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// The default range sits clear of Consul's sidecar ports 21000-21255, its expose
// ports 21500-21755 and the kernel's ephemeral range (32768-60999 on Linux).
const DefaultLow, DefaultHigh = 20000, 20999

// defaultIP is the address endpoints bind to when Range.IP is zero.
var defaultIP = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// Range is the one block of ports a host hands out, on one address.
type Range struct {
	// IP is the address the endpoints bind to; the zero Addr means 127.0.0.1.
	IP netip.Addr
	// Low and High bound the range, both included. Both zero mean
	// DefaultLow..DefaultHigh; only one of them zero is invalid.
	Low, High int
}

// WithDefaults returns r with its zero fields replaced by the defaults.
func (r Range) WithDefaults() Range {
	if !r.IP.IsValid() {
		r.IP = defaultIP
	}
	if r.Low == 0 && r.High == 0 {
		r.Low, r.High = DefaultLow, DefaultHigh
	}
	return r
}

// String formats r as ip:low-high, e.g. 127.0.0.1:20000-20999 or [::1]:20000-20999.
func (r Range) String() string {
	host := r.IP.String()
	if r.IP.Is6() {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("%s:%d-%d", host, r.Low, r.High)
}

func (r Range) contains(port int) bool { return r.Low <= port && port <= r.High }

// block is a span of ports that belongs to someone else.
type block struct {
	low, high int
	what      string
}

// consulBlocks are the ports a Consul agent hands out itself.
var consulBlocks = []block{
	{21000, 21255, "Consul's sidecar proxy ports"},
	{21500, 21755, "Consul's expose path ports"},
}

// ephemeralRangeFile is where the kernel publishes its ephemeral port range.
// Tests point it elsewhere; an unreadable file means the Linux default.
var ephemeralRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// Validate reports every problem of r (after defaults) at once: ports outside
// 1..65535, a low end above the high end, and any overlap with Consul's sidecar
// ports 21000-21255, its expose ports 21500-21755 or the kernel's ephemeral
// range (read from /proc/sys/net/ipv4/ip_local_port_range, else 32768-60999).
// Each message names the conflicting range.
func (r Range) Validate() error {
	return r.WithDefaults().check(readEphemeral(ephemeralRangeFile))
}

func (r Range) check(ephemeral block) error {
	var errs []error
	for _, p := range []struct {
		name string
		port int
	}{{"low", r.Low}, {"high", r.High}} {
		if p.port < 1 || p.port > 65535 {
			errs = append(errs, fmt.Errorf("port range %d-%d: %s end %d is outside 1..65535", r.Low, r.High, p.name, p.port))
		}
	}
	if r.Low > r.High {
		errs = append(errs, fmt.Errorf("port range %d-%d: low end is above high end", r.Low, r.High))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, b := range append(consulBlocks[:len(consulBlocks):len(consulBlocks)], ephemeral) {
		if r.Low <= b.high && b.low <= r.High {
			errs = append(errs, fmt.Errorf("port range %d-%d overlaps %s %d-%d", r.Low, r.High, b.what, b.low, b.high))
		}
	}
	return errors.Join(errs...)
}

// readEphemeral parses the kernel's "low<TAB>high" ephemeral range from path,
// falling back to Linux's default when the file is missing or unreadable.
func readEphemeral(path string) block {
	fallback := block{32768, 60999, "the kernel's ephemeral port range (Linux default)"}
	data, err := os.ReadFile(path)
	if err != nil {
		return fallback
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return fallback
	}
	low, err1 := strconv.Atoi(f[0])
	high, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || low < 1 || low > high || high > 65535 {
		return fallback
	}
	return block{low, high, "the kernel's ephemeral port range"}
}
