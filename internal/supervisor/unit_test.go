package supervisor

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewRequiresCommand(t *testing.T) {
	for _, tc := range []struct {
		name string
		argv []string
	}{
		{"nil argv", nil},
		{"empty argv", []string{}},
		{"empty command", []string{"", "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(Options{Argv: tc.argv}); !errors.Is(err, ErrMissingCommand) {
				t.Fatalf("New: err = %v, want ErrMissingCommand", err)
			}
		})
	}
}

func TestNewRejectsNegativeDurations(t *testing.T) {
	_, err := New(Options{Argv: []string{"true"}, StopTimeout: -1, StableAfter: -time.Second})
	if err == nil {
		t.Fatal("New accepted negative durations")
	}
	for _, want := range []string{"StopTimeout", "StableAfter"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{Argv: []string{"/usr/bin/consul", "connect", "proxy"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		field     string
		got, want any
	}{
		{"Name", o.Name, "consul"},
		{"StopTimeout", o.StopTimeout, 10 * time.Second},
		{"MaxRestarts", o.MaxRestarts, 5},
		{"BackoffInitial", o.BackoffInitial, 500 * time.Millisecond},
		{"BackoffMax", o.BackoffMax, 30 * time.Second},
		{"StableAfter", o.StableAfter, 60 * time.Second},
		{"Logger set", o.Logger != nil, true},
		{"Env set", o.Env != nil, true},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}

	kept, err := Options{Argv: []string{"x"}, Name: "proxy", MaxRestarts: -1, StopTimeout: time.Second}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if kept.Name != "proxy" || kept.MaxRestarts != -1 || kept.StopTimeout != time.Second {
		t.Errorf("set fields changed: %+v", kept)
	}
}

func TestChildEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []string
		want []string
	}{
		{"empty stays empty, not inherited", []string{}, []string{}},
		{"plain vars kept", []string{"A=1", "PATH=/bin"}, []string{"A=1", "PATH=/bin"}},
		{
			"systemd vars stripped",
			[]string{"NOTIFY_SOCKET=/run/n", "A=1", "WATCHDOG_PID=7", "WATCHDOG_USEC=100", "LISTEN_FDS=1", "LISTEN_PID=7", "LISTEN_FDNAMES=x"},
			[]string{"A=1"},
		},
		{"look-alikes kept", []string{"MY_NOTIFY_SOCKET=1", "WATCHDOG=1", "LISTEN=1"}, []string{"MY_NOTIFY_SOCKET=1", "WATCHDOG=1", "LISTEN=1"}},
		{
			"the unit's journal stream and main pid stripped",
			[]string{"PATH=/usr/bin", "NOTIFY_SOCKET=/run/x", "WATCHDOG_USEC=1", "WATCHDOG_PID=2", "JOURNAL_STREAM=8:9", "MAINPID=7",
				"LISTEN_FDS=1", "NOTIFY_SOCKETS=keep", "CONSUL_HTTP_ADDR=127.0.0.1:8500"},
			[]string{"PATH=/usr/bin", "NOTIFY_SOCKETS=keep", "CONSUL_HTTP_ADDR=127.0.0.1:8500"},
		},
		{"value without name", []string{"NOTIFY_SOCKET"}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := childEnv(tc.in)
			if got == nil || !slices.Equal(got, tc.want) {
				t.Errorf("childEnv(%q) = %#v, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	const ms = time.Millisecond
	for _, tc := range []struct {
		name         string
		initial, max time.Duration
		attempt      int
		rnd          float64
		want         time.Duration
	}{
		{"first restart, no jitter", 500 * ms, 30 * time.Second, 1, 0, 500 * ms},
		{"doubles", 500 * ms, 30 * time.Second, 3, 0, 2 * time.Second},
		{"full jitter takes 20%", 500 * ms, 30 * time.Second, 1, 1, 400 * ms},
		{"half jitter", 1000 * ms, 30 * time.Second, 1, 0.5, 900 * ms},
		{"capped", 500 * ms, 30 * time.Second, 10, 0, 30 * time.Second},
		{"capped with jitter", 500 * ms, 30 * time.Second, 10, 1, 24 * time.Second},
		{"initial above max", time.Minute, time.Second, 1, 0, time.Second},
		{"huge attempt does not overflow", time.Nanosecond, time.Duration(1<<62) + 1, 1 << 20, 0, time.Duration(1<<62) + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := backoffDelay(tc.initial, tc.max, tc.attempt, tc.rnd); got != tc.want {
				t.Errorf("backoffDelay = %s, want %s", got, tc.want)
			}
		})
	}

	// Below the cap, any jitter keeps the delays strictly increasing.
	prevMax := time.Duration(0)
	for attempt := 1; attempt <= 5; attempt++ {
		lo := backoffDelay(100*ms, time.Hour, attempt, 0.999999)
		hi := backoffDelay(100*ms, time.Hour, attempt, 0)
		if lo <= prevMax {
			t.Errorf("attempt %d: smallest delay %s not above the previous largest %s", attempt, lo, prevMax)
		}
		prevMax = hi
	}
}

func TestReadLines(t *testing.T) {
	type line struct {
		text      string
		truncated bool
	}
	for _, tc := range []struct {
		name string
		in   string
		max  int
		want []line
	}{
		{"lines", "a\nbb\n", 16, []line{{"a", false}, {"bb", false}}},
		{"crlf", "a\r\nb\r\n", 16, []line{{"a", false}, {"b", false}}},
		{"empty line kept", "a\n\nb\n", 16, []line{{"a", false}, {"", false}, {"b", false}}},
		{"last line without newline", "a\nrest", 16, []line{{"a", false}, {"rest", false}}},
		{"nothing", "", 16, nil},
		{"long line cut, next line intact", strings.Repeat("x", 40) + "\nok\n", 16, []line{{strings.Repeat("x", 16), true}, {"ok", false}}},
		{"long last line without newline", strings.Repeat("y", 40), 16, []line{{strings.Repeat("y", 16), true}}},
		{"exactly max with newline fits", strings.Repeat("z", 15) + "\n", 16, []line{{strings.Repeat("z", 15), false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []line
			readLines(strings.NewReader(tc.in), tc.max, func(b []byte, tr bool) {
				got = append(got, line{string(b), tr})
			})
			if !slices.Equal(got, tc.want) {
				t.Errorf("readLines(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestTransitionsTable(t *testing.T) {
	all := []State{StateStarting, StateRunning, StateBackoff, StateStopping, StateStopped, StateFailed}
	for _, from := range all {
		if len(transitions[from]) == 0 {
			t.Errorf("state %s has no way out", from)
		}
		for _, to := range transitions[from] {
			if !slices.Contains(all, to) {
				t.Errorf("%s -> unknown state %s", from, to)
			}
		}
	}
	for _, bad := range [][2]State{{StateStopped, StateRunning}, {StateBackoff, StateRunning}, {StateFailed, StateBackoff}} {
		if allowed(bad[0], bad[1]) {
			t.Errorf("%s -> %s allowed", bad[0], bad[1])
		}
	}
}
