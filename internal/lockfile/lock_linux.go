package lockfile

import (
	"errors"
	"os"
	"syscall"
)

var errWouldBlock = errors.New("lock would block")

// tryLock takes an exclusive flock on f without waiting; errWouldBlock means
// another open file holds it (or the call was interrupted): try again later.
func tryLock(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EINTR) {
		return errWouldBlock
	}
	return err
}
