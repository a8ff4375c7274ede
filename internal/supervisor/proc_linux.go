package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// drainTimeout bounds how long the reaper waits, after the child was reaped,
// for its stdout and stderr to reach end of file. Only a process that left
// the child's process group (setsid) can still hold them open by then.
const drainTimeout = 2 * time.Second

// exitInfo describes how one child ended.
type exitInfo struct {
	reason  string        // "exit status 1", "signal: killed", or the wait error
	success bool          // exit status 0
	code    int           // exit status; -1 when killed by a signal or unknown
	ran     time.Duration // from start to reap
}

// proc is one started child. Its reaper goroutine is the only caller of
// Wait for it; the exit is published on exit exactly once.
type proc struct {
	pid  int
	exit chan exitInfo // buffered; receives one value once the child is reaped and its output drained

	mu     sync.Mutex // held while reaping, so signal never targets a reaped (reusable) pid
	reaped bool
}

// startProc starts cmd in its own process group with Pdeathsig=SIGKILL and
// logs its output through log. The child is started, and later reaped, by
// one goroutine locked to its OS thread; see reap.
func startProc(cmd *exec.Cmd, log *slog.Logger, raw io.Writer) (*proc, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	p := &proc{exit: make(chan exitInfo, 1)}
	started := make(chan error, 1)
	go p.reap(cmd, pipes{outR, errR}, pipes{outW, errW}, log, raw, started)
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

type pipes struct{ stdout, stderr *os.File }

func (p pipes) close() {
	p.stdout.Close()
	p.stderr.Close()
}

// reap starts cmd, reports the start on started, then waits for the child,
// reaps it, drains its output and publishes the exit on p.exit.
//
// The kernel sends Pdeathsig when the thread that forked the child exits,
// not when the process does (go.dev/issue/27505), and the Go runtime ends a
// thread whose goroutine exits while locked to it. So this goroutine locks
// its thread before forking and keeps it locked until the child is reaped:
// no other goroutine can run on, or end, that thread meanwhile, and the
// thread only dies with the whole process, which is when Pdeathsig should
// fire.
func (p *proc) reap(cmd *exec.Cmd, r, w pipes, log *slog.Logger, raw io.Writer, started chan<- error) {
	runtime.LockOSThread()
	err := cmd.Start()
	w.close() // the child holds its own copies
	if err != nil {
		runtime.UnlockOSThread()
		r.close()
		started <- err
		return
	}
	p.pid = cmd.Process.Pid
	begin := time.Now()
	out := log.With("child_pid", p.pid)
	var readers sync.WaitGroup
	readers.Go(func() { logOutput(r.stdout, out, slog.LevelInfo, "stdout", raw) })
	readers.Go(func() { logOutput(r.stderr, out, slog.LevelWarn, "stderr", raw) })
	started <- nil

	// Wait for the exit without reaping, so the process group still exists
	// (its id cannot be reused) while stragglers in it are killed: nothing
	// the child started in its group outlives it.
	exited := waitExited(p.pid) == nil
	p.mu.Lock()
	if exited {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	err = cmd.Wait()
	p.reaped = true
	p.mu.Unlock()
	ran := time.Since(begin)
	runtime.UnlockOSThread()

	drain(&readers, r)
	p.exit <- describeExit(cmd.ProcessState, err, ran)
}

// waitExited blocks until the child pid has exited, leaving it unreaped.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// drain waits for the output readers to reach end of file, at most
// drainTimeout, then unblocks them and closes the read ends.
func drain(readers *sync.WaitGroup, r pipes) {
	done := make(chan struct{})
	go func() {
		readers.Wait()
		close(done)
	}()
	t := time.NewTimer(drainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		now := time.Now()
		_ = r.stdout.SetReadDeadline(now)
		_ = r.stderr.SetReadDeadline(now)
		<-done
	}
	r.close()
}

// rawMu keeps lines of different children whole on a shared Output.
var rawMu sync.Mutex

func logOutput(f *os.File, log *slog.Logger, level slog.Level, stream string, raw io.Writer) {
	ctx := context.Background()
	readLines(f, maxLine, func(line []byte, truncated bool) {
		if raw != nil {
			rawMu.Lock()
			_, _ = raw.Write(line)
			_, _ = raw.Write([]byte{'\n'})
			rawMu.Unlock()
			return
		}
		if truncated {
			log.Log(ctx, level, string(line), "stream", stream, "truncated", true)
			return
		}
		log.Log(ctx, level, string(line), "stream", stream)
	})
}

func describeExit(ps *os.ProcessState, err error, ran time.Duration) exitInfo {
	if ps == nil {
		return exitInfo{reason: fmt.Sprintf("wait: %v", err), ran: ran, code: -1}
	}
	return exitInfo{reason: ps.String(), success: ps.Success(), ran: ran, code: ps.ExitCode()}
}

// signal sends sig to the child's process group, unless the child was
// already reaped.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return nil
	}
	if err := syscall.Kill(-p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal process group %d with %s: %w", p.pid, sig, err)
	}
	return nil
}

// stop sends SIGTERM to the child's group, SIGKILL after timeout, and
// returns the exit.
func (p *proc) stop(timeout time.Duration, log *slog.Logger) exitInfo {
	if err := p.signal(syscall.SIGTERM); err != nil {
		log.Warn("stop child", "child_pid", p.pid, "err", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case ex := <-p.exit:
		return ex
	case <-t.C:
	}
	log.Warn("child still running after SIGTERM; sending SIGKILL", "child_pid", p.pid, "stop_timeout", timeout)
	if err := p.signal(syscall.SIGKILL); err != nil {
		log.Warn("kill child", "child_pid", p.pid, "err", err)
	}
	return <-p.exit
}

// command builds the exec.Cmd for one start.
func command(o Options) *exec.Cmd {
	cmd := exec.Command(o.Argv[0], o.Argv[1:]...)
	cmd.Env = o.Env
	cmd.Dir = o.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: o.Credential,
	}
	return cmd
}
