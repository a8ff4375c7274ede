package dataplane

import (
	"io"
	"net"
	"testing"
)

// BenchmarkStream: one connection through a client and a server plane (one
// process, an in-memory CA), 1 MiB echoed per op.
func BenchmarkStream(b *testing.B) {
	src := newFakeSource(b)
	src.defaultOK = true
	up, _, _, _ := meshPair(b, src)
	c, err := net.Dial("tcp", up)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	back := make([]byte, 1<<20)
	b.SetBytes(2 << 20)
	b.ResetTimer()
	for range b.N {
		go c.Write(buf)
		if _, err := io.ReadFull(c, back); err != nil {
			b.Fatal(err)
		}
	}
}
