package lockfile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWaitsForTheHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "x.lock")
	first, err := Acquire(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan int, 1)
	got := make(chan error, 1)
	go func() {
		l, err := Acquire(context.Background(), path, func(holder int) { waited <- holder })
		if err == nil {
			l.Unlock()
		}
		got <- err
	}()
	select {
	case h := <-waited:
		if h != os.Getpid() {
			t.Errorf("waiter saw holder pid %d, want %d", h, os.Getpid())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second Acquire did not report that it waits")
	}
	select {
	case err := <-got:
		t.Fatalf("second Acquire returned while the lock is held: %v", err)
	default:
	}
	first.Unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second Acquire did not get the released lock")
	}
}

func TestContextEndsTheWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	held, err := Acquire(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = Acquire(ctx, path, nil)
	if !errors.Is(err, ErrHeld) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire on a held lock with a deadline: %v, want ErrHeld and the deadline", err)
	}
}
