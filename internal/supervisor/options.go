package supervisor

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Defaults for the Options fields whose zero value means "use the default".
const (
	DefaultStopTimeout    = 10 * time.Second
	DefaultMaxRestarts    = 5
	DefaultBackoffInitial = 500 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
	DefaultStableAfter    = 60 * time.Second
)

// ErrFinalExit is wrapped by Run's error when the child exited with one of
// Options.FinalExitCodes.
var ErrFinalExit = errors.New("child exited with a final exit code")

// ErrMissingCommand is returned by New when Options.Argv is empty or its first
// element is the empty string.
var ErrMissingCommand = errors.New("supervisor: missing command (Options.Argv)")

// Options configure a Supervisor. The zero value of every field except Argv
// is valid; each comment says what the zero value means.
type Options struct {
	// Name labels the child in logs ("proxy", "meshx-proxy web").
	// Empty means the base name of Argv[0].
	Name string

	// Argv is the command and its arguments. Required. Argv[0] is looked up
	// in PATH (of this process) on every start when it contains no slash.
	Argv []string

	// Env is the child's full environment as "KEY=value" entries. Nil means
	// this process's environment at the time New is called. Either way
	// NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC, JOURNAL_STREAM, MAINPID and
	// every LISTEN_* variable are removed: they belong to this process's
	// systemd unit, never to the child.
	Env []string

	// Dir is the child's working directory. Empty means this process's.
	Dir string

	// Credential runs the child as another user and group. Nil means the
	// same user as this process.
	Credential *syscall.Credential

	// Logger receives the supervisor's own records and the child's output:
	// stdout lines at Info, stderr lines at Warn, each with the attributes
	// stream=stdout|stderr and child_pid. Nil means discard.
	Logger *slog.Logger

	// StopTimeout is how long a stop waits after SIGTERM to the child's
	// process group before sending SIGKILL. Zero means DefaultStopTimeout.
	StopTimeout time.Duration

	// MaxRestarts is how many restarts are allowed (since the counter was
	// last reset) before Run gives up with ErrGaveUp. Zero means
	// DefaultMaxRestarts; negative means unlimited.
	MaxRestarts int

	// BackoffInitial is the delay before the first restart; it doubles with
	// every further restart up to BackoffMax, minus up to 20% jitter. Zero
	// means DefaultBackoffInitial.
	BackoffInitial time.Duration

	// BackoffMax caps the restart delay; it is never exceeded. Zero means
	// DefaultBackoffMax.
	BackoffMax time.Duration

	// StableAfter is how long a run must last to count as stable: it then
	// resets the restart counter and the backoff. Zero means
	// DefaultStableAfter.
	StableAfter time.Duration

	// FinalExitCodes are exit codes after which the child is not restarted:
	// Run returns an error wrapping ErrFinalExit (as systemd's
	// RestartPreventExitStatus=). Nil means none.
	FinalExitCodes []int

	// Output, when not nil, receives the child's stdout and stderr lines as
	// they are, instead of logging them through Logger: for a child that
	// writes structured logs of its own (meshx-init --foreground runs
	// meshx-proxy children this way). Nil means log them.
	Output io.Writer

	// PreStart, when not nil, runs before every start of the child; an error
	// counts as a failed start (lastExit "start: <err>", then a restart after
	// backoff, toward MaxRestarts). For preconditions the child cannot report
	// well itself, such as a port another process holds. Nil means none.
	PreStart func() error

	// RestartOnSuccess restarts a child that exited with status 0. False
	// means such an exit ends Run with a nil error.
	RestartOnSuccess bool

	// OnStateChange, when not nil, is called with the new Status every time
	// the Status changes (state, pid or restart counter). It is called from
	// the goroutine running Run and must not block for long.
	OnStateChange func(Status)
}

// withDefaults validates o and fills in the defaults. It is the only place
// where defaults are applied.
func (o Options) withDefaults() (Options, error) {
	if len(o.Argv) == 0 || o.Argv[0] == "" {
		return o, ErrMissingCommand
	}
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"StopTimeout", o.StopTimeout},
		{"BackoffInitial", o.BackoffInitial},
		{"BackoffMax", o.BackoffMax},
		{"StableAfter", o.StableAfter},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("supervisor: %s is negative (%s)", d.name, d.v))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return o, err
	}
	o.Argv = append([]string(nil), o.Argv...)
	if o.Name == "" {
		o.Name = filepath.Base(o.Argv[0])
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	if o.MaxRestarts == 0 {
		o.MaxRestarts = DefaultMaxRestarts
	}
	if o.BackoffInitial == 0 {
		o.BackoffInitial = DefaultBackoffInitial
	}
	if o.BackoffMax == 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.StableAfter == 0 {
		o.StableAfter = DefaultStableAfter
	}
	o.Env = childEnv(o.Env)
	return o, nil
}

// childEnv returns env (or this process's environment when env is nil)
// without the variables that systemd meant for this process only.
func childEnv(env []string) []string {
	if env == nil {
		env = os.Environ()
	}
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !parentOnly(kv) {
			out = append(out, kv)
		}
	}
	return out
}

// parentOnly reports whether the "KEY=value" entry kv is addressed to this
// process by its service manager: sd_notify's socket, the watchdog, the
// journal stream of its own stderr, its main pid and socket activation. A
// child that saw them could notify, ping the watchdog or claim sockets in
// this process's name, or take its piped stderr for the journal. This is
// meshx's one list of them.
func parentOnly(kv string) bool {
	name, _, _ := strings.Cut(kv, "=")
	switch name {
	case "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "JOURNAL_STREAM", "MAINPID":
		return true
	}
	return strings.HasPrefix(name, "LISTEN_")
}
