package netns

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkNamespace is the cost of one service's namespace (make bench):
// "baseline" is `ip netns add` + `ip netns delete` alone; "up" is Up on a
// fresh namespace (ip netns add + CNI ADD of loopback, ptp, host-local and
// portmap) timed alone, its Down outside the timer; "down" the reverse.
// All in a namespace of their own that plays the host.
func BenchmarkNamespace(b *testing.B) {
	if os.Getuid() != 0 {
		b.Skip("needs root")
	}
	if _, err := os.Stat("/usr/lib/cni/ptp"); err != nil {
		b.Skip("needs containernetworking-plugins")
	}
	host := fmt.Sprintf("mxcnib%d", os.Getpid()%100000)
	if out, err := exec.Command("ip", "netns", "add", host).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v %s", err, out)
	}
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", host).Run() })
	m := New(Options{RunDir: b.TempDir(), EtcDir: b.TempDir(), HostNetns: filepath.Join(Dir, host)})
	s := Spec{Service: fmt.Sprintf("b%d", os.Getpid()%100000), Subnet: netip.MustParsePrefix("198.19.240.0/24"),
		Address: netip.MustParseAddr("198.19.240.9"), Publish: []Port{{HostPort: 20001, ContainerPort: 20001}}}
	ctx := context.Background()
	b.Run("baseline", func(b *testing.B) {
		for b.Loop() {
			if err := Run(m.o.HostNetns, func() error {
				if err := ipNetns(ctx, "add", Name(s.Service)); err != nil {
					return err
				}
				return ipNetns(ctx, "delete", Name(s.Service))
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("up", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if res, err := m.Up(ctx, s); err != nil || res != Created {
				b.Fatalf("Up: %v %v", res, err)
			}
			b.StopTimer()
			if err := m.Down(ctx, s); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("down", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			if _, err := m.Up(ctx, s); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := m.Down(ctx, s); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("recheck", func(b *testing.B) {
		if _, err := m.Up(ctx, s); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = m.Down(ctx, s) })
		for b.Loop() {
			if res, err := m.Up(ctx, s); err != nil || res != Unchanged {
				b.Fatalf("Up again: %v %v", res, err)
			}
		}
	})
}
