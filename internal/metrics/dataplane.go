package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Directions of the data plane's listeners (the direction label).
const (
	Inbound  = "inbound"  // the public mTLS listener, towards the local app
	Outbound = "outbound" // an upstream's local listener, towards the mesh
)

// DataPlane holds the families of the in-process (native) Connect data plane.
// Each family carries the labels direction (Inbound or Outbound) and upstream
// (the upstream's name; "" for Inbound). A data plane takes one Listener per
// listener it runs and calls its methods on the connection path: they cost an
// atomic add each, with no label lookup.
//
// The calls, one per event:
//
//	l := m.DataPlane.Listener(metrics.Inbound, "")      // or (metrics.Outbound, "db")
//	l.Opened()                                          // a connection was accepted
//	defer l.Closed()                                    // ... and is gone
//	l.Refused()                                         // an intention denied it (close it too)
//	l.TLSFailure()                                      // its TLS handshake failed
//	l.DialFailed(); l.DialRetried()                     // a dial towards the peer failed / was tried again
//	l.Transferred(in, out)                              // bytes copied: in = from the client, out = to it
//	m.DataPlane.LeafExpiry(cert.NotAfter)               // each time a leaf certificate is loaded
//
// Every method accepts a nil receiver, so a data plane running with metrics
// off may hold a nil *Listener.
type DataPlane struct {
	open       *prometheus.GaugeVec
	total      *prometheus.CounterVec
	refused    *prometheus.CounterVec
	tlsFail    *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	dialFail   *prometheus.CounterVec
	dialRetry  *prometheus.CounterVec
	leafExpiry prometheus.Gauge
}

func newDataPlane(f factory) *DataPlane {
	l := []string{"direction", "upstream"}
	return &DataPlane{
		open: f.gaugeVec("dataplane_connections_open",
			"Connections open now, by listener.", l...),
		total: f.counterVec("dataplane_connections_total",
			"Connections accepted, by listener.", l...),
		refused: f.counterVec("dataplane_connections_refused_total",
			"Connections refused because an intention denied them, by listener.", l...),
		tlsFail: f.counterVec("dataplane_tls_failures_total",
			"mTLS handshakes that failed, by listener.", l...),
		bytes: f.counterVec("dataplane_bytes_total",
			"Bytes copied, by listener and flow: in = read from the connecting side, out = written back to it.",
			append(l, "flow")...),
		dialFail: f.counterVec("dataplane_dial_failures_total",
			"Dials towards the peer (upstream instance or local app) that failed, by listener.", l...),
		dialRetry: f.counterVec("dataplane_dial_retries_total",
			"Dials tried again after a failure, by listener.", l...),
		leafExpiry: f.gauge("dataplane_leaf_cert_expiry_timestamp_seconds",
			"When the service's current leaf certificate expires (Unix seconds); 0 until one is loaded."),
	}
}

// Listener is the counters of one listener of the data plane.
type Listener struct {
	open                         prometheus.Gauge
	total, refused, tlsFail      prometheus.Counter
	in, out, dialFail, dialRetry prometheus.Counter
}

// Listener returns the counters of one listener and makes its series exist
// (at zero) from now on. direction is Inbound or Outbound; upstream is the
// upstream's name for Outbound, "" for Inbound.
func (d *DataPlane) Listener(direction, upstream string) *Listener {
	if d == nil {
		return nil
	}
	lv := []string{direction, upstream}
	return &Listener{
		open: d.open.WithLabelValues(lv...), total: d.total.WithLabelValues(lv...),
		refused: d.refused.WithLabelValues(lv...), tlsFail: d.tlsFail.WithLabelValues(lv...),
		in: d.bytes.WithLabelValues(direction, upstream, "in"), out: d.bytes.WithLabelValues(direction, upstream, "out"),
		dialFail: d.dialFail.WithLabelValues(lv...), dialRetry: d.dialRetry.WithLabelValues(lv...),
	}
}

// Forget drops a listener's series (an upstream that was disconnected).
func (d *DataPlane) Forget(direction, upstream string) {
	if d == nil {
		return
	}
	for _, v := range []*prometheus.MetricVec{d.open.MetricVec, d.total.MetricVec, d.refused.MetricVec,
		d.tlsFail.MetricVec, d.dialFail.MetricVec, d.dialRetry.MetricVec} {
		v.DeleteLabelValues(direction, upstream)
	}
	d.bytes.DeleteLabelValues(direction, upstream, "in")
	d.bytes.DeleteLabelValues(direction, upstream, "out")
}

// LeafExpiry records the NotAfter of the leaf certificate now in use.
func (d *DataPlane) LeafExpiry(notAfter time.Time) {
	if d == nil {
		return
	}
	d.leafExpiry.Set(float64(notAfter.Unix()))
}

// Opened counts an accepted connection, open from now until Closed.
func (l *Listener) Opened() {
	if l == nil {
		return
	}
	l.total.Inc()
	l.open.Inc()
}

// Closed ends a connection counted by Opened.
func (l *Listener) Closed() {
	if l == nil {
		return
	}
	l.open.Dec()
}

// Refused counts a connection an intention denied.
func (l *Listener) Refused() {
	if l != nil {
		l.refused.Inc()
	}
}

// TLSFailure counts a failed mTLS handshake.
func (l *Listener) TLSFailure() {
	if l != nil {
		l.tlsFail.Inc()
	}
}

// DialFailed counts a failed dial towards the peer.
func (l *Listener) DialFailed() {
	if l != nil {
		l.dialFail.Inc()
	}
}

// DialRetried counts a dial tried again after a failure.
func (l *Listener) DialRetried() {
	if l != nil {
		l.dialRetry.Inc()
	}
}

// Transferred adds bytes copied: in read from the connecting side, out
// written back to it. Call it as bytes move (per copy chunk), so long-lived
// connections show up before they end.
func (l *Listener) Transferred(in, out int64) {
	if l == nil {
		return
	}
	if in > 0 {
		l.in.Add(float64(in))
	}
	if out > 0 {
		l.out.Add(float64(out))
	}
}
