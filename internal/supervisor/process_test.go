package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

func TestRestartAfterCrashWithIncreasingBackoff(t *testing.T) {
	h := runSupervisor(t, Options{
		Argv:           []string{"/bin/sh", "-c", "exit 3"},
		MaxRestarts:    3,
		BackoffInitial: 50 * time.Millisecond,
		BackoffMax:     10 * time.Second,
		StableAfter:    time.Hour,
	})
	if err := h.wait(20 * time.Second); !errors.Is(err, ErrGaveUp) {
		t.Fatalf("Run = %v, want ErrGaveUp", err)
	}
	if got := h.starts(); got != 4 {
		t.Errorf("started %d times, want 4 (first start + 3 restarts)", got)
	}

	// The logged delays double (minus at most 20% jitter)...
	var delays []time.Duration
	for i, rec := range h.logs.withMsg("restarting child after backoff") {
		d := time.Duration(rec["delay"].(float64))
		nominal := 50 * time.Millisecond << i
		if d > nominal || d < nominal*8/10 {
			t.Errorf("restart %d: delay %s outside [%s, %s]", i+1, d, nominal*8/10, nominal)
		}
		if rec["restart"].(float64) != float64(i+1) {
			t.Errorf("record %d: restart = %v, want %d", i, rec["restart"], i+1)
		}
		delays = append(delays, d)
	}
	if len(delays) != 3 {
		t.Fatalf("got %d backoff records, want 3", len(delays))
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] <= delays[i-1] {
			t.Errorf("delay %d (%s) not above delay %d (%s)", i+1, delays[i], i, delays[i-1])
		}
	}
	// ...and each backoff state really lasted at least its delay.
	var waited []time.Duration
	hist := h.history()
	for i := 0; i+1 < len(hist); i++ {
		if hist[i].State == StateBackoff && hist[i+1].State == StateStarting {
			waited = append(waited, hist[i+1].Since.Sub(hist[i].Since))
		}
	}
	if len(waited) != len(delays) {
		t.Fatalf("saw %d backoff periods, want %d", len(waited), len(delays))
	}
	for i := range waited {
		if waited[i] < delays[i] {
			t.Errorf("backoff %d lasted %s, shorter than its delay %s", i+1, waited[i], delays[i])
		}
	}
}

func TestGivesUpAfterMaxRestarts(t *testing.T) {
	h := runSupervisor(t, Options{
		Name:           "crasher",
		Argv:           []string{"/bin/sh", "-c", "exit 7"},
		MaxRestarts:    2,
		BackoffInitial: time.Millisecond,
	})
	err := h.wait(20 * time.Second)
	if !errors.Is(err, ErrGaveUp) {
		t.Fatalf("Run = %v, want ErrGaveUp", err)
	}
	if !strings.Contains(err.Error(), "crasher") || !strings.Contains(err.Error(), "exit status 7") {
		t.Errorf("error %q should name the child and its last exit", err)
	}
	st := h.s.Status()
	if st.State != StateFailed || st.Restarts != 2 || st.LastExit != "exit status 7" || st.PID != 0 {
		t.Errorf("status = %+v, want failed, 2 restarts, exit status 7, no pid", st)
	}
	if got := h.starts(); got != 3 {
		t.Errorf("started %d times, want 3", got)
	}
	var states []State
	for _, s := range h.history() {
		states = append(states, s.State)
	}
	want := []State{StateStarting, StateRunning, StateBackoff, StateStarting, StateRunning, StateBackoff, StateStarting, StateRunning, StateFailed}
	if !slices.Equal(states, want) {
		t.Errorf("states = %v, want %v", states, want)
	}
}

func TestStartFailureCountsAsRestart(t *testing.T) {
	h := runSupervisor(t, Options{
		Argv:           []string{"/nonexistent/meshx-no-such-binary"},
		MaxRestarts:    1,
		BackoffInitial: time.Millisecond,
	})
	if err := h.wait(20 * time.Second); !errors.Is(err, ErrGaveUp) {
		t.Fatalf("Run = %v, want ErrGaveUp", err)
	}
	st := h.s.Status()
	if !strings.HasPrefix(st.LastExit, "start: ") || !strings.Contains(st.LastExit, "no such file") {
		t.Errorf("LastExit = %q, want the start error", st.LastExit)
	}
	if got := len(h.logs.withMsg("child did not start")); got != 2 {
		t.Errorf("%d failed starts logged, want 2", got)
	}
}

