package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// forgedCert is a certificate for uri signed by a CA of its own, which the
// cluster has never seen.
func forgedCert(t *testing.T, uri string) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Consul CA 7"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}

func (m *mesh) trustDomain() string {
	m.t.Helper()
	roots, _, err := m.cl.Agent().ConnectCARoots(nil)
	if err != nil {
		m.t.Fatal(err)
	}
	return roots.TrustDomain
}

// TestNativeIdentity: a peer must prove the exact identity the caller meant
// to reach, with a chain from the cluster's CA.
func TestNativeIdentity(t *testing.T) {
	m := newMesh(t, "")
	td := m.trustDomain()
	webPort, webHits := countingApp(t, "web")
	side, cside, up := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	m.register("web", "web-1", webPort, side)
	m.register("client", "client-1", 0, cside)
	m.plane("web", side, webPort)
	m.plane("client", cside, 0, upstreamTo("web", up))
	testutil.Eventually(t, 20*time.Second, func() error {
		_, err := readName(up)
		return err
	})
	m.cl.Agent().ServiceDeregister("web-1")

	t.Run("another service's certificate at the upstream's address", func(t *testing.T) {
		impPort, impHits := countingApp(t, "impostor")
		iside := testutil.FreePort(t)
		m.register("impostor", "impostor-1", impPort, iside)
		m.plane("impostor", iside, impPort)
		// The catalog now says web lives at the impostor's sidecar.
		m.register("web", "web-2", impPort, iside)
		testutil.Eventually(t, 20*time.Second, func() error {
			es, _, err := m.cl.Health().Connect("web", "", true, nil)
			if err != nil || len(es) != 1 || es[0].Service.Port != iside {
				return errorf("web's instances: %d, %v", len(es), err)
			}
			return nil
		})
		// The client dials the impostor and refuses it at the handshake.
		testutil.Eventually(t, 20*time.Second, func() error {
			if out, err := readName(up); err == nil {
				t.Fatalf("the client reached %q through an impostor", out)
			}
			if m.obs["client"].tlsFailed.Load() == 0 {
				return errorf("the client has not tried the impostor yet")
			}
			return nil
		})
		if n := impHits.Load(); n != 0 {
			t.Errorf("the impostor's app got %d connections", n)
		}
		m.cl.Agent().ServiceDeregister("web-2")
	})

	t.Run("a foreign CA's certificate with a forged client id", func(t *testing.T) {
		before := webHits.Load()
		cert := forgedCert(t, "spiffe://"+td+"/ns/default/dc/dc1/svc/client")
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", "127.0.0.1:"+strconv.Itoa(side),
			&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}})
		if err == nil {
			// TLS 1.3 reports the server's refusal of our certificate on
			// the first read.
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, rerr := c.Read(make([]byte, 16))
			c.Close()
			if rerr == nil || n > 0 {
				t.Fatalf("forged client certificate accepted: read %d bytes, %v", n, rerr)
			}
		}
		if got := webHits.Load(); got != before {
			t.Errorf("web's app got %d connections from a forged client", got-before)
		}
	})

	t.Run("a foreign CA's certificate with a forged server id", func(t *testing.T) {
		cert := forgedCert(t, "spiffe://"+td+"/ns/default/dc/dc1/svc/web")
		sni := make(chan string, 16)
		l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert},
			ClientAuth: tls.RequireAnyClientCert,
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				sni <- h.ServerName
				return nil, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		handshakes := make(chan error, 16)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				err = c.(*tls.Conn).Handshake()
				if err == nil {
					_, err = c.Write([]byte("web"))
				}
				handshakes <- err
				c.Close()
			}
		}()
		fport := l.Addr().(*net.TCPAddr).Port
		m.register("web", "web-3", fport, fport)
		testutil.Eventually(t, 20*time.Second, func() error {
			es, _, err := m.cl.Health().Connect("web", "", true, nil)
			if err != nil || len(es) != 1 || es[0].Service.Port != fport {
				return errorf("web's instances: %d, %v", len(es), err)
			}
			return nil
		})
		testutil.Eventually(t, 20*time.Second, func() error {
			if out, err := readName(up); err == nil {
				t.Fatalf("the client accepted a forged server and read %q", out)
			}
			select {
			case err := <-handshakes:
				if err == nil {
					return errorf("a handshake with the forged server completed")
				}
				return nil
			default:
				return errorf("the client has not tried the forged server yet")
			}
		})
		// The client named the service it meant to reach as Envoy does.
		if got, want := <-sni, "web.default.dc1.internal."+td; got != want {
			t.Errorf("SNI %q, want %q", got, want)
		}
	})
}
