package dataplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

const testTD = "11111111-2222-3333-4444-555555555555.consul"

// testCA signs SPIFFE leaves, as Consul's built-in CA does.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  string
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		SubjectKeyId: []byte{1, 2, 3}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{key: key, cert: cert, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// leaf issues a certificate for uri.
func (ca *testCA) leaf(t testing.TB, uri string) *api.LeafCert {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return &api.LeafCert{SerialNumber: tmpl.SerialNumber.String(), ServiceURI: uri,
		CertPEM:       string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		PrivateKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})),
		ValidBefore:   tmpl.NotAfter}
}

func svcURI(name string) string {
	return ServiceID{TrustDomain: testTD, Datacenter: "dc1", Service: name}.URI()
}

// fakeSource is an in-memory Source with blocking-query semantics: every
// change bumps one index and wakes the waiting queries.
type fakeSource struct {
	t  testing.TB
	ca *testCA

	mu         sync.Mutex
	index      uint64
	changed    chan struct{}
	leaves     map[string]*api.LeafCert
	roots      []*testCA
	intentions map[string][]*api.Intention
	instances  map[string][]*api.ServiceEntry
	defaultOK  bool
	authorized int // Authorize calls
	fail       error
}

func newFakeSource(t testing.TB) *fakeSource {
	ca := newTestCA(t)
	return &fakeSource{t: t, ca: ca, index: 1, changed: make(chan struct{}), leaves: map[string]*api.LeafCert{},
		roots: []*testCA{ca}, intentions: map[string][]*api.Intention{}, instances: map[string][]*api.ServiceEntry{}}
}

func (f *fakeSource) update(fn func()) {
	f.mu.Lock()
	fn()
	f.index++
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// wait blocks while index is current, as a blocking query does.
func (f *fakeSource) wait(ctx context.Context, index uint64) (uint64, error) {
	for {
		f.mu.Lock()
		cur, ch, err := f.index, f.changed, f.fail
		f.mu.Unlock()
		if err != nil {
			return 0, err
		}
		if cur != index {
			return cur, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (f *fakeSource) Leaf(ctx context.Context, service string, index uint64) (*api.LeafCert, uint64, error) {
	next, err := f.wait(ctx, index)
	if err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.leaves[service]
	if !ok {
		l = f.ca.leaf(f.t, svcURI(service))
		f.leaves[service] = l
	}
	return l, next, nil
}

func (f *fakeSource) Roots(ctx context.Context, index uint64) (*api.CARootList, uint64, error) {
	next, err := f.wait(ctx, index)
	if err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	l := &api.CARootList{TrustDomain: testTD}
	for _, r := range f.roots {
		l.Roots = append(l.Roots, &api.CARoot{ID: "r", RootCertPEM: r.pem, Active: r == f.ca})
	}
	return l, next, nil
}

func (f *fakeSource) Intentions(ctx context.Context, service string, index uint64) ([]*api.Intention, uint64, error) {
	next, err := f.wait(ctx, index)
	if err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.intentions[service], next, nil
}

func (f *fakeSource) Authorize(_ context.Context, _, _ string) (bool, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authorized++
	return f.defaultOK, "test default", nil
}

func (f *fakeSource) Instances(ctx context.Context, service, _ string, index uint64) ([]*api.ServiceEntry, uint64, error) {
	next, err := f.wait(ctx, index)
	if err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.instances[service], next, nil
}

func (f *fakeSource) Query(context.Context, string, string) ([]*api.ServiceEntry, error) {
	return nil, errors.New("no prepared queries here")
}

func (f *fakeSource) DialedDirectly(context.Context, string) (bool, error) { return false, nil }

func (f *fakeSource) Services(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.instances {
		out = append(out, n)
	}
	return out, nil
}

func (f *fakeSource) MeshDestinationsOnly(ctx context.Context, index uint64) (bool, uint64, error) {
	next, err := f.wait(ctx, index)
	return false, next, err
}

// instance is a sidecar entry for service at addr:port.
func instance(service, host string, port int) *api.ServiceEntry {
	return &api.ServiceEntry{Node: &api.Node{Address: host, Datacenter: "dc1"},
		Service: &api.AgentService{Kind: api.ServiceKindConnectProxy, Service: service + "-sidecar-proxy",
			Address: host, Port: port, Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: service}}}
}

func ixn(src, action string, prec int) *api.Intention {
	return &api.Intention{SourceName: src, SourceNS: "default", DestinationName: "web",
		Action: api.IntentionAction(action), Precedence: prec}
}