// TestPreStartFailureCountsAsRestart: a failed precondition is a failed
// start: the child is not run, restarts back off, and the error is the last exit.
func TestPreStartFailureCountsAsRestart(t *testing.T) {
	marker := tempFile(t, "ran")
	calls := 0
	h := runSupervisor(t, Options{
		Argv:           []string{"/bin/sh", "-c", "touch " + marker},
		MaxRestarts:    2,
		BackoffInitial: time.Millisecond,
		PreStart: func() error {
			calls++
			return errors.New("port 21000 is in use")
		},
	})
	if err := h.wait(20 * time.Second); !errors.Is(err, ErrGaveUp) || !strings.Contains(err.Error(), "port 21000 is in use") {
		t.Fatalf("Run = %v, want ErrGaveUp naming the precondition", err)
	}
	if calls != 3 {
		t.Errorf("PreStart called %d times, want 3 (a start and 2 restarts)", calls)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the child ran although its precondition failed")
	}
}

func TestRestartCounterDecaysAfterStableRun(t *testing.T) {
	// Runs 1, 2, 4 and 5 crash at once; run 3 lasts longer than StableAfter
	// and then crashes. With MaxRestarts 2 and no decay Run would give up
	// after run 3; with the decay it gives up only after run 5.
	h := runSupervisor(t, Options{
		Argv:           countingScript(`if [ $n -eq 3 ]; then sleep 0.6; fi; exit 1`),
		Dir:            t.TempDir(),
		MaxRestarts:    2,
		BackoffInitial: 5 * time.Millisecond,
		StableAfter:    200 * time.Millisecond,
	})
	if err := h.wait(20 * time.Second); !errors.Is(err, ErrGaveUp) {
		t.Fatalf("Run = %v, want ErrGaveUp", err)
	}
	if got := h.starts(); got != 5 {
		t.Errorf("started %d times, want 5", got)
	}
	if len(h.logs.withMsg("child stable; restart counter reset")) != 1 {
		t.Error("no log record for the counter reset")
	}
	// The reset shows in Status while the stable run goes on.
	hist := h.history()
	i := slices.IndexFunc(hist, func(s Status) bool { return s.State == StateRunning && s.Restarts == 2 })
	if i < 0 || !slices.ContainsFunc(hist[i+1:], func(s Status) bool { return s.State == StateRunning && s.Restarts == 0 }) {
		t.Errorf("no running status with the counter back at 0 after 2 restarts: %+v", hist)
	}
}

