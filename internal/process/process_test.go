package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshx/meshx/internal/testutil"
)

func TestStartTimeAndAlive(t *testing.T) {
	self := os.Getpid()
	st := StartTime(self)
	if n, err := strconv.ParseUint(st, 10, 64); err != nil || n == 0 {
		t.Errorf("StartTime(self) = %q, want clock ticks since boot", st)
	}
	if !Alive(self) {
		t.Error("Alive(self) = false")
	}

	// A command name with ") (" in it must not shift the fields.
	link := filepath.Join(t.TempDir(), "a) X (b")
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(sleep, link); err != nil {
		t.Fatal(err)
	}
	pid, _ := testutil.Spawn(t, link, "30")
	testutil.Eventually(t, 5*time.Second, func() error {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); !strings.HasPrefix(string(b), "a) X (b") {
			return fmt.Errorf("comm is %q", b)
		}
		return nil
	})
	// Fields 3 and 4 are the state and the parent's pid (this test).
	if f := Stat(pid); len(f) < 20 || f[0] != "S" && f[0] != "R" || f[1] != strconv.Itoa(os.Getpid()) || StartTime(pid) == "" || !Alive(pid) {
		t.Errorf("fields of a process named %q: %q", filepath.Base(link), f)
	}

	// A process that has exited is not alive, reaped or not.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	zombie := cmd.Process.Pid
	testutil.Eventually(t, 5*time.Second, func() error {
		if Alive(zombie) {
			return errors.New("still alive")
		}
		return nil
	})
	_ = cmd.Wait()
	if st, a := StartTime(zombie), Alive(zombie); st != "" || a {
		t.Errorf("reaped pid %d: startTime %q, alive %v; want \"\", false", zombie, st, a)
	}
}

func TestParse(t *testing.T) {
	self := Self()
	if id, err := Parse(self.String() + "\n"); err != nil || id != self {
		t.Errorf("Parse(String()) = %+v, %v; want %+v", id, err, self)
	}
	for _, rec := range []string{"", "garbage", "12 34 56", "1 100", "0 0", "-5 0", "x 1"} {
		if id, err := Parse(rec); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", rec, id)
		}
	}
}

// sleeper starts a process that ignores SIGTERM when stubborn, in its own
// process group, and waits until it runs the sleep (the trap is set by then).
func sleeper(t *testing.T, stubborn bool) (ID, <-chan struct{}) {
	t.Helper()
	script := "exec sleep 30"
	if stubborn {
		script = `trap "" TERM; exec sleep 30`
	}
	pid, done := testutil.Spawn(t, "sh", "-c", script)
	testutil.Eventually(t, 5*time.Second, func() error {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); string(b) != "sleep\n" {
			return fmt.Errorf("comm is %q", b)
		}
		return nil
	})
	return Of(pid), done
}

func gone(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the process still runs")
	}
}

func TestStop(t *testing.T) {
	ctx := context.Background()
	t.Run("SIGTERM is enough", func(t *testing.T) {
		id, done := sleeper(t, false)
		killed, err := Stop(ctx, id, StopOptions{Grace: 10 * time.Second})
		if err != nil || killed {
			t.Errorf("Stop = %v, %v; want no SIGKILL", killed, err)
		}
		gone(t, done)
	})
	t.Run("SIGKILL after the grace period", func(t *testing.T) {
		id, done := sleeper(t, true)
		start := time.Now()
		killed, err := Stop(ctx, id, StopOptions{Group: true, Grace: 200 * time.Millisecond})
		if err != nil || !killed {
			t.Errorf("Stop = %v, %v; want SIGKILL", killed, err)
		}
		gone(t, done)
		t.Logf("killed after %s", time.Since(start).Round(time.Millisecond))
	})
	t.Run("SIGKILL when the context ends", func(t *testing.T) {
		id, done := sleeper(t, true)
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		killed, err := Stop(cctx, id, StopOptions{Grace: time.Hour})
		if err != nil || !killed {
			t.Errorf("Stop = %v, %v; want SIGKILL", killed, err)
		}
		gone(t, done)
	})
	t.Run("Done ends the wait without SIGKILL", func(t *testing.T) {
		id, _ := sleeper(t, true)
		killed, err := Stop(ctx, id, StopOptions{Grace: time.Hour, Done: func() bool { return true }})
		if err != nil || killed || !id.Running() {
			t.Errorf("Stop = %v, %v (running %v); want an early return, no SIGKILL", killed, err, id.Running())
		}
	})
	t.Run("a reused pid is left alone", func(t *testing.T) {
		id, done := sleeper(t, false)
		n, _ := strconv.Atoi(id.Start)
		other := ID{PID: id.PID, Start: strconv.Itoa(n + 1)}
		if _, err := Stop(ctx, other, StopOptions{}); !errors.Is(err, ErrNotRunning) {
			t.Errorf("Stop = %v, want ErrNotRunning", err)
		}
		select {
		case <-done:
			t.Error("a process with another start time was stopped")
		default:
		}
	})
}
