//go:build !linux

package netns

import (
	"errors"
	"runtime"
)

// Run needs Linux network namespaces.
func Run(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return errors.New("network namespaces need Linux, not " + runtime.GOOS)
}
