// Package config reads meshx's global config (meshx.yaml) and its service-configs
// (services.d/*.yaml|yml|json, including the Vagrant flow's service-config.json
// shapes). Decoding is strict, defaults are filled in one place, and Validate
// reports every problem of a file at once, each located by file, line and field.
package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
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
		if strings.ContainsFunc(e.Field, func(r rune) bool { return unicode.IsControl(r) || r == utf8.RuneError }) {
			b.WriteString(strconv.Quote(e.Field))
		} else {
			b.WriteString(e.Field)
		}
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
	errs []*Error
	// decoded holds the fields whose value did not decode: a later check of
	// the same field (or of a field inside it) would only repeat the problem.
	decoded map[string]bool
}

func (p *Problems) add(line int, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// at adds a problem at a located field, unless decoding already reported that
// field or one that holds it.
func (p *Problems) at(l Loc, format string, args ...any) {
	for f := l.Name; ; f = parentField(f) {
		if p.decoded[f] {
			return
		}
		if f == "" {
			break
		}
	}
	p.add(l.Line, l.Name, format, args...)
}

// badValue adds a problem about a value that did not decode: later checks of
// that field, or of fields inside it, are not reported again.
func (p *Problems) badValue(line int, field, format string, args ...any) {
	p.add(line, field, format, args...)
	if field != "" {
		p.skip(field)
	}
}

// skip marks a field ("" for the whole file) whose value did not decode.
func (p *Problems) skip(field string) {
	if p.decoded == nil {
		p.decoded = map[string]bool{}
	}
	p.decoded[field] = true
}

// Err joins all problems, ordered by line (nil when there are none);
// errors.Is(err, ErrInvalid) holds.
func (p *Problems) Err() error {
	if len(p.errs) == 0 {
		return nil
	}
	errs := slices.Clone(p.errs)
	slices.SortStableFunc(errs, func(a, b *Error) int { return a.Line - b.Line })
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return &invalidError{errs: out}
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
