package supervisor

import (
	"slices"
	"time"
)

// State is where the supervisor is in its life cycle.
type State string

// The states. Before Run and after it returns the state is StateStopped or
// StateFailed.
const (
	StateStarting State = "starting" // creating the child process
	StateRunning  State = "running"  // the child runs; Status.PID is its pid
	StateBackoff  State = "backoff"  // the child exited; waiting before the next start
	StateStopping State = "stopping" // SIGTERM sent to the group; waiting for the exit (SIGKILL after StopTimeout)
	StateStopped  State = "stopped"  // no child and none coming: not started yet, context cancelled, or a clean exit not restarted
	StateFailed   State = "failed"   // gave up after MaxRestarts restarts
)

// transitions lists, for each state, the states it may lead to. Run enforces
// it: any other move is a bug in this package.
var transitions = map[State][]State{
	StateStopped:  {StateStarting},                                          // Run begins
	StateFailed:   {StateStarting},                                          // Run called again
	StateStarting: {StateRunning, StateBackoff, StateFailed},                // started, or the start failed
	StateRunning:  {StateStopping, StateBackoff, StateStopped, StateFailed}, // asked to stop, or the child exited
	StateBackoff:  {StateStarting, StateStopped},                            // delay over (or Restart), or cancelled
	StateStopping: {StateStarting, StateStopped},                            // Restart, or cancelled
}

func allowed(from, to State) bool {
	return slices.Contains(transitions[from], to)
}

// Status is a snapshot of the supervisor.
type Status struct {
	State    State
	PID      int       // the child's pid while running or stopping, else 0
	Restarts int       // restarts since the counter was last reset (stable run or Restart)
	LastExit string    // how the last child ended ("exit status 1", "signal: killed", "start: ..."); empty before the first exit
	Since    time.Time // when State was entered
	Argv     []string  // the supervised command
}
