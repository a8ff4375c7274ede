// Package lockfile takes exclusive advisory locks (flock) on lock files,
// waiting with backoff until the lock is free or the context ends. A lock is
// released when its holder closes the file or dies, so a killed holder never
// leaves it taken.
package lockfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ErrHeld is returned (wrapped, with the context's error) when the lock was
// still held by another open file when the context ended.
var ErrHeld = errors.New("lock held by another process")

// Lock is a held lock.
type Lock struct{ f *os.File }

// Unlock releases the lock.
func (l *Lock) Unlock() { l.f.Close() }

// Acquire takes the exclusive lock on path (created, mode 0644, with its
// directory), polling with backoff while another open file holds it. onWait,
// if not nil, is called once, when the first attempt finds the lock held,
// with the pid the holder wrote (0 if none). The holder's pid is written into
// the file once the lock is taken.
func Acquire(ctx context.Context, path string, onWait func(holder int)) (*Lock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	wait := time.Millisecond
	for first := true; ; first = false {
		err := tryLock(f)
		if err == nil {
			// Who holds it, for the message of a process that waits; a lock
			// file on a full disk still locks.
			if f.Truncate(0) == nil {
				_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			}
			return &Lock{f: f}, nil
		}
		if !errors.Is(err, errWouldBlock) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if first && onWait != nil {
			onWait(holder(f))
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w: %w", path, ErrHeld, context.Cause(ctx))
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

func holder(f *os.File) int {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	return pid
}
