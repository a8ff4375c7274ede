package ports

import (
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
)

// benchRequests is a host with 50 services and 50 upstreams.
func benchRequests() []Request {
	reqs := make([]Request, 0, 100)
	for i := range 50 {
		reqs = append(reqs, Request{Key: fmt.Sprintf("service/s%d-host", i)},
			Request{Key: fmt.Sprintf("upstream/s%d-host/db", i), Down: true})
	}
	return reqs
}

// BenchmarkAllocate measures one Allocate call for 100 keys: on a first boot
// (empty state dir, stubbed and real listen checks) and on a re-run where
// every key is already allocated (the boot-time no-op).
func BenchmarkAllocate(b *testing.B) {
	reqs := benchRequests()
	r := Range{Low: 23000, High: 23199}
	b.Run("first-run", func(b *testing.B) {
		base, n := b.TempDir(), 0
		for b.Loop() {
			n++
			o := Options{StateDir: filepath.Join(base, strconv.Itoa(n)), Range: r, InUse: free}
			if _, err := Allocate(o, reqs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("first-run-listen", func(b *testing.B) {
		base, n := b.TempDir(), 0
		for b.Loop() {
			n++
			o := Options{StateDir: filepath.Join(base, strconv.Itoa(n)), Range: r}
			if _, err := Allocate(o, reqs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rerun", func(b *testing.B) {
		o := Options{StateDir: b.TempDir(), Range: r, InUse: free}
		if _, err := Allocate(o, reqs); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := Allocate(o, reqs); err != nil {
				b.Fatal(err)
			}
		}
	})
}
