package testutil

import (
	"os"
	"syscall"
	"time"
)

// Interrupt stops a started process in its own process group: SIGINT, then
// SIGKILL to the whole group after grace. done must be closed once the
// process has been waited for. It reports whether the process stopped within
// grace; it is a no-op (true) when the process already ended.
func Interrupt(p *os.Process, done <-chan struct{}, grace time.Duration) bool {
	select {
	case <-done:
		return true
	default:
	}
	_ = p.Signal(os.Interrupt)
	select {
	case <-done:
		return true
	case <-time.After(grace):
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
		<-done
		return false
	}
}
