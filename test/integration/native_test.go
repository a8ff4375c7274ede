package integration

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/dataplane"
	"github.com/meshx/meshx/internal/testutil"
)

const hundredMB = 100 << 20

// TestNativeInterop: the native data plane talks to Consul's built-in proxy
// in both directions and to itself; 100 MB each way arrives intact,
// half-close carries through, and many connections run at once.
func TestNativeInterop(t *testing.T) {
	m := newMesh(t, "")
	web, api1 := echoApp(t), echoApp(t)
	ports := map[string]int{}
	for _, k := range []string{"web-side", "api-side", "client-side", "native-client-side", "up-web-builtin", "up-api", "up-web-native"} {
		ports[k] = testutil.FreePort(t)
	}
	// web: native. api: built-in. client: built-in with upstream web.
	// native-client: native with upstreams api and web.
	m.register("web", "web-1", web, ports["web-side"])
	m.register("api", "api-1", api1, ports["api-side"])
	m.register("client", "client-1", 0, ports["client-side"],
		api.Upstream{DestinationName: "web", LocalBindAddress: "127.0.0.1", LocalBindPort: ports["up-web-builtin"]})
	m.register("native-client", "native-client-1", 0, ports["native-client-side"])
	m.plane("web", ports["web-side"], web)
	m.builtin("api-1")
	m.builtin("client-1")
	m.plane("native-client", ports["native-client-side"], 0,
		upstreamTo("api", ports["up-api"]), upstreamTo("web", ports["up-web-native"]))

	paths := []struct {
		name, port string
		halfClose  bool // the built-in proxy cannot carry one
	}{
		{"built-in to native", "up-web-builtin", false},
		{"native to built-in", "up-api", false},
		{"native to native", "up-web-native", true},
	}
	for i, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			testutil.Eventually(t, 30*time.Second, func() error { return echoThrough(ports[p.port], 1024, 1, p.halfClose) })
			if err := echoThrough(ports[p.port], hundredMB, uint64(i+10), p.halfClose); err != nil {
				t.Fatalf("100 MB each way: %v", err)
			}
			if err := concurrentEcho(ports[p.port], 32, 256<<10, p.halfClose); err != nil {
				t.Fatalf("32 concurrent connections: %v", err)
			}
		})
	}
}

// intentionsDefaultDeny makes every source denied unless an intention says otherwise.
func (m *mesh) intention(dest string, sources ...*api.SourceIntention) {
	m.t.Helper()
	e := &api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: dest, Sources: sources}
	testutil.Eventually(m.t, 20*time.Second, func() error {
		_, _, err := m.cl.ConfigEntries().Set(e, nil)
		return err
	})
}

func allow(src string) *api.SourceIntention {
	return &api.SourceIntention{Name: src, Action: api.IntentionActionAllow}
}
func deny(src string) *api.SourceIntention {
	return &api.SourceIntention{Name: src, Action: api.IntentionActionDeny}
}

// TestNativeIntentions: on a default-deny cluster a denied source is
// refused, an allow takes effect, a deny again takes effect (an open
// connection is closed), each within intentionBound, ten times over.
func TestNativeIntentions(t *testing.T) {
	const intentionBound = 5 * time.Second
	m := newMesh(t, "")
	m.intention("*", deny("*"))
	web := nameApp(t, "web")
	side, cside, up := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	m.register("web", "web-1", web, side)
	m.register("client", "client-1", 0, cside)
	m.plane("web", side, web)
	m.plane("client", cside, 0, upstreamTo("web", up))
	// Upstream discovered, identity up, but denied.
	testutil.Eventually(t, 30*time.Second, func() error {
		out, err := readName(up)
		if err == nil {
			return fmt.Errorf("denied source got %q", out)
		}
		return nil
	})
	for round := range 10 {
		start := time.Now()
		m.intention("web", allow("client"), deny("*"))
		testutil.Eventually(t, intentionBound, func() error {
			out, err := readName(up)
			if err != nil || out != "web" {
				return fmt.Errorf("round %d: allowed source got %q, %v", round, out, err)
			}
			return nil
		})
		allowAfter := time.Since(start)
		start = time.Now()
		m.intention("web", deny("client"))
		testutil.Eventually(t, intentionBound, func() error {
			if out, err := readName(up); err == nil {
				return fmt.Errorf("round %d: denied source got %q", round, out)
			}
			return nil
		})
		t.Logf("round %d: allow took effect in %s, deny in %s", round, allowAfter.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}

	t.Run("an open connection is closed when its intention turns to deny", func(t *testing.T) {
		m.intention("web", allow("client"))
		var c net.Conn
		testutil.Eventually(t, intentionBound, func() error {
			var err error
			c, err = dialName(up, "web")
			return err
		})
		defer c.Close()
		start := time.Now()
		m.intention("web", deny("client"))
		_ = c.SetReadDeadline(time.Now().Add(intentionBound))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("open connection not closed within %s: %v", intentionBound, err)
		}
		t.Logf("open connection closed %s after the deny", time.Since(start).Round(time.Millisecond))
	})
}

