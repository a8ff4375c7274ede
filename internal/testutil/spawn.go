package testutil

import (
	"os/exec"
	"syscall"
	"testing"
)

// Spawn starts argv in its own process group (as the supervisor starts a
// proxy) and reaps it in the background; done closes when it has exited.
func Spawn(t testing.TB, argv ...string) (pid int, done <-chan struct{}) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{})
	go func() { _ = cmd.Wait(); close(ch) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-ch
	})
	return cmd.Process.Pid, ch
}
