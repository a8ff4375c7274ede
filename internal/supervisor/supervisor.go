// Package supervisor runs one long-lived child process and keeps it running:
// Consul's connect proxy under meshx-proxy, or one meshx-proxy per service
// under `meshx-init run --foreground`.
//
// The child runs in its own process group and is stopped through it
// (SIGTERM, then SIGKILL after a timeout); it gets SIGKILL from the kernel if
// this process dies. A crashed child is restarted with exponential backoff
// and jitter until a restart budget is used up; a run that lasts long enough
// refills the budget. Its stdout and stderr are logged line by line.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ErrGaveUp is returned (wrapped) by Run when the child kept exiting and
// MaxRestarts restarts were used up.
var ErrGaveUp = errors.New("gave up restarting")

// errActive is returned by Run when another Run call on the same Supervisor
// has not returned yet.
var errActive = errors.New("supervisor: Run is already active")

// Supervisor runs one child process. Create it with New, drive it with Run.
type Supervisor struct {
	opts    Options // defaults filled in
	log     *slog.Logger
	restart chan struct{} // Restart requests; capacity 1, so they coalesce
	active  atomic.Bool   // a Run call is in progress

	mu     sync.Mutex
	status Status
}

// New checks o and returns a Supervisor that has not started anything yet.
// It fails with ErrMissingCommand when o.Argv is empty.
func New(o Options) (*Supervisor, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Supervisor{
		opts:    o,
		log:     o.Logger.With("child", o.Name),
		restart: make(chan struct{}, 1),
		status:  Status{State: StateStopped, Since: time.Now(), Argv: o.Argv},
	}, nil
}

// Status returns a snapshot of the supervisor. It is safe to call from any
// goroutine.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Argv = slices.Clone(st.Argv)
	return st
}

// Restart asks a running Run to stop the child (SIGTERM, then SIGKILL after
// StopTimeout) and start it again at once, with the restart counter reset.
// During a backoff it starts the child at once. It does not block; requests
// made while one is pending are merged, and requests made while Run is not
// active are dropped when Run starts.
func (s *Supervisor) Restart() {
	select {
	case s.restart <- struct{}{}:
	default:
	}
}

// Run starts the child and keeps it running until ctx is cancelled: it
// reaps the child when it exits and starts it again after a backoff delay.
//
// It returns nil when ctx is cancelled (after the child was stopped: SIGTERM
// to its process group, SIGKILL after StopTimeout) and when the child exited
// with status 0 and RestartOnSuccess is false. It returns an error wrapping
// ErrGaveUp when MaxRestarts restarts were used up. Only one Run may be
// active at a time; Run may be called again after it returned.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.active.CompareAndSwap(false, true) {
		return errActive
	}
	defer s.active.Store(false)
	select {
	case <-s.restart: // a stale request from before this Run
	default:
	}
	if ctx.Err() != nil {
		return nil
	}
	r := &run{s: s, o: s.opts, ctx: ctx}
	for state := StateStarting; ; {
		s.enter(state, r)
		switch state {
		case StateStarting:
			state = r.starting()
		case StateRunning:
			state = r.running()
		case StateBackoff:
			state = r.backoff()
		case StateStopping:
			state = r.stopping()
		case StateStopped:
			return nil
		case StateFailed:
			return r.err
		default:
			panic(fmt.Sprintf("supervisor: unknown state %q", state))
		}
	}
}

// run is the state of one Run call. Only the goroutine running Run uses it.
type run struct {
	s   *Supervisor
	o   Options
	ctx context.Context

	child    *proc         // the child while running or stopping
	restarts int           // restarts since the last reset
	lastExit string        // how the last child ended
	delay    time.Duration // the pending backoff delay
	then     State         // where stopping leads: StateStarting (Restart) or StateStopped
	err      error         // Run's result in StateFailed
}

// enter moves the published Status to state and tells OnStateChange.
func (s *Supervisor) enter(state State, r *run) {
	s.mu.Lock()
	from := s.status.State
	s.mu.Unlock()
	if !allowed(from, state) {
		panic(fmt.Sprintf("supervisor: transition %s -> %s is not allowed", from, state))
	}
	s.publish(state, r, time.Now())
}

