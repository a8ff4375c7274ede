package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

// Environment of the re-executed test binary (see TestMain).
const (
	helperEnv     = "MESHX_SUPERVISOR_TEST_HELPER" // "parent": supervise a sleep
	helperPIDFile = "MESHX_SUPERVISOR_TEST_PIDFILE"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "parent" {
		os.Exit(helperParent())
	}
	os.Exit(m.Run())
}

// helperParent supervises `sleep 300` and writes the sleep's pid to
// $MESHX_SUPERVISOR_TEST_PIDFILE once it runs. The test kills it with SIGKILL.
func helperParent() int {
	pidFile := os.Getenv(helperPIDFile)
	s, err := New(Options{
		Argv: []string{"sleep", "300"},
		OnStateChange: func(st Status) {
			if st.State == StateRunning {
				tmp := pidFile + ".tmp"
				if os.WriteFile(tmp, []byte(strconv.Itoa(st.PID)), 0o600) == nil {
					_ = os.Rename(tmp, pidFile)
				}
			}
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := s.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// logSink keeps the JSON records of a slog logger and mirrors them to t.Log.
type logSink struct {
	t   testing.TB
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	l.mu.Unlock()
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// records returns every record logged so far.
func (l *logSink) records() []map[string]any {
	l.mu.Lock()
	data := bytes.Clone(l.buf.Bytes())
	l.mu.Unlock()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var rec map[string]any
		if err := dec.Decode(&rec); err != nil {
			if !errors.Is(err, io.EOF) {
				l.t.Errorf("decode log record: %v", err)
			}
			return out
		}
		out = append(out, rec)
	}
}

// withMsg returns the records whose message is msg.
func (l *logSink) withMsg(msg string) []map[string]any {
	var out []map[string]any
	for _, r := range l.records() {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// stdout returns the child's stdout lines logged so far.
func (l *logSink) stdout() []string {
	var out []string
	for _, r := range l.records() {
		if r["stream"] == "stdout" {
			out = append(out, r["msg"].(string))
		}
	}
	return out
}

// harness runs one Supervisor in the background for a test.
type harness struct {
	t    *testing.T
	s    *Supervisor
	logs *logSink

	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error         // Run's result, once done is closed

	mu     sync.Mutex
	states []Status // every Status passed to OnStateChange
}

// runSupervisor starts Run for o (its Logger and OnStateChange replaced) and
// stops it when the test ends.
func runSupervisor(t *testing.T, o Options) *harness {
	t.Helper()
	h := &harness{t: t, logs: &logSink{t: t}, done: make(chan struct{})}
	o.Logger = slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o.OnStateChange = func(st Status) {
		h.mu.Lock()
		h.states = append(h.states, st)
		h.mu.Unlock()
	}
	s, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.s = s
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.err = s.Run(ctx)
		close(h.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return within 30s of cancel")
		}
	})
	return h
}

// wait returns Run's result, failing the test if Run does not return in time.
func (h *harness) wait(timeout time.Duration) error {
	h.t.Helper()
	select {
	case <-h.done:
		return h.err
	case <-time.After(timeout):
		h.t.Fatalf("Run did not return within %s; status %+v", timeout, h.s.Status())
		return nil
	}
}

func (h *harness) history() []Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Status(nil), h.states...)
}

// running waits until the child runs with the given restart count and
// returns its pid.
func (h *harness) running(restarts int) int {
	h.t.Helper()
	var pid int
	testutil.Eventually(h.t, 10*time.Second, func() error {
		st := h.s.Status()
		if st.State != StateRunning || st.Restarts != restarts {
			return fmt.Errorf("status %+v, want running with %d restarts", st, restarts)
		}
		pid = st.PID
		return nil
	})
	return pid
}

// starts counts the "child started" records.
func (h *harness) starts() int { return len(h.logs.withMsg("child started")) }

// gone reports nil when pid no longer runs: no such process, or a zombie
// nobody reaps (PID 1 here may not reap reparented orphans).
func gone(pid int) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	state := procState(b)
	if state == 'Z' || state == 'X' {
		return nil
	}
	return fmt.Errorf("pid %d still alive (state %c)", pid, state)
}

// procState returns the state letter of a /proc/PID/stat line.
func procState(stat []byte) byte {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return '?'
	}
	return stat[i+2]
}

// pidFromFile waits for a pid written by a child script into path.
func pidFromFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	testutil.Eventually(t, 10*time.Second, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	return pid
}

// killLater SIGKILLs pid at the end of the test if it still runs, so a
// failing test leaves nothing behind.
func killLater(t *testing.T, pid int) {
	t.Cleanup(func() {
		if gone(pid) != nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// countingScript returns a sh script that numbers its runs in the file
// "count" of the working directory (as $n), then runs body.
func countingScript(body string) []string {
	return []string{"/bin/sh", "-c", `n=$(( $(cat count 2>/dev/null || echo 0) + 1 )); echo $n > count; ` + body}
}

func tempFile(t *testing.T, name string) string { return filepath.Join(t.TempDir(), name) }
