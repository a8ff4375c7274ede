package dataplane

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// halfCloser is a connection whose write side can be closed alone
// (*net.TCPConn, *tls.Conn).
type halfCloser interface {
	CloseWrite() error
}

// pipe copies both ways between a and b until both directions end, closing
// each write side as its source ends (half-close carries through), then
// closes both. It returns the bytes copied a->b and b->a.
func pipe(a, b net.Conn) (ab, ba int64) {
	var wg sync.WaitGroup
	var n1, n2 atomic.Int64
	wg.Go(func() { n1.Store(copyHalf(b, a)) })
	wg.Go(func() { n2.Store(copyHalf(a, b)) })
	wg.Wait()
	a.Close()
	b.Close()
	return n1.Load(), n2.Load()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyHalf copies src to dst, then closes dst's write side; on an error it
// closes both, so the other direction ends too.
func copyHalf(dst, src net.Conn) int64 {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	n, err := io.CopyBuffer(dst, src, *bp)
	if err != nil {
		dst.Close()
		src.Close()
		return n
	}
	if hc, ok := dst.(halfCloser); ok {
		if hc.CloseWrite() == nil {
			return n
		}
	}
	dst.Close()
	return n
}