func TestCancelStopsChildAndGrandchild(t *testing.T) {
	dir := t.TempDir()
	h := runSupervisor(t, Options{
		Argv:        []string{"/bin/sh", "-c", `sleep 300 & echo $! > grandchild; wait`},
		Dir:         dir,
		StopTimeout: 30 * time.Second,
	})
	pid := h.running(0)
	grandchild := pidFromFile(t, filepath.Join(dir, "grandchild"))
	killLater(t, grandchild)
	if err := gone(grandchild); err == nil {
		t.Fatalf("grandchild %d not running before cancel", grandchild)
	}

	h.cancel()
	if err := h.wait(10 * time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	st := h.s.Status()
	if st.State != StateStopped || st.LastExit != "signal: terminated" || st.PID != 0 {
		t.Errorf("status = %+v, want stopped by SIGTERM", st)
	}
	if len(h.logs.withMsg("child still running after SIGTERM; sending SIGKILL")) != 0 {
		t.Error("SIGKILL was needed; SIGTERM should have been enough")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("child %d not reaped: kill(0) = %v", pid, err)
	}
	testutil.Eventually(t, 5*time.Second, func() error { return gone(grandchild) })
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	h := runSupervisor(t, Options{
		Argv:        []string{"/bin/sh", "-c", `trap "" TERM; echo ready; while :; do sleep 1; done`},
		StopTimeout: 300 * time.Millisecond,
	})
	h.running(0)
	testutil.Eventually(t, 10*time.Second, func() error {
		if len(h.logs.withMsg("ready")) == 0 {
			return errors.New("child has not set its trap yet")
		}
		return nil
	})
	h.cancel()
	if err := h.wait(10 * time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if st := h.s.Status(); st.State != StateStopped || st.LastExit != "signal: killed" {
		t.Errorf("status = %+v, want stopped by SIGKILL", st)
	}
	if len(h.logs.withMsg("child still running after SIGTERM; sending SIGKILL")) != 1 {
		t.Error("escalation to SIGKILL not logged")
	}
}

func TestExitZero(t *testing.T) {
	for _, tc := range []struct {
		name             string
		restartOnSuccess bool
		wantGaveUp       bool
		wantStarts       int
		wantState        State
	}{
		{"not restarted by default", false, false, 1, StateStopped},
		{"restarted with RestartOnSuccess", true, true, 3, StateFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := runSupervisor(t, Options{
				Argv:             []string{"true"},
				RestartOnSuccess: tc.restartOnSuccess,
				MaxRestarts:      2,
				BackoffInitial:   time.Millisecond,
			})
			err := h.wait(20 * time.Second)
			if errors.Is(err, ErrGaveUp) != tc.wantGaveUp || (!tc.wantGaveUp && err != nil) {
				t.Fatalf("Run = %v, want gave up: %v", err, tc.wantGaveUp)
			}
			if got := h.starts(); got != tc.wantStarts {
				t.Errorf("started %d times, want %d", got, tc.wantStarts)
			}
			if st := h.s.Status(); st.State != tc.wantState || st.LastExit != "exit status 0" {
				t.Errorf("status = %+v, want %s after exit status 0", st, tc.wantState)
			}
		})
	}
}

func TestEnvStripped(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("WATCHDOG_PID", "1")
	t.Setenv("WATCHDOG_USEC", "1000000")
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", "1")
	t.Setenv("MESHX_TEST_KEEP", "kept")
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"inherited environment", nil, "MESHX_TEST_KEEP=kept"},
		{"given environment", []string{"NOTIFY_SOCKET=/x", "LISTEN_FDNAMES=a", "WATCHDOG_USEC=5", "ONLY=this"}, "ONLY=this"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := runSupervisor(t, Options{Argv: []string{"env"}, Env: tc.env})
			if err := h.wait(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			seen := h.logs.stdout()
			if !slices.Contains(seen, tc.want) {
				t.Errorf("child env lacks %s: %q", tc.want, seen)
			}
			for _, kv := range seen {
				if parentOnly(kv) {
					t.Errorf("child saw %s", kv)
				}
			}
		})
	}
}

func TestOutputLoggedWithStream(t *testing.T) {
	script := `echo out-line; echo err-line >&2; head -c 40000 /dev/zero | tr '\0' a; echo; echo after-long; printf no-newline`
	h := runSupervisor(t, Options{Name: "talker", Argv: []string{"/bin/sh", "-c", script}})
	if err := h.wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	pid := h.logs.withMsg("child started")[0]["child_pid"]
	for _, tc := range []struct {
		msg, level, stream string
		truncated          bool
	}{
		{"out-line", "INFO", "stdout", false},
		{"err-line", "WARN", "stderr", false},
		{strings.Repeat("a", maxLine), "INFO", "stdout", true},
		{"after-long", "INFO", "stdout", false},
		{"no-newline", "INFO", "stdout", false},
	} {
		recs := h.logs.withMsg(tc.msg)
		if len(recs) != 1 {
			t.Errorf("%.20q logged %d times, want once", tc.msg, len(recs))
			continue
		}
		r := recs[0]
		if r["level"] != tc.level || r["stream"] != tc.stream || r["child_pid"] != pid || r["child"] != "talker" {
			t.Errorf("%.20q: level=%v stream=%v pid=%v child=%v, want %s %s %v talker",
				tc.msg, r["level"], r["stream"], r["child_pid"], r["child"], tc.level, tc.stream, pid)
		}
		if (r["truncated"] == true) != tc.truncated {
			t.Errorf("%.20q: truncated=%v, want %v", tc.msg, r["truncated"], tc.truncated)
		}
	}
	// The exit record comes after all output: the pipes were drained first.
	recs := h.logs.records()
	last := slices.IndexFunc(recs, func(r map[string]any) bool { return r["msg"] == "no-newline" })
	exit := slices.IndexFunc(recs, func(r map[string]any) bool { return r["msg"] == "child exited" })
	if last < 0 || exit < last {
		t.Errorf("exit logged at %d, before the last output line at %d", exit, last)
	}
}