// publish stores the Status for state and r and calls OnStateChange. since
// is zero when the state did not change.
func (s *Supervisor) publish(state State, r *run, since time.Time) {
	s.mu.Lock()
	st := &s.status
	st.State = state
	st.PID = 0
	if r.child != nil {
		st.PID = r.child.pid
	}
	st.Restarts = r.restarts
	st.LastExit = r.lastExit
	if !since.IsZero() {
		st.Since = since
	}
	snap := *st
	s.mu.Unlock()
	if s.opts.OnStateChange != nil {
		snap.Argv = slices.Clone(snap.Argv)
		s.opts.OnStateChange(snap)
	}
}

// starting starts the child.
func (r *run) starting() State {
	var child *proc
	var err error
	if r.o.PreStart != nil {
		err = r.o.PreStart()
	}
	if err == nil {
		child, err = startProc(command(r.o), r.s.log, r.o.Output)
	}
	if err != nil {
		r.lastExit = fmt.Sprintf("start: %v", err)
		r.s.log.Error("child did not start", "err", err, "restarts", r.restarts)
		return r.afterExit(false, 0)
	}
	r.child = child
	r.s.log.Info("child started", "child_pid", child.pid, "restarts", r.restarts, "argv", r.o.Argv)
	return StateRunning
}

// running waits for the child to exit, for ctx to end or for Restart, and
// resets the restart counter once the run has been stable for StableAfter.
func (r *run) running() State {
	stable := time.NewTimer(r.o.StableAfter)
	defer stable.Stop()
	for {
		select {
		case ex := <-r.child.exit:
			pid := r.child.pid
			r.child = nil
			r.lastExit = ex.reason
			level := slog.LevelWarn
			if ex.success {
				level = slog.LevelInfo
			}
			r.s.log.Log(context.Background(), level, "child exited",
				"child_pid", pid, "reason", ex.reason, "ran", ex.ran.Round(time.Millisecond), "restarts", r.restarts)
			if slices.Contains(r.o.FinalExitCodes, ex.code) {
				r.err = fmt.Errorf("supervise %s: %w (%s)", r.o.Name, ErrFinalExit, ex.reason)
				r.s.log.Error("child exited with a final code; not restarting it", "reason", ex.reason)
				return StateFailed
			}
			return r.afterExit(ex.success, ex.ran)
		case <-stable.C:
			if r.restarts > 0 {
				r.s.log.Info("child stable; restart counter reset",
					"child_pid", r.child.pid, "stable_after", r.o.StableAfter, "restarts", r.restarts)
				r.restarts = 0
				r.s.publish(StateRunning, r, time.Time{})
			}
		case <-r.ctx.Done():
			r.then = StateStopped
			return StateStopping
		case <-r.s.restart:
			r.s.log.Info("restart requested", "child_pid", r.child.pid)
			r.then = StateStarting
			return StateStopping
		}
	}
}

// afterExit decides what follows an exit (or a failed start) of a child that
// ran for ran.
func (r *run) afterExit(success bool, ran time.Duration) State {
	if success && !r.o.RestartOnSuccess {
		return StateStopped
	}
	if ran >= r.o.StableAfter {
		r.restarts = 0
	}
	if r.o.MaxRestarts >= 0 && r.restarts >= r.o.MaxRestarts {
		r.err = fmt.Errorf("supervise %s: %w after %d restarts (last exit: %s)",
			r.o.Name, ErrGaveUp, r.restarts, r.lastExit)
		r.s.log.Error("child keeps exiting; giving up", "restarts", r.restarts, "last_exit", r.lastExit)
		return StateFailed
	}
	r.restarts++
	r.delay = backoffDelay(r.o.BackoffInitial, r.o.BackoffMax, r.restarts, rand.Float64())
	r.s.log.Info("restarting child after backoff",
		"delay", r.delay, "restart", r.restarts, "max_restarts", r.o.MaxRestarts)
	return StateBackoff
}

// backoff waits out the restart delay.
func (r *run) backoff() State {
	t := time.NewTimer(r.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return StateStarting
	case <-r.ctx.Done():
		return StateStopped
	case <-r.s.restart:
		r.s.log.Info("restart requested during backoff")
		r.restarts = 0
		return StateStarting
	}
}

// stopping stops the child and goes where r.then says.
func (r *run) stopping() State {
	pid := r.child.pid
	ex := r.child.stop(r.o.StopTimeout, r.s.log)
	r.child = nil
	r.lastExit = ex.reason
	r.s.log.Info("child stopped", "child_pid", pid, "reason", ex.reason, "ran", ex.ran.Round(time.Millisecond), "restarts", r.restarts)
	if r.then == StateStarting {
		r.restarts = 0
	}
	return r.then
}
