package ports

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/lockfile"
)

// Test ranges live at 23000+: clear of Consul's ports, the default range other
// packages' tests may use, and the ephemeral range.

func TestMain(m *testing.M) {
	// Validate reads the kernel's ephemeral range; pin it to the Linux default
	// so the test ranges are valid whatever this host is tuned to.
	ephemeralRangeFile = filepath.Join(os.TempDir(), "meshx-ports-test-no-such-file")
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

func free(netip.Addr, int) bool { return false }

func busy(ports ...int) func(netip.Addr, int) bool {
	return func(_ netip.Addr, p int) bool {
		for _, b := range ports {
			if p == b {
				return true
			}
		}
		return false
	}
}

func testOptions(t testing.TB, low, high int) Options {
	t.Helper()
	return Options{StateDir: t.TempDir(), Range: Range{Low: low, High: high}, InUse: free}
}

func svc(key string) Request { return Request{Key: key} }
func ups(key string) Request { return Request{Key: key, Down: true} }
func fixed(key string, port int) Request {
	return Request{Key: key, Fixed: port}
}

func mustAllocate(t testing.TB, o Options, reqs ...Request) map[string]int {
	t.Helper()
	got, err := Allocate(o, reqs)
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	return got
}

func mustLoad(t testing.TB, o Options) map[string]int {
	t.Helper()
	got, err := Load(o)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return got
}

func wantPorts(t testing.TB, got, want map[string]int) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Fatalf("ports = %v, want %v", got, want)
	}
}

func wantErr(t testing.TB, err, target error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", target)
	}
	if target != nil && !errors.Is(err, target) {
		t.Fatalf("error %q is not %v", err, target)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not mention %q", err, p)
		}
	}
}

func TestAllocateOrder(t *testing.T) {
	tests := []struct {
		name  string
		inUse func(netip.Addr, int) bool
		reqs  []Request
		want  map[string]int
	}{
		{"services upward", free,
			[]Request{svc("service/a"), svc("service/b"), svc("service/c")},
			map[string]int{"service/a": 23000, "service/b": 23001, "service/c": 23002}},
		{"upstreams downward", free,
			[]Request{ups("upstream/x/a"), ups("upstream/x/b")},
			map[string]int{"upstream/x/a": 23009, "upstream/x/b": 23008}},
		{"mixed meet in the middle", free,
			[]Request{svc("s1"), ups("u1"), svc("s2"), ups("u2")},
			map[string]int{"s1": 23000, "u1": 23009, "s2": 23001, "u2": 23008}},
		{"in-use ports skipped both ways", busy(23000, 23001, 23009),
			[]Request{svc("s"), ups("u")},
			map[string]int{"s": 23002, "u": 23008}},
		{"fixed ports inside the range are skipped", free,
			[]Request{svc("s"), fixed("f1", 23000), ups("u"), fixed("f2", 23009)},
			map[string]int{"s": 23001, "f1": 23000, "u": 23008, "f2": 23009}},
		{"fixed port outside the range", free,
			[]Request{fixed("app", 8080), svc("s")},
			map[string]int{"app": 8080, "s": 23000}},
		{"identical repeat is one request", free,
			[]Request{svc("s"), svc("s"), svc("t")},
			map[string]int{"s": 23000, "t": 23001}},
		{"last free port", busy(23000, 23001, 23002, 23003, 23004, 23005, 23006, 23007, 23008),
			[]Request{ups("u")},
			map[string]int{"u": 23009}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, 23000, 23009)
			o.InUse = tt.inUse
			wantPorts(t, mustAllocate(t, o, tt.reqs...), tt.want)
			wantPorts(t, mustLoad(t, o), tt.want)
		})
	}
}

// bindable reports whether a TCP listen on 127.0.0.1:port succeeds now.
func bindable(port int) bool { return !listenFails(defaultIP, port) }

// holdListener listens on 127.0.0.1:port until the test ends.
func holdListener(t *testing.T, port int) {
	t.Helper()
	l, err := net.Listen("tcp", netip.AddrPortFrom(defaultIP, uint16(port)).String())
	if err != nil {
		t.Fatalf("listen on %d: %v", port, err)
	}
	t.Cleanup(func() { l.Close() })
}

