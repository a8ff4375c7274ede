package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

func TestParseServiceID(t *testing.T) {
	for _, tc := range []struct {
		name, uri string
		want      ServiceID
		bad       bool
	}{
		{"service", "spiffe://" + testTD + "/ns/default/dc/dc1/svc/web",
			ServiceID{TrustDomain: testTD, Namespace: "default", Datacenter: "dc1", Service: "web"}, false},
		{"partition", "spiffe://" + testTD + "/ap/team/ns/ops/dc/dc2/svc/db",
			ServiceID{TrustDomain: testTD, Partition: "team", Namespace: "ops", Datacenter: "dc2", Service: "db"}, false},
		{"upper-case trust domain", "spiffe://ABC.consul/ns/default/dc/dc1/svc/web",
			ServiceID{TrustDomain: "abc.consul", Namespace: "default", Datacenter: "dc1", Service: "web"}, false},
		{"agent id", "spiffe://" + testTD + "/agent/client/dc/dc1/id/abc", ServiceID{}, true},
		{"other scheme", "https://" + testTD + "/ns/default/dc/dc1/svc/web", ServiceID{}, true},
		{"extra segment", "spiffe://" + testTD + "/ns/default/dc/dc1/svc/web/x", ServiceID{}, true},
		{"empty service", "spiffe://" + testTD + "/ns/default/dc/dc1/svc/", ServiceID{}, true},
		{"query", "spiffe://" + testTD + "/ns/default/dc/dc1/svc/web?x=1", ServiceID{}, true},
		{"user", "spiffe://u@" + testTD + "/ns/default/dc/dc1/svc/web", ServiceID{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := url.Parse(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseServiceID(u)
			if (err != nil) != tc.bad || got != tc.want {
				t.Fatalf("ParseServiceID(%s) = %+v, %v", tc.uri, got, err)
			}
			if !tc.bad {
				if back, _ := ParseServiceID(mustURL(got.URI())); back != got {
					t.Errorf("URI() = %s does not read back as %+v", got.URI(), got)
				}
			}
		})
	}
}

func TestSNI(t *testing.T) {
	if got := SNI("web", "", "dc1", testTD); got != "web.default.dc1.internal."+testTD {
		t.Errorf("SNI = %s", got)
	}
	if got := QuerySNI("geo", "dc2", testTD); got != "geo.default.dc2.query."+testTD {
		t.Errorf("QuerySNI = %s", got)
	}
}

func TestMatch(t *testing.T) {
	client := ServiceID{TrustDomain: testTD, Namespace: "default", Datacenter: "dc1", Service: "client"}
	l7 := ixn("client", "", 9)
	l7.Permissions = []*api.IntentionPermission{{Action: api.IntentionActionAllow}}
	peer := ixn("client", "allow", 9)
	peer.SourcePeer = "other"
	otherNS := ixn("client", "allow", 9)
	otherNS.SourceNS = "ops"
	for _, tc := range []struct {
		name string
		ixns []*api.Intention
		want *api.Intention // nil = none matches
	}{
		{"none", nil, nil},
		{"exact before wildcard", []*api.Intention{ixn("client", "allow", 9), ixn("*", "deny", 8)}, nil},
		{"wildcard", []*api.Intention{ixn("other", "allow", 9), ixn("*", "deny", 8)}, nil},
		{"a peer's intention never matches a local source", []*api.Intention{peer}, nil},
		{"another namespace", []*api.Intention{otherNS}, nil},
		{"L7", []*api.Intention{l7}, l7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := match(tc.ixns, client)
			want := tc.want
			switch tc.name {
			case "exact before wildcard":
				want = tc.ixns[0]
			case "wildcard":
				want = tc.ixns[1]
			}
			if got != want {
				t.Fatalf("match = %+v, want %+v", got, want)
			}
		})
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// TestPipeHalfClose: a half-close on one side reaches the other, and the
// other direction keeps flowing until it ends too.
func TestPipeHalfClose(t *testing.T) {
	client, p1 := tcpPair(t)
	p2, server := tcpPair(t)
	done := make(chan [2]int64, 1)
	go func() {
		var streamed atomic.Int64
		ab, ba := pipe(p1, p2, func(x, y int64) { streamed.Add(x + y) })
		if streamed.Load() != ab+ba {
			t.Errorf("counted %d bytes as they moved, %d in all", streamed.Load(), ab+ba)
		}
		done <- [2]int64{ab, ba}
	}()
	io.WriteString(client, "request")
	client.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(server) // EOF only if the half-close crossed
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	io.WriteString(server, "response after the client's half-close")
	server.Close()
	back, err := io.ReadAll(client)
	if err != nil || string(back) != "response after the client's half-close" {
		t.Fatalf("client read %q, %v", back, err)
	}
	n := <-done
	if n[0] != int64(len("request")) || n[1] != int64(len(back)) {
		t.Errorf("pipe counted %v", n)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tw{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tw struct{ t testing.TB }

func (w tw) Write(p []byte) (int, error) { w.t.Log(strings.TrimSpace(string(p))); return len(p), nil }

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// echo serves an echo app and counts its connections.
func echo(t testing.TB) (string, *atomic.Int64) {
	addr, n := testutil.EchoApp(t)
	return addr.String(), n
}

func startPlane(t testing.TB, o Options) *Plane {
	t.Helper()
	o.Logger = testLogger(t).With("plane", o.Service)
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(0) })
	select {
	case <-p.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("plane not ready")
	}
	return p
}

// roundTrip writes msg through addr and reads the echo; an error means the
// connection was refused or closed.
func roundTrip(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOn(c, msg)
}

func echoOn(c net.Conn, msg string) error { return testutil.EchoOnce(c, msg) }

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second) // generous: CI machines are loaded
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// meshPair starts web (an echo app behind a plane) and a client plane with
// an upstream to web; it returns the upstream's local address.
func meshPair(t testing.TB, src *fakeSource) (up string, web, client *Plane, hits *atomic.Int64) {
	t.Helper()
	app, hits := echo(t)
	pub := freeAddr(t)
	host, portText, _ := net.SplitHostPort(pub)
	port, _ := strconv.Atoi(portText)
	src.update(func() { src.instances["web"] = []*api.ServiceEntry{instance("web", host, port)} })
	web = startPlane(t, Options{Source: src, Service: "web", Public: pub, App: app})
	up = freeAddr(t)
	client = startPlane(t, Options{Source: src, Service: "client", Public: freeAddr(t),
		Upstreams: []Upstream{{Name: "web", Bind: up}}})
	return up, web, client, hits
}

func TestPlaneIntentions(t *testing.T) {
	src := newFakeSource(t)
	up, web, _, hits := meshPair(t, src)

	// No intention: the agent's default decides (deny here).
	if err := roundTrip(up, "x"); err == nil {
		t.Fatal("default deny: connection allowed")
	}
	src.mu.Lock()
	asked := src.authorized
	src.mu.Unlock()
	if asked == 0 {
		t.Error("no intention matched, yet the agent's default was not asked")
	}
	src.update(func() { src.defaultOK = true })
	eventually(t, "default allow", func() error { return roundTrip(up, "hello") })

	// An intention wins over the default.
	src.update(func() { src.intentions["web"] = []*api.Intention{ixn("client", "deny", 9)} })
	eventually(t, "deny intention", func() error {
		if roundTrip(up, "x") == nil {
			return errors.New("still allowed")
		}
		return nil
	})
	src.update(func() { src.intentions["web"] = []*api.Intention{ixn("client", "allow", 9), ixn("*", "deny", 8)} })
	held := hold(t, up) // once the allow is in effect
	// The earlier round trips' connections end on their own time.
	eventually(t, "only the held connection open", func() error {
		if n := web.Open(); n != 1 {
			return fmt.Errorf("web's plane has %d open connections, want 1", n)
		}
		return nil
	})
	before := hits.Load()
	// Deny again: the open connection is closed too.
	src.update(func() { src.intentions["web"] = []*api.Intention{ixn("*", "deny", 8)} })
	_ = held.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("open connection not closed by the deny: %v", err)
	}
	if hits.Load() != before {
		t.Errorf("the app saw new connections after the deny")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPlaneForeignCA: a peer whose chain is not from the cluster's roots
// is refused in both directions.
func TestPlaneForeignCA(t *testing.T) {
	src := newFakeSource(t)
	src.defaultOK = true
	up, _, _, hits := meshPair(t, src)
	eventually(t, "mesh up", func() error { return roundTrip(up, "hi") })
	// web's leaf is now from a CA the client does not trust.
	foreign := newTestCA(t)
	src.update(func() { src.leaves["web"] = foreign.leaf(t, svcURI("web")) })
	eventually(t, "foreign server refused", func() error {
		if roundTrip(up, "x") == nil {
			return errors.New("client accepted a server from a foreign CA")
		}
		return nil
	})
	before := hits.Load()
	for range 5 {
		if roundTrip(up, "x") == nil {
			t.Fatal("client accepted a server from a foreign CA")
		}
	}
	if hits.Load() != before {
		t.Errorf("the app was reached through a foreign CA's peer")
	}
}

// hold opens a connection through addr, once the mesh carries it, for the
// test to keep open; it is closed when the test ends.
func hold(t *testing.T, addr string) net.Conn {
	t.Helper()
	var held net.Conn
	eventually(t, "mesh up", func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		if err := echoOn(c, "open"); err != nil {
			c.Close()
			return err
		}
		held = c
		return nil
	})
	t.Cleanup(func() { held.Close() })
	return held
}

// TestPlaneSetUpstreams: a new upstream opens a listener, a removed one
// closes, the rest carry on with their open connections.
func TestPlaneSetUpstreams(t *testing.T) {
	src := newFakeSource(t)
	src.defaultOK = true
	up, _, client, _ := meshPair(t, src)
	held := hold(t, up)
	extra := freeAddr(t)
	if err := client.SetUpstreams([]Upstream{{Name: "web", Bind: up}, {Name: "web", Bind: extra}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "new listener", func() error { return roundTrip(extra, "via extra") })
	if err := client.SetUpstreams([]Upstream{{Name: "web", Bind: extra}}); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", up, time.Second); err == nil {
		t.Error("removed upstream's listener still accepts")
	}
	if err := echoOn(held, "second"); err != nil {
		t.Errorf("an open connection of the removed upstream was cut: %v", err)
	}
	if err := client.SetUpstreams([]Upstream{{Name: "web", Bind: extra}}); err != nil {
		t.Errorf("setting the same upstreams again: %v", err)
	}
}

// TestPlaneStopDrains: Stop refuses new connections at once and gives open
// ones the drain period, then closes them.
func TestPlaneStopDrains(t *testing.T) {
	src := newFakeSource(t)
	src.defaultOK = true
	up, _, client, _ := meshPair(t, src)
	held := hold(t, up)
	stopped := make(chan struct{})
	start := time.Now()
	go func() { client.Stop(500 * time.Millisecond); close(stopped) }()
	eventually(t, "listener closed", func() error {
		if c, err := net.DialTimeout("tcp", up, 100*time.Millisecond); err == nil {
			c.Close()
			return errors.New("still accepting")
		}
		return nil
	})
	if err := echoOn(held, "during the drain"); err != nil {
		t.Errorf("open connection cut before the drain ended: %v", err)
	}
	<-stopped
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Errorf("Stop returned after %s, before the drain", d)
	}
	_ = held.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection still open after the drain: %v", err)
	}
}

