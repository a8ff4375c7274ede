// Package config reads meshx's global config (meshx.yaml) and its service-configs
// (services.d/*.yaml|yml|json, including the Vagrant flow's service-config.json
// shapes). Decoding is strict, defaults are filled in one place, and Validate
// reports every problem of a file at once, each located by file, line and field.
package config

import (
	"errors"
	"fmt"
	"strings"
)

// Error is one located problem in a config file.
type Error struct {
	File  string
	Line  int    // 0 when unknown
	Field string // dotted path, e.g. "service.port"; may be empty
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrInvalid marks every config problem, so callers can map it to exit code 2.
var ErrInvalid = errors.New("invalid configuration")

// Problems collects located errors for one file.
type Problems struct {
	file string
	errs []error
}

func (p *Problems) add(line int, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Err joins all problems (nil when there are none); errors.Is(err, ErrInvalid) holds.
func (p *Problems) Err() error {
	if len(p.errs) == 0 {
		return nil
	}
	return &invalidError{errs: p.errs}
}

type invalidError struct{ errs []error }

func (e *invalidError) Error() string {
	s := make([]string, len(e.errs))
	for i, err := range e.errs {
		s[i] = err.Error()
	}
	return strings.Join(s, "\n")
}

func (e *invalidError) Unwrap() []error { return append([]error{ErrInvalid}, e.errs...) }
