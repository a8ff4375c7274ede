package ttl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshx/meshx/internal/testutil"
)

// write is one UpdateTTLOpts call the fake agent received.
type write struct{ check, status, output string }

// fakeAgent records every write and answers each with the next queued error
// (nil once the queue is empty).
type fakeAgent struct {
	mu     sync.Mutex
	writes []write
	errs   []error
}

func (f *fakeAgent) UpdateTTLOpts(checkID, output, status string, q *api.QueryOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if q == nil || q.Context() == nil {
		return errors.New("fake agent: no context passed")
	}
	f.writes = append(f.writes, write{checkID, status, output})
	if len(f.errs) == 0 {
		return nil
	}
	err := f.errs[0]
	f.errs = f.errs[1:]
	return err
}

func (f *fakeAgent) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.writes)
}

func (f *fakeAgent) all() []write {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]write(nil), f.writes...)
}

var (
	passing  = Health{Status: api.HealthPassing, Output: "ok"}
	critical = Health{Status: api.HealthCritical, Output: "proxy down"}
	warning  = Health{Status: api.HealthWarning, Output: "slow"}
)

// probes returns a Probe that answers hs in turn (the last one forever).
func probes(hs ...Health) func(context.Context) Health {
	var mu sync.Mutex
	i := 0
	return func(context.Context) Health {
		mu.Lock()
		defer mu.Unlock()
		h := hs[min(i, len(hs)-1)]
		i++
		return h
	}
}