// TestNativeMode runs meshx with proxy.mode native: meshx-proxy itself
// carries the mesh, to a built-in-proxy client and to a native client;
// connect and disconnect open and close one listener without restarting
// anything or dropping an open connection.
func TestNativeMode(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	web, echo := nameApp(t, "web"), echoApp(t)
	h.service("web.yaml", fmt.Sprintf("version: 1\nservice: {name: web, port: %d}\nproxy: {mode: native}\n", web))
	h.service("echo.yaml", fmt.Sprintf("version: 1\nservice: {name: echo, port: %d}\nproxy: {mode: native}\n", echo))
	h.service("client.yaml", "version: 1\nservice: {name: client}\ncheck: {probe: none}\nupstreams: [{name: web}, {name: echo}]\nproxy: {mode: native}\n")
	h.service("legacy.yaml", "version: 1\nservice: {name: legacy}\ncheck: {probe: none}\nupstreams: [{name: web}]\n")
	h.foreground()
	h.waitPassing(30*time.Second, "web-testhost", "echo-testhost", "client-testhost", "legacy-testhost")
	ups := map[string]int{}
	for _, u := range h.plan("client").Upstreams {
		ups[u.Name] = u.Port
	}
	legacyWeb := h.plan("legacy").Upstreams[0].Port

	t.Run("native to native and built-in to native", func(t *testing.T) {
		testutil.Eventually(t, 30*time.Second, func() error {
			for _, p := range []int{ups["web"], legacyWeb} {
				if out, err := readName(p); err != nil || out != "web" {
					return fmt.Errorf("port %d: %q, %v", p, out, err)
				}
			}
			return echoThrough(ups["echo"], 1<<20, 7, true)
		})
	})
	st := h.status("client")
	if st.ProxyPID != st.PID {
		t.Errorf("native mode: the proxy is meshx-proxy itself (pid %d), status says %d", st.PID, st.ProxyPID)
	}

	t.Run("connect and disconnect leave other listeners and connections alone", func(t *testing.T) {
		held, err := dialName(ups["web"], "web")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		extra := testutil.FreePort(t)
		if r := h.init("connect", "client", "legacy:"+strconv.Itoa(extra)); r.code != 0 {
			t.Fatalf("connect: exit %d\n%s", r.code, r.stderr)
		}
		testutil.Eventually(t, 20*time.Second, func() error {
			if err := dial(extra); err != nil {
				return fmt.Errorf("new upstream listener: %v", err)
			}
			return nil
		})
		if r := h.init("disconnect", "client", "legacy"); r.code != 0 {
			t.Fatalf("disconnect: exit %d\n%s", r.code, r.stderr)
		}
		testutil.Eventually(t, 20*time.Second, func() error {
			if dial(extra) == nil {
				return fmt.Errorf("legacy's listener on %d still accepts", extra)
			}
			return nil
		})
		if err := echoThrough(ups["echo"], 1<<20, 8, true); err != nil {
			t.Errorf("echo's listener after connect/disconnect: %v", err)
		}
		// The held connection through web's listener is still open and
		// still carries bytes (the name app ignores input: write, then
		// check the connection is not reset).
		if _, err := held.Write([]byte("still there?")); err != nil {
			t.Fatalf("held connection broken by connect/disconnect: %v", err)
		}
		_ = held.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := held.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("held connection ended by connect/disconnect: %v", err)
		}
		if now := h.status("client"); now.PID != st.PID {
			t.Errorf("meshx-proxy restarted (pid %d -> %d)", st.PID, now.PID)
		}
	})

	t.Run("metrics: connections, bytes, the leaf certificate, a denied connection", func(t *testing.T) {
		inbound := map[string]string{"direction": "inbound", "upstream": ""}
		h.waitMetric(10*time.Second, "web", "meshx_dataplane_connections_total", inbound, func(v float64) bool { return v >= 1 })
		h.waitMetric(10*time.Second, "web", "meshx_dataplane_bytes_total",
			map[string]string{"direction": "inbound", "flow": "out"}, func(v float64) bool { return v > 0 })
		h.waitMetric(10*time.Second, "client", "meshx_dataplane_connections_total",
			map[string]string{"direction": "outbound", "upstream": "web"}, func(v float64) bool { return v >= 1 })
		h.waitMetric(10*time.Second, "web", "meshx_dataplane_leaf_cert_expiry_timestamp_seconds", nil,
			func(v float64) bool { return v > float64(time.Now().Unix()) })
		refused := h.waitMetric(10*time.Second, "web", "meshx_dataplane_connections_refused_total", inbound,
			func(float64) bool { return true })
		if _, _, err := h.client().ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions,
			Name: "web", Sources: []*api.SourceIntention{deny("client")}}, nil); err != nil {
			t.Fatal(err)
		}
		defer func() { _, _ = h.client().ConfigEntries().Delete(api.ServiceIntentions, "web", nil) }()
		testutil.Eventually(t, 30*time.Second, func() error {
			if out, err := readName(ups["web"]); err == nil {
				return fmt.Errorf("denied source got %q", out)
			}
			return nil
		})
		h.waitMetric(10*time.Second, "web", "meshx_dataplane_connections_refused_total", inbound,
			func(v float64) bool { return v > refused })
	})
}

