package register

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/config"
	"github.com/meshx/meshx/internal/testutil"
)

// consulEnv are the CONSUL_* variables api.DefaultConfig reads.
var consulEnv = []string{api.HTTPAddrEnvName, api.HTTPTokenEnvName, api.HTTPTokenFileEnvName, api.HTTPSSLEnvName,
	api.HTTPCAFile, api.HTTPCAPath, api.HTTPClientCert, api.HTTPClientKey, api.HTTPTLSServerName,
	api.HTTPAuthEnvName, api.HTTPSSLVerifyEnvName, api.GRPCAddrEnvName, "CONSUL_NAMESPACE", "CONSUL_PARTITION"}

// cleanEnv empties every CONSUL_* variable for the test, then sets env.
func cleanEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, k := range consulEnv {
		t.Setenv(k, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func TestAPIConfig(t *testing.T) {
	type want struct {
		address, scheme, token, tokenFile, ca, cert, key, serverName string
	}
	cases := []struct {
		name   string
		env    map[string]string
		consul config.Consul
		want   want
	}{
		{"defaults", nil, config.Consul{},
			want{address: "localhost:8500", scheme: "http"}},
		{"environment only", map[string]string{
			api.HTTPAddrEnvName: "https://10.0.0.1:8501", api.HTTPTokenFileEnvName: "/env/token",
			api.HTTPCAFile: "/env/ca.pem", api.HTTPClientCert: "/env/cert.pem", api.HTTPClientKey: "/env/key.pem",
			api.HTTPTLSServerName: "env.consul"},
			config.Consul{},
			want{address: "https://10.0.0.1:8501", scheme: "https", tokenFile: "/env/token",
				ca: "/env/ca.pem", cert: "/env/cert.pem", key: "/env/key.pem", serverName: "env.consul"}},
		{"meshx.yaml wins over the environment", map[string]string{
			api.HTTPAddrEnvName: "http://10.0.0.1:8500", api.HTTPTokenFileEnvName: "/env/token",
			api.HTTPCAFile: "/env/ca.pem", api.HTTPClientCert: "/env/cert.pem", api.HTTPClientKey: "/env/key.pem",
			api.HTTPTLSServerName: "env.consul"},
			config.Consul{Address: "https://127.0.0.1:8501", TokenFile: "/etc/meshx/token", CAFile: "/etc/ca.pem",
				CertFile: "/etc/cert.pem", KeyFile: "/etc/key.pem", TLSServerName: "yaml.consul"},
			want{address: "https://127.0.0.1:8501", scheme: "https", tokenFile: "/etc/meshx/token",
				ca: "/etc/ca.pem", cert: "/etc/cert.pem", key: "/etc/key.pem", serverName: "yaml.consul"}},
		{"token_file drops an inherited token", map[string]string{api.HTTPTokenEnvName: "env-token"},
			config.Consul{TokenFile: "/etc/meshx/token"},
			want{address: "localhost:8500", scheme: "http", tokenFile: "/etc/meshx/token"}},
		{"inherited token kept without token_file", map[string]string{api.HTTPTokenEnvName: "env-token"},
			config.Consul{},
			want{address: "localhost:8500", scheme: "http", token: "env-token"}},
		{"unset fields fall back field by field", map[string]string{api.HTTPCAFile: "/env/ca.pem"},
			config.Consul{Address: "https://127.0.0.1:8501"},
			want{address: "https://127.0.0.1:8501", scheme: "https", ca: "/env/ca.pem"}},
		{"an http address wins over CONSUL_HTTP_SSL", map[string]string{api.HTTPSSLEnvName: "true"},
			config.Consul{Address: "http://127.0.0.1:8500"},
			want{address: "http://127.0.0.1:8500", scheme: "http"}},
		{"unix socket", nil, config.Consul{Address: "unix:///run/consul/http.sock"},
			want{address: "unix:///run/consul/http.sock", scheme: "http"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t, tc.env)
			c := APIConfig(tc.consul)
			got := want{address: c.Address, scheme: c.Scheme, token: c.Token, tokenFile: c.TokenFile,
				ca: c.TLSConfig.CAFile, cert: c.TLSConfig.CertFile, key: c.TLSConfig.KeyFile, serverName: c.TLSConfig.Address}
			if got != tc.want {
				t.Errorf("APIConfig\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestAddress(t *testing.T) {
	cases := []struct {
		name   string
		env    map[string]string
		consul config.Consul
		want   string
	}{
		{"default gets a scheme", nil, config.Consul{}, "http://localhost:8500"},
		{"environment without scheme", map[string]string{api.HTTPAddrEnvName: "10.0.0.1:8500"}, config.Consul{}, "http://10.0.0.1:8500"},
		{"meshx.yaml", nil, config.Consul{Address: "https://127.0.0.1:8501"}, "https://127.0.0.1:8501"},
		{"unix socket", nil, config.Consul{Address: "unix:///run/consul/http.sock"}, "unix:///run/consul/http.sock"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t, tc.env)
			if got := Address(tc.consul); got != tc.want {
				t.Errorf("Address = %q, want %q", got, tc.want)
			}
		})
	}
}

// lookup returns the value a child sees for key: like os/exec, the last one.
func lookup(env []string, key string) (string, bool) {
	v, ok := "", false
	for _, kv := range env {
		if k, val, _ := strings.Cut(kv, "="); k == key {
			v, ok = val, true
		}
	}
	return v, ok
}

func TestProxyEnv(t *testing.T) {
	const secret = "s3cr3t-0b7e-token"
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("  "+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inherited := []string{"PATH=/usr/bin:/bin", "HOME=/root", api.HTTPTokenEnvName + "=inherited-token",
		api.HTTPTokenFileEnvName + "=/inherited/token", api.HTTPAddrEnvName + "=http://10.9.9.9:8500", "LANG=C.UTF-8"}

	cases := []struct {
		name    string
		env     map[string]string // the meshx process's own environment
		consul  config.Consul
		base    []string
		want    map[string]string // "" = must be absent
		noToken bool
	}{
		{"token from token_file", nil,
			config.Consul{Address: "http://127.0.0.1:8500", TokenFile: tokenFile}, inherited,
			map[string]string{api.HTTPTokenEnvName: secret, api.HTTPAddrEnvName: "http://127.0.0.1:8500",
				api.HTTPTokenFileEnvName: "", "PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}, false},
		{"token_file from the environment", map[string]string{api.HTTPTokenFileEnvName: tokenFile},
			config.Consul{}, nil,
			map[string]string{api.HTTPTokenEnvName: secret, api.HTTPAddrEnvName: "localhost:8500",
				api.HTTPTokenFileEnvName: ""}, false},
		{"no token anywhere", nil,
			config.Consul{Address: "http://127.0.0.1:8500"}, inherited,
			map[string]string{api.HTTPTokenEnvName: "", api.HTTPTokenFileEnvName: "",
				api.HTTPAddrEnvName: "http://127.0.0.1:8500"}, true},
		{"TLS and gRPC", nil,
			config.Consul{Address: "https://127.0.0.1:8501", CAFile: "/ca.pem", CertFile: "/cert.pem", KeyFile: "/key.pem",
				TLSServerName: "server.dc1.consul", GRPCAddress: "127.0.0.1:8503"},
			[]string{api.HTTPCAFile + "=/old-ca.pem", api.GRPCAddrEnvName + "=127.0.0.1:1"},
			map[string]string{api.HTTPAddrEnvName: "https://127.0.0.1:8501", api.HTTPCAFile: "/ca.pem",
				api.HTTPClientCert: "/cert.pem", api.HTTPClientKey: "/key.pem",
				api.HTTPTLSServerName: "server.dc1.consul", api.GRPCAddrEnvName: "127.0.0.1:8503"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t, tc.env)
			env, err := ProxyEnv(tc.consul, tc.base)
			if err != nil {
				t.Fatal(err)
			}
			for k, want := range tc.want {
				got, ok := lookup(env, k)
				if want == "" && ok {
					t.Errorf("%s=%s is passed, want it absent", k, got)
				}
				if want != "" && got != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
			var tokens int
			for _, kv := range env {
				k, v, _ := strings.Cut(kv, "=")
				if k == api.HTTPTokenEnvName {
					tokens++
					continue
				}
				if strings.Contains(v, secret) || strings.Contains(v, "inherited-token") {
					t.Errorf("a token leaks into %s", k)
				}
			}
			if want := map[bool]int{true: 0, false: 1}[tc.noToken]; tokens != want {
				t.Errorf("%d %s entries, want %d", tokens, api.HTTPTokenEnvName, want)
			}
		})
	}

	t.Run("unreadable token file", func(t *testing.T) {
		cleanEnv(t, nil)
		_, err := ProxyEnv(config.Consul{TokenFile: filepath.Join(t.TempDir(), "missing")}, inherited)
		if err == nil || !strings.Contains(err.Error(), "token file") {
			t.Errorf("err = %v, want a token-file error", err)
		}
	})
}

// TestWaitAgent runs against fake agents: one that answers after failing
// twice, one that is down for good, and a cancelled wait.
func TestWaitAgent(t *testing.T) {
	client := func(t *testing.T, addr string) Agent {
		t.Helper()
		cl, err := api.NewClient(&api.Config{Address: addr})
		if err != nil {
			t.Fatal(err)
		}
		return NewAPI(cl)
	}

	t.Run("retries until the agent answers", func(t *testing.T) {
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/status/leader" {
				t.Errorf("unexpected call %s", r.URL.Path)
			}
			if calls.Add(1) <= 2 {
				http.Error(w, "No cluster leader", http.StatusInternalServerError)
				return
			}
			fmt.Fprint(w, `"127.0.0.1:8300"`)
		}))
		defer srv.Close()
		var log bytes.Buffer
		err := WaitAgent(context.Background(), client(t, srv.URL), srv.URL, 30*time.Second,
			slog.New(slog.NewTextHandler(&log, nil)))
		if err != nil || calls.Load() != 3 {
			t.Errorf("WaitAgent = %v after %d calls; want nil after 3", err, calls.Load())
		}
		if n := strings.Count(log.String(), "waiting for the consul agent"); n != 1 {
			t.Errorf("%d retry warnings, want 1 (the first failure is quiet):\n%s", n, log.String())
		}
	})

	t.Run("gives up after wait naming the address", func(t *testing.T) {
		addr := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
		const wait = 2 * time.Second
		start := time.Now()
		err := WaitAgent(context.Background(), client(t, addr), addr, wait, slog.New(slog.DiscardHandler))
		took := time.Since(start)
		if !errors.Is(err, ErrAgentUnreachable) || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "after 2s") {
			t.Errorf("err = %v; want ErrAgentUnreachable naming %s and the wait", err, addr)
		}
		if took < wait/2 || took > wait+3*time.Second {
			t.Errorf("gave up after %s, want about %s", took, wait)
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		addr := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		start := time.Now()
		err := WaitAgent(ctx, client(t, addr), addr, time.Minute, slog.New(slog.DiscardHandler))
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrAgentUnreachable) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("a cancelled wait took %s", took)
		}
	})
}

// TestNewClientPlainHTTPDespiteSSLEnv: with meshx.yaml's http:// address, an
// inherited CONSUL_HTTP_SSL=true does not make the client speak TLS.
func TestNewClientPlainHTTPDespiteSSLEnv(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `"127.0.0.1:8300"`)
	}))
	defer srv.Close()
	cleanEnv(t, map[string]string{api.HTTPSSLEnvName: "true"})
	cl, err := NewClient(config.Consul{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if leader, err := cl.Status().Leader(); err != nil || leader != "127.0.0.1:8300" {
		t.Errorf("Leader = %q, %v", leader, err)
	}
}

func TestSourceAddress(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:8500", true}, {"http://127.0.0.1:8500", true}, {"https://localhost:8501", true},
		{"127.0.0.1", true}, {"unix:///run/consul/http.sock", false}, {"http://10.0.0.1:8500", false},
		{"[::1]:8500", false}, {"consul.internal:8500", false},
	} {
		got := SourceAddress(tc.addr, "web-vm1")
		if got.IsValid() != tc.want {
			t.Errorf("SourceAddress(%q) = %v, want valid=%v", tc.addr, got, tc.want)
			continue
		}
		if !got.IsValid() {
			continue
		}
		b := got.As4()
		if !got.IsLoopback() || (b[1] == 0 && b[2] == 0) || b[3] == 0 || b[3] == 255 {
			t.Errorf("SourceAddress(%q) = %v: want a loopback address outside 127.0.0.0/24, not .0 or .255", tc.addr, got)
		}
	}
	a, b := SourceAddress("127.0.0.1:8500", "web-vm1"), SourceAddress("127.0.0.1:8500", "web-vm1")
	if a != b {
		t.Errorf("not stable: %v then %v", a, b)
	}
	seen := map[netip.Addr]bool{}
	for i := range 200 {
		seen[SourceAddress("127.0.0.1:8500", fmt.Sprintf("svc%03d-vm1", i))] = true
	}
	if len(seen) < 195 {
		t.Errorf("200 ids share %d source addresses", len(seen))
	}
}
