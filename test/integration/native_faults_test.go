package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

func openEcho(port int) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 3*time.Second)
	if err != nil {
		return nil, err
	}
	if err := testutil.EchoOnce(c, "hello"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// servedIssuerKey is the authority key id of the leaf a public listener
// presents (read without completing client authentication).
func servedIssuerKey(port int) ([]byte, error) {
	var aki []byte
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", "127.0.0.1:"+strconv.Itoa(port),
		&tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err == nil {
				aki = leaf.AuthorityKeyId
			}
			return err
		}})
	if err == nil {
		c.Close()
	}
	if aki == nil {
		return nil, fmt.Errorf("no certificate presented: %v", err)
	}
	return aki, nil
}

// TestNativeCARotation: a new CA's roots and leaves reach the native planes;
// native and built-in peers keep talking; an established connection survives.
func TestNativeCARotation(t *testing.T) {
	m := newMesh(t, "")
	echo := echoApp(t)
	side, cside, lside, up, lup := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	m.register("web", "web-1", echo, side)
	m.register("client", "client-1", 0, cside)
	m.register("legacy", "legacy-1", 0, lside, api.Upstream{DestinationName: "web", LocalBindAddress: "127.0.0.1", LocalBindPort: lup})
	m.plane("web", side, echo)
	m.plane("client", cside, 0, upstreamTo("web", up))
	m.builtin("legacy-1")
	var held net.Conn
	testutil.Eventually(t, 30*time.Second, func() error {
		var err error
		held, err = openEcho(up)
		return err
	})
	defer held.Close()
	testutil.Eventually(t, 30*time.Second, func() error { return echoThrough(lup, 1024, 1, false) })

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	if _, err := m.cl.Connect().CASetConfig(&api.CAConfig{Provider: "consul",
		Config: map[string]any{"PrivateKey": string(keyPEM), "LeafCertTTL": "72h"}}, nil); err != nil {
		t.Fatalf("rotate the CA: %v", err)
	}
	var newRoot *x509.Certificate
	testutil.Eventually(t, 30*time.Second, func() error {
		roots, _, err := m.cl.Agent().ConnectCARoots(nil)
		if err != nil {
			return err
		}
		for _, r := range roots.Roots {
			if r.Active {
				b, _ := pem.Decode([]byte(r.RootCertPEM))
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					return err
				}
				if len(roots.Roots) < 2 {
					return fmt.Errorf("%d roots", len(roots.Roots))
				}
				newRoot = c
			}
		}
		return nil
	})
	// The planes pick up the new leaf: web's public listener presents one
	// signed by the new root.
	testutil.Eventually(t, 30*time.Second, func() error {
		aki, err := servedIssuerKey(side)
		if err != nil {
			return err
		}
		if !bytes.Equal(aki, newRoot.SubjectKeyId) {
			return fmt.Errorf("web still presents a leaf of the old CA")
		}
		return nil
	})
	for name, port := range map[string]int{"native": up, "built-in": lup} {
		testutil.Eventually(t, 30*time.Second, func() error {
			if err := echoThrough(port, 1<<20, 3, name == "native"); err != nil {
				return fmt.Errorf("%s client after rotation: %w", name, err)
			}
			return nil
		})
	}
	if err := testutil.EchoOnce(held, "still here"); err != nil {
		t.Fatalf("established connection lost across the CA rotation: %v", err)
	}
}