func TestNewRequiresOptions(t *testing.T) {
	for _, o := range []Options{{Service: "web", Public: ":1"}, {Source: newFakeSource(t), Public: ":1"},
		{Source: newFakeSource(t), Service: "web"}} {
		if _, err := New(o); !errors.Is(err, ErrMissingOption) {
			t.Errorf("New(%+v) = %v, want ErrMissingOption", o, err)
		}
	}
}

// TestWatchRecovers: errors are retried, and an index that goes backwards
// (an agent that restarted) starts the watch over.
func TestWatchRecovers(t *testing.T) {
	old := watchIdle
	watchIdle = 10 * time.Millisecond
	defer func() { watchIdle = old }()
	answers := []struct {
		index uint64
		err   error
	}{{5, nil}, {0, errors.New("agent down")}, {3, nil}, {4, nil}}
	var seen []uint64
	ctx, cancel := context.WithCancel(context.Background())
	i := 0
	watch(ctx, testLogger(t), "test", func(_ context.Context, index uint64) (uint64, error) {
		seen = append(seen, index)
		if i == len(answers) {
			cancel()
			return index, nil
		}
		a := answers[i]
		i++
		return a.index, a.err
	})
	want := []uint64{0, 5, 5, 0, 4} // 3 < 5: started over from 0
	if len(seen) != len(want) {
		t.Fatalf("queries with indexes %v, want %v", seen, want)
	}
	for k := range want {
		if seen[k] != want[k] {
			t.Fatalf("queries with indexes %v, want %v", seen, want)
		}
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestServing(t *testing.T) {
	src := newFakeSource(t)
	p := startPlane(t, Options{Source: src, Service: "web", Public: freeAddr(t)})
	if err := p.Serving(); err != nil {
		t.Fatalf("a started plane: %v", err)
	}
	p.Stop(0)
	if err := p.Serving(); err == nil {
		t.Fatal("a stopped plane says it serves")
	}
}

// staleSource answers Authorize from an intention the servers no longer have.
type staleSource struct{ *fakeSource }

func (s staleSource) Authorize(context.Context, string, string) (bool, string, error) {
	return true, "Matched L4 intention: client => web (allow)", nil
}

func TestAuthorizeStaleAgentCache(t *testing.T) {
	src := staleSource{newFakeSource(t)}
	a := NewAuthorizer(src, "web", testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	<-a.Ready()
	allow, reason, err := a.Allow(ctx, ServiceID{TrustDomain: testTD, Datacenter: "dc1", Service: "client"})
	if err != nil || allow || !strings.Contains(reason, "stale") {
		t.Fatalf("no intention on the servers, agent answers from a stale one: allow=%v %q %v", allow, reason, err)
	}
}

// TestListenerRebound: a listener that fails on its own (closed under the
// plane here) is bound again on the same address, and serves.
func TestListenerRebound(t *testing.T) {
	src := newFakeSource(t)
	src.defaultOK = true
	up, _, client, _ := meshPair(t, src)
	eventually(t, "mesh up", func() error { return roundTrip(up, "before") })
	client.mu.Lock()
	var key string
	for k := range client.listeners {
		if k != "" {
			key = k
		}
	}
	client.listeners[key].Close() // not through the plane: a failure
	client.mu.Unlock()
	eventually(t, "listener bound again", func() error { return roundTrip(up, "after") })
	if err := client.Serving(); err != nil {
		t.Errorf("after the rebind: %v", err)
	}
}

// flakyListener fails its first Accepts with EMFILE, as a process out of
// file descriptors does, then accepts for real.
type flakyListener struct {
	net.Listener
	fails atomic.Int64
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptOutOfFiles: running out of file descriptors is waited out on
// the same listener, which then serves again; it is not taken for a dead
// listener.
func TestAcceptOutOfFiles(t *testing.T) {
	src := newFakeSource(t)
	src.defaultOK = true
	app, _ := echo(t)
	p := startPlane(t, Options{Source: src, Service: "web", Public: freeAddr(t), App: app})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(3)
	p.mu.Lock()
	p.listeners["flaky"] = fl
	p.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- p.accept("flaky", fl) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	eventually(t, "EMFILE waited out", func() error {
		if fl.fails.Load() >= 0 {
			return errors.New("still failing")
		}
		return nil
	})
	select {
	case err := <-done:
		t.Fatalf("accept gave up on the listener: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	ln.Close()
	if err := <-done; err == nil {
		t.Fatal("accept returned no error for a closed listener")
	}
}
