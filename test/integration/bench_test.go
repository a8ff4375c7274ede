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
		b.Run(fmt.Sprintf("N=%d/meshx", n), func(b *testing.B) { benchMeshx(b, c, n) })
	}
}

func benchServices(h *host, n int) {
	for i := 0; i < n; i++ {
		h.service(fmt.Sprintf("svc%03d.yaml", i), fmt.Sprintf("version: 1\nservice: {name: svc%03d}\ncheck: {probe: none}\n", i))
	}
}

func benchMeshx(b *testing.B, c *testutil.Consul, n int) {
	var rss []float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		h := newHost(b, c, "ports: {range: \"20000-20999\"}\n")
		h.write("meshx.yaml", fmt.Sprintf("version: 1\nconsul: {address: %q, binary: %q}\nhostname: testhost\n", "http://"+c.HTTPAddr, testutil.ConsulBinary(b)))
		benchServices(h, n)
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
			b.ReportMetric(rssMB(st.ProxyPID), "proxy-child-MB")
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
		benchServices(h, n)
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
