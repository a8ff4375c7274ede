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
// closes both. count, when not nil, is told the bytes as they move: (n, 0)
// for a->b, (0, n) for b->a. It returns the bytes copied a->b and b->a.
func pipe(a, b net.Conn, count func(ab, ba int64)) (ab, ba int64) {
	var wg sync.WaitGroup
	var n1, n2 atomic.Int64
	var toB, toA func(int64)
	if count != nil {
		toB, toA = func(n int64) { count(n, 0) }, func(n int64) { count(0, n) }
	}
	wg.Go(func() { n1.Store(copyHalf(b, a, toB)) })
	wg.Go(func() { n2.Store(copyHalf(a, b, toA)) })
	wg.Wait()
	a.Close()
	b.Close()
	return n1.Load(), n2.Load()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// countingWriter tells add the size of every write.
type countingWriter struct {
	w   io.Writer
	add func(int64)
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.add(int64(n))
	return n, err
}

func isTCP(c net.Conn) bool {
	_, ok := c.(*net.TCPConn)
	return ok
}

// copyHalf copies src to dst, then closes dst's write side; on an error it
// closes both, so the other direction ends too. Between two plain TCP
// connections the kernel copies (splice) and add hears the total at the
// end; otherwise add hears every write.
func copyHalf(dst, src net.Conn, add func(int64)) int64 {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	var w io.Writer = dst
	streamed := add != nil && !(isTCP(dst) && isTCP(src))
	if streamed {
		w = countingWriter{w: dst, add: add}
	}
	n, err := io.CopyBuffer(w, src, *bp)
	if add != nil && !streamed {
		add(n)
	}
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
