//go:build !linux

package lockfile

import (
	"errors"
	"os"
)

var errWouldBlock = errors.New("lock would block")

// tryLock is only implemented on Linux, the one platform meshx runs on.
func tryLock(*os.File) error { return errors.ErrUnsupported }
