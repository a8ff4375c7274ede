package testutil

import (
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// ServeTCP runs a TCP app on loopback that hands every connection to
// serve (in a goroutine of its own, which must close it). It returns the
// app's address and a count of the connections it accepted; it stops when
// the test ends.
func ServeTCP(t testing.TB, serve func(net.Conn)) (*net.TCPAddr, *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go serve(c)
		}
	}()
	return l.Addr().(*net.TCPAddr), &n
}

// EchoApp is a ServeTCP app that echoes every connection back and, at EOF,
// closes its write side (so a half-close must cross whatever sits between a
// client and it).
func EchoApp(t testing.TB) (*net.TCPAddr, *atomic.Int64) {
	t.Helper()
	return ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(c, c)
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	})
}

// EchoOnce writes msg on an open connection to an echo app and reads the
// echo back (within 5 s).
func EchoOnce(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != msg {
		return fmt.Errorf("echo %q, want %q", b, msg)
	}
	return nil
}
