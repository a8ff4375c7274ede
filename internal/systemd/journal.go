package systemd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// JournalOptions tune NewJournalHandler. The zero value is usable.
type JournalOptions struct {
	// Level is the minimum level logged. Nil means slog.LevelInfo.
	Level slog.Leveler
	// AddSource adds CODE_FILE, CODE_LINE and CODE_FUNC.
	AddSource bool
	// Identifier is SYSLOG_IDENTIFIER. "" means the program's base name.
	Identifier string
	// Fallback gets a text line (no timestamp) when the journal refuses a
	// message. Nil means os.Stderr.
	Fallback io.Writer

	// send replaces journal.Send in tests.
	send func(msg string, pri journal.Priority, fields map[string]string) error
}

// NewJournalHandler returns a slog.Handler that writes each record to the
// journal through its native protocol: MESSAGE is the message followed by its
// attributes as key=value (so plain `journalctl` shows them), PRIORITY follows
// the level, and every attribute is also its own field, its key upper-cased with
// anything outside [A-Z0-9_] turned into '_' and groups joined by '_'
// ("service_id" -> SERVICE_ID, "proxy_pid" -> PROXY_PID, "restarts" -> RESTARTS),
// so `journalctl SERVICE_ID=web-vm1` finds them. No timestamp is written: the
// journal keeps its own.
//
// Use it when journal.StderrIsJournalStream() is true; LogHandler picks for you.
func NewJournalHandler(o JournalOptions) slog.Handler {
	if o.Level == nil {
		o.Level = slog.LevelInfo
	}
	if o.Identifier == "" {
		o.Identifier = filepath.Base(os.Args[0])
	}
	if o.Fallback == nil {
		o.Fallback = os.Stderr
	}
	if o.send == nil {
		o.send = journal.Send
	}
	return &journalHandler{o: &o, mu: new(sync.Mutex)}
}

// LogHandler returns the handler a meshx binary should log through: the journal
// handler when stderr is connected to the journal (started by systemd), else a
// text handler on w — without timestamps when w is stderr under systemd anyway
// (JOURNAL_STREAM set but pointing elsewhere, e.g. StandardError=file:) and with
// them otherwise.
func LogHandler(w io.Writer, level slog.Leveler) slog.Handler {
	if ok, _ := journal.StderrIsJournalStream(); ok {
		return NewJournalHandler(JournalOptions{Level: level, Fallback: w})
	}
	opts := &slog.HandlerOptions{Level: level}
	if os.Getenv("INVOCATION_ID") != "" {
		opts.ReplaceAttr = dropTime
	}
	return slog.NewTextHandler(w, opts)
}

func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

type journalHandler struct {
	o      *JournalOptions
	mu     *sync.Mutex // serialises the fallback writer
	prefix string      // group prefix for new attributes, e.g. "PROXY_"
	groups []string    // open groups, for the text part
	attrs  []field     // from WithAttrs, already flattened
}

type field struct {
	key  string // journal field name
	text string // key=value for MESSAGE
	val  string
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.o.Level.Level()
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	h2 := *h
	h2.attrs = slices.Clip(h.attrs)
	for _, a := range as {
		h2.attrs = appendAttr(h2.attrs, h.prefix, h.groups, a)
	}
	return &h2
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + fieldName(name) + "_"
	h2.groups = append(slices.Clip(h.groups), name)
	return &h2
}

func (h *journalHandler) Handle(_ context.Context, r slog.Record) error {
	fs := slices.Clip(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fs = appendAttr(fs, h.prefix, h.groups, a)
		return true
	})
	var msg strings.Builder
	msg.WriteString(r.Message)
	vars := make(map[string]string, len(fs)+5)
	for _, f := range fs {
		msg.WriteByte(' ')
		msg.WriteString(f.text)
		vars[f.key] = f.val
	}
	vars["SYSLOG_IDENTIFIER"] = h.o.Identifier
	vars["MESHX_LEVEL"] = r.Level.String()
	if h.o.AddSource && r.PC != 0 {
		fr, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		vars["CODE_FILE"] = fr.File
		vars["CODE_LINE"] = strconv.Itoa(fr.Line)
		vars["CODE_FUNC"] = fr.Function
	}
	if err := h.o.send(msg.String(), priority(r.Level), vars); err != nil {
		h.mu.Lock()
		defer h.mu.Unlock()
		_, werr := fmt.Fprintf(h.o.Fallback, "%s %s\n", r.Level, msg.String())
		return werr
	}
	return nil
}

// appendAttr flattens a (possibly group) attribute into fields.
func appendAttr(fs []field, prefix string, groups []string, a slog.Attr) []field {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return fs
	}
	if a.Value.Kind() == slog.KindGroup {
		gs := a.Value.Group()
		if a.Key == "" { // inline group
			for _, g := range gs {
				fs = appendAttr(fs, prefix, groups, g)
			}
			return fs
		}
		p := prefix + fieldName(a.Key) + "_"
		sub := append(slices.Clip(groups), a.Key)
		for _, g := range gs {
			fs = appendAttr(fs, p, sub, g)
		}
		return fs
	}
	val := valueString(a.Value)
	key := fieldName(prefix + a.Key)
	if reserved[key] {
		key = "MESHX_" + key
	}
	textKey := strings.Join(append(slices.Clip(groups), a.Key), ".")
	return append(fs, field{
		key:  key,
		text: textKey + "=" + quoteIfNeeded(val),
		val:  val,
	})
}

// reserved are journal fields this handler (or journald) sets itself.
var reserved = map[string]bool{
	"MESSAGE": true, "MESSAGE_ID": true, "PRIORITY": true, "SYSLOG_IDENTIFIER": true,
	"SYSLOG_FACILITY": true, "SYSLOG_PID": true, "CODE_FILE": true, "CODE_LINE": true,
	"CODE_FUNC": true, "ERRNO": true, "MESHX_LEVEL": true,
}

func valueString(v slog.Value) string {
	switch v.Kind() {
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	case slog.KindDuration:
		return v.Duration().String()
	}
	return v.String()
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n\"=") {
		return strconv.Quote(s)
	}
	return s
}

// fieldName makes a journal field name: [A-Z0-9_], not starting with '_' or a
// digit (those are reserved or invalid; such keys get "F" in front).
func fieldName(key string) string {
	b := []byte(strings.ToUpper(key))
	for i, c := range b {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || b[0] == '_' || (b[0] >= '0' && b[0] <= '9') {
		b = append([]byte("F"), b...)
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	}
	return journal.PriDebug
}
