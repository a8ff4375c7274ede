// Package metrics is meshx-proxy's Prometheus endpoint. One Metrics holds the
// families of one meshx-proxy: the supervised proxy, the heartbeat, the
// registration, the agent client, ACL login, readiness, and those of the
// in-process data plane (DataPlane). Handler serves them in Prometheus's text
// format, followed, in envoy mode, by Envoy's own metrics fetched from its
// admin endpoint, so that one scrape covers the whole service.
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every family meshx defines.
const Namespace = "meshx"

// ProxyStates are the values of meshx_proxy_state's state label (the
// supervisor's states); exactly one of them is 1 at a time.
var ProxyStates = []string{"starting", "running", "backoff", "stopping", "stopped", "failed"}

// HealthStates are the values of meshx_heartbeat_status's status label.
var HealthStates = []string{"passing", "warning", "critical"}

// Restart reasons of meshx_proxy_restarts_total.
const (
	RestartExited       = "exited"       // the proxy exited and the supervisor started it again
	RestartReconfigured = "reconfigured" // meshx-proxy restarted it: new command, token or upstreams
)

// Re-sync reasons of meshx_registration_resyncs_total.
const (
	ResyncAgentLost = "agent_lost" // the agent had lost the service or its check
	ResyncReload    = "reload"     // the plan changed (SIGHUP)
	ResyncToken     = "token"      // the ACL token changed (rotation or a new login)
)

// Metrics are one meshx-proxy's metric families. The zero value is not
// usable: call New. All methods are safe for concurrent use; a nil *Metrics
// accepts every call and records nothing (metrics turned off).
type Metrics struct {
	reg *prometheus.Registry

	proxyState    *prometheus.GaugeVec
	proxyRestarts *prometheus.CounterVec
	hbStatus      *prometheus.GaugeVec
	hbTransition  prometheus.Gauge
	hbTransitions prometheus.Counter
	resyncs       *prometheus.CounterVec
	agentErrors   *prometheus.CounterVec
	logins        *prometheus.CounterVec
	ready         prometheus.Gauge
	timeToReady   prometheus.Gauge
	envoyUp       prometheus.Gauge

	mu         sync.Mutex
	lastHealth string
	lastProxy  string

	// DataPlane holds the families of the in-process data plane (mode
	// native); they exist, at zero, in every mode.
	DataPlane *DataPlane
}

// New registers every family in a registry of its own, along with the Go
// runtime's and the process's standard collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	f := factory{reg}
	m := &Metrics{reg: reg,
		proxyState: f.gaugeVec("proxy_state",
			"1 for the state the supervised proxy is in, 0 for the others.", "state"),
		proxyRestarts: f.counterVec("proxy_restarts_total",
			"Restarts of the proxy: exited (the supervisor started it again) or reconfigured (meshx-proxy restarted it).", "reason"),
		hbStatus: f.gaugeVec("heartbeat_status",
			"1 for the status the TTL check was last written with, 0 for the others.", "status"),
		hbTransition: f.gauge("heartbeat_last_transition_timestamp_seconds",
			"When the TTL check's written status last changed (Unix seconds)."),
		hbTransitions: f.counter("heartbeat_transitions_total",
			"Changes of the TTL check's written status."),
		resyncs: f.counterVec("registration_resyncs_total",
			"Registrations sent again after start: agent_lost, reload or token.", "reason"),
		agentErrors: f.counterVec("agent_request_errors_total",
			"Requests to the Consul agent that failed, by operation.", "op"),
		logins: f.counterVec("acl_logins_total",
			"ACL logins through the auth method, by result (ok or error).", "result"),
		ready: f.gauge("ready",
			"1 once meshx-proxy told systemd READY=1 (traffic can flow), else 0."),
		timeToReady: f.gauge("time_to_ready_seconds",
			"Seconds from meshx-proxy's start to READY=1; 0 until then."),
		envoyUp: f.gauge("envoy_metrics_up",
			"1 if the last scrape got Envoy's own metrics from its admin endpoint, else 0 (envoy mode only)."),
	}
	for _, s := range ProxyStates {
		m.proxyState.WithLabelValues(s)
	}
	for _, s := range HealthStates {
		m.hbStatus.WithLabelValues(s)
	}
	for _, r := range []string{RestartExited, RestartReconfigured} {
		m.proxyRestarts.WithLabelValues(r)
	}
	for _, r := range []string{ResyncAgentLost, ResyncReload, ResyncToken} {
		m.resyncs.WithLabelValues(r)
	}
	m.DataPlane = newDataPlane(f)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the families live (for tests and extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ProxyState records the supervised proxy's state (a supervisor.State). A
// move from backoff to starting is the supervisor restarting an exited
// proxy: it counts as a restart with reason RestartExited.
func (m *Metrics) ProxyState(state string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	prev := m.lastProxy
	m.lastProxy = state
	m.mu.Unlock()
	if prev == "backoff" && state == "starting" {
		m.proxyRestarts.WithLabelValues(RestartExited).Inc()
	}
	oneHot(m.proxyState, ProxyStates, state)
}

// oneHot sets the series of value to 1 and those of the other values to 0.
func oneHot(g *prometheus.GaugeVec, values []string, value string) {
	for _, v := range values {
		x := 0.0
		if v == value {
			x = 1
		}
		g.WithLabelValues(v).Set(x)
	}
}

// ProxyRestarted counts one restart of the proxy that ProxyState does not
// see as one (RestartReconfigured: meshx-proxy replaced it).
func (m *Metrics) ProxyRestarted(reason string) {
	if m == nil {
		return
	}
	m.proxyRestarts.WithLabelValues(reason).Inc()
}

// Heartbeat records the status the TTL check was written with; a change of
// status sets the last-transition time to at.
func (m *Metrics) Heartbeat(status string, at time.Time) {
	if m == nil {
		return
	}
	oneHot(m.hbStatus, HealthStates, status)
	if m.swapHealth(status) {
		m.hbTransition.Set(float64(at.UnixNano()) / 1e9)
		m.hbTransitions.Inc()
	}
}

// Resync counts a registration sent again (ResyncAgentLost, ResyncReload,
// ResyncToken).
func (m *Metrics) Resync(reason string) {
	if m == nil {
		return
	}
	m.resyncs.WithLabelValues(reason).Inc()
}

// AgentError counts a failed request to the agent; op names it
// ("register", "ttl", "deregister", "login", ...).
func (m *Metrics) AgentError(op string) {
	if m == nil {
		return
	}
	m.agentErrors.WithLabelValues(op).Inc()
}

// Login counts an ACL login attempt.
func (m *Metrics) Login(err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.logins.WithLabelValues(result).Inc()
}

// Ready records READY=1, after took since meshx-proxy started.
func (m *Metrics) Ready(took time.Duration) {
	if m == nil {
		return
	}
	m.ready.Set(1)
	m.timeToReady.Set(took.Seconds())
}

// swapHealth stores status and reports whether it differs from the last one.
func (m *Metrics) swapHealth(status string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := m.lastHealth != status
	m.lastHealth = status
	return changed
}

// factory makes families in one registry, under Namespace.
type factory struct{ reg *prometheus.Registry }

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(g)
	return g
}

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help})
	f.reg.MustRegister(c)
	return c
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(g)
	return g
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	f.reg.MustRegister(c)
	return c
}
