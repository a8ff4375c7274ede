// Package term says whether output goes to a terminal, and whether it may be
// coloured there.
package term

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// IsTerminal reports whether w is a terminal (a file whose descriptor has
// terminal attributes). Pipes, regular files and buffers are not.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Color reports whether output to w may be coloured: w is a terminal, NO_COLOR
// is unset or empty (https://no-color.org), and TERM is not "dumb".
func Color(w io.Writer) bool {
	if os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	return IsTerminal(w)
}
