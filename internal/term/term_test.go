package term

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshx/meshx/internal/testutil"
)

func TestIsTerminalAndColor(t *testing.T) {
	_, tty := testutil.OpenPTY(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	file, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	cases := []struct {
		name          string
		w             any
		env           map[string]string
		terminal, col bool
	}{
		{"pty", tty, nil, true, true},
		{"pty with NO_COLOR", tty, map[string]string{"NO_COLOR": "1"}, true, false},
		{"pty with empty NO_COLOR", tty, map[string]string{"NO_COLOR": ""}, true, true},
		{"pty with TERM=dumb", tty, map[string]string{"TERM": "dumb"}, true, false},
		{"pipe", w, nil, false, false},
		{"regular file", file, nil, false, false},
		{"buffer", &bytes.Buffer{}, nil, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("NO_COLOR", "")
			t.Setenv("TERM", "xterm")
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			out := c.w.(interface{ Write([]byte) (int, error) })
			if got := IsTerminal(out); got != c.terminal {
				t.Errorf("IsTerminal = %v, want %v", got, c.terminal)
			}
			if got := Color(out); got != c.col {
				t.Errorf("Color = %v, want %v", got, c.col)
			}
		})
	}
}
