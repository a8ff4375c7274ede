package systemd

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

type sent struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

func journalLogger(t *testing.T, o JournalOptions) (*slog.Logger, *[]sent) {
	t.Helper()
	var got []sent
	o.send = func(msg string, pri journal.Priority, f map[string]string) error {
		got = append(got, sent{msg, pri, maps.Clone(f)})
		return nil
	}
	o.Identifier = "meshx-proxy"
	return slog.New(NewJournalHandler(o)), &got
}

func TestJournalHandlerFields(t *testing.T) {
	log, got := journalLogger(t, JournalOptions{})
	log = log.With("service_id", "web-vm1")
	log.Warn("proxy exited", "proxy_pid", 4242, "restarts", 3, "after", 1500*time.Millisecond, "err", errors.New("signal: killed"))
	if len(*got) != 1 {
		t.Fatalf("sent %d messages, want 1", len(*got))
	}
	s := (*got)[0]
	wantMsg := `proxy exited service_id=web-vm1 proxy_pid=4242 restarts=3 after=1.5s err="signal: killed"`
	if s.msg != wantMsg {
		t.Errorf("MESSAGE = %q, want %q", s.msg, wantMsg)
	}
	if s.pri != journal.PriWarning {
		t.Errorf("PRIORITY = %d, want %d", s.pri, journal.PriWarning)
	}
	want := map[string]string{
		"SERVICE_ID": "web-vm1", "PROXY_PID": "4242", "RESTARTS": "3", "AFTER": "1.5s",
		"ERR": "signal: killed", "SYSLOG_IDENTIFIER": "meshx-proxy", "MESHX_LEVEL": "WARN",
	}
	if !maps.Equal(s.fields, want) {
		t.Errorf("fields = %v, want %v", s.fields, want)
	}
	for k, v := range s.fields {
		if strings.Contains(k, "TIME") || strings.Contains(v, time.Now().Format("2006-01-02")) {
			t.Errorf("a timestamp was written: %s=%s", k, v)
		}
	}
}

func TestJournalHandlerGroupsAndNames(t *testing.T) {
	log, got := journalLogger(t, JournalOptions{Level: slog.LevelDebug})
	log.WithGroup("proxy").Debug("child", "pid", 7, slog.Group("cmd", "argv0", "consul"), "message", "clash", "2x", "y", "a-b.c", "z")
	s := (*got)[0]
	want := map[string]string{
		"PROXY_PID": "7", "PROXY_CMD_ARGV0": "consul", "PROXY_MESSAGE": "clash", "PROXY_2X": "y",
		"PROXY_A_B_C": "z", "SYSLOG_IDENTIFIER": "meshx-proxy", "MESHX_LEVEL": "DEBUG",
	}
	if !maps.Equal(s.fields, want) {
		t.Errorf("fields = %v, want %v", s.fields, want)
	}
	if !strings.Contains(s.msg, "proxy.cmd.argv0=consul") || s.pri != journal.PriDebug {
		t.Errorf("message %q priority %d", s.msg, s.pri)
	}
}

func TestJournalFieldName(t *testing.T) {
	tests := map[string]string{
		"service_id": "SERVICE_ID", "message": "MESSAGE", "_hidden": "F_HIDDEN", "9lives": "F9LIVES",
		"a.b-c": "A_B_C", "": "F",
	}
	for in, want := range tests {
		if got := fieldName(in); got != want {
			t.Errorf("fieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestJournalHandlerLevelAndSource(t *testing.T) {
	log, got := journalLogger(t, JournalOptions{AddSource: true})
	log.Debug("hidden")
	log.Error("shown")
	if len(*got) != 1 {
		t.Fatalf("sent %d, want 1 (debug filtered)", len(*got))
	}
	f := (*got)[0].fields
	if !strings.HasSuffix(f["CODE_FILE"], "journal_test.go") || f["CODE_LINE"] == "" || f["CODE_FUNC"] == "" {
		t.Errorf("source fields missing: %v", f)
	}
	if (*got)[0].pri != journal.PriErr {
		t.Errorf("priority %d, want err", (*got)[0].pri)
	}
}

func TestJournalHandlerFallback(t *testing.T) {
	var buf bytes.Buffer
	h := NewJournalHandler(JournalOptions{Fallback: &buf, send: func(string, journal.Priority, map[string]string) error {
		return errors.New("journal gone")
	}})
	slog.New(h).Info("still logged", "service_id", "web-vm1")
	if got, want := buf.String(), "INFO still logged service_id=web-vm1\n"; got != want {
		t.Errorf("fallback wrote %q, want %q", got, want)
	}
}

func TestLogHandlerOutsideJournal(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	t.Setenv("INVOCATION_ID", "")
	var buf bytes.Buffer
	slog.New(LogHandler(&buf, slog.LevelInfo)).Info("hi")
	if !strings.Contains(buf.String(), "time=") {
		t.Errorf("outside systemd a timestamp is expected: %q", buf.String())
	}
	buf.Reset()
	t.Setenv("INVOCATION_ID", "abc")
	slog.New(LogHandler(&buf, slog.LevelInfo)).Info("hi")
	if strings.Contains(buf.String(), "time=") {
		t.Errorf("under systemd no timestamp is expected: %q", buf.String())
	}
}
