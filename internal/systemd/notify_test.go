package systemd

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// notifySocket listens on a fresh NOTIFY_SOCKET and returns its datagrams.
func notifySocket(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no notification within 5s")
	}
	return ""
}

func TestNotifyWithoutSocketIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify("READY=1"); err != nil {
		t.Fatalf("Notify without NOTIFY_SOCKET: %v", err)
	}
}

func TestNotifyStates(t *testing.T) {
	ch := notifySocket(t)
	for _, state := range []string{"STATUS=waiting for agent", "READY=1\nSTATUS=proxy ready", "STOPPING=1\nSTATUS=deregistering"} {
		if err := Notify(state); err != nil {
			t.Fatal(err)
		}
		if got := recv(t, ch); got != state {
			t.Errorf("got %q, want %q", got, state)
		}
	}
}

func TestNotifyBrokenSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	if err := Notify("STATUS=x"); err == nil {
		t.Fatal("want an error for a socket nobody listens on")
	}
}

func TestWatchdogInterval(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		name, usec, pid string
		want            time.Duration
	}{
		{"unset", "", "", 0},
		{"ours", "2000000", pid, time.Second},
		{"no pid given", "600000", "", 300 * time.Millisecond},
		{"another process's", "2000000", "1", 0},
		{"garbage", "soon", pid, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", tc.usec)
			t.Setenv("WATCHDOG_PID", tc.pid)
			if got := WatchdogInterval(); got != tc.want {
				t.Errorf("WatchdogInterval = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRunWatchdogPingsOnlyWhileHealthy(t *testing.T) {
	ch := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "100000") // ping every 50ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	var sick atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		RunWatchdog(ctx, func() error {
			if sick.Load() {
				return errors.New("proxy loop stuck")
			}
			return nil
		}, nil)
		close(done)
	}()
	if got := recv(t, ch); got != "WATCHDOG=1" {
		t.Fatalf("got %q, want WATCHDOG=1", got)
	}
	sick.Store(true)
	time.Sleep(60 * time.Millisecond) // let a tick that saw "healthy" finish
	for len(ch) > 0 {
		<-ch
	}
	select {
	case s := <-ch:
		t.Fatalf("pinged while unhealthy: %q", s)
	case <-time.After(300 * time.Millisecond):
	}
	sick.Store(false)
	if got := recv(t, ch); got != "WATCHDOG=1" {
		t.Fatalf("got %q after recovery, want WATCHDOG=1", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunWatchdog did not return after cancel")
	}
}

func TestRunWatchdogDisabledReturns(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "")
	done := make(chan struct{})
	go func() { RunWatchdog(context.Background(), func() error { return nil }, nil); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunWatchdog without a watchdog did not return")
	}
}
