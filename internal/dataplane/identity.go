package dataplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Identity is the service's leaf certificate and the cluster's CA roots,
// kept current by blocking queries. New handshakes use whatever is current;
// established connections keep the keys they were made with.
type Identity struct {
	src     Source
	service string
	log     *slog.Logger

	cert  atomic.Pointer[tls.Certificate] // Leaf is set
	trust atomic.Pointer[trust]

	readyOnce sync.Once
	ready     chan struct{}
}

type trust struct {
	pool   *x509.CertPool
	domain string // lower case, e.g. 5c0c…-….consul
}

// NewIdentity makes the identity of service (its name, not its id).
func NewIdentity(src Source, service string, log *slog.Logger) *Identity {
	return &Identity{src: src, service: service, log: log, ready: make(chan struct{})}
}

// Run keeps the leaf and the roots current until ctx ends.
func (id *Identity) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { watch(ctx, id.log, "leaf certificate", id.fetchLeaf) })
	wg.Go(func() { watch(ctx, id.log, "CA roots", id.fetchRoots) })
	wg.Wait()
}

// Ready is closed once a leaf and the roots are both known.
func (id *Identity) Ready() <-chan struct{} { return id.ready }

func (id *Identity) markReady() {
	if id.cert.Load() != nil && id.trust.Load() != nil {
		id.readyOnce.Do(func() { close(id.ready) })
	}
}

// TrustDomain is the cluster's trust domain ("" before the roots arrive).
func (id *Identity) TrustDomain() string {
	if t := id.trust.Load(); t != nil {
		return t.domain
	}
	return ""
}

// Expiry is when the current leaf certificate ends (zero before one arrives).
func (id *Identity) Expiry() time.Time {
	if c := id.cert.Load(); c != nil {
		return c.Leaf.NotAfter
	}
	return time.Time{}
}

func (id *Identity) fetchLeaf(ctx context.Context, index uint64) (uint64, error) {
	leaf, next, err := id.src.Leaf(ctx, id.service, index)
	if err != nil {
		return 0, err
	}
	if next == index {
		return next, nil
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		return 0, fmt.Errorf("leaf certificate of %s: %w", id.service, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return 0, fmt.Errorf("leaf certificate of %s: %w", id.service, err)
		}
	}
	old := id.cert.Swap(&cert)
	if old == nil || !old.Leaf.Equal(cert.Leaf) {
		id.log.Info("leaf certificate", "serial", leaf.SerialNumber, "uri", leaf.ServiceURI,
			"valid_before", leaf.ValidBefore.UTC().Format(time.RFC3339))
	}
	id.markReady()
	return next, nil
}

func (id *Identity) fetchRoots(ctx context.Context, index uint64) (uint64, error) {
	roots, next, err := id.src.Roots(ctx, index)
	if err != nil {
		return 0, err
	}
	if next == index {
		return next, nil
	}
	pool := x509.NewCertPool()
	n := 0
	for _, r := range roots.Roots {
		if pool.AppendCertsFromPEM([]byte(r.RootCertPEM)) {
			n++
		}
	}
	if n == 0 || roots.TrustDomain == "" {
		return 0, errors.New("the agent returned no usable CA root")
	}
	id.trust.Store(&trust{pool: pool, domain: strings.ToLower(roots.TrustDomain)})
	id.log.Info("CA roots", "roots", n, "active", activeRoot(roots), "trust_domain", roots.TrustDomain)
	id.markReady()
	return next, nil
}

func activeRoot(l *api.CARootList) string {
	for _, r := range l.Roots {
		if r.Active {
			return r.ID
		}
	}
	return l.ActiveRootID
}

// TLS 1.2 suites, as Consul's built-in proxy allows (TLS 1.3 picks its own).
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

var errNoIdentity = errors.New("no leaf certificate or CA roots yet")

// verify checks a presented chain against every current root and returns
// the SPIFFE service id of its leaf, which must be in our trust domain.
func (id *Identity) verify(chain []*x509.Certificate, usage x509.ExtKeyUsage) (ServiceID, error) {
	t := id.trust.Load()
	if t == nil {
		return ServiceID{}, errNoIdentity
	}
	if len(chain) == 0 {
		return ServiceID{}, errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: t.pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return ServiceID{}, err
	}
	if len(chain[0].URIs) != 1 {
		return ServiceID{}, fmt.Errorf("certificate has %d URI SANs, want 1", len(chain[0].URIs))
	}
	sid, err := ParseServiceID(chain[0].URIs[0])
	if err != nil {
		return ServiceID{}, err
	}
	if sid.TrustDomain != t.domain {
		return ServiceID{}, fmt.Errorf("trust domain %q is not the cluster's %q", sid.TrustDomain, t.domain)
	}
	return sid, nil
}

// ServerConfig is the public listener's TLS: a client certificate is
// required and verified against the current roots at each handshake. The
// verified peer is read back with PeerID.
func (id *Identity) ServerConfig() *tls.Config {
	return &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, t := id.cert.Load(), id.trust.Load()
		if cert == nil || t == nil {
			return nil, errNoIdentity
		}
		// No ALPN: the tunnel is plain TCP, and a server that lists none
		// never fails a client that offers some (the built-in proxy offers h2).
		return &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: cipherSuites,
			DynamicRecordSizingDisabled: true, // bulk L4 tunnel: full-size records from the start
			Certificates:                []tls.Certificate{*cert}, ClientAuth: tls.RequireAnyClientCert,
			VerifyConnection: func(cs tls.ConnectionState) error {
				_, err := id.verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
				return err
			}}, nil
	}}
}

// PeerID is the verified SPIFFE id of a completed handshake's peer.
func PeerID(cs tls.ConnectionState) (ServiceID, error) {
	if len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) != 1 {
		return ServiceID{}, errors.New("no peer identity")
	}
	return ParseServiceID(cs.PeerCertificates[0].URIs[0])
}

// ClientConfig is the TLS of a connection to an instance of a service: SNI
// set as Envoy sets it, the server's chain verified against the current
// roots, and its SPIFFE id exactly want (the service it meant to reach).
func (id *Identity) ClientConfig(sni string, want ServiceID) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: cipherSuites, ServerName: sni,
		DynamicRecordSizingDisabled: true,
		// Our own verification below replaces the host name check: Connect
		// certificates name services by URI, not by DNS name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := id.cert.Load(); c != nil {
				return c, nil
			}
			return nil, errNoIdentity
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := id.verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if !sameService(got, want) {
				return fmt.Errorf("peer is %s, want %s", got.URI(), want.URI())
			}
			return nil
		}}
}

func sameService(a, b ServiceID) bool {
	norm := func(s string) string {
		if s == "" {
			return "default"
		}
		return s
	}
	return strings.EqualFold(a.TrustDomain, b.TrustDomain) && norm(a.Partition) == norm(b.Partition) &&
		norm(a.Namespace) == norm(b.Namespace) && a.Datacenter == b.Datacenter && a.Service == b.Service
}
