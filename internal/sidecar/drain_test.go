package sidecar

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/testutil"
)

// TestCountEstablished reads /proc/net/tcp's format: only ESTABLISHED
// sockets whose local port is asked for count.
func TestCountEstablished(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:5208 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:5208 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D431 0100007F:5208 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:5208 0100007F:D432 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
   4: 0B38A8C0:23F0 0A38A8C0:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
`
	path := filepath.Join(t.TempDir(), "tcp")
	if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	// 0x5208 = 21000, 0x23F0 = 9200: one accepted connection each; the
	// listener, the client side and the TIME_WAIT socket do not count.
	if n := countEstablished(path, map[int]bool{21000: true, 9200: true}); n != 2 {
		t.Errorf("countEstablished = %d, want 2", n)
	}
	if n := countEstablished(path, map[int]bool{8080: true}); n != 0 {
		t.Errorf("countEstablished for an unused port = %d, want 0", n)
	}
}

// TestOpenConns counts a real accepted connection of this namespace until it
// is closed.
func TestOpenConns(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ports := map[int]bool{l.Addr().(*net.TCPAddr).Port: true}
	if n := openConns(ports); n != 0 {
		t.Fatalf("openConns before any connection = %d", n)
	}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if n := openConns(ports); n != 1 {
		t.Errorf("openConns with one accepted connection = %d, want 1", n)
	}
	c.Close()
	s.Close()
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := openConns(ports); n != 0 {
			return fmt.Errorf("%d connections still open", n)
		}
		return nil
	})
}

// TestRunDrainsBeforeTheProxyStops: at a stop, the check goes critical, the
// servers are asked until they no longer list the sidecar, and only then
// does the proxy stop.
func TestRunDrainsBeforeTheProxyStops(t *testing.T) {
	pl := lifecyclePlan()
	pl.Proxy.Drain = plan.Duration(5 * time.Second)
	h := newHarness(t, pl)
	h.start()
	h.waitReady()
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	ev := dedupe(events(h.ag.Calls()))
	crit := slices.Index(ev, "ttl meshx-ttl:web-h1 critical")
	health := slices.Index(ev, "health web")
	stop := slices.Index(ev, "proxy stop 1")
	if crit < 0 || health < crit || stop < health {
		t.Errorf("events %q: want the check critical, then the servers asked, then the proxy stopped", ev)
	}
}

// TestRunDrainIsBounded: servers that cannot be asked hold the stop for the
// drain period at most; then the proxy stops anyway.
func TestRunDrainIsBounded(t *testing.T) {
	pl := lifecyclePlan()
	pl.Proxy.Drain = plan.Duration(300 * time.Millisecond)
	h := newHarness(t, pl)
	h.start()
	h.waitReady()
	h.ag.Fail("health", errors.New("no cluster leader"))
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	ev := dedupe(events(h.ag.Calls()))
	if !slices.Contains(ev, "proxy stop 1") || !slices.Contains(ev, "deregister web-h1") {
		t.Errorf("events %q: the proxy must stop and the service go once the drain period is over", ev)
	}
}

// TestRunNoDrain: proxy.drain 0s stops the proxy right after the check went
// critical, asking nothing.
func TestRunNoDrain(t *testing.T) {
	h := newHarness(t, lifecyclePlan()) // Drain 0
	h.start()
	h.waitReady()
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if ev := events(h.ag.Calls()); slices.Contains(ev, "health web") {
		t.Errorf("events %q: no drain was asked for", ev)
	}
}
