//go:build meshx_faults

package fault

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Enabled reports whether this build injects faults.
const Enabled = true

var fired atomic.Bool

// Point acts when MESHX_FAULT names this point, the first time a goroutine
// reaches it.
func Point(name string) {
	at, action, _ := strings.Cut(os.Getenv("MESHX_FAULT"), ":")
	if at != name || fired.Swap(true) {
		return
	}
	fmt.Fprintf(os.Stderr, "fault: %s at %s\n", action, name)
	switch action {
	case "kill":
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute) // never reached: SIGKILL ends the process first
	case "stop":
		_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	case "panic":
		panic("fault injected at " + name)
	}
}
