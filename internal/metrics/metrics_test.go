package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// scrape GETs a handler and parses what it answered as Prometheus text.
func scrape(t *testing.T, h http.Handler) testutil.Metrics {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	return scrapeURL(t, srv.URL+Path)
}

func scrapeURL(t *testing.T, url string) testutil.Metrics {
	t.Helper()
	mfs, err := testutil.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// value returns the value of the series of family name whose labels include
// want; it fails the test when there is no such series.
func value(t *testing.T, mfs testutil.Metrics, name string, want map[string]string) float64 {
	t.Helper()
	v, ok := mfs.Value(name, want)
	if !ok {
		t.Fatalf("no series %s%v", name, want)
	}
	return v
}

// series is one expected value: a family, labels its series includes, the value.
type series struct {
	name   string
	labels map[string]string
	want   float64
}

// expect checks each expected series' value in a scrape.
func expect(t *testing.T, mfs testutil.Metrics, want []series) {
	t.Helper()
	for _, c := range want {
		if got := value(t, mfs, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

func TestFamiliesExistAtZero(t *testing.T) {
	mfs := scrape(t, New().Handler(HandlerOptions{}))
	for _, name := range []string{
		"meshx_proxy_state", "meshx_proxy_restarts_total", "meshx_heartbeat_status",
		"meshx_heartbeat_last_transition_timestamp_seconds", "meshx_registration_resyncs_total",
		"meshx_ready", "meshx_time_to_ready_seconds", "meshx_dataplane_leaf_cert_expiry_timestamp_seconds",
		"process_resident_memory_bytes", "go_goroutines",
	} {
		if mfs[name] == nil {
			t.Errorf("family %s missing", name)
		}
	}
	if v := value(t, mfs, "meshx_proxy_restarts_total", map[string]string{"reason": RestartExited}); v != 0 {
		t.Errorf("restarts = %v at start", v)
	}
}

func TestValuesMove(t *testing.T) {
	m := New()
	for _, st := range []string{"starting", "running", "backoff", "starting", "running", "backoff", "starting", "running",
		"stopping", "stopped", "starting", "running"} {
		m.ProxyState(st) // two restarts by the supervisor; a stop and a start are none
	}
	m.ProxyRestarted(RestartReconfigured)
	t0 := time.Unix(1700000000, 0)
	m.Heartbeat("critical", t0)
	m.Heartbeat("passing", t0.Add(time.Minute))
	m.Heartbeat("passing", t0.Add(2*time.Minute)) // no transition
	m.Resync(ResyncAgentLost)
	m.AgentError("ttl")
	m.Login(nil)
	m.Login(errors.New("denied"))
	m.Ready(1500 * time.Millisecond)
	mfs := scrape(t, m.Handler(HandlerOptions{}))
	expect(t, mfs, []series{
		{"meshx_proxy_state", map[string]string{"state": "running"}, 1},
		{"meshx_proxy_state", map[string]string{"state": "backoff"}, 0},
		{"meshx_proxy_restarts_total", map[string]string{"reason": RestartExited}, 2},
		{"meshx_proxy_restarts_total", map[string]string{"reason": RestartReconfigured}, 1},
		{"meshx_heartbeat_status", map[string]string{"status": "passing"}, 1},
		{"meshx_heartbeat_status", map[string]string{"status": "critical"}, 0},
		{"meshx_heartbeat_last_transition_timestamp_seconds", nil, float64(t0.Add(time.Minute).Unix())},
		{"meshx_heartbeat_transitions_total", nil, 2},
		{"meshx_registration_resyncs_total", map[string]string{"reason": ResyncAgentLost}, 1},
		{"meshx_agent_request_errors_total", map[string]string{"op": "ttl"}, 1},
		{"meshx_acl_logins_total", map[string]string{"result": "ok"}, 1},
		{"meshx_acl_logins_total", map[string]string{"result": "error"}, 1},
		{"meshx_ready", nil, 1},
		{"meshx_time_to_ready_seconds", nil, 1.5},
	})
}

func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.ProxyState("running")
	m.ProxyRestarted(RestartExited)
	m.Heartbeat("passing", time.Now())
	m.Resync(ResyncReload)
	m.AgentError("ttl")
	m.Login(nil)
	m.Ready(time.Second)
	var l *Listener
	l.Opened()
	l.Closed()
	l.Transferred(1, 2)
	var d *DataPlane
	d.LeafExpiry(time.Now())
	if d.Listener(Inbound, "") != nil {
		t.Error("a nil DataPlane made a listener")
	}
}

func TestDataPlane(t *testing.T) {
	m := New()
	in := m.DataPlane.Listener(Inbound, "")
	db := m.DataPlane.Listener(Outbound, "db")
	in.Opened()
	in.Opened()
	in.Closed()
	in.Refused()
	in.TLSFailure()
	in.Transferred(100, 2000)
	db.Opened()
	db.DialFailed()
	db.DialRetried()
	db.Transferred(7, 0)
	exp := time.Unix(1800000000, 0)
	m.DataPlane.LeafExpiry(exp)
	mfs := scrape(t, m.Handler(HandlerOptions{}))
	inL := map[string]string{"direction": Inbound, "upstream": ""}
	dbL := map[string]string{"direction": Outbound, "upstream": "db"}
	expect(t, mfs, []series{
		{"meshx_dataplane_connections_open", inL, 1},
		{"meshx_dataplane_connections_total", inL, 2},
		{"meshx_dataplane_connections_refused_total", inL, 1},
		{"meshx_dataplane_tls_failures_total", inL, 1},
		{"meshx_dataplane_bytes_total", map[string]string{"direction": Inbound, "flow": "in"}, 100},
		{"meshx_dataplane_bytes_total", map[string]string{"direction": Inbound, "flow": "out"}, 2000},
		{"meshx_dataplane_connections_open", dbL, 1},
		{"meshx_dataplane_dial_failures_total", dbL, 1},
		{"meshx_dataplane_dial_retries_total", dbL, 1},
		{"meshx_dataplane_bytes_total", map[string]string{"upstream": "db", "flow": "in"}, 7},
		{"meshx_dataplane_bytes_total", map[string]string{"upstream": "db", "flow": "out"}, 0},
		{"meshx_dataplane_leaf_cert_expiry_timestamp_seconds", nil, float64(exp.Unix())},
	})
	m.DataPlane.Forget(Outbound, "db")
	mfs = scrape(t, m.Handler(HandlerOptions{}))
	for _, mt := range mfs["meshx_dataplane_connections_total"].GetMetric() {
		for _, lp := range mt.GetLabel() {
			if lp.GetValue() == "db" {
				t.Errorf("a forgotten upstream's series is still there: %v", mt)
			}
		}
	}
}

// envoyText is what Envoy's admin /stats/prometheus answers (a sample).
const envoyText = `# TYPE envoy_cluster_upstream_cx_total counter
envoy_cluster_upstream_cx_total{envoy_cluster_name="local_app"} 42
# TYPE envoy_server_live gauge
envoy_server_live{} 1
`

// TestMergeEnvoy proves the merge against a stand-in for Envoy's admin
// endpoint (no Envoy binary can be installed here): an HTTP server serving
// Prometheus text at /stats/prometheus, as Envoy does.
func TestMergeEnvoy(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/stats/prometheus", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
		_, _ = io.WriteString(w, envoyText)
	})
	admin := httptest.NewServer(mux)
	m := New()
	m.ProxyRestarted(RestartReconfigured)
	s, err := Listen("127.0.0.1:0", m.Handler(HandlerOptions{Merge: admin.URL + "/stats/prometheus"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(t.Context()) })
	mfs := scrapeURL(t, "http://"+s.Addr()+Path)
	if v := value(t, mfs, "envoy_cluster_upstream_cx_total", map[string]string{"envoy_cluster_name": "local_app"}); v != 42 {
		t.Errorf("envoy's counter = %v, want 42", v)
	}
	if v := value(t, mfs, "meshx_proxy_restarts_total", map[string]string{"reason": RestartReconfigured}); v != 1 {
		t.Errorf("meshx's counter = %v, want 1", v)
	}
	if v := value(t, mfs, "meshx_envoy_metrics_up", nil); v != 1 {
		t.Errorf("meshx_envoy_metrics_up = %v, want 1", v)
	}

	// Envoy down: the scrape still answers meshx's own, and says so.
	admin.Close()
	mfs = scrapeURL(t, "http://"+s.Addr()+Path)
	if v := value(t, mfs, "meshx_envoy_metrics_up", nil); v != 0 {
		t.Errorf("with envoy gone meshx_envoy_metrics_up = %v, want 0", v)
	}
	if mfs["envoy_server_live"] != nil {
		t.Error("envoy's metrics served while envoy is gone")
	}
}

func TestMergeRefusesNonText(t *testing.T) {
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<html>admin</html>")
	}))
	defer admin.Close()
	m := New()
	mfs := scrape(t, m.Handler(HandlerOptions{Merge: admin.URL}))
	if v := value(t, mfs, "meshx_envoy_metrics_up", nil); v != 0 {
		t.Errorf("meshx_envoy_metrics_up = %v for an HTML answer, want 0", v)
	}
}

