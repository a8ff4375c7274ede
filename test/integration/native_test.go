package integration

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

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