// TestNativeUpstreamHealth: new connections go only to passing instances;
// a dial that fails is retried on another instance; with every instance
// critical a connection fails at once with a clear log line; a new
// instance is used as soon as it passes.
func TestNativeUpstreamHealth(t *testing.T) {
	m := newMesh(t, "")
	cside, up := testutil.FreePort(t), testutil.FreePort(t)
	for _, n := range []string{"web-1", "web-2"} {
		app, side := nameApp(t, n), testutil.FreePort(t)
		m.register("web", n, app, side)
		m.plane("web", side, app)
	}
	m.register("client", "client-1", 0, cside)
	m.plane("client", cside, 0, upstreamTo("web", up))
	seen := func(k int) (map[string]int, error) {
		got := map[string]int{}
		for range k {
			out, err := readName(up)
			if err != nil {
				return got, err
			}
			got[out]++
		}
		return got, nil
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		got, err := seen(20)
		if err != nil || got["web-1"] == 0 || got["web-2"] == 0 {
			return fmt.Errorf("spread over two passing instances: %v, %v", got, err)
		}
		return nil
	})

	t.Run("a critical instance gets no new connections", func(t *testing.T) {
		m.setHealth("web-1", api.HealthCritical)
		testutil.Eventually(t, 30*time.Second, func() error {
			got, err := seen(20)
			if err != nil || got["web-1"] != 0 {
				return fmt.Errorf("with web-1 critical: %v, %v", got, err)
			}
			return nil
		})
	})

	t.Run("a failed dial is retried on another instance", func(t *testing.T) {
		// web-dead passes in the catalog but nothing listens on its port.
		m.register("web", "web-dead", 1, testutil.FreePort(t))
		testutil.Eventually(t, 30*time.Second, func() error {
			es, _, err := m.cl.Health().Connect("web", "", true, nil)
			if err != nil || len(es) != 2 {
				return fmt.Errorf("%d passing instances, %v", len(es), err)
			}
			return nil
		})
		before := m.obs["client"].dialFailed.Load()
		got, err := seen(30)
		if err != nil || got["web-2"] != 30 {
			t.Fatalf("with a dead instance beside web-2: %v, %v", got, err)
		}
		if m.obs["client"].dialFailed.Load() == before {
			t.Fatalf("no dial reached the dead instance: nothing was retried")
		}
		m.cl.Agent().ServiceDeregister("web-dead")
	})

	t.Run("every instance critical fails fast", func(t *testing.T) {
		m.setHealth("web-2", api.HealthCritical)
		testutil.Eventually(t, 30*time.Second, func() error {
			start := time.Now()
			if out, err := readName(up); err == nil {
				return fmt.Errorf("reached %q with every instance critical", out)
			}
			if d := time.Since(start); d > time.Second {
				return fmt.Errorf("failing took %s", d)
			}
			return nil
		})
		if !strings.Contains(m.log["client"].String(), "no healthy instances") {
			t.Errorf("no clear log line; client log:\n%s", m.log["client"].String())
		}
	})

	t.Run("a new instance is used", func(t *testing.T) {
		app, side := nameApp(t, "web-3"), testutil.FreePort(t)
		m.register("web", "web-3", app, side)
		m.plane("web", side, app)
		testutil.Eventually(t, 30*time.Second, func() error {
			got, err := seen(5)
			if err != nil || got["web-3"] != 5 {
				return fmt.Errorf("%v, %v", got, err)
			}
			return nil
		})
	})
}

// TestNativeAgentRestart: the agent restarts (a dev agent loses every
// registration and its CA); established connections survive, the watches
// come back, and new connections work once the services are back.
func TestNativeAgentRestart(t *testing.T) {
	m := newMesh(t, "")
	echo := echoApp(t)
	side, cside, up := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	register := func() {
		m.register("web", "web-1", echo, side)
		m.register("client", "client-1", 0, cside)
	}
	register()
	m.plane("web", side, echo)
	m.plane("client", cside, 0, upstreamTo("web", up))
	var held net.Conn
	testutil.Eventually(t, 30*time.Second, func() error {
		var err error
		held, err = openEcho(up)
		return err
	})
	defer held.Close()
	m.c.Restart(t)
	if err := testutil.EchoOnce(held, "across the restart"); err != nil {
		t.Fatalf("established connection lost when the agent restarted: %v", err)
	}
	register()
	testutil.Eventually(t, 60*time.Second, func() error { return echoThrough(up, 64<<10, 5, true) })
	if err := testutil.EchoOnce(held, "still"); err != nil {
		t.Fatalf("established connection lost after the agent came back: %v", err)
	}
}