// freeTestRange finds a 10-port range at 23100+ whose two ends can be bound now.
func freeTestRange(t *testing.T) (low, high int) {
	t.Helper()
	for low = 23100; low < 23400; low += 10 {
		if bindable(low) && bindable(low+9) {
			return low, low + 9
		}
	}
	t.Fatal("no bindable test range at 23100-23399 on 127.0.0.1")
	return 0, 0
}

func TestInUseSkipsRealListener(t *testing.T) {
	low, high := freeTestRange(t)
	holdListener(t, low)
	holdListener(t, high)
	o := Options{StateDir: t.TempDir(), Range: Range{Low: low, High: high}} // real listen check
	got := mustAllocate(t, o, svc("service/web"), ups("upstream/client/web"))
	if p := got["service/web"]; p == low || p < low || p > high {
		t.Errorf("service got %d, want a port in %d-%d other than the held %d", p, low, high, low)
	}
	if p := got["upstream/client/web"]; p == high || p < low || p > high {
		t.Errorf("upstream got %d, want a port in %d-%d other than the held %d", p, low, high, high)
	}
}

func TestStableAcrossCalls(t *testing.T) {
	o := testOptions(t, 23000, 23009)
	first := mustAllocate(t, o, svc("service/a"), svc("service/b"), ups("upstream/c"))
	path := filepath.Join(o.StateDir, StateFile)
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	// Another order, an extra key, and the ports that were free are busy now.
	o.InUse = busy(23000, 23001, 23002, 23009)
	again := mustAllocate(t, o, ups("upstream/c"), svc("service/d"), svc("service/b"), svc("service/a"))
	for k, p := range first {
		if again[k] != p {
			t.Errorf("%s moved from %d to %d", k, p, again[k])
		}
	}
	if again["service/d"] != 23003 {
		t.Errorf("new key service/d got %d, want 23003", again["service/d"])
	}

	// Unchanged request: the file is left alone (same inode, same content).
	changed, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, o, svc("service/a"), svc("service/d"))
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, changed) {
		t.Error("state file not replaced when a key was added")
	}
	if !os.SameFile(changed, after) || !after.ModTime().Equal(changed.ModTime()) {
		t.Error("state file rewritten although nothing changed")
	}
}

func TestExistingKeptWhenInUse(t *testing.T) {
	low, high := freeTestRange(t)
	o := Options{StateDir: t.TempDir(), Range: Range{Low: low, High: high}}
	first := mustAllocate(t, o, svc("service/web"), ups("upstream/client/web"))
	holdListener(t, first["service/web"]) // the apps are listening now
	holdListener(t, first["upstream/client/web"])
	wantPorts(t, mustAllocate(t, o, svc("service/web"), ups("upstream/client/web")), first)
}

func TestExistingOutsideNewRangeMoves(t *testing.T) {
	o := testOptions(t, 23000, 23009)
	mustAllocate(t, o, svc("s"), fixed("f", 23005))
	o.Range = Range{Low: 23100, High: 23109}
	// s moves into the new range; a fixed port stays wherever the config says.
	wantPorts(t, mustAllocate(t, o, svc("s"), fixed("f", 23005)), map[string]int{"s": 23100, "f": 23005})
}

// allocateWithin runs Allocate and fails the test if it does not return within
// a few seconds (an exhausted range must never hang).
func allocateWithin(t *testing.T, o Options, reqs ...Request) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := Allocate(o, reqs)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Allocate did not return within 5s")
		return nil
	}
}

