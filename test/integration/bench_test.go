package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/plan"
	"github.com/meshx/meshx/internal/ports"
	"github.com/meshx/meshx/internal/testutil"
)

// The agent's default of 200 HTTP connections per client IP caps one host at
// about 50 built-in proxies (each holds ~4); both sides get the same raised limit.
const benchHCL = `limits { http_max_conns_per_client = 4000 }`

// BenchmarkStartup times `meshx-init run --foreground` from start until all N
// services are passing and every proxy accepts, against a baseline doing the
// same by hand in the same run: the same registrations sent straight to the
// agent API, the same `consul connect proxy` processes started directly, and
// each TTL check set passing once its proxy accepts.
func BenchmarkStartup(b *testing.B) {
	for _, n := range []int{1, 20, 100} {
		c := testutil.StartConsul(b, benchHCL)
		b.Run(fmt.Sprintf("N=%d/baseline", n), func(b *testing.B) { benchBaseline(b, c, n) })
		b.Run(fmt.Sprintf("N=%d/meshx", n), func(b *testing.B) { benchMeshx(b, c, n, "connect") })
		b.Run(fmt.Sprintf("N=%d/native", n), func(b *testing.B) { benchMeshx(b, c, n, "native") })
	}
}

func benchServices(h *host, n int, mode string) {
	for i := 0; i < n; i++ {
		h.service(fmt.Sprintf("svc%03d.yaml", i),
			fmt.Sprintf("version: 1\nservice: {name: svc%03d}\ncheck: {probe: none}\nproxy: {mode: %s}\n", i, mode))
	}
}

// benchMeshx times meshx with every service in one proxy mode; it reports
// the resident memory of one meshx-proxy and of its proxy child (none in
// native mode, where meshx-proxy is the proxy).
func benchMeshx(b *testing.B, c *testutil.Consul, n int, mode string) {
	var rss []float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		h := newHost(b, c, "ports: {range: \"20000-20999\"}\n")
		h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: %q, binary: %q}\nhostname: testhost\n", "http://"+c.HTTPAddr, testutil.ConsulBinary(b)))
		benchServices(h, n, mode)
		b.StartTimer()
		f := h.foreground()
		ids := make([]string, n)
		for j := range ids {
			ids[j] = fmt.Sprintf("svc%03d-testhost", j)
		}
		waitReady(b, h, ids)
		b.StopTimer()
		if st, ok := h.dirs.LoadStatus("svc000"); ok {
			rss = append(rss, rssMB(st.PID))
			child := 0.0
			if st.ProxyPID != st.PID {
				child = rssMB(st.ProxyPID)
			}
			b.ReportMetric(child, "proxy-child-MB")
		}
		f.stop(b)
		waitGone(b, h)
	}
	if len(rss) > 0 {
		b.ReportMetric(rss[len(rss)-1], "meshx-proxy-MB")
	}
}

func benchBaseline(b *testing.B, c *testutil.Consul, n int) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		h := newHost(b, c, "")
		benchServices(h, n, "connect")
		// Render the very registrations meshx would send, outside the timer.
		g, err := config.LoadGlobal(config.ConfigPath(h.dirs.Config))
		if err != nil {
			b.Fatal(err)
		}
		set, err := config.LoadServices(config.ServicesDir(h.dirs.Config), g.Defaults)
		if err != nil {
			b.Fatal(err)
		}
		next := 20000
		alloc := func(reqs []ports.Request) (map[string]int, error) {
			out := map[string]int{}
			for _, r := range reqs {
				out[r.Key] = next
				next++
			}
			return out, nil
		}
		plans, err := plan.BuildAll(set, plan.Host{Hostname: "testhost", Global: g}, nil, alloc)
		if err != nil {
			b.Fatal(err)
		}
		agent := h.client().Agent()
		b.StartTimer()
		var wg sync.WaitGroup
		procs := make([]*exec.Cmd, len(plans))
		for j, pl := range plans {
			if err := agent.ServiceRegister(pl.Registration); err != nil {
				b.Fatal(err)
			}
			cmd := exec.Command(pl.Proxy.Argv[0], pl.Proxy.Argv[1:]...)
			cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+c.HTTPAddr)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			procs[j] = cmd
			wg.Add(1)
			go func() {
				defer wg.Done()
				port := sidecarPort(agent, pl.SidecarID)
				for !accepts(port) {
					time.Sleep(50 * time.Millisecond)
				}
				_ = agent.UpdateTTL(pl.CheckID, "proxy accepts", api.HealthPassing)
			}()
		}
		wg.Wait()
		ids := make([]string, len(plans))
		for j, pl := range plans {
			ids[j] = pl.ID
		}
		waitReady(b, h, ids)
		b.StopTimer()
		for j, cmd := range procs {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			_ = cmd.Wait()
			_ = agent.ServiceDeregister(plans[j].SidecarID)
			_ = agent.ServiceDeregister(plans[j].ID)
		}
		waitGone(b, h)
	}
}

