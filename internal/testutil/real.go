// Package testutil holds helpers shared by meshx's integration and system tests:
// finding real parts (Consul, root, network namespaces) and polling with deadlines.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// CI reports whether the tests run under CI (CI=true), where a missing real part
// is a failure, never a skip.
func CI() bool { return os.Getenv("CI") == "true" }

// Need skips the test when a real part is missing, or fails it under CI.
func Need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if CI() {
		t.Fatalf("real part missing under CI=true: %s", what)
	}
	t.Skipf("real part missing: %s", what)
}

// NeedRoot requires uid 0 (iptables, network namespaces, nspawn).
func NeedRoot(t testing.TB) {
	t.Helper()
	Need(t, os.Geteuid() == 0, "root")
}

// ConsulBinary returns the path of the pinned Consul binary: $MESHX_CONSUL_BIN,
// else the cache filled by scripts/build-consul.sh, else consul on PATH.
func ConsulBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("MESHX_CONSUL_BIN"); p != "" {
		Need(t, isExec(p), "consul binary at $MESHX_CONSUL_BIN="+p)
		return p
	}
	cache := os.Getenv("MESHX_CACHE")
	if cache == "" {
		cache = "/var/cache/meshx"
	}
	if m, _ := filepath.Glob(filepath.Join(cache, "consul-*", "consul")); len(m) > 0 {
		return m[len(m)-1]
	}
	p, err := exec.LookPath("consul")
	Need(t, err == nil, "consul binary (run scripts/build-consul.sh)")
	return p
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// Eventually polls cond every interval until it returns nil or the timeout
// passes; then it fails the test with the last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
