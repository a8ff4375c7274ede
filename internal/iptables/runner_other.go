//go:build !linux

package iptables

import (
	"errors"
	"runtime"
)

func newExecRunner(string) (Runner, error) {
	return nil, errors.New("iptables: transparent proxy needs Linux, not " + runtime.GOOS)
}