func newHeartbeat(t *testing.T, o Options) *Heartbeat {
	t.Helper()
	if o.CheckID == "" {
		o.CheckID = "meshx-ttl:web-h1"
	}
	if o.Logger == nil {
		o.Logger = testutil.Logger(t)
	}
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestNewRejectsMissingOptions(t *testing.T) {
	full := func() Options {
		return Options{Agent: &fakeAgent{}, CheckID: "c", Interval: time.Second, Probe: probes(passing)}
	}
	cases := []struct {
		name  string
		empty func(*Options)
	}{
		{"no agent", func(o *Options) { o.Agent = nil }},
		{"no check id", func(o *Options) { o.CheckID = "" }},
		{"zero interval", func(o *Options) { o.Interval = 0 }},
		{"negative interval", func(o *Options) { o.Interval = -time.Second }},
		{"no probe", func(o *Options) { o.Probe = nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := full()
			tc.empty(&o)
			if h, err := New(o); !errors.Is(err, ErrMissingOption) || h != nil {
				t.Errorf("New = %v, %v; want nil, ErrMissingOption", h, err)
			}
		})
	}
	t.Run("all required set, optional nil", func(t *testing.T) {
		h, err := New(full())
		if err != nil || h == nil {
			t.Fatalf("New = %v, %v", h, err)
		}
		if _, err := h.Beat(context.Background()); err != nil { // a nil Logger must not panic
			t.Fatal(err)
		}
	})
}

// TestBeatWritesOnChangeOnly: each new health is written at once; an
// unchanged one is not written again within the Interval.
func TestBeatWritesOnChangeOnly(t *testing.T) {
	cases := []struct {
		name   string
		probed []Health
		want   []write // in order
	}{
		{"first beat writes", []Health{passing},
			[]write{{"c", "passing", "ok"}}},
		{"unchanged is written once", []Health{passing, passing, passing},
			[]write{{"c", "passing", "ok"}}},
		{"each change is written", []Health{passing, critical, critical, warning, passing},
			[]write{{"c", "passing", "ok"}, {"c", "critical", "proxy down"}, {"c", "warning", "slow"}, {"c", "passing", "ok"}}},
		{"a new output alone is a change", []Health{passing, {Status: api.HealthPassing, Output: "ok again"}},
			[]write{{"c", "passing", "ok"}, {"c", "passing", "ok again"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := &fakeAgent{}
			h := newHeartbeat(t, Options{Agent: a, CheckID: "c", Interval: time.Hour, Probe: probes(tc.probed...)})
			for i, want := range tc.probed {
				got, err := h.Beat(context.Background())
				if err != nil || got != want {
					t.Fatalf("beat %d = %+v, %v; want %+v", i, got, err, want)
				}
			}
			if got := a.all(); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("writes\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// TestBeatRefreshesOncePerInterval: an unchanged health is written again
// once about an Interval has passed (that keeps the TTL alive), not sooner.
func TestBeatRefreshesOncePerInterval(t *testing.T) {
	a := &fakeAgent{}
	const interval = 200 * time.Millisecond
	h := newHeartbeat(t, Options{Agent: a, Interval: interval, Probe: probes(passing)})
	start := time.Now()
	if _, err := h.Beat(context.Background()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if _, err := h.Beat(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := a.count(); n < 2 {
			return fmt.Errorf("%d write(s) so far", n)
		}
		return nil
	})
	if d := time.Since(start); d < interval*9/10 {
		t.Errorf("rewrote the unchanged health after %s, before 9/10 of the %s interval", d, interval)
	}
	if n := a.count(); n != 2 {
		t.Errorf("%d writes, want 2", n)
	}
}

// TestHold: a held health is neither written nor remembered as written, so
// the first health not held is written at once.
func TestHold(t *testing.T) {
	a := &fakeAgent{}
	holding := true
	var beats []string
	h := newHeartbeat(t, Options{Agent: a, Interval: time.Hour,
		Probe: probes(critical, critical, passing, critical),
		Hold:  func(hl Health) bool { return holding && hl.Status == api.HealthCritical },
		OnBeat: func(hl Health, err error) {
			beats = append(beats, fmt.Sprintf("%s/%v", hl.Status, err))
		}})
	for range 2 {
		if _, err := h.Beat(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.count(); n != 0 {
		t.Fatalf("held critical healths were written: %v", a.all())
	}
	h.Beat(context.Background()) // passing: not held
	holding = false
	h.Beat(context.Background()) // critical, no longer held
	want := []write{{"meshx-ttl:web-h1", "passing", "ok"}, {"meshx-ttl:web-h1", "critical", "proxy down"}}
	if got := a.all(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("writes\n got %v\nwant %v", got, want)
	}
	if want := "[critical/<nil> critical/<nil> passing/<nil> critical/<nil>]"; fmt.Sprint(beats) != want {
		t.Errorf("OnBeat saw %v, want %s", beats, want)
	}
}

// TestLostCheckReregisters: when the agent answers that it does not know the
// check, the service is registered again with the probed status and the
// health written a second time.
func TestLostCheckReregisters(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		lost   bool
		regErr error
	}{
		{"404", api.StatusError{Code: 404, Body: "Unknown check ID \"meshx-ttl:web-h1\""}, true, nil},
		{"404 without body", api.StatusError{Code: 404}, true, nil},
		{"500 unknown check id", api.StatusError{Code: 500, Body: "Unknown check ID \"meshx-ttl:web-h1\". Ensure that the check ID is passed, not the check name."}, true, nil},
		{"500 no ttl", api.StatusError{Code: 500, Body: "CheckID \"meshx-ttl:web-h1\" does not have associated TTL"}, true, nil},
		{"wrapped 404", fmt.Errorf("put: %w", api.StatusError{Code: 404}), true, nil},
		{"500 other", api.StatusError{Code: 500, Body: "rpc error: leader lost"}, false, nil},
		{"403", api.StatusError{Code: 403, Body: "Permission denied"}, false, nil},
		{"403 token refused", api.StatusError{Code: 403, Body: "ACL not found"}, false, nil},
		{"transport error", errors.New("dial tcp 127.0.0.1:8500: connect: connection refused"), false, nil},
		{"re-register fails", api.StatusError{Code: 404}, true, errors.New("agent refused the registration")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := &fakeAgent{errs: []error{tc.err}}
			var regs []string
			var seen []error
			h := newHeartbeat(t, Options{Agent: a, Interval: time.Hour, Probe: probes(warning),
				Reregister: func(ctx context.Context, status string) error {
					regs = append(regs, status)
					return tc.regErr
				},
				OnBeat: func(_ Health, err error) { seen = append(seen, err) }})
			_, err := h.Beat(context.Background())
			switch {
			case !tc.lost:
				if len(regs) != 0 || a.count() != 1 || !errors.Is(err, tc.err) {
					t.Errorf("not a lost check: re-registered %v, %d writes, err %v", regs, a.count(), err)
				}
			case tc.regErr != nil:
				if fmt.Sprint(regs) != "[warning]" || a.count() != 1 {
					t.Errorf("re-registered %v, %d writes; want [warning], 1", regs, a.count())
				}
				if !errors.Is(err, tc.regErr) || !strings.Contains(fmt.Sprint(err), "re-register") {
					t.Errorf("err = %v; want it to report the failed re-registration", err)
				}
			default:
				want := []write{{"meshx-ttl:web-h1", "warning", "slow"}, {"meshx-ttl:web-h1", "warning", "slow"}}
				if fmt.Sprint(regs) != "[warning]" || fmt.Sprint(a.all()) != fmt.Sprint(want) || err != nil {
					t.Errorf("re-registered %v, writes %v, err %v; want [warning], two writes, nil", regs, a.all(), err)
				}
			}
			if len(seen) != 1 || seen[0] != err {
				t.Errorf("OnBeat saw %v, want exactly the beat's error %v", seen, err)
			}
			// A failed beat is not remembered as written: the next one (the
			// agent answers it) writes again; a good one is not rewritten.
			before := a.count()
			if _, err := h.Beat(context.Background()); err != nil {
				t.Errorf("second beat: %v", err)
			}
			if again := a.count() > before; again != (err != nil) {
				t.Errorf("second beat wrote: %v; first beat's err %v", again, err)
			}
		})
	}
}

// TestLostWithoutReregister: with no Reregister, a lost check is an error.
func TestLostWithoutReregister(t *testing.T) {
	lostErr := api.StatusError{Code: 404, Body: "Unknown check ID"}
	a := &fakeAgent{errs: []error{lostErr}}
	h := newHeartbeat(t, Options{Agent: a, Interval: time.Hour, Probe: probes(passing)})
	if _, err := h.Beat(context.Background()); !errors.Is(err, lostErr) {
		t.Errorf("err = %v, want the agent's 404", err)
	}
	if a.count() != 1 {
		t.Errorf("%d writes, want 1", a.count())
	}
}

// TestOnBeatSeesEveryBeat: written, skipped (unchanged) and failed beats all
// reach OnBeat, with the error of that beat.
func TestOnBeatSeesEveryBeat(t *testing.T) {
	boom := errors.New("boom")
	a := &fakeAgent{errs: []error{nil, boom}}
	var got []string
	h := newHeartbeat(t, Options{Agent: a, Interval: time.Hour, Probe: probes(passing, passing, critical, critical),
		OnBeat: func(hl Health, err error) { got = append(got, fmt.Sprintf("%s/%v", hl.Status, err)) }})
	for range 4 {
		h.Beat(context.Background())
	}
	// Beat 3's write failed, so beat 4 (same health) writes again and succeeds.
	want := "[passing/<nil> passing/<nil> critical/boom critical/<nil>]"
	if fmt.Sprint(got) != want {
		t.Errorf("OnBeat saw %v, want %s", got, want)
	}
	if a.count() != 3 {
		t.Errorf("%d writes, want 3", a.count())
	}
}

func TestSet(t *testing.T) {
	a := &fakeAgent{}
	if err := Set(context.Background(), a, "c", critical); err != nil {
		t.Fatal(err)
	}
	if want := "[{c critical proxy down}]"; fmt.Sprint(a.all()) != want {
		t.Errorf("writes %v, want %s", a.all(), want)
	}
}