func dial(port int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestConnectionBudget: meshx-init says, before starting anything, when the
// built-in proxies would need more connections from the host's address than
// the agent allows, naming the setting to raise; native services on a
// loopback agent connect from addresses of their own and need no warning.
func TestConnectionBudget(t *testing.T) {
	c := testutil.StartConsul(t, "")
	for _, tc := range []struct {
		mode string
		warn bool
	}{{"connect", true}, {"native", false}} {
		t.Run(tc.mode, func(t *testing.T) {
			h := newHost(t, c, "")
			h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: %q, binary: %q}\nhostname: testhost\nports: {range: \"22000-22999\"}\n",
				c.Address(), testutil.ConsulBinary(t)))
			for i := range 60 {
				h.service(fmt.Sprintf("s%02d.yaml", i), fmt.Sprintf("version: 1\nservice: {name: s%02d}\ncheck: {probe: none}\nproxy: {mode: %s}\n", i, tc.mode))
			}
			r := h.init("run", "--systemd=no")
			if r.code != 0 {
				t.Fatalf("run: exit %d", r.code)
			}
			if got := strings.Contains(r.stderr, "limits.http_max_conns_per_client"); got != tc.warn {
				t.Errorf("warning about the agent's connection limit: %v, want %v", got, tc.warn)
			}
			h.init("stop")
		})
	}
}

// TestNativePreparedQuery: an upstream that is a prepared query reaches
// the instances the query returns.
func TestNativePreparedQuery(t *testing.T) {
	m := newMesh(t, "")
	web := nameApp(t, "web")
	side, cside, up := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	m.register("web", "web-1", web, side)
	m.register("client", "client-1", 0, cside)
	if _, _, err := m.cl.PreparedQuery().Create(&api.PreparedQueryDefinition{Name: "nearest-web",
		Service: api.ServiceQuery{Service: "web", OnlyPassing: true}}, nil); err != nil {
		t.Fatal(err)
	}
	m.plane("web", side, web)
	m.plane("client", cside, 0, dataplane.Upstream{Name: "nearest-web", Query: true, Bind: "127.0.0.1:" + strconv.Itoa(up)})
	testutil.Eventually(t, 30*time.Second, func() error {
		out, err := readName(up)
		if err != nil || out != "web" {
			return fmt.Errorf("%q, %v", out, err)
		}
		return nil
	})
}

// TestNativeACLDefaultDeny: on an agent whose ACL default policy is deny
// and with no intention at all, the agent's default decides (deny); an
// allow intention lets the source in; removing it denies it again, even
// while the agent's own intention cache may still hold the allow.
func TestNativeACLDefaultDeny(t *testing.T) {
	const root = "8a9f1c34-5b1e-4c55-9d3e-meshx0000009"
	c, admin := testutil.StartACLConsul(t, root)
	m := &mesh{t: t, c: c, cl: admin, obs: map[string]*countingObserver{}, log: map[string]*testutil.SyncBuffer{}}
	web := nameApp(t, "web")
	side, cside, up := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	m.register("web", "web-1", web, side)
	m.register("client", "client-1", 0, cside)
	m.plane("web", side, web)
	m.plane("client", cside, 0, upstreamTo("web", up))
	denied := func(when string) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, func() error {
			if out, err := readName(up); err == nil {
				return fmt.Errorf("%s: allowed, got %q", when, out)
			}
			if m.obs["web"].refused.Load() == 0 {
				return fmt.Errorf("%s: web refused nothing yet", when)
			}
			return nil
		})
	}
	denied("no intention, ACL default deny")
	m.intention("web", allow("client"))
	testutil.Eventually(t, 30*time.Second, func() error {
		out, err := readName(up)
		if err != nil || out != "web" {
			return fmt.Errorf("allow intention: %q, %v", out, err)
		}
		return nil
	})
	if _, err := admin.ConfigEntries().Delete(api.ServiceIntentions, "web", nil); err != nil {
		t.Fatal(err)
	}
	before := m.obs["web"].refused.Load()
	testutil.Eventually(t, 30*time.Second, func() error {
		if out, err := readName(up); err == nil {
			return fmt.Errorf("intention removed: still allowed, got %q", out)
		}
		if m.obs["web"].refused.Load() == before {
			return fmt.Errorf("intention removed: web refused nothing")
		}
		return nil
	})
}
