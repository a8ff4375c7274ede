package integration

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/dataplane"
	"github.com/meshx/meshx/internal/testutil"
)

// mesh is a real agent with services registered straight through its API,
// for testing the native data plane on its own.
type mesh struct {
	t   testing.TB
	c   *testutil.Consul
	cl  *api.Client
	obs map[string]*countingObserver    // by plane (service) name
	log map[string]*testutil.SyncBuffer // each plane's log, by name
}

// countingObserver counts what a plane reports.
type countingObserver struct {
	opened, refused, tlsFailed, dialFailed atomic.Int64
}

func (o *countingObserver) ConnOpened(string)                { o.opened.Add(1) }
func (o *countingObserver) Transferred(string, int64, int64) {}
func (o *countingObserver) ConnClosed(string)                {}
func (o *countingObserver) Refused(string)                   { o.refused.Add(1) }
func (o *countingObserver) TLSFailed(string)                 { o.tlsFailed.Add(1) }
func (o *countingObserver) DialFailed(string)                { o.dialFailed.Add(1) }
func (o *countingObserver) DialRetried(string)               {}
func (o *countingObserver) LeafExpiry(time.Time)             {}

func newMesh(t testing.TB, extraHCL string) *mesh {
	c := testutil.StartConsul(t, extraHCL)
	cl, err := api.NewClient(&api.Config{Address: c.HTTPAddr})
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{t: t, c: c, cl: cl, obs: map[string]*countingObserver{},
		log: map[string]*testutil.SyncBuffer{}}
}

// register adds a service instance and its sidecar (public port side, with
// only an alias check, so it is passing as soon as the service is).
func (m *mesh) register(name, id string, appPort, side int, ups ...api.Upstream) {
	m.t.Helper()
	err := m.cl.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: name, ID: id, Port: appPort,
		Address: "127.0.0.1",
		Check:   &api.AgentServiceCheck{CheckID: "ttl:" + id, TTL: "10m", Status: api.HealthPassing},
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{Port: side,
			Checks: api.AgentServiceChecks{{Name: "alias", AliasService: id}},
			Proxy:  &api.AgentServiceConnectProxyConfig{Upstreams: ups}}}})
	if err != nil {
		m.t.Fatalf("register %s: %v", id, err)
	}
}

func (m *mesh) setHealth(id, status string) {
	m.t.Helper()
	if err := m.cl.Agent().UpdateTTL("ttl:"+id, "test", status); err != nil {
		m.t.Fatal(err)
	}
}

// plane starts a native data plane for service name, serving public and
// forwarding to app; it is stopped when the test ends.
func (m *mesh) plane(name string, public int, app int, ups ...dataplane.Upstream) *dataplane.Plane {
	m.t.Helper()
	appAddr := ""
	if app != 0 {
		appAddr = "127.0.0.1:" + strconv.Itoa(app)
	}
	obs := &countingObserver{}
	m.obs[name] = obs
	p, err := dataplane.New(dataplane.Options{Source: dataplane.NewAgentSource(m.cl), Service: name, Observer: obs,
		Public: "127.0.0.1:" + strconv.Itoa(public), App: appAddr, Upstreams: ups,
		Logger: m.logger(name)})
	if err != nil {
		m.t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { p.Stop(0) })
	select {
	case <-p.Ready():
	case <-time.After(30 * time.Second):
		m.t.Fatalf("plane %s not ready", name)
	}
	return p
}

// logger writes a plane's records to t.Log and keeps them for assertions.
func (m *mesh) logger(name string) *slog.Logger {
	buf := &testutil.SyncBuffer{}
	m.log[name] = buf
	w := io.MultiWriter(buf, testutil.LogWriter(m.t))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})).With("plane", name)
}

// builtin runs Consul's built-in proxy for a sidecar until the test ends.
func (m *mesh) builtin(serviceID string) {
	m.t.Helper()
	cmd := exec.Command(m.c.Bin, "connect", "proxy", "-sidecar-for", serviceID, "-http-addr", m.c.HTTPAddr,
		"-log-level", "warn")
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if m.t.Failed() {
			m.t.Logf("built-in proxy for %s:\n%s", serviceID, out.String())
		}
	})
}

func upstreamTo(name string, port int) dataplane.Upstream {
	return dataplane.Upstream{Name: name, Bind: "127.0.0.1:" + strconv.Itoa(port)}
}

// echoApp echoes every connection back and closes its write side at EOF
// (so a half-close must cross the mesh both ways for a client to finish).
func echoApp(t testing.TB) int {
	addr, _ := testutil.EchoApp(t)
	return addr.Port
}

// nameApp answers every connection with its name and holds it open until
// the client closes.
func nameApp(t testing.TB, name string) int {
	port, _ := countingApp(t, name)
	return port
}

// countingApp is nameApp that also counts the connections it accepted.
func countingApp(t testing.TB, name string) (int, *atomic.Int64) {
	t.Helper()
	addr, n := testutil.ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		_, _ = io.WriteString(c, name)
		_, _ = io.Copy(io.Discard, c)
	})
	return addr.Port, n
}

// readName connects to a local port and reads the far app's name.
func readName(port int) (string, error) {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 64)
	n, err := c.Read(b)
	if n == 0 {
		return "", fmt.Errorf("connection closed without an answer: %v", err)
	}
	return string(b[:n]), nil
}

// dialName opens a connection through port and checks the far app's name;
// the connection stays open.
func dialName(port int, want string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 3*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, len(want))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != want {
		c.Close()
		return nil, fmt.Errorf("got %q, %v", b, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

// echoThrough sends n pseudo-random bytes through a local port to an echo
// app and checks that exactly the same bytes come back. With halfClose the
// sender then closes its write side and the whole echo must arrive before
// EOF (the half-close crossed the mesh both ways); without it the receiver
// stops after n bytes (Consul's built-in proxy closes both directions as
// soon as one ends, so it cannot carry a half-close).
func echoThrough(port int, n int64, seed uint64, halfClose bool) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	sent := sha256.New()
	var werr error
	var wg sync.WaitGroup
	wg.Go(func() {
		r := io.LimitReader(rand.NewChaCha8(seedBytes(seed)), n)
		if _, werr = io.Copy(io.MultiWriter(c, sent), r); werr == nil && halfClose {
			werr = c.(*net.TCPConn).CloseWrite()
		}
	})
	got := sha256.New()
	var m int64
	var rerr error
	if halfClose {
		m, rerr = io.Copy(got, c)
	} else {
		m, rerr = io.CopyN(got, c, n)
	}
	wg.Wait()
	switch {
	case werr != nil:
		return fmt.Errorf("send: %w", werr)
	case rerr != nil:
		return fmt.Errorf("receive: %w", rerr)
	case m != n:
		return fmt.Errorf("received %d bytes, sent %d", m, n)
	case string(got.Sum(nil)) != string(sent.Sum(nil)):
		return errors.New("received bytes differ from those sent")
	}
	return nil
}

func seedBytes(s uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(s >> (8 * i))
	}
	return b
}

// concurrentEcho runs k echoThrough at once.
func concurrentEcho(port, k int, n int64, halfClose bool) error {
	errs := make(chan error, k)
	for i := range k {
		go func() { errs <- echoThrough(port, n, uint64(i+1), halfClose) }()
	}
	var all []error
	for range k {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }
