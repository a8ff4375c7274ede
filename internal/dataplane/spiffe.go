package dataplane

import (
	"fmt"
	"net/url"
	"strings"
)

// ServiceID is the SPIFFE identity of a Connect service:
// spiffe://<trust domain>[/ap/<partition>]/ns/<namespace>/dc/<dc>/svc/<name>.
type ServiceID struct {
	TrustDomain string
	Partition   string // "" or "default": no /ap segment
	Namespace   string
	Datacenter  string
	Service     string
}

// URI renders the id as Consul writes it into leaf certificates.
func (s ServiceID) URI() string {
	ap := ""
	if s.Partition != "" && s.Partition != "default" {
		ap = "/ap/" + s.Partition
	}
	ns := s.Namespace
	if ns == "" {
		ns = "default"
	}
	return fmt.Sprintf("spiffe://%s%s/ns/%s/dc/%s/svc/%s", s.TrustDomain, ap, ns, s.Datacenter, s.Service)
}

// ParseServiceID reads a service SPIFFE id; anything else (an agent or mesh
// gateway id, another scheme, extra segments) is an error.
func ParseServiceID(u *url.URL) (ServiceID, error) {
	if u == nil || u.Scheme != "spiffe" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return ServiceID{}, fmt.Errorf("not a SPIFFE service id: %q", u)
	}
	seg := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	id := ServiceID{TrustDomain: strings.ToLower(u.Host)}
	if len(seg) == 8 && seg[0] == "ap" {
		id.Partition, seg = seg[1], seg[2:]
	}
	if len(seg) != 6 || seg[0] != "ns" || seg[2] != "dc" || seg[4] != "svc" || seg[1] == "" || seg[3] == "" || seg[5] == "" {
		return ServiceID{}, fmt.Errorf("not a SPIFFE service id: %q", u)
	}
	id.Namespace, id.Datacenter, id.Service = seg[1], seg[3], seg[5]
	return id, nil
}

// SNI is the server name a Connect client sends to reach a service, as
// Envoy sends it and mesh gateways route on it:
// <service>.<namespace>.<dc>.internal.<trust domain>.
func SNI(service, namespace, dc, trustDomain string) string {
	if namespace == "" {
		namespace = "default"
	}
	return fmt.Sprintf("%s.%s.%s.internal.%s", service, namespace, dc, trustDomain)
}

// QuerySNI is the server name for an upstream that is a prepared query.
func QuerySNI(query, dc, trustDomain string) string {
	return fmt.Sprintf("%s.default.%s.query.%s", query, dc, trustDomain)
}