func TestExhausted(t *testing.T) {
	t.Run("tiny range", func(t *testing.T) {
		o := testOptions(t, 23000, 23001)
		err := allocateWithin(t, o, svc("a"), svc("b"), ups("c"))
		wantErr(t, err, ErrExhausted, "127.0.0.1:23000-23001", "for c", "2 held")
		if _, err := os.Stat(filepath.Join(o.StateDir, StateFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("state file written on error: %v", err)
		}
	})
	t.Run("everything in use", func(t *testing.T) {
		o := testOptions(t, 23000, 23999)
		o.InUse = func(netip.Addr, int) bool { return true }
		err := allocateWithin(t, o, svc("a"), svc("b"))
		wantErr(t, err, ErrExhausted, "127.0.0.1:23000-23999", "1000 in use")
	})
	t.Run("nothing persisted on error", func(t *testing.T) {
		o := testOptions(t, 23000, 23002)
		mustAllocate(t, o, svc("a"))
		path := filepath.Join(o.StateDir, StateFile)
		before, _ := os.ReadFile(path)
		err := allocateWithin(t, o, svc("b"), ups("c"), svc("d"))
		wantErr(t, err, ErrExhausted, "for d")
		after, _ := os.ReadFile(path)
		if string(before) != string(after) {
			t.Errorf("state changed on error:\n%s\nwant\n%s", after, before)
		}
		wantPorts(t, mustLoad(t, o), map[string]int{"a": 23000})
	})
}

func TestFixed(t *testing.T) {
	t.Run("reservation persists", func(t *testing.T) {
		o := testOptions(t, 23000, 23009)
		mustAllocate(t, o, fixed("service/db", 23000), fixed("upstream/x/db", 23009))
		wantPorts(t, mustAllocate(t, o, svc("service/web"), ups("upstream/x/web")),
			map[string]int{"service/web": 23001, "upstream/x/web": 23008})
	})
	t.Run("same port for two keys in one call", func(t *testing.T) {
		o := testOptions(t, 23000, 23009)
		_, err := Allocate(o, []Request{fixed("service/a", 8080), svc("service/c"), fixed("service/b", 8080)})
		wantErr(t, err, ErrPortConflict, "8080", "service/a", "service/b")
	})
	t.Run("same port as an earlier reservation", func(t *testing.T) {
		o := testOptions(t, 23000, 23009)
		mustAllocate(t, o, fixed("service/a", 8080))
		_, err := Allocate(o, []Request{fixed("service/b", 8080)})
		wantErr(t, err, ErrPortConflict, "8080", "service/a", "service/b")
		if err := Release(o, []string{"service/a"}); err != nil {
			t.Fatal(err)
		}
		wantPorts(t, mustAllocate(t, o, fixed("service/b", 8080)), map[string]int{"service/b": 8080})
	})
	t.Run("fixed wins, the other key in the call moves", func(t *testing.T) {
		o := testOptions(t, 23000, 23009)
		mustAllocate(t, o, svc("service/a"))
		wantPorts(t, mustAllocate(t, o, svc("service/a"), fixed("service/b", 23000)),
			map[string]int{"service/a": 23001, "service/b": 23000})
	})
	t.Run("fixed wins, the other key not in the call is forgotten", func(t *testing.T) {
		o := testOptions(t, 23000, 23009)
		mustAllocate(t, o, svc("service/a"))
		mustAllocate(t, o, fixed("service/b", 23000))
		wantPorts(t, mustLoad(t, o), map[string]int{"service/b": 23000})
		wantPorts(t, mustAllocate(t, o, svc("service/a")), map[string]int{"service/a": 23001})
	})
	t.Run("changed fixed port frees the old one", func(t *testing.T) {
		o := testOptions(t, 23000, 23009)
		mustAllocate(t, o, fixed("service/b", 23000))
		mustAllocate(t, o, fixed("service/b", 23005))
		wantPorts(t, mustAllocate(t, o, svc("service/a")), map[string]int{"service/a": 23000})
	})
	t.Run("formerly fixed port inside the range is kept", func(t *testing.T) {
		o := testOptions(t, 23000, 23009)
		mustAllocate(t, o, fixed("service/a", 23004))
		wantPorts(t, mustAllocate(t, o, svc("service/a")), map[string]int{"service/a": 23004})
	})
}

func TestRelease(t *testing.T) {
	o := testOptions(t, 23000, 23009)
	mustAllocate(t, o, svc("service/a"), svc("service/b"), fixed("service/f", 23002))
	if err := Release(o, []string{"service/a", "service/f", "service/unknown"}); err != nil {
		t.Fatal(err)
	}
	wantPorts(t, mustLoad(t, o), map[string]int{"service/b": 23001})
	wantPorts(t, mustAllocate(t, o, svc("service/c"), svc("service/d")),
		map[string]int{"service/c": 23000, "service/d": 23002})

	empty := testOptions(t, 23000, 23009)
	if err := Release(empty, []string{"x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(empty.StateDir, StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Release on an empty state wrote a file: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	o := testOptions(t, 23000, 23009)
	tests := []struct {
		name   string
		o      Options
		reqs   []Request
		target error
		parts  []string
	}{
		{"no state dir", Options{}, nil, ErrNoStateDir, nil},
		{"range overlaps Consul", Options{StateDir: o.StateDir, Range: Range{Low: 20900, High: 21100}}, nil, nil,
			[]string{"21000-21255"}},
		{"empty key", o, []Request{{}}, nil, []string{"empty key"}},
		{"fixed port out of range", o, []Request{fixed("a", 70000)}, nil, []string{"a: fixed port 70000"}},
		{"same key, other settings", o, []Request{svc("a"), ups("a")}, nil, []string{"a: requested twice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Allocate(tt.o, tt.reqs)
			wantErr(t, err, tt.target, tt.parts...)
		})
	}
	if err := Release(Options{}, nil); !errors.Is(err, ErrNoStateDir) {
		t.Errorf("Release without a state dir: %v", err)
	}
	if _, err := Load(Options{}); !errors.Is(err, ErrNoStateDir) {
		t.Errorf("Load without a state dir: %v", err)
	}
	wantPorts(t, mustLoad(t, o), map[string]int{})
}

func TestCorruptState(t *testing.T) {
	tests := []struct{ name, content, part string }{
		{"not json", "{not json", "invalid character"},
		{"empty file", "", "EOF"},
		{"unknown field", `{"version":1,"ports":{},"extra":1}`, "unknown field"},
		{"other version", `{"version":2,"ports":{}}`, "unsupported version 2"},
		{"port out of range", `{"version":1,"ports":{"a":{"port":0}}}`, "a: port 0"},
		{"port recorded twice", `{"version":1,"ports":{"a":{"port":23000},"b":{"port":23000}}}`, "both a and b"},
		{"trailing data", `{"version":1,"ports":{}} {}`, "trailing data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, 23000, 23009)
			path := filepath.Join(o.StateDir, StateFile)
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Allocate(o, []Request{svc("c")})
			wantErr(t, err, ErrCorruptState, path, tt.part)
			_, err = Load(o)
			wantErr(t, err, ErrCorruptState, path, tt.part)
			if got, _ := os.ReadFile(path); string(got) != tt.content {
				t.Errorf("corrupt file was changed to %q", got)
			}
		})
	}
}

func TestStateFile(t *testing.T) {
	o := testOptions(t, 23000, 23009)
	o.StateDir = filepath.Join(o.StateDir, "var", "lib", "meshx") // missing: created
	stale := filepath.Join(o.StateDir, ".ports.json.tmp-123")
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustAllocate(t, o, svc("service/a"), fixed("service/b", 8080))
	path := filepath.Join(o.StateDir, StateFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("state file mode %v, want 0644", fi.Mode().Perm())
	}
	want := `{
  "version": 1,
  "ports": {
    "service/a": {
      "port": 23000
    },
    "service/b": {
      "port": 8080,
      "fixed": true
    }
  }
}
`
	if got, _ := os.ReadFile(path); string(got) != want {
		t.Errorf("state file:\n%s\nwant:\n%s", got, want)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temp file left behind: %v", err)
	}
	entries, _ := os.ReadDir(o.StateDir)
	for _, e := range entries {
		if e.Name() != StateFile && e.Name() != LockFile {
			t.Errorf("unexpected file %s in the state dir", e.Name())
		}
	}

	fresh := filepath.Join(t.TempDir(), "new")
	if err := allocateWithin(t, Options{StateDir: fresh, Range: o.Range, InUse: free}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fresh, StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("allocating nothing wrote a state file: %v", err)
	}
}

func TestLockTimeout(t *testing.T) {
	o := testOptions(t, 23000, 23009)
	o.LockTimeout = 100 * time.Millisecond
	lockPath := filepath.Join(o.StateDir, LockFile)
	held, err := lockfile.Acquire(context.Background(), lockPath, nil) // a separate open file: conflicts like another process
	if err != nil {
		t.Fatal(err)
	}
	_, err = Allocate(o, []Request{svc("a")})
	wantErr(t, err, ErrLockTimeout, lockPath)
	err = Release(o, []string{"a"})
	wantErr(t, err, ErrLockTimeout, lockPath)
	held.Unlock()
	wantPorts(t, mustAllocate(t, o, svc("a")), map[string]int{"a": 23000})
}