// TestObserver: the data plane's events land on the listener of their
// direction (inbound, an upstream, passthrough).
func TestObserver(t *testing.T) {
	m := New()
	o := m.DataPlane.Observer()
	o.ConnOpened("inbound")
	o.Transferred("inbound", 10, 0)
	o.Transferred("inbound", 0, 20)
	o.ConnClosed("inbound")
	o.Refused("inbound")
	o.ConnOpened("db")
	o.TLSFailed("db")
	o.DialFailed("db")
	o.DialRetried("db")
	o.Refused("passthrough")
	mfs := scrape(t, m.Handler(HandlerOptions{}))
	inL := map[string]string{"direction": Inbound, "upstream": ""}
	dbL := map[string]string{"direction": Outbound, "upstream": "db"}
	expect(t, mfs, []series{
		{"meshx_dataplane_connections_total", inL, 1},
		{"meshx_dataplane_connections_open", inL, 0},
		{"meshx_dataplane_connections_refused_total", inL, 1},
		{"meshx_dataplane_bytes_total", map[string]string{"direction": Inbound, "flow": "in"}, 10},
		{"meshx_dataplane_bytes_total", map[string]string{"direction": Inbound, "flow": "out"}, 20},
		{"meshx_dataplane_connections_open", dbL, 1},
		{"meshx_dataplane_tls_failures_total", dbL, 1},
		{"meshx_dataplane_dial_failures_total", dbL, 1},
		{"meshx_dataplane_dial_retries_total", dbL, 1},
		{"meshx_dataplane_connections_refused_total", map[string]string{"upstream": "passthrough"}, 1},
	})
}
