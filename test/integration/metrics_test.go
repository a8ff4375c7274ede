package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// metrics scrapes the meshx-proxy of service name where its plan says it
// serves metrics.
func (h *host) metrics(name string) (testutil.Metrics, error) {
	addr := h.plan(name).MetricsAddress
	if addr == "" {
		return nil, fmt.Errorf("the plan of %s has no metrics address", name)
	}
	return testutil.Scrape("http://" + addr + "/metrics")
}

// waitMetric polls service name's metrics until the series family{labels}
// satisfies ok, and returns its value.
func (h *host) waitMetric(timeout time.Duration, name, family string, labels map[string]string, ok func(float64) bool) float64 {
	h.t.Helper()
	var v float64
	testutil.Eventually(h.t, timeout, func() error {
		m, err := h.metrics(name)
		if err != nil {
			return err
		}
		var found bool
		if v, found = m.Value(family, labels); !found {
			return fmt.Errorf("%s: no series %s%v", name, family, labels)
		}
		if !ok(v) {
			return fmt.Errorf("%s: %s%v = %v", name, family, labels, v)
		}
		return nil
	})
	return v
}

func equals(want float64) func(float64) bool { return func(v float64) bool { return v == want } }

// TestMetricsConsulDiscovery runs a Prometheus-compatible scraper with the
// scrape config of docs/metrics.md against a real agent: it finds web's
// meshx-proxy through Consul (the sidecar's meta) and scrapes it, and what it
// scrapes moves when the proxy is killed and restarted. The scraper is
// VictoriaMetrics (Debian's victoria-metrics), which reads Prometheus's
// consul_sd_configs and relabel_configs: Debian's prometheus package is built
// without Consul discovery.
func TestMetricsConsulDiscovery(t *testing.T) {
	scraper, err := exec.LookPath("victoria-metrics")
	testutil.Need(t, err == nil, "victoria-metrics (Debian package; scripts/deps.sh installs it)")
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	h.service("web.yaml", fmt.Sprintf(webYAML, startApp(t, "hello")))
	h.foreground()
	h.waitPassing(30*time.Second, "web-testhost")

	// The address is the plan's, shown by status and advertised in the catalog.
	addr := h.plan("web").MetricsAddress
	if r := h.init("status"); !strings.Contains(r.stdout, "METRICS") || !strings.Contains(r.stdout, addr) {
		t.Errorf("meshx-init status does not show the metrics address %s:\n%s", addr, r.stdout)
	}
	side, _, err := h.client().Catalog().Service("web-sidecar-proxy", "", nil)
	if err != nil || len(side) != 1 {
		t.Fatalf("catalog web-sidecar-proxy: %v %v", side, err)
	}
	if _, port, _ := strings.Cut(addr, ":"); side[0].ServiceMeta["prometheus_port"] != port ||
		side[0].ServiceMeta["prometheus_path"] != "/metrics" {
		t.Errorf("sidecar meta %v, want prometheus_port %s and prometheus_path /metrics", side[0].ServiceMeta, port)
	}
	h.waitMetric(30*time.Second, "web", "meshx_ready", nil, equals(1))

	cfg := docScrapeConfig(t, c.HTTPAddr)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	// Queries see samples at once (no latency offset, no cache).
	cmd := exec.Command(scraper, "-promscrape.config="+filepath.Join(dir, "prometheus.yml"), "-storageDataPath="+filepath.Join(dir, "data"),
		"-httpListenAddr="+listen, "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN")
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		testutil.Interrupt(cmd.Process, done, 10*time.Second)
		if t.Failed() {
			t.Logf("scrape config:\n%s\nscraper output:\n%s", cfg, out.String())
		}
	})

	query := func(q string) (float64, error) {
		resp, err := http.Get("http://" + listen + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  [2]any            `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return 0, err
		}
		if len(r.Data.Result) != 1 {
			return 0, fmt.Errorf("%s: %d series", q, len(r.Data.Result))
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		return strconv.ParseFloat(s, 64)
	}
	// The relabeling gives each series the service and node labels.
	ready := `meshx_ready{job="meshx",service="web",node="meshx-test",instance="` + addr + `"}`
	testutil.Eventually(t, 60*time.Second, func() error {
		v, err := query(ready)
		if err == nil && v != 1 {
			err = fmt.Errorf("%s = %v", ready, v)
		}
		return err
	})

	restarts := `meshx_proxy_restarts_total{service="web",reason="exited"}`
	before, err := query(restarts)
	if err != nil {
		t.Fatal(err)
	}
	pid := h.status("web").ProxyPID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, func() error {
		v, err := query(restarts)
		if err == nil && v != before+1 {
			err = fmt.Errorf("%s = %v, want %v", restarts, v, before+1)
		}
		return err
	})
}

// docScrapeConfig is the scrape config of docs/metrics.md, pointed at the
// test's agent and scraping every second.
func docScrapeConfig(t *testing.T, consulAddr string) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(scrape_configs:.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/metrics.md has no scrape_configs block")
	}
	cfg := bytes.Replace(m[1], []byte("server: 127.0.0.1:8500"), []byte("server: "+consulAddr), 1)
	if bytes.Equal(cfg, m[1]) {
		t.Fatal("docs/metrics.md's scrape config no longer names server: 127.0.0.1:8500")
	}
	return "global: {scrape_interval: 1s}\n" + string(cfg)
}

// TestEnvoyMetricsMerged: in envoy mode one scrape of meshx-proxy also
// carries Envoy's own metrics, fetched from the admin listener meshx
// allocated. No Envoy can be installed here: the proxy command is a stand-in
// serving Prometheus text at the admin path /stats/prometheus, as Envoy does.
func TestEnvoyMetricsMerged(t *testing.T) {
	c := testutil.StartConsul(t, "")
	h := newHost(t, c, "")
	side := testutil.FreePort(t)
	h.service("web.yaml", fmt.Sprintf(`version: 1
service: {name: web, port: %d}
proxy:
  mode: envoy
  command: [%q, -listen, "127.0.0.1:%d", -admin, "{{admin_address}}"]
registration:
  Connect: {SidecarService: {Port: %d}}
`, startApp(t, "hello"), filepath.Join(binDir, "fakeproxy"), side, side))
	h.foreground()
	h.waitPassing(30*time.Second, "web-testhost")
	if h.plan("web").Proxy.AdminPort == 0 {
		t.Fatal("envoy mode without an admin port")
	}
	h.waitMetric(10*time.Second, "web", "meshx_ready", nil, equals(1))
	first := h.waitMetric(10*time.Second, "web", "envoy_fake_admin_scrapes_total", nil, func(v float64) bool { return v >= 1 })
	h.waitMetric(10*time.Second, "web", "envoy_server_live", nil, equals(1))
	h.waitMetric(10*time.Second, "web", "meshx_envoy_metrics_up", nil, equals(1))
	// Each scrape of meshx-proxy is one of the admin listener: fresh values.
	h.waitMetric(10*time.Second, "web", "envoy_fake_admin_scrapes_total", nil, func(v float64) bool { return v > first })
}

// BenchmarkMetricsMemory sets one meshx-proxy's resident memory with metrics
// on (after being scraped) against the same service with metrics off, in the
// same run. The service has mode none, so meshx-proxy runs alone.
func BenchmarkMetricsMemory(b *testing.B) {
	c := testutil.StartConsul(b, "")
	measure := func(extra string, scrape bool) float64 {
		h := newHost(b, c, extra)
		h.service("web.yaml", "version: 1\nservice: {name: web}\ncheck: {probe: none}\nproxy: {mode: none}\n")
		f := h.foreground()
		defer f.stop(b)
		testutil.Eventually(b, 30*time.Second, func() error {
			if st := h.status("web"); !st.Ready {
				return fmt.Errorf("not ready: %+v", st)
			}
			return nil
		})
		if scrape {
			h.waitMetric(10*time.Second, "web", "meshx_ready", nil, equals(1))
		}
		return rssMB(h.status("web").PID)
	}
	var on, off float64
	for range b.N {
		off += measure("metrics: {enabled: false}\n", false)
		on += measure("", true)
	}
	b.ReportMetric(off/float64(b.N), "off-MB")
	b.ReportMetric(on/float64(b.N), "on-MB")
	b.ReportMetric(on/off, "on/off")
}