func sidecarPort(a *api.Agent, id string) int {
	for k := 0; k < 200; k++ {
		if s, _, err := a.Service(id, nil); err == nil {
			return s.Port
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0
}

func accepts(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// waitReady polls (every 50ms, at most 5 minutes) until every id's check is
// passing and its sidecar accepts.
func waitReady(tb testing.TB, h *host, ids []string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	agent := h.client().Agent()
	pending := map[string]bool{}
	for _, id := range ids {
		pending[id] = true
	}
	for len(pending) > 0 {
		if ctx.Err() != nil {
			tb.Fatalf("%d of %d services not ready after 5 minutes", len(pending), len(ids))
		}
		checks, _ := agent.Checks()
		svcs, _ := agent.Services()
		for id := range pending {
			chk, side := checks["meshx-ttl:"+id], svcs[id+"-sidecar-proxy"]
			if chk != nil && chk.Status == api.HealthPassing && side != nil && accepts(side.Port) {
				delete(pending, id)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitGone(tb testing.TB, h *host) {
	tb.Helper()
	testutil.Eventually(tb, time.Minute, func() error {
		for id := range h.services() {
			if strings.HasPrefix(id, "svc") {
				return fmt.Errorf("%s still registered", id)
			}
		}
		return nil
	})
}

// rssMB is a process's resident set size in MB (VmRSS).
func rssMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkServicesPerHost starts N native services against an agent with
// Consul's default limits (200 HTTP connections per client address) and
// reports how many reached ready within two minutes, and how many
// connections to the agent one meshx-proxy holds.
func BenchmarkServicesPerHost(b *testing.B) {
	const n = 150
	for range b.N {
		c := testutil.StartConsul(b, "")
		h := newHost(b, c, "ports: {range: \"20000-20999\"}\n")
		h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: %q, binary: %q}\nhostname: testhost\n", "http://"+c.HTTPAddr, testutil.ConsulBinary(b)))
		benchServices(h, n, "native")
		f := h.foreground()
		ids := make([]string, n)
		for j := range ids {
			ids[j] = fmt.Sprintf("svc%03d-testhost", j)
		}
		ready := countReady(h, ids, 2*time.Minute)
		b.ReportMetric(float64(ready), "ready-of-150")
		if st, ok := h.dirs.LoadStatus("svc000"); ok {
			b.ReportMetric(float64(agentConns(st.PID, c.HTTPAddr)), "agent-conns/service")
		}
		f.stop(b)
		c.Stop()
	}
}

// countReady waits up to timeout for the ids to be ready (as waitReady
// says) and returns how many were.
func countReady(h *host, ids []string, timeout time.Duration) int {
	agent := h.client().Agent()
	deadline := time.Now().Add(timeout)
	ready := map[string]bool{}
	for time.Now().Before(deadline) && len(ready) < len(ids) {
		checks, _ := agent.Checks()
		svcs, _ := agent.Services()
		for _, id := range ids {
			chk, side := checks["meshx-ttl:"+id], svcs[id+"-sidecar-proxy"]
			if chk != nil && chk.Status == api.HealthPassing && side != nil && accepts(side.Port) {
				ready[id] = true
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return len(ready)
}

// agentConns counts the TCP connections process pid has open to addr.
func agentConns(pid int, addr string) int {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	host, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	want := fmt.Sprintf("%s:%04X", hexIPv4(host), port)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	n := 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[2] == want && f[3] == "01" && inodes[f[9]] {
			n++
		}
	}
	return n
}

// hexIPv4 writes an IPv4 address as /proc/net/tcp does (little-endian hex).
func hexIPv4(s string) string {
	ip := net.ParseIP(s).To4()
	return fmt.Sprintf("%02X%02X%02X%02X", ip[3], ip[2], ip[1], ip[0])
}
