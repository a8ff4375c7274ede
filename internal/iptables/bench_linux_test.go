package iptables

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// Benchmarks of installing and removing the rule set, meshx against Consul,
// for the same settings, each in a fresh network namespace. Run as root:
//
//	go test ./internal/iptables -run '^$' -bench 'ApplyRemove|ConsulRedirectTraffic' -benchtime 30x
//
// Each reports apply-ms/op and remove-ms/op besides ns/op (both together).

// benchCases are the settings compared: the Vagrant flow's (IPv4) and a
// dual-stack one Consul can express (no CIDRs, IPv6 DNS).
var benchCases = []struct {
	name string
	cfg  Config
}{
	{"ipv4", goldenConfig("vagrant")},
	{"dual-stack", goldenConfig("dual-stack-dns6")},
}

func goldenConfig(name string) Config {
	for _, tc := range goldenCases {
		if tc.name == name {
			return tc.cfg
		}
	}
	panic("no golden case " + name)
}

// BenchmarkApplyRemove times meshx's Apply and then Remove. In the "cold"
// variants apply-ms also includes Rules and New (which runs iptables
// --version and ip6tables --version), as at meshx-proxy's start.
func BenchmarkApplyRemove(b *testing.B) {
	for _, bc := range benchCases {
		for _, cold := range []bool{false, true} {
			name := bc.name
			if cold {
				name += "/cold"
			}
			b.Run(name, func(b *testing.B) { benchApplyRemove(b, bc.cfg, cold) })
		}
	}
}

func benchApplyRemove(b *testing.B, cfg Config, cold bool) {
	ctx := context.Background()
	ns := newNetns(b, "bench")
	m := ns.manager(b)
	rs, err := Rules(cfg)
	if err != nil {
		b.Fatal(err)
	}
	var apply, remove time.Duration
	n := 0
	for b.Loop() {
		t0 := time.Now()
		if cold {
			if rs, err = Rules(cfg); err != nil {
				b.Fatal(err)
			}
			m = ns.manager(b)
		}
		if err := m.Apply(ctx, rs); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := m.Remove(ctx); err != nil {
			b.Fatal(err)
		}
		apply, remove, n = apply+t1.Sub(t0), remove+time.Since(t1), n+1
	}
	reportSplit(b, apply, remove, n)
}

// BenchmarkConsulRedirectTraffic is the baseline: `consul connect
// redirect-traffic` for the same settings, then the Vagrant flow's clean-up
// (flush the whole nat table, delete Consul's chains; ip6tables too for
// dual-stack), one iptables process per command as the script runs them.
// "in-netns" starts Consul inside the namespace, as on a VM; "netns-flag"
// uses Consul's -netns flag (one nsenter per rule).
func BenchmarkConsulRedirectTraffic(b *testing.B) {
	needNetns(b)
	agents := map[bool]consulAgent{}
	for _, bc := range benchCases {
		dual := bc.cfg.IPv6
		if _, ok := agents[dual]; !ok {
			bind := "127.0.0.1"
			if dual {
				bind = "::1"
			}
			agents[dual] = startConsulAgent(b, bind)
		}
		a := agents[dual]
		for _, mode := range []string{"in-netns", "netns-flag"} {
			b.Run(bc.name+"/"+mode, func(b *testing.B) {
				ns := newNetns(b, "bench-consul")
				args := consulFlags(bc.cfg, dual)
				var apply, remove time.Duration
				n := 0
				for b.Loop() {
					t0 := time.Now()
					if out, err := a.redirectTraffic(ns, mode == "netns-flag", args...); err != nil {
						b.Fatalf("consul connect redirect-traffic: %v\n%s", err, out)
					}
					t1 := time.Now()
					vagrantCleanup(b, ns, dual)
					apply, remove, n = apply+t1.Sub(t0), remove+time.Since(t1), n+1
				}
				reportSplit(b, apply, remove, n)
			})
		}
	}
}

// vagrantCleanup is what the Vagrant flow's consul-cleanup-iptables does:
// iptables -t nat -F, then -X of each Consul chain.
func vagrantCleanup(b *testing.B, ns netns, dual bool) {
	tools := []string{"iptables"}
	if dual {
		tools = append(tools, "ip6tables")
	}
	for _, tool := range tools {
		cmds := [][]string{{"-t", "nat", "-F"}}
		for _, c := range Chains() {
			cmds = append(cmds, []string{"-t", "nat", "-X", c})
		}
		for _, args := range cmds {
			var out []byte
			err := inNetns(ns.path, func() (err error) {
				out, err = exec.Command(tool, args...).CombinedOutput()
				return err
			})
			if err != nil {
				b.Fatalf("%s %v: %v: %s", tool, args, err, out)
			}
		}
	}
}

func reportSplit(b *testing.B, apply, remove time.Duration, n int) {
	if n == 0 {
		return
	}
	b.ReportMetric(float64(apply.Microseconds())/1000/float64(n), "apply-ms/op")
	b.ReportMetric(float64(remove.Microseconds())/1000/float64(n), "remove-ms/op")
}