func TestRestartResetsCounter(t *testing.T) {
	h := runSupervisor(t, Options{
		Argv:           countingScript(`if [ $n -le 2 ]; then exit 1; fi; exec sleep 300`),
		Dir:            t.TempDir(),
		BackoffInitial: time.Millisecond,
		StableAfter:    time.Hour,
	})
	old := h.running(2)
	h.s.Restart()
	testutil.Eventually(t, 10*time.Second, func() error {
		st := h.s.Status()
		if st.State != StateRunning || st.PID == old || st.Restarts != 0 {
			return fmt.Errorf("status %+v, want running a new child with 0 restarts", st)
		}
		return nil
	})
	if err := syscall.Kill(old, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("old child %d not reaped: kill(0) = %v", old, err)
	}
	if !slices.ContainsFunc(h.history(), func(s Status) bool { return s.State == StateStopping && s.PID == old }) {
		t.Error("no stopping state for the old child")
	}
	if st := h.s.Status(); st.LastExit != "signal: terminated" {
		t.Errorf("LastExit = %q, want the SIGTERM of the restart", st.LastExit)
	}
}

func TestRestartDuringBackoffStartsAtOnce(t *testing.T) {
	h := runSupervisor(t, Options{
		Argv:           countingScript(`if [ $n -eq 1 ]; then exit 1; fi; exec sleep 300`),
		Dir:            t.TempDir(),
		BackoffInitial: time.Hour,
		BackoffMax:     time.Hour,
	})
	testutil.Eventually(t, 10*time.Second, func() error {
		if st := h.s.Status(); st.State != StateBackoff || st.Restarts != 1 {
			return fmt.Errorf("status %+v, want backoff", st)
		}
		return nil
	})
	h.s.Restart()
	h.running(0)
}

func TestStragglersKilledAfterChildExits(t *testing.T) {
	dir := t.TempDir()
	h := runSupervisor(t, Options{
		Argv: []string{"/bin/sh", "-c", `sleep 300 & echo $! > straggler`},
		Dir:  dir,
	})
	if err := h.wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	straggler := pidFromFile(t, filepath.Join(dir, "straggler"))
	killLater(t, straggler)
	testutil.Eventually(t, 5*time.Second, func() error { return gone(straggler) })
}

func TestDrainBoundedWhenOutputHeldOpen(t *testing.T) {
	before := runtime.NumGoroutine()
	dir := t.TempDir()
	// setsid moves a sleep out of the child's process group, so nothing
	// kills it, and it keeps the child's stdout and stderr open. The child
	// exits once the sleep has escaped.
	escape := `setsid sh -c 'echo $$ > escaped; exec sleep 300' & ` +
		`while [ ! -s escaped ]; do sleep 0.01; done; echo bye`
	h := runSupervisor(t, Options{
		Argv: []string{"/bin/sh", "-c", escape},
		Dir:  dir,
	})
	escaped := pidFromFile(t, filepath.Join(dir, "escaped"))
	killLater(t, escaped)
	if err := h.wait(drainTimeout + 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if gone(escaped) == nil {
		t.Fatal("the escaped sleep is gone; the test proves nothing")
	}
	if len(h.logs.withMsg("bye")) != 1 {
		t.Error("output before the exit was not logged")
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, %d before the test", n, before)
		}
		return nil
	})
}

func TestRunRefusesConcurrentRun(t *testing.T) {
	h := runSupervisor(t, Options{Argv: []string{"sleep", "300"}})
	h.running(0)
	if err := h.s.Run(context.Background()); !errors.Is(err, errActive) {
		t.Fatalf("second Run = %v, want errActive", err)
	}
}

func TestCredential(t *testing.T) {
	testutil.NeedRoot(t)
	h := runSupervisor(t, Options{
		Argv:       []string{"/bin/sh", "-c", "id -u; id -g"},
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
	})
	if err := h.wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if out := h.logs.stdout(); !slices.Equal(out, []string{"65534", "65534"}) {
		t.Errorf("child ran as uid/gid %q, want 65534", out)
	}
}

