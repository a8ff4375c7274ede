// Package process is meshx's one view of other processes: an identity (pid
// plus start time) that survives pid reuse, liveness, and a stop that sends
// SIGTERM, waits a grace period (or for the caller's context), then SIGKILL.
package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ID names one process: its pid and its start time in clock ticks since
// boot, which a reused pid does not share.
type ID struct {
	PID   int
	Start string // "" when unknown (the process is gone)
}

// Of returns the identity of the process that has pid now (Start "" if none).
func Of(pid int) ID { return ID{PID: pid, Start: StartTime(pid)} }

// Self is this process's identity.
func Self() ID { return Of(os.Getpid()) }

// String is the record form "PID START", which Parse reads back.
func (id ID) String() string { return strconv.Itoa(id.PID) + " " + id.Start }

// Parse reads a record written with String. It refuses pids below 2: there
// is never a reason to signal init or a process group of everything.
func Parse(rec string) (ID, error) {
	f := strings.Fields(rec)
	if len(f) != 2 {
		return ID{}, fmt.Errorf("process record %q: want \"PID START\"", rec)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return ID{}, fmt.Errorf("process record %q: bad pid", rec)
	}
	return ID{PID: pid, Start: f[1]}, nil
}

// Running reports whether id's process still runs: the pid exists, has not
// exited, and started when id says (it was not reused).
func (id ID) Running() bool {
	return id.PID > 0 && id.Start != "" && StartTime(id.PID) == id.Start && Alive(id.PID)
}

// StartTime is a process's start time in clock ticks since boot, "" if it
// is gone.
func StartTime(pid int) string {
	f := Stat(pid)
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22 of /proc/PID/stat; f starts at field 3
}

// Stat returns /proc/PID/stat's fields after the command name (which may
// hold spaces and parentheses), or nil.
func Stat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	return strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
}

// Alive reports whether pid exists and has not exited (a zombie has).
func Alive(pid int) bool {
	f := Stat(pid)
	return len(f) > 0 && f[0] != "Z"
}

// StopOptions say how Stop stops a process.
type StopOptions struct {
	// Group signals id's process group (id.PID is its leader) instead of
	// the process alone.
	Group bool
	// Grace is how long to wait after SIGTERM before SIGKILL. Zero means
	// DefaultGrace.
	Grace time.Duration
	// Done, when not nil, ends the wait early when it returns true (the
	// process said it is finished, e.g. by removing its status file); no
	// SIGKILL follows then.
	Done func() bool
}

// DefaultGrace is StopOptions.Grace's default.
const DefaultGrace = 10 * time.Second

// pollEvery is how often Stop looks whether the process is gone.
const pollEvery = 50 * time.Millisecond

// ErrNotRunning is returned by Stop when id's process does not run (any
// more): nothing was signalled.
var ErrNotRunning = errors.New("process not running")

// Stop sends SIGTERM to id's process (or group) and waits until it is gone,
// o.Done says so, or the grace period passes; then, or as soon as ctx ends,
// it sends SIGKILL. It reports whether SIGKILL was needed.
func Stop(ctx context.Context, id ID, o StopOptions) (killed bool, err error) {
	if !id.Running() {
		return false, ErrNotRunning
	}
	if o.Grace == 0 {
		o.Grace = DefaultGrace
	}
	target := id.PID
	if o.Group {
		target = -id.PID
	}
	if err := syscall.Kill(target, syscall.SIGTERM); errors.Is(err, syscall.ESRCH) {
		return false, ErrNotRunning // gone since the check
	} else if err != nil {
		return false, fmt.Errorf("SIGTERM to %d: %w", id.PID, err)
	}
	grace := time.NewTimer(o.Grace)
	defer grace.Stop()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		if !id.Running() || o.Done != nil && o.Done() {
			return false, nil
		}
		select {
		case <-tick.C:
			continue
		case <-grace.C:
		case <-ctx.Done():
		}
		if err := syscall.Kill(target, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return true, fmt.Errorf("SIGKILL to %d: %w", id.PID, err)
		}
		return true, nil
	}
}
