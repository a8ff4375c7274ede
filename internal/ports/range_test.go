package ports

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRangeValidate(t *testing.T) {
	// TestMain pins the ephemeral range to the Linux default 32768-60999.
	tests := []struct {
		name  string
		r     Range
		parts []string // empty: valid
	}{
		{"zero means the default range", Range{}, nil},
		{"default range", Range{Low: DefaultLow, High: DefaultHigh}, nil},
		{"between Consul's blocks", Range{Low: 21256, High: 21499}, nil},
		{"just below the ephemeral range", Range{Low: 23000, High: 32767}, nil},
		{"single port", Range{Low: 23000, High: 23000}, nil},
		{"IPv6", Range{IP: netip.IPv6Loopback(), Low: 23000, High: 23999}, nil},
		{"only low given", Range{Low: 23000}, []string{"high end 0 is outside 1..65535"}},
		{"high above 65535", Range{Low: 65000, High: 70000}, []string{"high end 70000 is outside 1..65535"}},
		{"low above high", Range{Low: 23010, High: 23000}, []string{"23010-23000: low end is above high end"}},
		{"overlaps sidecar ports", Range{Low: 20990, High: 21010}, []string{"Consul's sidecar proxy ports 21000-21255"}},
		{"inside sidecar ports", Range{Low: 21100, High: 21110}, []string{"21000-21255"}},
		{"overlaps expose ports", Range{Low: 21700, High: 21800}, []string{"Consul's expose path ports 21500-21755"}},
		{"overlaps ephemeral range", Range{Low: 32000, High: 33000}, []string{"ephemeral port range (Linux default) 32768-60999"}},
		{"inside ephemeral range", Range{Low: 42000, High: 42099}, []string{"32768-60999"}},
		{"every conflict named", Range{Low: 1, High: 65535}, []string{"21000-21255", "21500-21755", "32768-60999"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Validate()
			if len(tt.parts) == 0 {
				if err != nil {
					t.Fatalf("Validate(%v) = %v, want nil", tt.r, err)
				}
				return
			}
			wantErr(t, err, nil, tt.parts...)
		})
	}
}

func TestRangeValidateReadsKernelRange(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ip_local_port_range")
	if err := os.WriteFile(file, []byte("30000\t40000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	saved := ephemeralRangeFile
	ephemeralRangeFile = file
	t.Cleanup(func() { ephemeralRangeFile = saved })

	err := Range{Low: 39000, High: 39999}.Validate()
	wantErr(t, err, nil, "the kernel's ephemeral port range 30000-40000")
	if err := (Range{Low: 45000, High: 45999}).Validate(); err != nil {
		t.Errorf("range above a tuned ephemeral range: %v", err)
	}
}

func TestReadEphemeral(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		low, high     int
	}{
		{"kernel format", "30000\t40000\n", 30000, 40000},
		{"spaces", " 1024 65535 ", 1024, 65535},
		{"garbage", "lots of ports", 32768, 60999},
		{"reversed", "40000 30000", 32768, 60999},
		{"one number", "30000", 32768, 60999},
		{"out of range", "0 70000", 32768, 60999},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(file, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if b := readEphemeral(file); b.low != tt.low || b.high != tt.high {
				t.Errorf("readEphemeral(%q) = %d-%d, want %d-%d", tt.content, b.low, b.high, tt.low, tt.high)
			}
		})
	}
	if b := readEphemeral(filepath.Join(dir, "missing")); b.low != 32768 || b.high != 60999 {
		t.Errorf("missing file: %d-%d, want the Linux default", b.low, b.high)
	}
	const real = "/proc/sys/net/ipv4/ip_local_port_range"
	if data, err := os.ReadFile(real); err == nil {
		b := readEphemeral(real)
		if got := fmt.Sprintf("%d-%d", b.low, b.high); got != strings.Join(strings.Fields(string(data)), "-") {
			t.Errorf("readEphemeral(%s) = %d-%d, file says %q", real, b.low, b.high, data)
		}
	}
}

func TestRangeString(t *testing.T) {
	tests := []struct {
		r    Range
		want string
	}{
		{Range{}.WithDefaults(), "127.0.0.1:20000-20999"},
		{Range{IP: netip.IPv6Loopback(), Low: 23000, High: 23001}, "[::1]:23000-23001"},
		{Range{IP: netip.MustParseAddr("10.0.0.5"), Low: 1, High: 2}, "10.0.0.5:1-2"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}
