package sidecar

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/meshx/meshx/internal/plan"
)

// TestPortsFree: a port the proxy is to listen on, held by another listener,
// fails the proxy's precondition with a message naming the port and its use.
func TestPortsFree(t *testing.T) {
	hold := func(addr string) int {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l.Addr().(*net.TCPAddr).Port
	}
	held := func() int { return hold("127.0.0.1:0") }
	pl := webPlan(false)
	pl.SidecarPort = held()
	pl.Upstreams = []plan.Upstream{{Name: "db", Address: "127.0.0.1", Port: held()}}
	// The ports above are held by this test: nothing is free yet.
	err := portsFree(pl)
	for _, want := range []string{
		"port " + strconv.Itoa(pl.SidecarPort) + " (public mTLS listener) is in use by another process",
		"port " + strconv.Itoa(pl.Upstreams[0].Port) + " (upstream db listener) is in use by another process",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("portsFree() = %v, want it to say %q", err, want)
		}
	}

	l, _ := net.Listen("tcp", "127.0.0.1:0")
	p := l.Addr().(*net.TCPAddr).Port
	l.Close()
	pl.SidecarPort, pl.Upstreams = p, nil
	if err := portsFree(pl); err != nil {
		t.Errorf("portsFree() with a free port: %v", err)
	}
}
