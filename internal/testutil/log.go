package testutil

import (
	"io"
	"log/slog"
	"strings"
	"testing"
)

// Logger returns a logger whose records go to t.Log, so they show with the
// test that wrote them (and only when it fails or runs with -v).
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(LogWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// LogWriter is an io.Writer whose every write goes to t.Log.
func LogWriter(t testing.TB) io.Writer { return tWriter{t} }

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