// TestPdeathsigKillsChildOfKilledParent re-executes the test binary as a
// parent that supervises a sleep, kills that parent with SIGKILL (no
// cleanup can run) and expects the kernel to kill the sleep.
func TestPdeathsigKillsChildOfKilledParent(t *testing.T) {
	pidFile := tempFile(t, "sleep.pid")
	parent := exec.Command(os.Args[0], "-test.run=^$")
	parent.Env = append(os.Environ(), helperEnv+"=parent", helperPIDFile+"="+pidFile)
	parent.Stderr = os.Stderr
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = parent.Process.Kill()
		_ = parent.Wait()
	})
	child := pidFromFile(t, pidFile)
	killLater(t, child)
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
	if err != nil {
		t.Fatal(err)
	}
	if ppid := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))[1]; ppid != strconv.Itoa(parent.Process.Pid) {
		t.Fatalf("sleep %d has parent %s, want the helper %d", child, ppid, parent.Process.Pid)
	}

	if err := parent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = parent.Wait()
	testutil.Eventually(t, 5*time.Second, func() error { return gone(child) })
}

// TestChildSurvivesExitOfOtherThreads ends OS threads of this process the
// way the Go runtime does (a goroutine exiting while locked to its thread)
// and checks that no Pdeathsig reached the child: only the thread that
// started it may trigger it, and that thread stays locked to the reaper.
func TestChildSurvivesExitOfOtherThreads(t *testing.T) {
	h := runSupervisor(t, Options{Argv: []string{"sleep", "300"}})
	pid := h.running(0)

	const threads = 32
	tids := make(chan int, threads)
	var wg sync.WaitGroup
	for range threads {
		wg.Go(func() {
			runtime.LockOSThread()
			tids <- syscall.Gettid()
			// Returning while locked makes the runtime end this thread.
		})
	}
	wg.Wait()
	close(tids)
	var ended []int
	for tid := range tids {
		// The runtime never ends the main thread; it parks it instead.
		if tid != os.Getpid() {
			ended = append(ended, tid)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, tid := range ended {
			if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid)); err == nil {
				return fmt.Errorf("thread %d still exists", tid)
			}
		}
		return nil
	})
	// The threads are gone, so any Pdeathsig they caused has been sent: the
	// child must still run, with no SIGKILL pending.
	if err := gone(pid); err == nil {
		t.Fatalf("child %d died when other threads ended", pid)
	}
	if sigkillPending(t, pid) {
		t.Fatalf("child %d has a SIGKILL pending", pid)
	}
	if st := h.s.Status(); st.State != StateRunning || st.PID != pid || st.Restarts != 0 {
		t.Errorf("status = %+v, want the same child still running", st)
	}
}

// sigkillPending reports whether SIGKILL is pending for pid.
func sigkillPending(t *testing.T, pid int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || (name != "SigPnd" && name != "ShdPnd") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64)
		if err != nil {
			t.Fatalf("parse %s: %v", line, err)
		}
		if mask&(1<<(syscall.SIGKILL-1)) != 0 {
			return true
		}
	}
	return false
}

func TestOutputPassedThroughRaw(t *testing.T) {
	var out testutil.SyncBuffer
	h := runSupervisor(t, Options{Name: "raw", Output: &out,
		Argv: []string{"/bin/sh", "-c", `echo 'level=INFO msg="from child"'; echo err-line >&2`}})
	if err := h.wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"level=INFO msg=\"from child\"\n", "err-line\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("Output = %q, want it to hold %q as is", got, want)
		}
	}
	if n := len(h.logs.stdout()); n != 0 {
		t.Errorf("%d stdout lines also went to the logger, want none", n)
	}
}

func TestFinalExitCodeNotRestarted(t *testing.T) {
	h := runSupervisor(t, Options{Name: "final", Argv: []string{"/bin/sh", "-c", "exit 2"},
		FinalExitCodes: []int{2}, BackoffInitial: time.Millisecond})
	err := h.wait(10 * time.Second)
	if !errors.Is(err, ErrFinalExit) {
		t.Fatalf("Run = %v, want ErrFinalExit", err)
	}
	if n := h.starts(); n != 1 {
		t.Errorf("started %d times, want once", n)
	}
	// Any other failing code is still restarted.
	h2 := runSupervisor(t, Options{Name: "other", Argv: []string{"/bin/sh", "-c", "exit 1"},
		FinalExitCodes: []int{2}, MaxRestarts: 2, BackoffInitial: time.Millisecond})
	if err := h2.wait(10 * time.Second); !errors.Is(err, ErrGaveUp) {
		t.Fatalf("exit 1: Run = %v, want ErrGaveUp after restarts", err)
	}
}
